"""Pause and resume a queue (issue 15 #3): real shard processes claim nothing from a paused
queue, finish what runs, and claim it again after a resume or once ``until`` passes; the claim
reads the pause set once per claim and leaves the paused queues out of its candidate read."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from cronqueue import InvalidTask, Queue, Status
from cronqueue.process.identity import Owner
from cronqueue.store import pauses
from cronqueue.store.claims import Claimer
from cronqueue.store.schema import pauses_table, queue_table
from tests.conftest import Clock, get_task, run_cli
from tests.helpers import Procs, cronqueue_cmd, wait_until, write_script

pytestmark = pytest.mark.usefixtures("clean_env")

LEASE = timedelta(minutes=5)


def statuses(q: Queue, ids: list[int]) -> set[Status]:
    return {get_task(q, i).status for i in ids}


def work(db_url: str, task_dir: Path, log_dir: Path, *args: str) -> str:
    """A burst shard (drains what it may claim, then exits): its log."""
    result = run_cli("work", "--total", "1", "--shard", "0", *args, db_url=db_url,
                     task_dir=task_dir, log_dir=log_dir)
    assert result.returncode == 0, result.stderr
    return result.stderr


def shard_argv(db_url: str, task_dir: Path, log_dir: Path, *args: str) -> list[str]:
    return cronqueue_cmd("work", "--total", "1", "--shard", "0", *args, "--db", db_url,
                         "--task-dir", str(task_dir), "--log-dir", str(log_dir))


# -- real shards ---------------------------------------------------------------------------


def test_a_paused_queue_waits_while_another_runs_and_runs_once_resumed(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    write_script(task_dir, "ok.sh", "exit 0\n")
    held = [queue.add("ok.sh", i, queue="reports", priority=9) for i in range(3)]
    paused = queue.pause("reports", reason="deploy")
    assert paused.until is None and paused.reason == "deploy" and "@" in paused.by
    others = [queue.add("ok.sh", i) for i in range(3)]
    added = queue.add("ok.sh", "while paused", queue="reports")  # add() still enqueues
    held.append(added)

    log = work(db_url, task_dir, log_dir)
    assert statuses(queue, others) == {Status.DONE}
    assert statuses(queue, held) == {Status.PENDING}
    assert "queue(s) paused, claiming nothing from them: reports" in log
    log = work(db_url, task_dir, log_dir, "--queue", "reports")  # a shard of it alone
    assert statuses(queue, held) == {Status.PENDING}
    assert [t.name for t in queue.pauses()] == ["reports"]

    ended = queue.resume("reports")
    assert ended is not None and ended.name == "reports"
    assert queue.pauses() == [] and queue.resume("reports") is None
    work(db_url, task_dir, log_dir, "--queue", "reports")
    assert statuses(queue, held) == {Status.DONE}


def test_a_task_running_when_the_pause_lands_finishes(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, procs: Procs,
        tmp_path: Path) -> None:
    write_script(task_dir, "slow.sh", 'touch "started.$CRONQUEUE_TASK_ID"\n'
                                      "while [ ! -e go ]; do sleep 0.02; done\n")
    first = queue.add("slow.sh", queue="reports")
    shard = procs.start(shard_argv(db_url, task_dir, log_dir), log=tmp_path / "shard.log")
    wait_until(lambda: (task_dir / f"started.{first}").exists(), 60, "the first task started")
    queue.pause("reports")
    second = queue.add("slow.sh", queue="reports")
    (task_dir / "go").touch()
    assert shard.wait(timeout=60) == 0  # burst: it ends when it may claim nothing more
    assert get_task(queue, first).status is Status.DONE
    assert get_task(queue, second).status is Status.PENDING
    assert not (task_dir / f"started.{second}").exists()


def test_a_pause_until_ends_by_itself_without_a_write(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, procs: Procs,
        tmp_path: Path) -> None:
    write_script(task_dir, "ok.sh", "exit 0\n")
    task = queue.add("ok.sh", queue="reports")
    until = datetime.now(UTC) + timedelta(seconds=2)
    queue.pause("reports", until)
    shard = procs.start(shard_argv(db_url, task_dir, log_dir, "--max-seconds", "60"),
                        log=tmp_path / "shard.log")
    wait_until(lambda: get_task(queue, task).status is Status.DONE, 60,
               lambda: (tmp_path / "shard.log").read_text())
    done = get_task(queue, task)
    assert done.started_at is not None and done.started_at >= until
    shard.send_signal(signal.SIGTERM)
    assert shard.wait(timeout=30) == 0
    with queue.engine.connect() as conn:  # nobody wrote: the row still says until
        row = conn.execute(select(pauses_table)).mappings().one()
    assert row["paused_until"] == until
    assert queue.pauses() == []
    assert "no queue of this shard is paused any more" in (tmp_path / "shard.log").read_text()


# -- the claim (in process, an injected clock) -----------------------------------------------

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def cq(db_url: str, task_dir: Path, log_dir: Path) -> Iterator[tuple[Queue, Clock]]:
    clock = Clock(NOW)
    q = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir), clock=clock)
    q.init_db()
    yield q, clock
    q.close()


def claimer(engine: Engine, queues: list[str] | None = None) -> Claimer:
    return Claimer(engine, Owner("h", 1, 1), shard=0, total=1, queues=queues, lease=LEASE)


@pytest.mark.parametrize("split", [pauses.MAX_SPLIT, 0], ids=["per-queue", "not-in"])
def test_the_claim_over_every_queue_leaves_the_paused_ones_out(
        cq: tuple[Queue, Clock], monkeypatch: pytest.MonkeyPatch, split: int) -> None:
    q, clock = cq
    monkeypatch.setattr(pauses, "MAX_SPLIT", split)  # 0: one read, queue NOT IN (...)
    # The paused queue's rows come first in claim order: a read that left them to the
    # limit would claim nothing else.
    flood = q.add_many([{"taskscript": "t.sh", "param": i, "queue": "flood", "priority": 5}
                        for i in range(30)])
    rest = q.add_many([{"taskscript": "t.sh", "param": i, "queue": f"q{i % 3}",
                        "priority": i % 2} for i in range(12)])
    q.pause("flood")
    q.pause("q-empty")  # paused, no rows
    in_order = sorted(rest, key=lambda i: (-get_task(q, i).priority, i))
    c = claimer(q.engine)
    assert [t.id for t in c.claim(10, clock()).tasks] == in_order[:10]
    assert [t.id for t in c.claim(10, clock()).tasks] == in_order[10:]
    assert not c.claim(10, clock()).tasks
    assert not c.any_due(clock())
    q.resume("flood")
    assert c.any_due(clock())
    assert {t.id for t in c.claim(100, clock()).tasks} == set(flood)


def test_the_claim_of_named_queues_reads_only_the_unpaused(cq: tuple[Queue, Clock]) -> None:
    q, clock = cq
    reports = q.add("t.sh", queue="reports", priority=9)
    default = q.add("t.sh")
    q.pause("reports")
    both = claimer(q.engine, ["reports", "default"])
    assert [t.id for t in both.claim(10, clock()).tasks] == [default]
    alone = claimer(q.engine, ["reports"])
    assert not alone.claim(10, clock()).tasks and not alone.any_due(clock())
    q.resume("reports")
    assert [t.id for t in alone.claim(10, clock()).tasks] == [reports]


def test_until_is_judged_by_the_claimers_clock(cq: tuple[Queue, Clock]) -> None:
    q, clock = cq
    task = q.add("t.sh", queue="reports")
    until = NOW + timedelta(minutes=10)
    q.pause("reports", until)
    c = claimer(q.engine)
    assert not c.claim(10, until - timedelta(microseconds=1)).tasks
    assert not c.any_due(until - timedelta(microseconds=1))
    assert [t.id for t in c.claim(10, until).tasks] == [task]  # at until: over
    clock.set(until)
    assert q.pauses() == [] and q.stats()["paused"] == {}


def test_the_claim_reads_the_pause_set_once(cq: tuple[Queue, Clock],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """One statement on cronqueue_pauses per claim, whatever the rows and queues; the log
    says once when the paused set of a shard changes."""
    q, clock = cq
    q.add_many([{"taskscript": "t.sh", "param": i, "queue": f"q{i % 4}"} for i in range(40)])
    q.pause("q0")
    q.pause("q1")
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    c = claimer(q.engine)
    event.listen(q.engine, "before_cursor_execute", count)
    try:
        with caplog.at_level(logging.INFO, logger="cronqueue.shard"):
            for _ in range(3):
                claim = c.claim(5, clock())
                assert {t.queue for t in claim.tasks} <= {"q2", "q3"}
    finally:
        event.remove(q.engine, "before_cursor_execute", count)
    assert sum("cronqueue_pauses" in s for s in seen) == 3
    lines = [r.getMessage() for r in caplog.records if "paused" in r.getMessage()]
    assert lines == ["queue(s) paused, claiming nothing from them: q0,q1"]


def test_nothing_paused_reads_as_before(cq: tuple[Queue, Clock]) -> None:
    """With no pause in force (none, or one that ended) the candidate read is the claim's own:
    no NOT IN, no per-queue split."""
    q, clock = cq
    q.add_many([("t.sh", i) for i in range(5)])
    q.pause("x", NOW + timedelta(seconds=1))
    clock.advance(2)
    seen: list[str] = []
    c = claimer(q.engine)
    event.listen(q.engine, "before_cursor_execute",
                 lambda conn, cur, statement, *a: seen.append(statement))
    assert len(c.claim(10, clock()).tasks) == 5
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "FROM queue" in s]
    assert reads and not any("NOT IN" in s.upper() for s in reads)


# -- the API's refusals --------------------------------------------------------------------


@pytest.mark.any_backend
@pytest.mark.parametrize(("args", "says"), [
    (("",), "queue name '' is malformed"),
    (("x" * 65,), "queue name of 65 characters is too long (at most 64)"),
    (("a b",), "is malformed"),
    (("ok", NOW - timedelta(seconds=1)), "is not in the future"),
    (("ok", NOW.replace(tzinfo=None)), "until must be an aware datetime"),
])
def test_bad_pauses_are_refused(cq: tuple[Queue, Clock], args: tuple[Any, ...],
                                says: str) -> None:
    q, _ = cq
    with pytest.raises(InvalidTask, match=says.replace("(", r"\(").replace(")", r"\)")):
        q.pause(*args)
    assert q.pauses() == []


@pytest.mark.any_backend
def test_a_second_pause_keeps_its_start_and_takes_the_new_end(cq: tuple[Queue, Clock]) -> None:
    q, clock = cq
    first = q.pause("reports", reason="a")
    clock.advance(60)
    second = q.pause("reports", NOW + timedelta(hours=1), reason="b", by="ops")
    assert second.paused_at == first.paused_at == NOW
    assert (second.until, second.reason, second.by) == (NOW + timedelta(hours=1), "b", "ops")
    clock.advance(3600)  # ended: a new pause starts anew
    third = q.pause("reports")
    assert third.paused_at == clock() and third.until is None


# -- the plans -------------------------------------------------------------------------------


def _plan(q: Queue, stmt: Any) -> str:
    """What the server says it does for ``stmt`` (SQLite: EXPLAIN QUERY PLAN; MariaDB: EXPLAIN,
    the keys and extras of each row)."""
    compiled = stmt.compile(q.engine, compile_kwargs={"render_postcompile": True})
    with q.engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if q.engine.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + str(compiled),
                        [compiled.params[k] for k in compiled.positiontup or []])
            return " | ".join(str(r[-1]) for r in cur.fetchall())
        cur.execute("EXPLAIN " + str(compiled), compiled.params)
        names = [d[0] for d in cur.description]
        return " | ".join(f"{row['type']} {row['key']} {row['Extra']}" for row in
                          (dict(zip(names, r, strict=True)) for r in cur.fetchall()))


def test_the_reads_a_pause_adds_walk_their_index(cq: tuple[Queue, Clock]) -> None:
    """Over every queue with more queues than ``MAX_SPLIT``, the claim walks
    ``ix_queue_claim_any`` in order with ``queue NOT IN (...)`` as a filter (no sort); the
    queues with pending rows are found by one seek each in an index on (status, queue, ...)
    (``ix_queue_claim`` or ``ix_queue_due``: the planner's pick)."""
    from cronqueue.store.claims import claim_index, claim_top
    from cronqueue.store.pauses import _next_pending_queue

    q, clock = cq
    q.add_many([{"taskscript": "t.sh", "param": i, "queue": f"q{i % 5}", "priority": i % 3}
                for i in range(300)])
    backend = Claimer(q.engine, Owner("h", 1, 1), shard=0, total=1, queues=None,
                      lease=LEASE).backend
    top = backend.by_index(claim_top(shard=0, total=2, queue=None, now=clock(), limit=10,
                                     passed=[], paused=["q1", "q3"]), queue_table,
                         claim_index(None))
    plan = _plan(q, top)
    assert "ix_queue_claim_any" in plan and "TEMP B-TREE" not in plan.upper() \
        and "filesort" not in plan, plan
    seek = _plan(q, _next_pending_queue().params(after="q1"))
    assert any(f" {index} " in f" {seek} " for index in ("ix_queue_claim", "ix_queue_due")) \
        and "filesort" not in seek and "TEMP B-TREE" not in seek.upper(), seek
    if q.engine.dialect.name == "sqlite":
        assert "COVERING INDEX" in seek and "(status=? AND queue>?)" in seek, seek
    else:
        assert seek.startswith("range ") and "Using index" in seek, seek
