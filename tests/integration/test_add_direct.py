"""``Queue.add()`` of a plain task writes straight on a pooled driver connection
(``Inserter.add_one``): the row it writes, who still sees its statement, and what happens when
that direct write fails (the call goes through a transaction, or raises ``DatabaseError``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

from cronqueue import Queue
from cronqueue.errors import DatabaseError
from cronqueue.store.engine import transaction
from cronqueue.store.schema import queue_table as q
from tests.conftest import get_task

NOW = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@pytest.fixture
def fixed(db_url: str, task_dir: Path, log_dir: Path) -> Iterator[Queue]:
    queue = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir), clock=lambda: NOW)
    queue.init_db()
    yield queue
    queue.close()


def _count(queue: Queue) -> int:
    with queue.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(q)).scalar_one())


def _row(queue: Queue, task_id: int) -> dict[str, Any]:
    with queue.engine.connect() as conn:
        row = conn.execute(select(q).where(q.c.id == task_id)).mappings().one()
    return {k: v for k, v in row.items() if k != "id"}


def test_direct_add_writes_the_row_of_the_transaction_path(fixed: Queue) -> None:
    kw: dict[str, Any] = {"priority": -3, "queue": "q.1", "delay": 90, "max_attempts": 7,
                          "timeout": 11, "secret": {"token": "s"}}
    first = fixed.add("a.sh", {"n": "é", "l": [1, 2]}, **kw)  # reads the server's limits
    direct = fixed.add("a.sh", {"n": "é", "l": [1, 2]}, **kw)
    with fixed.engine.begin() as conn:  # the caller's transaction: the SQLAlchemy path
        through = fixed.add("a.sh", {"n": "é", "l": [1, 2]}, connection=conn, **kw)
    assert first < direct < through
    assert _row(fixed, direct) == _row(fixed, through) == _row(fixed, first)
    task = get_task(fixed, direct)
    assert (task.ctime, task.run_at) == (NOW, NOW + timedelta(seconds=90))
    assert task.param == '{"n":"é","l":[1,2]}' and task.attempts == 0
    assert fixed.add("a.sh", unique_key="k") == fixed.add("a.sh", 2, unique_key="k")


def test_statement_listeners_see_every_add(fixed: Queue) -> None:
    fixed.add("a.sh", 1)
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(fixed.engine, "before_cursor_execute", record)
    try:
        fixed.add("a.sh", 2)
    finally:
        event.remove(fixed.engine, "before_cursor_execute", record)
    assert any(s.startswith("INSERT INTO queue") for s in seen), seen


def test_a_failed_direct_insert_raises_database_error_and_inserts_nothing(
        fixed: Queue) -> None:
    """The column the INSERT names is gone: the direct attempt fails, the call goes through
    a transaction, which raises the database error (not the driver's) with nothing written."""
    fixed.add("a.sh", 1)
    with fixed.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE queue DROP COLUMN secret")
    with pytest.raises(DatabaseError, match="secret"):
        fixed.add("a.sh", 2)
    assert _count(fixed) == 1


def test_a_killed_pooled_connection_does_not_fail_add(backend: str, db_url: str,
                                                      fixed: Queue) -> None:
    """The server drops the pooled connection between two add() calls (a restart, a KILL):
    the direct attempt fails before any commit, the call is run again on a fresh connection,
    and the task is inserted once."""
    if backend != "mariadb":
        pytest.skip("no server connection to kill on SQLite")
    fixed.add("a.sh", 1)
    with fixed.engine.connect() as conn:  # the one pooled connection
        ident = int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())
    url = make_url(db_url)
    killer = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username,
                             password=url.password or "", database=url.database)
    try:
        killer.cursor().execute(f"KILL CONNECTION {ident}")
    finally:
        killer.close()
    new_id = fixed.add("a.sh", 2)
    assert get_task(fixed, new_id).param == "2"
    assert _count(fixed) == 2


def test_a_failed_checkout_goes_through_a_transaction(fixed: Queue,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool cannot hand out a connection (the server restarting, a refused connect: the
    driver's own error, which ``engine.raw_connection()`` does not wrap): the call takes the
    transaction path, which retries what is transient — the task is inserted once, no
    driver exception reaches the caller."""
    fixed.add("a.sh", 1)
    engine = fixed.engine
    dbapi_error = engine.dialect.loaded_dbapi.OperationalError
    real = engine.raw_connection
    failures = [dbapi_error(2003, "Can't connect (test)")]

    def checkout() -> Any:
        if failures:
            raise failures.pop()
        return real()

    monkeypatch.setattr(engine, "raw_connection", checkout)
    new_id = fixed.add("a.sh", 2)
    assert not failures and get_task(fixed, new_id).param == "2"
    assert _count(fixed) == 2


def test_an_interrupted_direct_insert_leaves_nothing_behind(
        fixed: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt (or any BaseException: a signal handler's SystemExit, a timeout of
    gevent's) between the direct INSERT and its commit: the row is not written, neither then
    nor by the next call on the same pooled connection (MySQL's pool does not roll back on
    check-in: ``pool_reset_on_return=None``)."""
    from cronqueue.store import enqueue

    fixed.add("a.sh", 1)

    def interrupted(_value: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(enqueue, "int", interrupted, raising=False)  # int(cursor.lastrowid)
    with pytest.raises(KeyboardInterrupt):
        fixed.add("a.sh", 2)
    monkeypatch.delattr(enqueue, "int")
    third = fixed.add("a.sh", 3)
    with fixed.engine.connect() as conn:
        params = conn.execute(select(q.c.param).order_by(q.c.id)).scalars().all()
    assert params == ["1", "3"] and get_task(fixed, third).param == "3"


def test_a_failed_direct_insert_returns_its_connection_before_the_retry(
        fixed: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction path that takes over from a failed direct attempt checks out a
    connection of its own: the failed one is back in the pool (or discarded) by then, so that
    threads whose direct attempts all failed (a server restart) cannot hold the whole pool
    while each waits for one more connection."""
    from cronqueue.store import enqueue

    fixed.add("a.sh", 1)
    engine = fixed.engine
    held: list[int] = []

    def through(*args: Any, **kwargs: Any) -> Any:
        held.append(engine.pool.checkedout())  # type: ignore[attr-defined]
        return transaction(*args, **kwargs)

    monkeypatch.setattr(enqueue, "transaction", through)
    monkeypatch.setattr(fixed.store.tasks.inserter.backend, "begin_write", _refused)
    new_id = fixed.add("a.sh", 2)
    assert held == [0] and get_task(fixed, new_id).param == "2"
    assert _count(fixed) == 2


def _refused(_cursor: Any) -> None:
    raise RuntimeError("refused (test)")
