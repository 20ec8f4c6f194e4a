"""``cronqueue_rollup``: the counters of finished tasks per (queue, outcome) are written by the
statements that record the outcomes, in their transaction — a shard's group commit (done,
failed, a row rejected unrun), the rescue's ``rescue_failed``, a cancel — once per task, with
the run time of the runs a shard timed, and a purge leaves them as they are."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update

from cronqueue import Queue, Status
from cronqueue.config import load_config
from cronqueue.mission.rescue import rescue
from cronqueue.process.identity import Owner
from cronqueue.shard.loop import Shard, ShardReport
from cronqueue.states import FINISHED
from cronqueue.store import rollup
from cronqueue.store.outcomes import Flush, Flushed, Outcomes
from cronqueue.store.schema import DURATION_BUCKETS
from cronqueue.store.schema import queue_table as q
from tests.conftest import insert_raw
from tests.helpers import write_script


def counters(queue: Queue) -> dict[tuple[str, str], rollup.Counters]:
    with queue.engine.connect() as conn:
        return {(c.queue, c.outcome): c for c in rollup.read(conn)}


def finished(queue: Queue) -> dict[tuple[str, str], int]:
    return {k: c.finished for k, c in counters(queue).items()}


def run_shard(db_url: str, task_dir: Path, log_dir: Path, **worker: Any) -> ShardReport:
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      **worker)
    return Shard(cfg).run()


@pytest.fixture
def scripts(task_dir: Path) -> Path:
    write_script(task_dir, "ok.sh", "exit 0\n")
    write_script(task_dir, "fail.sh", "exit 3\n")
    write_script(task_dir, "slow.sh", "sleep 0.3\n")
    return task_dir


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Each group commit of this process: (finishes of it that end a task, rollup upserts
    it sent)."""
    sent: list[str] = []
    seen: list[tuple[int, int]] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CRONQUEUE_ROLLUP"):
            sent.append(statement)

    flush = Outcomes.flush

    def counted(self: Outcomes, batch: Flush) -> Flushed:
        already = len(sent)
        result = flush(self, batch)
        ending = sum(f.values.get("status") in FINISHED for f in batch.finishes)
        seen.append((ending, len(sent) - already))
        return result

    monkeypatch.setattr(Outcomes, "flush", counted)
    event.listen(Engine, "before_cursor_execute", before)
    yield seen
    event.remove(Engine, "before_cursor_execute", before)


def test_a_shards_outcomes_are_counted_once_per_group_commit(
        queue: Queue, db_url: str, scripts: Path, log_dir: Path,
        commits: list[tuple[int, int]]) -> None:
    queue.add_many([{"taskscript": "ok.sh", "queue": "mail"} for _ in range(30)]
                   + [{"taskscript": "fail.sh", "queue": "mail", "max_attempts": 1}
                      for _ in range(4)]
                   + [{"taskscript": "ok.sh", "queue": "reports"} for _ in range(3)])
    queue.add("fail.sh", queue="mail", max_attempts=2)  # retried later: not finished
    report = run_shard(db_url, scripts, log_dir, backoff=3600)
    assert (report.done, report.failed, report.retried) == (33, 4, 1)
    assert finished(queue) == {("mail", "done"): 30, ("mail", "failed"): 4,
                               ("reports", "done"): 3}  # the retry is not finished yet
    # One upsert per group commit that ends tasks, whatever their number and queues.
    assert sum(n for n, _ in commits) == 37
    assert [(n > 0, sent) for n, sent in commits] == [(n > 0, int(n > 0)) for n, _ in commits]
    assert any(n > 1 for n, _ in commits)

    c = counters(queue)[("mail", "done")]
    assert c.timed == 30  # every run a shard saw end
    assert c.buckets[-1] == 30 and list(c.buckets) == sorted(c.buckets)  # cumulative
    assert 0 < c.duration_seconds < 30 * 10



def test_run_times_fill_the_histogram_buckets(queue: Queue, db_url: str, scripts: Path,
                                               log_dir: Path) -> None:
    for _ in range(2):
        queue.add("slow.sh", queue="slow")
    run_shard(db_url, scripts, log_dir)
    c = counters(queue)[("slow", "done")]
    assert (c.finished, c.timed) == (2, 2)
    by_bound = dict(zip(DURATION_BUCKETS, c.buckets, strict=True))
    assert by_bound[0.25] == 0 and by_bound[3600.0] == 2  # slept 0.3 s each
    with queue.engine.connect() as conn:
        runs = conn.execute(select(q.c.started_at, q.c.finished_at)
                            .where(q.c.queue == "slow")).all()
    recorded = sum((end - start).total_seconds() for start, end in runs)
    assert c.duration_seconds == pytest.approx(recorded, abs=0.002)  # to the millisecond
    assert c.duration_seconds >= 0.6


def test_a_rejected_row_counts_as_failed_without_a_run_time(
        queue: Queue, db_url: str, scripts: Path, log_dir: Path) -> None:
    insert_raw(queue, {"taskscript": "ok.sh", "param": "1", "queue": "raw", "timeout": 0})
    report = run_shard(db_url, scripts, log_dir)
    assert report.failed == 1
    c = counters(queue)[("raw", "failed")]
    assert (c.finished, c.timed, c.duration_seconds) == (1, 0, 0.0)


def test_the_rescue_and_cancel_count_without_a_run_time(queue: Queue) -> None:
    lost = queue.add("ok.sh", queue="lost", max_attempts=1)
    dead = Owner("thishost", 999999, 1)
    with queue.engine.begin() as conn:  # claimed and started by a shard that died
        conn.execute(update(q).where(q.c.id == lost).values(
            status=int(Status.RUNNING), attempts=1, claim_token="t" * 32,
            worker_host=dead.host, worker_pid=dead.pid, worker_pid_start=dead.pid_start,
            lease_until=datetime.now(UTC) + timedelta(minutes=5),
            started_at=datetime.now(UTC) - timedelta(seconds=5)))
    report = rescue(queue.store, queue.config.worker, datetime.now(UTC),
                    me=Owner("thishost", 4242, 77), alive=lambda pid, start: False,
                    server_uptime=lambda: 10.0**9)
    assert report.failed == [lost]
    queue.cancel(queue.add("ok.sh", queue="lost"))
    c = counters(queue)
    assert (c[("lost", "failed")].finished, c[("lost", "failed")].timed) == (1, 0)
    assert (c[("lost", "cancelled")].finished, c[("lost", "cancelled")].timed) == (1, 0)


def test_counters_stay_after_a_purge(queue: Queue, db_url: str, scripts: Path,
                                     log_dir: Path) -> None:
    queue.add_many([{"taskscript": "ok.sh"} for _ in range(5)]
                   + [{"taskscript": "fail.sh", "max_attempts": 1}])
    run_shard(db_url, scripts, log_dir)
    before = counters(queue)
    assert finished(queue) == {("default", "done"): 5, ("default", "failed"): 1}
    assert queue.purge(older_than=timedelta(0)) == 6
    assert queue.stats()["total"] == 0
    assert counters(queue) == before
    queue.add("ok.sh")
    run_shard(db_url, scripts, log_dir)
    assert finished(queue)[("default", "done")] == 6
