"""Issue 12 #3: no shard number sits idle between ticks while its rows are due.

Real processes: the mission (in process, the detached launcher) ticks every few real seconds,
each tick one simulated minute; the shards are ``cronqueue work`` processes. Before the fix a
shard whose task crossed its budget was found running by the next tick, exited after it, and
its number waited for the tick after (busy 60-85 % here, 21.5 s of every 40 s in the issue).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.bench_handover import run
from cronqueue.config import Config, load_config
from cronqueue.shard.handover import Handover
from cronqueue.store.engine import make_engine
from cronqueue.store.runs import Runs
from cronqueue.store.schema import ddl_metadata
from tests.helpers import write_script


def _config(db_url: str, tmp_path: Path, script: str, body: str) -> Config:
    """A config file in ``tmp_path`` on ``db_url`` with one task script."""
    write_script(tmp_path / "tasks", script, body)
    path = tmp_path / "cronqueue.toml"
    path.write_text(f'db_url = "{db_url}"\ntask_dir = "{tmp_path / "tasks"}"\n'
                    f'log_dir = "{tmp_path / "logs"}"\n')
    return load_config(path)


@pytest.mark.slow  # a soak: four 3 s ticks by design
def test_every_shard_number_is_busy_while_its_rows_are_due(db_url: str, tmp_path: Path) -> None:
    # gap (interval - budget) 0.5 s; tasks of 1.2 s, longer than the gap, cross the budget
    result = run(db_url, tmp_path, interval=3.0, budget=2.5, task_seconds=1.2, ticks=4)
    for shard in result:
        assert shard.overlaps == 0, shard  # never two copies of one shard number
        assert shard.window > 8.0, shard  # it worked through the ticks
        assert shard.busy >= 0.95, shard


def test_handover_sees_each_newer_tick_once(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        ddl_metadata().create_all(engine)
        runs = Runs(engine)
        now = datetime.now(UTC)
        own = now - timedelta(hours=1)
        runs.record("drain", own, host="h", pid=1, outcome="launching", now=now)
        clock_now = now + timedelta(seconds=50)
        handover = Handover(runs, "drain", 55.0, lambda: clock_now)
        assert handover.newer() is None  # our own tick
        runs.record("drain", own + timedelta(minutes=1), host="h2", pid=2,
                    outcome="launching", now=now + timedelta(seconds=60))
        newer = handover.newer()
        assert newer is not None
        assert newer[0] == own + timedelta(minutes=1)
        assert newer[1] == 55.0  # 65 s by a mission clock 10 s ahead: capped at one budget
        assert handover.newer() is None  # seen
        runs.record("other", own + timedelta(minutes=2), host="h", pid=1,
                    outcome="launching", now=now)
        assert handover.newer() is None  # another entry's tick is not ours
        clock_now = now + timedelta(seconds=100)
        runs.record("drain", own + timedelta(minutes=2), host="h", pid=1,
                    outcome="launching", now=now + timedelta(seconds=90))
        assert handover.newer() == (own + timedelta(minutes=2), 45.0)  # its budget left
    finally:
        engine.dispose()


def test_a_shard_past_its_budget_with_no_tick_stops_within_one_more_budget(
        db_url: str, tmp_path: Path) -> None:
    """Rows still due and no tick comes (the mission no longer runs): the shard claims on for
    at most one more budget, then exits; the backlog stays pending, nothing is lost."""
    from cronqueue import Queue, Status
    from cronqueue.shard.loop import Shard

    cfg = _config(db_url, tmp_path, "nap.sh", "sleep 0.2\n")
    q = Queue(config=cfg)
    try:
        q.init_db()
        q.add_many([{"taskscript": "nap.sh", "param": i} for i in range(100)])
        started = time.monotonic()
        report = Shard(cfg, entry="drain", max_seconds=1.0).run()
        took = time.monotonic() - started
        assert 2.0 <= took < 2.0 + 3.0, took  # budget + one more budget (+ start, last task)
        assert report.done >= 5
        assert len(q.list(status=Status.PENDING, limit=1000)) == 100 - report.done
    finally:
        q.close()


def test_a_tick_that_saw_the_guard_held_as_the_shard_exited_is_taken_back(
        db_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    """The window between the shard's last look for a tick and the release of its guard: a
    tick in it found the shard running and started nobody. The shard looks once more after
    releasing and takes the guard (and the tick's budget) back: the task added then runs."""
    from cronqueue import Queue, Status
    from cronqueue.process.identity import Owner
    from cronqueue.shard.guard import ShardGuard
    from cronqueue.shard.loop import Shard

    cfg = _config(db_url, tmp_path, "ok.sh", "exit 0\n")
    q = Queue(config=cfg)
    q.init_db()
    late: list[int] = []
    release = ShardGuard.release

    def release_then_a_tick(guard: ShardGuard) -> None:
        release(guard)
        if not late:  # the first release: the shard's budget is over, the guard just freed
            me = Owner.me()
            Runs(q.engine).record(
                "drain", datetime.now(UTC).replace(second=0, microsecond=0),
                host=me.host, pid=me.pid, outcome="started no shard; still running 0",
                now=datetime.now(UTC))
            late.append(q.add("ok.sh"))

    monkeypatch.setattr(ShardGuard, "release", release_then_a_tick)
    try:
        report = Shard(cfg, entry="drain", max_seconds=0.5).run()
        assert late and report.done == 1, report
        task = q.get(late[0])
        assert task is not None and task.status is Status.DONE
    finally:
        q.close()
