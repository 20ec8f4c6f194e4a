"""The huey peer of bench.py's drain section: huey (``SqliteHuey``, fsync on, WAL) running the
drain's ``/bin/true '<json>'`` tasks through ``subprocess.run`` from a huey task, two worker
processes (``huey_consumer huey_peer.huey -w 2 -k process``), backlog enqueued first.

    HUEY_DB=/tmp/h.db HUEY_TASK_DIR=/tmp/tasks HUEY_DONE_DIR=/tmp/done \\
        python bench/huey_peer.py enqueue ARGS_FILE     # one task per line (a JSON param)
    PYTHONPATH=bench HUEY_DB=... python -m huey.bin.huey_consumer huey_peer.huey -w 2 -k process

Each task, once its process has exited, appends the time (``time.time()``) to a file of its
worker process in HUEY_DONE_DIR (one O_APPEND write): bench.py counts those lines to see the
queue drained, and reads the first and last finish from them. The enqueueing process alone
(HUEY_FSYNC=0) writes with ``synchronous=OFF`` (not timed); the consumer keeps huey's fsync
on, as cronqueue keeps SQLite's ``synchronous=FULL``. ``pip install cronqueue[bench]``
installs huey.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from huey import SqliteHuey  # type: ignore[import-untyped,import-not-found,unused-ignore]

TASK_DIR = os.environ.get("HUEY_TASK_DIR", ".")
DONE_DIR = os.environ.get("HUEY_DONE_DIR", ".")

huey: Any = SqliteHuey("bench", filename=os.environ.get("HUEY_DB", "huey.db"),
                       fsync=os.environ.get("HUEY_FSYNC", "1") == "1", results=False)
_done_fd: int | None = None


def _run(script: str, param: str) -> None:
    global _done_fd
    subprocess.run([os.path.join(TASK_DIR, script), param], check=False)
    if _done_fd is None:
        _done_fd = os.open(os.path.join(DONE_DIR, f"done-{os.getpid()}.txt"),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_done_fd, f"{time.time():.6f}\n".encode())


run: Any = huey.task(name="run")(_run)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "enqueue":
        os.environ["HUEY_FSYNC"] = "0"  # before the import below opens the database
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        # Through the module's own name: huey names a task by its module, and the consumer
        # imports huey_peer, not __main__.
        import huey_peer

        for line in Path(argv[1]).read_text().splitlines():
            huey_peer.run("true", line)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
