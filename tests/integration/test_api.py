"""The public ``Queue`` API against a real database (SQLite and MariaDB, a fresh one per test)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from cronqueue import InvalidTask, InvalidTransition, Queue, Status, TaskNotFound
from cronqueue.config import load_config
from cronqueue.process.identity import Owner
from cronqueue.shard.loop import Shard
from cronqueue.store.claims import Claimer
from cronqueue.store.schema import queue_table
from tests.conftest import Clock
from tests.helpers import write_script

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)








def count_rows(q: Queue) -> int:
    with q.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(queue_table)).scalar_one())


def run_shard(db_url: str, task_dir: Path, log_dir: Path, clock: Any = None, **worker: Any):
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      **worker)
    kwargs = {} if clock is None else {"clock": clock}
    return Shard(cfg, **kwargs).run()


def is_utc_aware(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- add / get ------------------------------------------------------------------------------


def test_add_returns_increasing_ids(queue: Queue) -> None:
    ids = [queue.add("job.sh", i) for i in range(5)]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert count_rows(queue) == 5


def test_get_defaults(cq: Queue, clock: Clock) -> None:
    task_id = cq.add("job.sh")
    task = cq.get(task_id)
    assert task is not None
    assert task.id == task_id
    assert task.status is Status.PENDING
    assert task.taskscript == "job.sh"
    assert task.param == "null"
    assert task.args is None
    assert task.priority == 0
    assert task.queue == "default"
    assert task.attempts == 0
    assert task.max_attempts is None
    assert task.timeout is None
    assert task.unique_key is None
    assert task.claim_token is None
    assert task.started_at is None and task.finished_at is None
    assert is_utc_aware(task.ctime) and is_utc_aware(task.run_at)
    # Microseconds survive on both backends.
    assert task.ctime == clock.now
    assert task.run_at == clock.now


def test_get_unknown_id_is_none(queue: Queue) -> None:
    assert queue.get(12345) is None


def test_get_with_real_clock_is_recent_utc(queue: Queue) -> None:
    before = datetime.now(UTC)
    task = queue.get(queue.add("job.sh"))
    after = datetime.now(UTC)
    assert task is not None
    assert is_utc_aware(task.ctime)
    assert before - timedelta(seconds=1) <= task.ctime <= after + timedelta(seconds=1)
    assert task.run_at == task.ctime


def test_add_stores_options(cq: Queue, clock: Clock) -> None:
    at = datetime(2032, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2)))
    a = cq.add("a.sh", {"x": 1}, priority=7, queue="mail", run_at=at, max_attempts=5,
               timeout=30)
    b = cq.add("b.sh", [1, 2], priority=-4, delay=90)
    c = cq.add("c.sh", "s", delay=timedelta(minutes=2, microseconds=5))
    ta, tb, tc = cq.get(a), cq.get(b), cq.get(c)
    assert ta is not None and tb is not None and tc is not None
    assert (ta.priority, ta.queue, ta.max_attempts, ta.timeout) == (7, "mail", 5, 30)
    assert ta.run_at == at
    assert is_utc_aware(ta.run_at)
    assert ta.args == {"x": 1}
    assert tb.priority == -4
    assert tb.run_at == clock.now + timedelta(seconds=90)
    assert tb.args == [1, 2]
    assert tc.run_at == clock.now + timedelta(minutes=2, microseconds=5)
    assert all(t.status is Status.PENDING for t in (ta, tb, tc))


BAD_INPUTS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("unserializable param", ("job.sh", {"a": object()}), {}),
    ("set param", ("job.sh", {1, 2}), {}),
    ("nan param", ("job.sh", float("nan")), {}),
    ("param too large", ("job.sh", "x" * 131070), {}),
    ("param too large in bytes", ("job.sh", "\u00e9" * 65535), {}),
    ("lone surrogate param", ("job.sh", "\ud800"), {}),
    ("absolute taskscript", ("/bin/sh",), {}),
    ("dotdot taskscript", ("../evil.sh",), {}),
    ("inner dotdot taskscript", ("a/../../evil.sh",), {}),
    ("hidden taskscript", (".hidden.sh",), {}),
    ("option-like taskscript", ("-rf",), {}),
    ("taskscript with space", ("a b.sh",), {}),
    ("taskscript with shell meta", ("a;rm.sh",), {}),
    ("empty taskscript", ("",), {}),
    ("taskscript not str", (42,), {}),
    ("malformed queue", ("job.sh",), {"queue": "bad queue"}),
    ("queue starting with dash", ("job.sh",), {"queue": "-q"}),
    ("empty queue", ("job.sh",), {"queue": ""}),
    ("queue too long", ("job.sh",), {"queue": "q" * 65}),
    ("naive run_at", ("job.sh",), {"run_at": datetime(2031, 1, 1)}),
    ("run_at as string", ("job.sh",), {"run_at": "2031-01-01T00:00:00+00:00"}),
    ("run_at and delay", ("job.sh",), {"run_at": T0, "delay": 5}),
    ("negative delay", ("job.sh",), {"delay": -1}),
    ("infinite delay", ("job.sh",), {"delay": float("inf")}),
    ("delay beyond the calendar", ("job.sh",), {"delay": 1e12}),
    ("delay beyond timedelta", ("job.sh",), {"delay": 1e20}),
    ("timedelta.max delay", ("job.sh",), {"delay": timedelta.max}),
    ("delay as string", ("job.sh",), {"delay": "5"}),
    ("priority as string", ("job.sh",), {"priority": "5"}),
    ("priority as bool", ("job.sh",), {"priority": True}),
    ("max_attempts zero", ("job.sh",), {"max_attempts": 0}),
    ("timeout zero", ("job.sh",), {"timeout": 0}),
    ("unique_key too long", ("job.sh",), {"unique_key": "k" * 192}),
    ("empty unique_key", ("job.sh",), {"unique_key": ""}),
]


@pytest.mark.any_backend  # refused before any statement
@pytest.mark.parametrize(("args", "kwargs"), [(a, k) for _, a, k in BAD_INPUTS],
                         ids=[name for name, _, _ in BAD_INPUTS])
def test_bad_input_raises_and_inserts_nothing(queue: Queue, args: tuple[Any, ...],
                                              kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidTask):
        queue.add(*args, **kwargs)
    assert count_rows(queue) == 0
    with pytest.raises(InvalidTask):
        queue.add_many([("ok.sh", 1), {"taskscript": args[0],
                                       **({"param": args[1]} if len(args) > 1 else {}),
                                       **kwargs}])
    assert count_rows(queue) == 0


def test_param_size_limit_counts_bytes(queue: Queue) -> None:
    # 131071 bytes serialized (2 quotes + 65534 two-byte characters + 1): the largest accepted.
    largest = "\u00e9" * 65534 + "a"
    task_id = queue.add("job.sh", largest)
    task = queue.get(task_id)
    assert task is not None
    assert len(task.param.encode("utf-8")) == 131071
    assert task.args == largest
    with pytest.raises(InvalidTask):
        queue.add("job.sh", largest + "a")
    assert count_rows(queue) == 1


ODD_PARAMS: list[Any] = [
    "'; DROP TABLE queue; --",
    'Robert"); DROP TABLE queue;-- \\ \\\\ \' " ` %s %(x)s ? :name $1',
    "back\\slash\\\\ and \\n not a newline",
    "emoji \U0001f600\U0001f4a9 and CJK \u4e2d\u6587 and RTL \u05e9\u05dc\u05d5\u05dd",
    "nul \x00 inside and control \x01\x1f\x7f",
    {"k'ey": ["\u0000", "\\u0000", "a\nb\tc\r\n"], "nested": {"q": "\"", "e": "\U0001f680"}},
    [1, -2.5, 1e300, True, False, None, "", [], {}],
    "%",
    "",
    0,
]


@pytest.mark.parametrize("param", ODD_PARAMS, ids=[f"p{i}" for i in range(len(ODD_PARAMS))])
def test_param_round_trips_exactly(queue: Queue, param: Any) -> None:
    expected = json.dumps(param, ensure_ascii=False, separators=(",", ":"))
    task_id = queue.add("job.sh", param)
    task = queue.get(task_id)
    assert task is not None
    assert task.param == expected
    assert task.param.encode("utf-8") == expected.encode("utf-8")
    assert task.args == param
    assert count_rows(queue) == 1  # the table survived the SQL metacharacters


def test_odd_but_allowed_names_round_trip(queue: Queue) -> None:
    key = "user:42/ü'\"; DROP TABLE queue; -- \\ \U0001f600"
    task_id = queue.add("a_b-c.d+e/f.py", {"x": 1}, queue="x:y.z-1", unique_key=key)
    task = queue.get(task_id)
    assert task is not None
    assert task.taskscript == "a_b-c.d+e/f.py"
    assert task.queue == "x:y.z-1"
    assert task.unique_key == key
    assert queue.add("a_b-c.d+e/f.py", {"x": 2}, queue="x:y.z-1", unique_key=key) == task_id
    assert count_rows(queue) == 1
    assert [t.id for t in queue.list(queue="x:y.z-1")] == [task_id]


def test_unique_key_is_exact_not_case_or_space_insensitive(queue: Queue) -> None:
    a = queue.add("job.sh", unique_key="Key")
    b = queue.add("job.sh", unique_key="key")
    c = queue.add("job.sh", unique_key="Key ")
    d = queue.add("job.sh", unique_key="Kéy")
    e = queue.add("job.sh", unique_key="Key\u0301")
    assert len({a, b, c, d, e}) == 5
    assert count_rows(queue) == 5


# -- add_many -------------------------------------------------------------------------------


def test_add_many_ids_in_input_order(queue: Queue) -> None:
    items: list[Any] = [("job.sh", i) for i in range(7)]
    items.append({"taskscript": "other.sh", "param": {"n": 7}, "priority": 3, "queue": "q2"})
    ids = queue.add_many(items)
    assert len(ids) == 8 and len(set(ids)) == 8
    for i, task_id in enumerate(ids[:7]):
        task = queue.get(task_id)
        assert task is not None and task.args == i
    last = queue.get(ids[7])
    assert last is not None
    assert (last.taskscript, last.args, last.priority, last.queue) == ("other.sh", {"n": 7}, 3,
                                                                       "q2")
    assert queue.add_many([]) == []


def test_add_many_stores_exactly_what_add_stores(queue: Queue) -> None:
    """add_many takes a bulk path (multi-row INSERT ... RETURNING) and add() a direct one (a
    pooled driver connection): every column must come out the same, for every odd param,
    secret and option."""
    run_at = datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
    items: list[dict[str, Any]] = []
    for n, param in enumerate(ODD_PARAMS):
        items.append({"taskscript": "job.sh", "param": param, "priority": n - 5,
                      "queue": f"q{n % 3}", "run_at": run_at + timedelta(microseconds=n),
                      "max_attempts": (n % 4) or None, "timeout": (n % 5) or None,
                      "secret": None if n % 2 else f"s\x00\x01'\"\\ \u00e9\U0001f600 {n}"})
    items.append({"taskscript": "big.sh", "param": "x" * 100_000, "run_at": run_at})  # slow path
    one_by_one = [queue.add(**item) for item in items]
    in_bulk = queue.add_many(items)
    assert in_bulk == sorted(in_bulk) and in_bulk[0] > one_by_one[-1]
    skip = {"id", "ctime"}
    for a, b in zip(one_by_one, in_bulk, strict=True):
        task_a, task_b = queue.get(a), queue.get(b)
        assert task_a is not None and task_b is not None
        assert {k: v for k, v in task_a.as_dict().items() if k not in skip} == \
            {k: v for k, v in task_b.as_dict().items() if k not in skip}
        assert task_a.secret == task_b.secret


def test_add_many_large_batch(queue: Queue) -> None:
    ids = queue.add_many([("job.sh", i) for i in range(2500)])
    assert len(set(ids)) == 2500
    assert count_rows(queue) == 2500
    for i in (0, 999, 1000, 1001, 2499):
        task = queue.get(ids[i])
        assert task is not None and task.args == i


def test_add_many_bad_item_inserts_nothing(queue: Queue) -> None:
    items = [("job.sh", 1), {"taskscript": "job.sh", "unique_key": "u1"}, ("../x.sh", 2),
             ("job.sh", 3)]
    with pytest.raises(InvalidTask, match="item 2"):
        queue.add_many(items)
    assert count_rows(queue) == 0
    with pytest.raises(InvalidTask):
        queue.add_many([("job.sh", 1), {"taskscript": "job.sh", "bogus": 1}])
    assert count_rows(queue) == 0
    # The unique key of the rejected batch was not taken.
    first = queue.add("job.sh", unique_key="u1")
    assert queue.get(first) is not None


def test_add_many_mixes_unique_and_plain(queue: Queue) -> None:
    existing = queue.add("job.sh", "old", unique_key="k1")
    items: list[Any] = [
        ("job.sh", "p0"),
        {"taskscript": "job.sh", "param": "u-k1", "unique_key": "k1"},
        ("job.sh", "p2"),
        {"taskscript": "job.sh", "param": "u-k2", "unique_key": "k2"},
        {"taskscript": "job.sh", "param": "u-k2-again", "unique_key": "k2"},
        ("job.sh", "p5"),
    ]
    ids = queue.add_many(items)
    assert len(ids) == 6
    assert ids[1] == existing
    assert ids[3] == ids[4]
    assert len({ids[0], ids[2], ids[3], ids[5], existing}) == 5
    params = {i: queue.get(i).param for i in ids}  # type: ignore[union-attr]
    assert params[ids[0]] == '"p0"'
    assert params[ids[1]] == '"old"'
    assert params[ids[2]] == '"p2"'
    assert params[ids[3]] == '"u-k2"'
    assert params[ids[5]] == '"p5"'
    assert count_rows(queue) == 5


# -- unique_key -----------------------------------------------------------------------------


def test_unique_key_while_pending_returns_same_id(queue: Queue) -> None:
    first = queue.add("job.sh", 1, unique_key="report:2031-05-06")
    second = queue.add("job.sh", 2, unique_key="report:2031-05-06")
    assert second == first
    assert count_rows(queue) == 1
    task = queue.get(first)
    assert task is not None and task.args == 1
    other = queue.add("job.sh", 3, unique_key="report:2031-05-07")
    assert other != first
    assert count_rows(queue) == 2


def test_unique_key_while_running_returns_same_id(queue: Queue) -> None:
    first = queue.add("job.sh", unique_key="k")
    claim = Claimer(queue.engine, Owner.me(), shard=0, total=1, queues=None,
                    lease=timedelta(minutes=5)).claim(10, datetime.now(UTC))
    assert [t.id for t in claim.tasks] == [first]
    assert queue.add("job.sh", unique_key="k") == first
    assert count_rows(queue) == 1


def test_unique_key_free_again_after_done(db_url: str, task_dir: Path, log_dir: Path,
                                          queue: Queue) -> None:
    write_script(task_dir, "ok.sh", "exit 0\n")
    first = queue.add("ok.sh", unique_key="k")
    report = run_shard(db_url, task_dir, log_dir)
    assert report.done == 1
    task = queue.get(first)
    assert task is not None and task.status is Status.DONE
    second = queue.add("ok.sh", unique_key="k")
    assert second != first
    assert count_rows(queue) == 2
    assert queue.add("ok.sh", unique_key="k") == second
    assert count_rows(queue) == 2


def test_unique_key_free_again_after_failed(db_url: str, task_dir: Path, log_dir: Path,
                                            queue: Queue) -> None:
    write_script(task_dir, "bad.sh", "exit 4\n")
    first = queue.add("bad.sh", unique_key="k", max_attempts=1)
    assert run_shard(db_url, task_dir, log_dir).failed == 1
    second = queue.add("bad.sh", unique_key="k")
    assert second != first
    # Retrying the failed one while another task holds its key is refused.
    with pytest.raises(InvalidTransition):
        queue.retry(first)
    assert queue.retry_failed() == 0
    task = queue.get(first)
    assert task is not None and task.status is Status.FAILED


def test_unique_key_free_again_after_cancel(queue: Queue) -> None:
    first = queue.add("job.sh", unique_key="k")
    queue.cancel(first)
    second = queue.add("job.sh", unique_key="k")
    assert second != first
    assert count_rows(queue) == 2
    # The cancelled one cannot come back while the new one holds the key.
    with pytest.raises(InvalidTransition):
        queue.retry(first)
    queue.cancel(second)
    queue.retry(first)
    task = queue.get(first)
    assert task is not None and task.status is Status.PENDING
    assert queue.add("job.sh", unique_key="k") == first


# -- transactional enqueue ------------------------------------------------------------------


def test_add_in_caller_connection_rolled_back(queue: Queue) -> None:
    with queue.engine.connect() as conn, conn.begin() as tx:
        task_id = queue.add("job.sh", "tx", connection=conn)
        many = queue.add_many([("job.sh", 1), ("job.sh", 2)], connection=conn)
        tx.rollback()
    assert queue.get(task_id) is None
    assert all(queue.get(i) is None for i in many)
    assert count_rows(queue) == 0


def test_add_in_caller_connection_committed(queue: Queue) -> None:
    with queue.engine.connect() as conn:
        with conn.begin():
            task_id = queue.add("job.sh", "tx", connection=conn)
            # Not visible to others before the commit.
            assert queue.get(task_id) is None
        task = queue.get(task_id)
    assert task is not None and task.args == "tx" and task.status is Status.PENDING


def test_add_in_caller_connection_shares_their_transaction(queue: Queue) -> None:
    """The task and the caller's own write commit or roll back together."""
    with queue.engine.connect() as conn:
        with conn.begin() as tx:
            conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)"))
        with conn.begin() as tx:
            conn.execute(text("INSERT INTO orders (id) VALUES (1)"))
            rolled = queue.add("job.sh", {"order": 1}, connection=conn)
            tx.rollback()
        assert queue.get(rolled) is None
        with conn.begin():
            conn.execute(text("INSERT INTO orders (id) VALUES (2)"))
            kept = queue.add("job.sh", {"order": 2}, connection=conn)
        orders = [r[0] for r in conn.execute(text("SELECT id FROM orders"))]
        conn.rollback()
    assert orders == [2]
    # (SQLite may hand the rolled-back id out again, so compare contents, not ids.)
    assert [t.args for t in queue.list()] == [{"order": 2}]
    task = queue.get(kept)
    assert task is not None and task.args == {"order": 2}


def test_add_in_session_rolled_back_and_committed(queue: Queue) -> None:
    with Session(queue.engine) as session:
        gone = queue.add("job.sh", "s1", connection=session)
        session.rollback()
    assert queue.get(gone) is None
    with Session(queue.engine) as session:
        kept = queue.add("job.sh", "s2", connection=session)
        unique = queue.add("job.sh", "s3", unique_key="sess", connection=session)
        session.commit()
    assert queue.get(kept) is not None
    assert queue.get(unique) is not None
    assert count_rows(queue) == 2


# -- cancel / retry -------------------------------------------------------------------------


def test_cancel_pending(cq: Queue, clock: Clock) -> None:
    task_id = cq.add("job.sh")
    clock.advance(5)
    cq.cancel(task_id)
    task = cq.get(task_id)
    assert task is not None
    assert task.status is Status.CANCELLED
    assert task.finished_at == clock.now
    with pytest.raises(InvalidTransition):
        cq.cancel(task_id)


def test_cancel_and_retry_unknown_id(queue: Queue) -> None:
    with pytest.raises(TaskNotFound):
        queue.cancel(999)
    with pytest.raises(TaskNotFound):
        queue.retry(999)
    with pytest.raises(InvalidTask):
        queue.cancel(0)


def test_cancel_running_done_failed_is_invalid(db_url: str, task_dir: Path, log_dir: Path,
                                               queue: Queue) -> None:
    write_script(task_dir, "ok.sh", "exit 0\n")
    write_script(task_dir, "bad.sh", "exit 1\n")
    done = queue.add("ok.sh")
    failed = queue.add("bad.sh", max_attempts=1)
    report = run_shard(db_url, task_dir, log_dir)
    assert (report.done, report.failed) == (1, 1)
    running = queue.add("ok.sh")
    Claimer(queue.engine, Owner.me(), shard=0, total=1, queues=None,
            lease=timedelta(minutes=5)).claim(10, datetime.now(UTC))
    for task_id, status in ((done, Status.DONE), (failed, Status.FAILED),
                            (running, Status.RUNNING)):
        with pytest.raises(InvalidTransition):
            queue.cancel(task_id)
        task = queue.get(task_id)
        assert task is not None and task.status is status


def test_retry_failed_task(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                           clock: Clock) -> None:
    marker = task_dir / "fail-once"
    write_script(task_dir, "flaky.sh", "if [ -e fail-once ]; then exit 7; fi\nexit 0\n")
    write_script(task_dir, "ok.sh", "exit 0\n")
    marker.touch()
    task_id = cq.add("flaky.sh", max_attempts=2)
    run_shard(db_url, task_dir, log_dir, clock, backoff=1)
    clock.advance(10)
    run_shard(db_url, task_dir, log_dir, clock, backoff=1)
    task = cq.get(task_id)
    assert task is not None
    assert task.status is Status.FAILED and task.attempts == 2 and task.exit_code == 7
    with pytest.raises(InvalidTransition):
        cq.retry(cq.add("ok.sh"))  # a pending task cannot be retried
    clock.advance(10)
    cq.retry(task_id)
    task = cq.get(task_id)
    assert task is not None
    assert task.status is Status.PENDING
    assert task.attempts == 0
    assert task.run_at == clock.now
    assert task.claim_token is None
    marker.unlink()
    report = run_shard(db_url, task_dir, log_dir, clock)
    assert report.outcomes.get(task_id) == "done"
    task = cq.get(task_id)
    assert task is not None and task.status is Status.DONE and task.attempts == 1


def test_retry_failed_counts(db_url: str, task_dir: Path, log_dir: Path, queue: Queue) -> None:
    write_script(task_dir, "bad.sh", "exit 1\n")
    write_script(task_dir, "ok.sh", "exit 0\n")
    failed = [queue.add("bad.sh", i, max_attempts=1) for i in range(3)]
    done = queue.add("ok.sh")
    cancelled = queue.add("ok.sh", delay=3600)
    queue.cancel(cancelled)
    report = run_shard(db_url, task_dir, log_dir)
    assert (report.failed, report.done) == (3, 1)
    assert queue.retry_failed() == 3
    for task_id in failed:
        task = queue.get(task_id)
        assert task is not None and task.status is Status.PENDING and task.attempts == 0
    assert queue.get(done).status is Status.DONE  # type: ignore[union-attr]
    assert queue.get(cancelled).status is Status.CANCELLED  # type: ignore[union-attr]
    assert queue.retry_failed() == 0


def test_retry_failed_and_purge_beyond_one_chunk(cq: Queue, clock: Clock) -> None:
    ids = cq.add_many([("job.sh", i) for i in range(2500)])
    keep = cq.add("job.sh", "pending")
    with cq.engine.begin() as conn:
        conn.execute(update(queue_table).where(queue_table.c.id.in_(ids))
                     .values(status=int(Status.FAILED), finished_at=clock.now, active_key=None))
    assert cq.stats()["failed"] == 2500
    assert cq.retry_failed() == 2500
    assert cq.stats()["pending"] == 2501
    with cq.engine.begin() as conn:
        conn.execute(update(queue_table).where(queue_table.c.id.in_(ids))
                     .values(status=int(Status.CANCELLED), finished_at=clock.now))
    clock.advance(60)
    assert cq.purge(older_than=30) == 2500
    assert count_rows(cq) == 1
    assert cq.get(keep) is not None


# -- stats / purge --------------------------------------------------------------------------


def test_stats(cq: Queue, clock: Clock) -> None:
    empty = cq.stats()
    assert empty["total"] == 0 and empty["due"] == 0 and empty["queues"] == {}
    a1 = cq.add("job.sh", queue="a")
    cq.add("job.sh", queue="a")
    cq.add("job.sh", queue="b", delay=3600)
    cq.add("job.sh", queue="b")
    cq.cancel(a1)
    clock.advance(30)
    stats = cq.stats()
    assert stats["total"] == 4
    assert stats["pending"] == 3
    assert stats["cancelled"] == 1
    assert stats["done"] == stats["failed"] == stats["running"] == 0
    assert stats["due"] == 2
    assert stats["oldest_due_seconds"] == pytest.approx(30.0, abs=0.01)
    assert stats["queues"]["a"]["pending"] == 1
    assert stats["queues"]["a"]["cancelled"] == 1
    assert stats["queues"]["b"]["pending"] == 2
    assert stats["queues"]["b"]["cancelled"] == 0
    assert set(stats["queues"]) == {"a", "b"}
    clock.advance(3600)
    assert cq.stats()["due"] == 3


def test_purge_deletes_only_old_finished(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                                         clock: Clock) -> None:
    write_script(task_dir, "ok.sh", "exit 0\n")
    write_script(task_dir, "bad.sh", "exit 1\n")
    old_cancelled = cq.add("ok.sh", delay=10**6)
    cq.cancel(old_cancelled)
    old_done = cq.add("ok.sh")
    old_failed = cq.add("bad.sh", max_attempts=1)
    retrying = cq.add("bad.sh", max_attempts=5)  # pending again, waiting for its backoff
    run_shard(db_url, task_dir, log_dir, clock, backoff=3600)
    assert cq.get(retrying).status is Status.PENDING  # type: ignore[union-attr]
    old_pending = cq.add("ok.sh", delay=10**6)
    clock.advance(86400)
    recent = cq.add("ok.sh", delay=10**6)
    cq.cancel(recent)
    clock.advance(3600)

    assert cq.purge(older_than=timedelta(days=2)) == 0
    assert cq.purge(older_than=timedelta(hours=2)) == 3
    for gone in (old_cancelled, old_done, old_failed):
        assert cq.get(gone) is None
    for kept in (retrying, old_pending, recent):
        assert cq.get(kept) is not None
    assert cq.purge(older_than=7200.0) == 0
    assert cq.purge(older_than=0) == 1
    assert cq.get(recent) is None
    assert count_rows(cq) == 2
    with pytest.raises(InvalidTask):
        cq.purge(older_than=-1)


# -- rows written by other languages --------------------------------------------------------


def test_plain_sql_insert_is_a_valid_pending_task(db_url: str, task_dir: Path, log_dir: Path,
                                                  queue: Queue) -> None:
    write_script(task_dir, "hello.sh", 'printf "%s" "$1" > seen.txt\n')
    param = '{"from":"php","s":"\'; --"}'
    with queue.engine.begin() as conn:
        conn.execute(text("INSERT INTO queue (taskscript, param) VALUES (:t, :p)"),
                     {"t": "hello.sh", "p": param})
    task_id = queue.list()[0].id
    task = queue.get(task_id)
    assert task is not None
    assert task.status is Status.PENDING
    assert (task.priority, task.queue, task.attempts) == (0, "default", 0)
    assert task.max_attempts is None and task.timeout is None and task.unique_key is None
    assert is_utc_aware(task.ctime) and is_utc_aware(task.run_at)
    now = datetime.now(UTC)
    assert abs((task.ctime - now).total_seconds()) < 300
    assert task.args == {"from": "php", "s": "'; --"}
    assert queue.stats()["due"] == 1
    report = run_shard(db_url, task_dir, log_dir)
    assert report.done == 1
    task = queue.get(task_id)
    assert task is not None and task.status is Status.DONE
    assert (task_dir / "seen.txt").read_text() == param
