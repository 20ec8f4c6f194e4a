"""The claim: who gets which rows, in which order, and that no row is ever handed out twice."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from cronqueue import Queue, Status
from cronqueue.model import Task
from cronqueue.process.identity import Owner, host_identity
from cronqueue.store.claims import Claimer
from cronqueue.store.engine import make_engine
from cronqueue.store.outcomes import Finish, Flush, Outcomes
from cronqueue.store.schema import metadata

NOW = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
LEASE = timedelta(minutes=5)


@pytest.fixture
def cq(db_url: str, task_dir: Path, log_dir: Path) -> Iterator[Queue]:
    q = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir), clock=lambda: NOW)
    q.init_db()
    yield q
    q.close()


def claimer(engine: Engine, *, shard: int = 0, total: int = 1,
            queues: list[str] | None = None) -> Claimer:
    return Claimer(engine, Owner.me(), shard=shard, total=total, queues=queues, lease=LEASE)


def order_key(task: Task) -> tuple[int, int]:
    return (-task.priority, task.id)


def test_shard_gets_exactly_its_rows(cq: Queue) -> None:
    ids = cq.add_many([("job.sh", i) for i in range(40)])
    for total in (3, 4):
        seen: set[int] = set()
        for shard in range(total):
            claim = claimer(cq.engine, shard=shard, total=total).claim(1000, NOW)
            got = {t.id for t in claim.tasks}
            expected = {i for i in ids if i % total == shard and i not in seen}
            assert got == expected
            assert all(t.id % total == shard for t in claim.tasks)
            seen |= got
        assert seen == set(ids)
        # Give everything back for the next total.
        with cq.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE queue SET status = 0, claim_token = NULL")


def test_single_shard_gets_everything(cq: Queue) -> None:
    ids = cq.add_many([("job.sh", i) for i in range(10)])
    claim = claimer(cq.engine).claim(100, NOW)
    assert [t.id for t in claim.tasks] == ids


def test_priority_then_fifo_order(cq: Queue) -> None:
    priorities = [0, 5, -3, 5, 10, -3, 0, -10, 2**31 - 1, -(2**31)]
    ids = [cq.add("job.sh", i, priority=p) for i, p in enumerate(priorities)]
    by_id = dict(zip(ids, priorities, strict=True))
    expected = sorted(ids, key=lambda i: (-by_id[i], i))
    c = claimer(cq.engine)
    got: list[int] = []
    for _ in range(4):
        claim = c.claim(3, NOW)
        assert [t.id for t in claim.tasks] == sorted((t.id for t in claim.tasks),
                                                       key=lambda i: (-by_id[i], i))
        got.extend(t.id for t in claim.tasks)
    assert got == expected
    assert c.claim(3, NOW).tasks == []


def test_priority_order_within_a_shard(cq: Queue) -> None:
    priorities = [1, 3, 2, 3, 1, 2, 0, 9, 9, -1, 4, 4]
    ids = [cq.add("job.sh", i, priority=p) for i, p in enumerate(priorities)]
    by_id = dict(zip(ids, priorities, strict=True))
    for shard in range(2):
        mine = [i for i in ids if i % 2 == shard]
        claim = claimer(cq.engine, shard=shard, total=2).claim(2, NOW)
        assert [t.id for t in claim.tasks] == sorted(mine, key=lambda i: (-by_id[i], i))[:2]


def test_future_run_at_waits_until_now_passes_it(cq: Queue) -> None:
    due_id = cq.add("job.sh", "due")
    later = cq.add("job.sh", "later", run_at=NOW + timedelta(seconds=60), priority=100)
    c = claimer(cq.engine)
    assert [t.id for t in c.claim(10, NOW).tasks] == [due_id]
    assert c.claim(10, NOW).tasks == []
    assert c.claim(10, NOW + timedelta(seconds=59, microseconds=999999)).tasks == []
    assert cq.get(later).status is Status.PENDING  # type: ignore[union-attr]
    assert [t.id for t in c.claim(10, NOW + timedelta(seconds=60, microseconds=1)).tasks] == [
        later]


def test_claimed_row_is_marked(cq: Queue) -> None:
    task_id = cq.add("job.sh", {"a": 1})
    claim = claimer(cq.engine).claim(5, NOW)
    assert len(claim.token) >= 16
    [returned] = claim.tasks
    task = cq.get(task_id)
    assert task is not None
    for t in (returned, task):
        assert t.id == task_id
        assert t.status is Status.RUNNING
        assert t.claim_token == claim.token
        assert t.worker_host == host_identity()
        assert t.worker_pid == os.getpid()
        assert t.lease_until == NOW + LEASE
        assert t.started_at is None
        assert t.attempts == 0
    assert task.param == '{"a":1}'
    assert task.worker_pid_start == Owner.me().pid_start
    # A running row is not claimable again.
    assert claimer(cq.engine).claim(5, NOW + timedelta(days=1)).tasks == []


def test_two_claimers_same_shard_sequential_disjoint(cq: Queue) -> None:
    ids = cq.add_many([("job.sh", i) for i in range(12)])
    one, two = claimer(cq.engine), claimer(make_engine(cq.config.db_url))
    try:
        a = [t.id for t in one.claim(5, NOW).tasks]
        b = [t.id for t in two.claim(5, NOW).tasks]
        c = [t.id for t in one.claim(5, NOW).tasks]
        d = two.claim(5, NOW).tasks
    finally:
        two.engine.dispose()
    assert a == ids[:5]
    assert b == ids[5:10]
    assert c == ids[10:]
    assert d == []


def test_concurrent_claimers_never_overlap(cq: Queue) -> None:
    ids = cq.add_many([("job.sh", i) for i in range(500)])
    threads_n, batch = 8, 7
    barrier = threading.Barrier(threads_n)
    results: list[list[list[int]]] = [[] for _ in range(threads_n)]
    tokens: list[set[str]] = [set() for _ in range(threads_n)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        engine = make_engine(cq.config.db_url)
        try:
            c = claimer(engine)
            barrier.wait(timeout=30)
            empty = 0
            while empty < 3:  # a SKIP LOCKED claimer may briefly see only locked rows
                claim = c.claim(batch, NOW)
                if not claim.tasks:
                    empty += 1
                    continue
                assert len(claim.tasks) <= batch
                assert all(t.claim_token == claim.token for t in claim.tasks)
                results[n].append([t.id for t in claim.tasks])
                tokens[n].add(claim.token)
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    claimed = [i for per_thread in results for batch_ids in per_thread for i in batch_ids]
    assert len(claimed) == len(set(claimed)), "a row was claimed twice"
    assert set(claimed) == set(ids)
    assert sum(len(t) for t in tokens) == sum(len(r) for r in results)
    # The database agrees: every row is RUNNING under the token of the thread that got it.
    owner = {i: n for n, per in enumerate(results) for b in per for i in b}
    for task in cq.list(limit=1000):
        assert task.status is Status.RUNNING
        assert task.claim_token in tokens[owner[task.id]]


def test_queue_filter_merges_by_priority(cq: Queue) -> None:
    spec = [("a", 1), ("c", 50), ("b", 3), ("a", 3), ("c", 9), ("b", -1), ("a", 7), ("b", 7),
            ("c", 0), ("a", -5)]
    ids = [cq.add("job.sh", i, queue=q, priority=p) for i, (q, p) in enumerate(spec)]
    info = dict(zip(ids, spec, strict=True))
    ab = [i for i in ids if info[i][0] in ("a", "b")]
    expected = sorted(ab, key=lambda i: (-info[i][1], i))
    c = claimer(cq.engine, queues=["a", "b"])
    first = [t.id for t in c.claim(3, NOW).tasks]
    assert first == expected[:3]
    rest = [t.id for t in c.claim(100, NOW).tasks]
    assert rest == expected[3:]
    assert c.claim(100, NOW).tasks == []
    for i in ids:
        task = cq.get(i)
        assert task is not None
        assert task.status is (Status.PENDING if info[i][0] == "c" else Status.RUNNING)
    only_c = [t.id for t in claimer(cq.engine, queues=["c"]).claim(100, NOW).tasks]
    assert only_c == sorted((i for i in ids if info[i][0] == "c"), key=lambda i: -info[i][1])


def test_queue_filter_with_shards(cq: Queue) -> None:
    ids = [cq.add("job.sh", i, queue="a" if i % 3 else "b") for i in range(18)]
    queue_of = {i: ("a" if n % 3 else "b") for n, i in enumerate(ids)}
    got = {t.id for t in claimer(cq.engine, shard=1, total=2, queues=["b"]).claim(100, NOW).tasks}
    assert got == {i for i in ids if i % 2 == 1 and queue_of[i] == "b"}


def test_release_unstarted(cq: Queue) -> None:
    ids = cq.add_many([("job.sh", i) for i in range(4)])
    repo = Outcomes(cq.engine)
    claim = claimer(cq.engine).claim(3, NOW)
    assert [t.id for t in claim.tasks] == ids[:3]
    started = repo.flush(Flush(claim.token, mark=[ids[0]], now=NOW, lease_until=NOW + LEASE))
    assert started.marked == {ids[0]}
    assert repo.release_unstarted(claim.token) == 2
    assert repo.release_unstarted(claim.token) == 0
    first = cq.get(ids[0])
    assert first is not None
    assert first.status is Status.RUNNING and first.attempts == 1 and first.started_at == NOW
    for task_id in ids[1:3]:
        task = cq.get(task_id)
        assert task is not None
        assert task.status is Status.PENDING
        assert task.attempts == 0
        assert task.claim_token is None
    # Released rows are claimable again, in order.
    assert [t.id for t in claimer(cq.engine).claim(10, NOW).tasks] == ids[1:]
    # The released claim's token is dead: it can neither start nor finish those rows.
    dead = repo.flush(Flush(claim.token, [Finish(ids[1], claim.token, {"status": 1})],
                            mark=[ids[2]], now=NOW, lease_until=NOW + LEASE))
    assert dead.recorded == set() and dead.marked == set()


def test_fencing_wrong_token_changes_nothing(cq: Queue) -> None:
    task_id = cq.add("job.sh")
    repo = Outcomes(cq.engine)
    claim = claimer(cq.engine).claim(1, NOW)
    before = cq.get(task_id)
    assert before is not None and before.status is Status.RUNNING
    wrong = "0" * 32
    assert wrong != claim.token
    forged = Finish(task_id, wrong, {"status": int(Status.DONE), "exit_code": 0,
                                     "finished_at": NOW, "output": "forged"})
    result = repo.flush(Flush(wrong, [forged], mark=[task_id], now=NOW,
                              lease_until=NOW + LEASE))
    assert result.recorded == set() and result.marked == set()
    assert repo.record(forged) is False
    assert cq.get(task_id) == before
    assert repo.flush(Flush(claim.token, mark=[task_id], now=NOW,
                            lease_until=NOW + LEASE)).marked == {task_id}
    assert repo.flush(Flush(claim.token, [Finish(task_id, claim.token, {
        "status": int(Status.DONE), "finished_at": NOW})])).recorded == {task_id}
    after = cq.get(task_id)
    assert after is not None and after.status is Status.DONE
    # A finished row is no longer ours either.
    assert repo.record(Finish(task_id, claim.token, {"status": int(Status.FAILED)})) is False
    assert cq.get(task_id).status is Status.DONE  # type: ignore[union-attr]


# -- property: sequential interleavings of two claimers ---------------------------------------

_op = st.one_of(
    st.tuples(st.just("add"), st.integers(-3, 3), st.booleans()),
    st.tuples(st.just("claim"), st.integers(0, 1), st.integers(1, 5)),
)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(total=st.integers(1, 3), shards=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       initial=st.lists(st.tuples(st.integers(-3, 3), st.booleans()), max_size=15),
       ops=st.lists(_op, max_size=20))
def test_property_claims_are_top_k_and_exclusive(
        backend: str, db_url: str, total: int, shards: tuple[int, int],
        initial: list[tuple[int, bool]], ops: list[tuple[object, int, object]]) -> None:
    tmp = None
    if backend == "sqlite":
        tmp = tempfile.mkdtemp(prefix="cq_prop_")
        url = f"sqlite:///{tmp}/queue.db"
    else:
        url = db_url
    q = Queue(url, task_dir=tmp or ".", clock=lambda: NOW)
    try:
        if backend != "sqlite":
            metadata.drop_all(q.engine)
        q.init_db()
        claimers = [claimer(q.engine, shard=s % total, total=total) for s in shards]
        pending: dict[int, tuple[int, bool]] = {}  # id -> (priority, due)
        claimed: set[int] = set()

        def add(priority: int, due: bool) -> None:
            run_at = NOW if due else NOW + timedelta(hours=1)
            task_id = q.add("job.sh", priority=priority, run_at=run_at)
            assert task_id not in pending and task_id not in claimed
            pending[task_id] = (priority, due)

        for priority, due in initial:
            add(priority, due)
        for op in ops:
            if op[0] == "add":
                add(int(op[1]), bool(op[2]))
                continue
            c = claimers[int(op[1])]
            k = int(op[2])  # type: ignore[call-overload]
            eligible = [i for i, (_, due) in pending.items()
                        if due and (total == 1 or i % total == c.shard)]
            expected = sorted(eligible, key=lambda i: (-pending[i][0], i))[:k]
            got = [t.id for t in c.claim(k, NOW).tasks]
            assert got == expected
            assert not claimed & set(got)
            claimed |= set(got)
            for i in got:
                del pending[i]
        # The database agrees with the model.
        for task in q.list(limit=1000):
            assert task.status is (Status.RUNNING if task.id in claimed else Status.PENDING)
    finally:
        q.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
