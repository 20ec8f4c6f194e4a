"""The storage seam's contract: what every backend (``cronqueue/store/backends``) must do, each
capability exercised against a real database of that backend (SQLite and MariaDB here, through
the ``backend``/``db_url`` fixtures of ``tests/conftest.py``).

A new database is one new backend module plus this suite passing on it: the claim, the group
commit, the guard and the inserts rely on nothing else. Where a test needs a backend-specific
way to provoke something (a lock wait, a killed connection), ``_PROVOKE`` says how per backend.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, func, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from cronqueue.errors import InvalidTask
from cronqueue.process.identity import Owner
from cronqueue.spec import build_spec
from cronqueue.store.backends import BACKENDS, Backend, NotSupported, backend_for, supported
from cronqueue.store.backends.mysql import MysqlBackend
from cronqueue.store.backends.sqlite import SqliteBackend
from cronqueue.store.claims import Claimer
from cronqueue.store.database import Store
from cronqueue.store.engine import is_transient, is_unavailable, make_engine
from cronqueue.store.enqueue import Inserter
from cronqueue.store.schema import ddl_metadata
from cronqueue.store.schema import queue_table as q
from cronqueue.store.workers import ServerLock
from tests.helpers import wait_until

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
MiB = 1 << 20
EXPECTED = {"sqlite": SqliteBackend, "mariadb": MysqlBackend}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    ddl_metadata().create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def seam(engine: Engine) -> Backend:
    with engine.connect():  # the dialect learns the server's version
        pass
    return backend_for(engine)


def _specs(count: int, **kw: Any) -> list[Any]:
    return [build_spec("t.sh", n, now=NOW, **kw) for n in range(count)]


def _params(engine: Engine, ids: list[int]) -> list[Any]:
    with engine.connect() as conn:
        rows = dict(conn.execute(select(q.c.id, q.c.param).where(q.c.id.in_(ids))).all())
    return [json.loads(rows[i]) for i in ids]


# -- the registry -----------------------------------------------------------------------------


def test_backend_for_finds_the_backend_of_an_engine_and_of_a_name(backend: str,
                                                                  engine: Engine) -> None:
    found = backend_for(engine)
    assert type(found) is EXPECTED[backend]
    assert backend_for(engine.dialect) is found
    assert backend_for(found.dialects[0]) is found
    assert set(supported()) == {d for b in BACKENDS for d in b.dialects}
    with pytest.raises(ValueError, match="unsupported database 'postgresql'"):
        backend_for("postgresql")


# -- engine set-up ----------------------------------------------------------------------------


def test_the_engine_reads_only_committed_rows_and_writers_take_their_lock_up_front(
        engine: Engine, seam: Backend) -> None:
    """What the claim's reasoning rests on: a reader never sees another transaction's
    uncommitted claim; with ``serialized_writers`` a write transaction holds the database's
    write lock from its start (so a second writer cannot even begin)."""
    with engine.begin() as conn:
        conn.execute(q.insert(), {"taskscript": "t.sh", "param": "1"})
    writer = engine.connect()
    try:
        writer.begin()
        writer.execute(update(q).values(status=2))
        with engine.connect().execution_options(cq_readonly=True) as reader:
            assert reader.execute(select(q.c.status)).scalar_one() == 0
        other = engine.connect().execution_options(cq_readonly=False)
        try:
            if seam.serialized_writers:
                _sqlite_short_busy_timeout(other)
                with pytest.raises(OperationalError) as info:
                    other.begin()
                assert seam.is_transient(info.value)
            else:
                other.begin()  # a second writer begins at once
                other.rollback()
        finally:
            other.close()
    finally:
        writer.rollback()
        writer.close()


# -- skip locked / the claim ------------------------------------------------------------------


def test_skip_locked_passes_over_rows_another_transaction_holds(engine: Engine,
                                                                seam: Backend) -> None:
    with engine.begin() as conn:
        conn.execute(q.insert(), [{"taskscript": "t.sh", "param": str(n)} for n in range(10)])
    if not seam.skip_locked(engine.dialect):
        assert seam.serialized_writers, "without SKIP LOCKED, claimers must be serialized"
        return
    pick = select(q.c.id).order_by(q.c.id).limit(4).with_for_update(skip_locked=True)
    first, second = engine.connect(), engine.connect()
    try:
        _PROVOKE[seam.name]["short_lock_wait"](second)
        first.begin()
        mine = list(first.execute(pick).scalars())
        second.begin()
        theirs = list(second.execute(pick).scalars())  # no wait: would time out otherwise
        assert len(mine) == len(theirs) == 4
        assert not set(mine) & set(theirs)
    finally:
        first.rollback()
        second.rollback()
        first.close()
        second.close()


def test_concurrent_claims_never_overlap(db_url: str, engine: Engine) -> None:
    """Four claimers, each on its own engine, claim batches of 7 at once until nothing is
    left: every row is claimed exactly once, whichever claim strategy the backend allows."""
    total = 300
    Store(engine).tasks.add(_specs(total), NOW)
    claimed: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def claimer(n: int) -> None:
        eng = make_engine(db_url)
        try:
            mine: list[int] = []
            c = Claimer(eng, Owner("h", 100 + n, 1), shard=0, total=1, queues=None,
                        lease=timedelta(seconds=60))
            start.wait()
            while batch := c.claim(7, NOW + timedelta(seconds=1)).tasks:
                mine += [t.id for t in batch]
            claimed.append(mine)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    every = [i for mine in claimed for i in mine]
    assert len(every) == total and len(set(every)) == total
    with engine.connect() as conn:
        assert conn.execute(select(q.c.id).where(q.c.status != 2)).first() is None


# -- RETURNING or its fallback ----------------------------------------------------------------


class _Without:
    """A backend with some capabilities switched off: the fallback forms are exercised on
    every backend too."""

    def __init__(self, real: Backend, *, returning: bool = False) -> None:
        self.real, self.ret = real, returning

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def returning(self, dialect: Any) -> bool:
        return self.ret and self.real.returning(dialect)


@pytest.mark.parametrize("form", ["best", "one-by-one"])
def test_inserted_ids_come_back_in_input_order(db_url: str, engine: Engine, seam: Backend,
                                               form: str) -> None:
    """Each insert form gives the ids in input order, while another session inserts at the
    same time (its ids may land between ours)."""
    used: Any = {"best": seam, "one-by-one": _Without(seam)}[form]
    inserter = Inserter(used)
    stop = threading.Event()
    other = make_engine(db_url)

    def interleave() -> None:
        while not stop.is_set():
            with other.begin() as conn:
                conn.execute(q.insert(), {"taskscript": "other.sh", "param": "-1"})

    thread = threading.Thread(target=interleave)
    thread.start()
    try:
        specs = _specs(2500 if form != "one-by-one" else 300)
        with engine.begin() as conn:
            ids = inserter.insert(conn, specs, NOW)
    finally:
        stop.set()
        thread.join(30)
        other.dispose()
    assert len(set(ids)) == len(specs)
    assert _params(engine, ids) == list(range(len(specs)))


_ADD_MANY = """
import json, sys
from datetime import UTC, datetime
from cronqueue.spec import build_spec
from cronqueue.store.database import Store
from cronqueue.store.engine import make_engine
url, me, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
now = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
tasks = Store(make_engine(url)).tasks
print("ready", flush=True)
sys.stdin.readline()
ids = []
for b in range(batches):
    ids += tasks.add([build_spec("t.sh", {"p": me, "b": b, "i": i}, now=now)
                      for i in range(rows)], now)
print(json.dumps(ids), flush=True)
"""


def test_add_many_from_two_processes_gets_each_row_its_own_id(db_url: str,
                                                              engine: Engine) -> None:
    """Two processes bulk-insert at once, in batches larger than one statement: the ids each
    is given are those of its own rows, in its input order (read back from the table)."""
    batches, rows = 4, 2300  # 3 statements a batch: the cuts are crossed
    procs = [subprocess.Popen([sys.executable, "-c", _ADD_MANY, db_url, str(me), str(batches),
                               str(rows)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for me in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:  # both start together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    got = [json.loads(out) for out in outs]
    for me, ids in enumerate(got):
        assert len(ids) == batches * rows
        assert _params(engine, ids) == [{"p": me, "b": b, "i": i}
                                        for b in range(batches) for i in range(rows)]
    assert len(set(got[0]) | set(got[1])) == 2 * batches * rows
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(q)).scalar_one() == \
            2 * batches * rows


def test_identical_and_duplicate_rows_in_one_batch(engine: Engine) -> None:
    """Identical plain rows each get their own id, increasing in input order, across the
    statement cut; a unique key given twice in one batch names the first row both times."""
    tasks = Store(engine).tasks
    same = build_spec("t.sh", {"x": 1}, now=NOW)
    keyed = build_spec("t.sh", {"x": 2}, unique_key="k", now=NOW)
    specs = [same] * 1200 + [keyed, same, keyed] + [same] * 1300
    ids = tasks.add(specs, NOW)
    plain = [*ids[:1200], ids[1201], *ids[1203:]]
    assert plain == sorted(plain) and len(set(plain)) == len(plain) == 2501
    assert ids[1200] == ids[1202] and ids[1200] not in plain
    with engine.connect() as conn:
        stored = dict(conn.execute(select(q.c.id, q.c.param)).all())
    assert len(stored) == 2502
    assert {stored[i] for i in plain} == {'{"x":1}'} and stored[ids[1200]] == '{"x":2}'


# -- statement size ---------------------------------------------------------------------------


def test_max_statement_bytes_is_the_servers_limit(engine: Engine, seam: Backend) -> None:
    with engine.connect() as conn:
        limit = seam.max_statement_bytes(conn)
        expected = _PROVOKE[seam.name]["statement_limit"](conn)
    assert limit == expected


def test_bulk_insert_splits_by_max_statement_size(engine: Engine, seam: Backend) -> None:
    """With a limit of 256 KiB (as if read from the server), no statement sent is larger, the
    rows all arrive in order, and a row that cannot fit alone is refused before any write."""
    inserter = Inserter(seam)
    inserter._packet = (256 << 10,)
    sizes: list[int] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        rows = parameters if isinstance(parameters, list | tuple) and parameters \
            and isinstance(parameters[0], dict | list | tuple) else [parameters]
        values = [v for row in rows for v in (row.values() if isinstance(row, dict) else row)]
        sizes.append(len(statement.encode()) + sum(
            len(v.encode()) for v in values if isinstance(v, str)))

    specs = _specs(60, secret="s" * 20_000)  # ~1.2 MB of secrets
    event.listen(engine, "before_cursor_execute", record)
    try:
        with engine.begin() as conn:
            ids = inserter.insert(conn, specs, NOW)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    inserts = [s for s in sizes if s > 20_000]
    assert len(inserts) > 1 and max(inserts) < 256 << 10, sizes
    assert _params(engine, ids) == list(range(60))
    with engine.begin() as conn, pytest.raises(InvalidTask, match="add_many item 1"):
        inserter.insert(conn, [*_specs(1), *_specs(1, secret="x" * (300 << 10))], NOW)
    with engine.connect() as conn:
        assert conn.execute(select(q.c.id).where(q.c.id > max(ids))).first() is None


def test_a_batch_larger_than_the_real_limit_arrives_whole(engine: Engine,
                                                          seam: Backend) -> None:
    """Against the server's own limit: rows adding up to more than it (a single statement of
    them would drop the connection) all arrive."""
    with engine.connect() as conn:
        limit = seam.max_statement_bytes(conn)
    if limit is None:
        return  # no limit to exceed: the split is exercised by the forced limit above
    if limit > 64 * MiB:
        pytest.skip(f"the server's limit ({limit} bytes) is too large to exceed here")
    rows = limit // (2 * MiB) + 2
    secret = "x" * (2 * MiB)
    ids = Store(engine).tasks.add(_specs(rows, secret=secret), NOW)
    assert _params(engine, ids) == list(range(rows))


# -- insert-unique ----------------------------------------------------------------------------


def test_insert_unique_returns_the_holders_id_until_it_lets_the_key_go(engine: Engine) -> None:
    tasks = Store(engine).tasks
    first = tasks.add([build_spec("t.sh", 1, unique_key="k", now=NOW)], NOW)[0]
    again = tasks.add([build_spec("t.sh", 2, unique_key="k", now=NOW),
                       build_spec("t.sh", 3, unique_key="k ", now=NOW)], NOW)
    assert again[0] == first and again[1] != first  # a trailing space is another key
    with engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == first).values(status=1, active_key=None))
    fresh = tasks.add([build_spec("t.sh", 4, unique_key="k", now=NOW)], NOW)[0]
    assert fresh not in (first, again[1])
    with engine.connect() as conn:  # (unique_key itself compares with PAD SPACE on MariaDB)
        rows = conn.execute(select(q.c.id, q.c.unique_key).order_by(q.c.id)).all()
    assert [i for i, key in rows if key == "k"] == [first, fresh]


# -- the claim's index ----------------------------------------------------------------------


@pytest.mark.parametrize("queue", ["q1", None], ids=["one-queue", "every-queue"])
def test_the_claim_reads_its_own_index(engine: Engine, seam: Backend, queue: str | None) -> None:
    """Whatever other index has (status, queue, ...) (``ix_queue_due``), the claim walks the
    claim index in order: the plan the server chooses for the claim's statement says so
    (SQLite: EXPLAIN QUERY PLAN; MariaDB: EXPLAIN, the statement naming the index — its
    planner took ix_queue_claim_any for one queue on 1.1M rows, bench/web_pages.py, which a
    table this small does not show)."""
    from cronqueue.store.claims import claim_index, claim_top

    with engine.begin() as conn:
        conn.execute(q.insert(), [{"taskscript": "t.sh", "param": "1", "queue": f"q{i % 3}",
                                   "priority": 5 if i % 3 else 0} for i in range(300)])
    stmt = seam.by_index(claim_top(shard=0, total=2, queue=queue, now=NOW, limit=10,
                                   passed=[]), q, claim_index(queue))
    compiled = stmt.compile(engine)
    with engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if seam.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + str(compiled), compiled.positiontup and [
                compiled.params[k] for k in compiled.positiontup])
            plan = " ".join(str(r[-1]) for r in cur.fetchall())
            assert f"INDEX {claim_index(queue)} " in plan, plan
        else:
            assert f"FORCE INDEX ({claim_index(queue)})" in str(compiled)
            cur.execute("EXPLAIN " + str(compiled), compiled.params)
            keys = [dict(zip([d[0] for d in cur.description], r, strict=True))["key"]
                    for r in cur.fetchall()]
            assert keys == [claim_index(queue)], keys


# -- counters (the rollup) ------------------------------------------------------------------


def test_insert_or_add_inserts_new_keys_and_adds_to_existing_ones(engine: Engine,
                                                                   seam: Backend) -> None:
    """One statement: rows whose key is new are inserted, the others add their values."""
    from sqlalchemy import func, literal

    from cronqueue.store.schema import rollup_table as ru

    def add(queue: str, finished: int, timed: int) -> None:
        rows = select(literal(queue).label("queue"), literal("done").label("outcome"),
                      literal(finished).label("finished"), literal(timed).label("timed"),
                      func.count().label("duration_us")).select_from(q).where(q.c.id > 0)
        with engine.begin() as conn:
            conn.execute(seam.insert_or_add(ru, rows, ("queue", "outcome")))

    with engine.begin() as conn:
        conn.execute(q.insert(), [{"taskscript": "t.sh", "param": "1"}] * 3)
    add("a", 1, 0)
    add("b", 5, 2)
    add("a", 10, 1)
    with engine.connect() as conn:
        got = conn.execute(select(ru.c.queue, ru.c.finished, ru.c.timed, ru.c.duration_us)
                           .order_by(ru.c.queue)).all()
    assert [tuple(r) for r in got] == [("a", 11, 1, 6), ("b", 5, 2, 3)]


def test_microseconds_between_two_times(engine: Engine, seam: Backend) -> None:
    """Exact to the millisecond at least, either way round; NULL without a start."""
    t0 = datetime(2031, 5, 6, 23, 59, 59, 900000, tzinfo=UTC)
    spans = {1: timedelta(seconds=0.2), 2: timedelta(hours=25, milliseconds=1),
             3: timedelta(milliseconds=-1500), 4: None}
    with engine.begin() as conn:
        for i, span in spans.items():
            conn.execute(q.insert(), {"id": i, "taskscript": "t.sh", "param": "1",
                                      "started_at": None if span is None else t0,
                                      "finished_at": t0 + (span or timedelta())})
    with engine.connect() as conn:
        got = dict(conn.execute(select(q.c.id, seam.microseconds(q.c.started_at,
                                                                 q.c.finished_at))).all())
    assert got == {1: 200_000, 2: 90_000_001_000, 3: -1_500_000, 4: None}


# -- settings ---------------------------------------------------------------------------------


def test_auto_increment_step_is_the_distance_between_ids(engine: Engine, seam: Backend) -> None:
    """Galera and multi-primary servers space ids out: the step read is the one the ids
    get (here set to 3 where the backend lets a session set it)."""
    with engine.connect() as conn:
        expected = _PROVOKE[seam.name]["id_step"](conn, 3)
        step = seam.auto_increment_step(conn)
        ids = [int(conn.execute(q.insert(), {"taskscript": "t.sh", "param": "1"}).lastrowid)
               for _ in range(3)]
        conn.commit()
    assert step == expected
    assert [b - a for a, b in itertools.pairwise(ids)] == [step, step]


def test_server_uptime_grows(engine: Engine, seam: Backend) -> None:
    store = Store(engine)
    first = store.server_uptime()
    if first is None:  # an embedded database: no server, no uptime
        assert not seam.server
        with engine.connect() as conn:
            assert seam.server_uptime(conn) is None
        return
    assert seam.server and first > 0
    wait_until(lambda: (store.server_uptime() or 0) > first, 5, "the uptime grew")


# -- named locks ------------------------------------------------------------------------------

_HOLD = """
import sys, time
from cronqueue.store.engine import make_engine
from cronqueue.store.workers import ServerLock
lock = ServerLock(make_engine(sys.argv[1]), sys.argv[2])
print("held" if lock.acquire() else "refused", flush=True)
time.sleep(600)
"""


def test_a_named_lock_is_refused_to_others_and_freed_when_its_holder_dies(
        db_url: str, engine: Engine, seam: Backend) -> None:
    name = "cronqueue:contract-test"
    if not seam.named_locks:
        with engine.connect() as conn:
            for call in (seam.lock_acquire, seam.lock_held, seam.lock_mine, seam.lock_release):
                with pytest.raises(NotSupported):
                    call(conn, name)
        lock = ServerLock(engine, name)
        assert not lock.available and lock.acquire() and lock.verify() and not lock.held
        return
    one, two = engine.connect(), engine.connect()
    try:
        assert seam.lock_acquire(one, name) is True
        assert seam.lock_acquire(two, name) is False
        assert seam.lock_held(two, name) and seam.lock_mine(one, name)
        assert not seam.lock_mine(two, name)
        seam.lock_release(one, name)
        assert not seam.lock_held(two, name)
        assert seam.lock_acquire(two, name) is True
        seam.lock_release(two, name)
    finally:
        one.close()
        two.close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, db_url, name],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = ServerLock(engine, name)
        assert lock.acquire() is False
        holder.kill()  # kill -9: the server frees the lock with the connection
        holder.wait(10)
        wait_until(lock.acquire, 10, "the dead holder's lock freed")
        assert lock.verify()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


# -- errors -----------------------------------------------------------------------------------


def test_transient_and_unavailable_errors_are_told_apart_on_real_errors(
        engine: Engine, seam: Backend) -> None:
    others = [b for b in BACKENDS if b is not seam]
    busy = _PROVOKE[seam.name]["busy"](engine)  # a lock wait that gave up
    assert seam.is_transient(busy) and is_transient(busy)
    assert not any(b.is_transient(busy) or b.is_unavailable(busy) for b in others)
    with engine.connect() as conn, pytest.raises(DBAPIError) as missing:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not seam.is_transient(missing.value) and not seam.is_unavailable(missing.value)
    assert not is_transient(missing.value) and not is_unavailable(missing.value)
    gone = _PROVOKE[seam.name]["unreachable"](engine)  # no server, no file
    assert seam.is_unavailable(gone) and is_unavailable(gone)
    assert not seam.is_transient(gone)


# -- how each backend provokes what the tests need --------------------------------------------


def _sqlite_short_busy_timeout(conn: Connection) -> None:
    """Give up on a held write lock after 50 ms (set on the driver's connection: any
    statement through SQLAlchemy would first begin a transaction, taking the lock)."""
    conn.connection.driver_connection.execute("PRAGMA busy_timeout=50")  # type: ignore[union-attr]


def _sqlite_busy(engine: Engine) -> BaseException:
    holder, waiter = engine.connect(), engine.connect()
    try:
        holder.begin()  # BEGIN IMMEDIATE: the write lock
        _sqlite_short_busy_timeout(waiter)
        with pytest.raises(OperationalError) as info:
            waiter.begin()
        return info.value
    finally:
        holder.rollback()
        holder.close()
        waiter.close()


def _sqlite_unreachable(engine: Engine) -> BaseException:
    missing = make_engine("sqlite:////nonexistent-dir/cq/queue.db")
    try:
        with pytest.raises(OperationalError) as info, missing.connect():
            pass
        return info.value
    finally:
        missing.dispose()


def _mysql_short_lock_wait(conn: Connection) -> None:
    conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
    conn.commit()


def _mysql_busy(engine: Engine) -> BaseException:
    with engine.begin() as conn:
        conn.execute(q.insert(), {"taskscript": "t.sh", "param": "1"})
    holder, waiter = engine.connect(), engine.connect()
    try:
        _mysql_short_lock_wait(waiter)
        holder.begin()
        holder.execute(update(q).values(priority=1))
        waiter.begin()
        with pytest.raises(OperationalError) as info:
            waiter.execute(update(q).values(priority=2))
        return info.value
    finally:
        holder.rollback()
        waiter.rollback()
        holder.close()
        waiter.close()


def _mysql_unreachable(engine: Engine) -> BaseException:
    """A connection the server killed (as a restart would), used again."""
    victim, killer = engine.connect(), engine.connect()
    try:
        ident = victim.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        victim.commit()
        killer.exec_driver_sql(f"KILL CONNECTION {int(ident)}")
        with pytest.raises(OperationalError) as info:
            victim.exec_driver_sql("SELECT 1")
        return info.value
    finally:
        victim.invalidate()
        victim.close()
        killer.close()


def _mysql_id_step(conn: Connection, step: int) -> int:
    conn.exec_driver_sql(f"SET SESSION auto_increment_increment = {int(step)}")
    conn.commit()
    return step


def _mysql_limit(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SHOW VARIABLES LIKE 'max_allowed_packet'").one()[1])


_PROVOKE: dict[str, dict[str, Any]] = {
    "sqlite": {"busy": _sqlite_busy, "unreachable": _sqlite_unreachable,
               "short_lock_wait": lambda conn: None, "id_step": lambda conn, step: 1,
               "statement_limit": lambda conn: None},
    "mysql": {"busy": _mysql_busy, "unreachable": _mysql_unreachable,
              "short_lock_wait": _mysql_short_lock_wait, "id_step": _mysql_id_step,
              "statement_limit": _mysql_limit},
}
