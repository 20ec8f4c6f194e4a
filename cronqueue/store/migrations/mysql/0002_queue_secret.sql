-- Version 2: queue.secret, the JSON a task's script reads on stdin (never in argv).
ALTER TABLE queue ADD COLUMN secret MEDIUMTEXT;
