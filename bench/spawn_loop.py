"""Child processes of bench.py's floors section: process floors without any queue. Standard
library only (like the fork server's interpreter), so that the process is as small as a Python
process gets.

    spawn_loop.py loop ARGS_FILE TASK SHARD TOTAL
        subprocess.run([TASK, line]) for every TOTAL-th line of ARGS_FILE, starting at line
        SHARD (the drain section's args file: one JSON param a line); exit 1 if a task fails.
    spawn_loop.py fork N OUT
        N times: os.fork(), the child runs the python section's trivial task code and
        os._exit(0)s, the parent os.wait4(); writes {"ms_per_task": ..., "faults_per_task": ...}
        (the child's minor page faults) to OUT.
    spawn_loop.py exec N OUT
        N times subprocess.run([sys.executable, "-c", "pass"]); writes {"ms_per_task": ...}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

WARM_UP = 3  # untimed rounds first (page cache, lazy imports)


def loop(args_file: Path, task: str, shard: int, total: int) -> int:
    lines = args_file.read_text().splitlines()[shard::total]
    failed = 0
    for line in lines:
        if subprocess.run([task, line], check=False).returncode != 0:
            failed += 1
    if failed:
        print(f"spawn_loop: {failed} of {len(lines)} tasks failed", file=sys.stderr)
        return 1
    return 0


# The python section's trivial task (pytask.py), compiled once: the forked child runs it.
TASK_CODE = compile("import json, sys\njson.loads(sys.argv[1])\n", "pytask.py", "exec")


def fork_once() -> int:
    """Fork; the child runs the trivial task's code and _exits; its minor page faults."""
    pid = os.fork()
    if pid == 0:
        try:
            sys.argv = ["pytask.py", '{"n":1}']
            exec(TASK_CODE, {"__name__": "__main__"})
        finally:
            os._exit(0)
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise SystemExit(f"spawn_loop: forked child ended with status {status}")
    return int(usage.ru_minflt)


def exec_once() -> int:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return 0


def per_task(step: str, n: int) -> tuple[float, float]:
    """ms per task (wall) and minor page faults per forked child (0 for exec)."""
    once = fork_once if step == "fork" else exec_once
    for _ in range(WARM_UP):
        once()
    faults = 0
    began = time.perf_counter()
    for _ in range(n):
        faults += once()
    return (time.perf_counter() - began) / n * 1000, faults / n


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "loop":
        return loop(Path(argv[1]), argv[2], int(argv[3]), int(argv[4]))
    if len(argv) == 3 and argv[0] in ("fork", "exec"):
        ms, faults = per_task(argv[0], int(argv[1]))
        Path(argv[2]).write_text(json.dumps({"ms_per_task": ms, "faults_per_task": faults}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
