"""The RQ peer of bench.py's drain section, opt-in (``bench.py --peers naive,huey,rq``; needs ``pip
install rq`` and a Redis server at ``--redis-url``): RQ's default worker (a forked work horse
per job), two of them in burst mode (``rq worker --burst``: they exit once the queue is empty),
running the drain's ``/bin/true '<json>'`` tasks through ``subprocess.run`` from an RQ job,
backlog enqueued first (one pipeline). Jobs keep no result (``result_ttl=0``), so that a run
leaves nothing behind in a shared Redis; the queue is bench.py's own (``cq_bench_*``), deleted
after.

    RQ_TASK_DIR=/tmp/tasks RQ_DONE_DIR=/tmp/done \\
        python bench/rq_peer.py enqueue REDIS_URL QUEUE ARGS_FILE
    rq worker --burst -q --url REDIS_URL --path bench QUEUE        # twice
    python bench/rq_peer.py delete REDIS_URL QUEUE

Each job, once its process has exited, appends the time to a file of its worker (the work
horse's parent) in RQ_DONE_DIR (one O_APPEND write), as huey_peer.py does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run(script: str, param: str) -> None:
    subprocess.run([os.path.join(os.environ.get("RQ_TASK_DIR", "."), script), param],
                   check=False)
    fd = os.open(os.path.join(os.environ.get("RQ_DONE_DIR", "."), f"done-{os.getppid()}.txt"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{time.time():.6f}\n".encode())
    finally:
        os.close(fd)


def _queue(url: str, name: str) -> Any:
    from redis import Redis  # type: ignore[import-untyped,import-not-found,unused-ignore]
    from rq import Queue  # type: ignore[import-untyped,import-not-found,unused-ignore]

    return Queue(name, connection=Redis.from_url(url))


def available(url: str) -> str | None:
    """None if rq is installed and Redis answers at ``url``, else why not."""
    try:
        import rq  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        from redis import Redis  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install rq)"
    try:
        Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"no Redis at {url} ({type(exc).__name__})"
    return None


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "enqueue":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from rq import Queue  # type: ignore[import-untyped,import-not-found,unused-ignore]

        queue = _queue(argv[1], argv[2])
        lines = Path(argv[3]).read_text().splitlines()
        # By the module's own name: the workers import rq_peer, not __main__.
        queue.enqueue_many([Queue.prepare_data("rq_peer.run", ("true", line), result_ttl=0)
                            for line in lines])
        return 0
    if len(argv) == 3 and argv[0] == "delete":
        queue = _queue(argv[1], argv[2])
        queue.delete(delete_jobs=True)
        # what RQ keeps beside a queue (its registries, the intermediate queue's marks: a day)
        for key in list(queue.connection.scan_iter(match=f"rq:*:{argv[2]}:*")) + list(
                queue.connection.scan_iter(match=f"rq:*:{argv[2]}")):
            queue.connection.delete(key)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
