"""A running task's output in its row while it runs (the dashboard follows it): written by the
shard's heartbeat, fenced by the claim, replaced by the outcome."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from cronqueue import Queue, Status
from cronqueue.shard.loop import ShardReport
from cronqueue.store.schema import queue_table as q
from cronqueue.store.workers import LiveOutput
from tests.conftest import Clock
from tests.conftest import get_task as get
from tests.helpers import wait_until, write_script
from tests.integration.test_worker import make_shard

# Prints a line, then waits (at most 30 s) for the test's ``release`` file, then one more line.
LIVE_SH = ('echo "halfway there"\n'
           'i=0; while [ ! -e release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n'
           'echo "all done"\n')


def test_a_running_tasks_output_is_in_its_row(db_url: str, task_dir: Path, log_dir: Path,
                                              cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "live.sh", LIVE_SH)
    task_id = cq.add("live.sh")
    shard = make_shard(db_url, task_dir, log_dir, clock, heartbeat=0.2)
    reports: list[ShardReport] = []
    thread = threading.Thread(target=lambda: reports.append(shard.run()), daemon=True)
    thread.start()
    try:
        def shown() -> bool:
            return "halfway there" in (get(cq, task_id).output or "")

        wait_until(shown, 30, "the running task's output in its row")
        task = get(cq, task_id)
        assert task.status is Status.RUNNING and task.finished_at is None
        assert task.output == "halfway there\n"
    finally:
        (task_dir / "release").touch()
        thread.join(60)
    assert not thread.is_alive()
    assert reports and reports[0].done == 1
    task = get(cq, task_id)
    assert task.status is Status.DONE
    assert task.output == "halfway there\nall done\n"


def _running(cq: Queue, task_id: int, token: str, clock: Clock, **values: object) -> None:
    """The row as a shard's claim leaves it once the task started (by hand)."""
    with cq.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == task_id).values(**{
            "status": int(Status.RUNNING), "claim_token": token, "attempts": 1,
            "worker_host": "h1", "worker_pid": 42, "started_at": clock.now,
            "lease_until": clock.now + timedelta(seconds=60), "output": "before", **values}))


def test_the_live_write_is_fenced_by_the_claim(cq: Queue, clock: Clock) -> None:
    ours, rescued, other = cq.add("a.sh"), cq.add("b.sh"), cq.add("c.sh")
    _running(cq, ours, "A" * 32, clock)
    _running(cq, rescued, "B" * 32, clock)  # taken over: another claim holds it now
    _running(cq, other, "A" * 32, clock)
    workers = cq.store.workers
    worker = workers.register(host="h1", pid=42, pid_start=5, entry=None, shard=0, total=1,
                              queues="", started_at=clock.now, heartbeat_at=clock.now)

    def beat(task_id: int, output: str) -> None:
        workers.heartbeat(worker, clock.now, task_id, 0, token="A" * 32,
                          lease_until=clock.now + timedelta(seconds=60),
                          live=LiveOutput("A" * 32, task_id, output))

    beat(ours, "ours so far\n")
    beat(rescued, "not ours\n")
    assert get(cq, ours).output == "ours so far\n"
    assert get(cq, rescued).output == "before"
    assert get(cq, other).output == "before"  # only the task named

    # its outcome is written (done): a snapshot that comes after it changes nothing
    with cq.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == ours).values(
            status=int(Status.DONE), output="final\n", finished_at=clock.now))
    beat(ours, "stale\n")
    assert get(cq, ours).output == "final\n"
