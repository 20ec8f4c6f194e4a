<?php
// Example task in PHP (runs with `php` when it is installed): $argv[1] is the param as JSON.
$param = json_decode($argv[1], true);
fwrite(STDOUT, "report for " . ($param["day"] ?? "today") . ", task " . getenv("CRONQUEUE_TASK_ID") . "\n");
exit(0);
