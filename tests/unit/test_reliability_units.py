"""Reliability building blocks in isolation: which database errors mean "wait for it", the
transaction retry, the Galera sharding warning, the lease/heartbeat rule and the heartbeat's
self-stop when it cannot reach the database."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pymysql
import pytest
from sqlalchemy import Connection, create_engine
from sqlalchemy.exc import IntegrityError, OperationalError

from cronqueue.cli.checks import shard_warnings
from cronqueue.config import Config, DoQueue, MissionEntry, WorkerConfig
from cronqueue.errors import ConfigError, DatabaseError
from cronqueue.shard.heartbeat import Heartbeat
from cronqueue.store.engine import is_unavailable, transaction
from tests.helpers import wait_until


def mysql_error(code: int, message: str = "boom") -> OperationalError:
    """What SQLAlchemy raises for a PyMySQL OperationalError with this server/client code."""
    return OperationalError("SELECT 1", {}, pymysql.err.OperationalError(code, message))


def wrapped(exc: BaseException) -> DatabaseError:
    """As the repository hands it on: a DatabaseError raised from the driver error."""
    try:
        raise DatabaseError("database error on mysql+pymysql://u:***@h/db: x") from exc
    except DatabaseError as err:
        return err


# -- is_unavailable ---------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "expected"), [
    (2003, True),   # can't connect
    (2006, True),   # server has gone away
    (2013, True),   # lost connection during query
    (1053, True),   # server shutdown in progress
    (1062, False),  # duplicate entry: a real error, waiting will not fix it
    (1146, False),  # no such table
])
def test_is_unavailable_by_mysql_code(code: int, expected: bool) -> None:
    exc = mysql_error(code)
    assert is_unavailable(exc) is expected
    assert is_unavailable(wrapped(exc)) is expected


def test_integrity_error_is_not_an_outage() -> None:
    exc = IntegrityError("INSERT", {}, pymysql.err.IntegrityError(1062, "Duplicate entry"))
    assert is_unavailable(exc) is False
    assert is_unavailable(wrapped(exc)) is False


def test_sqlite_locked_is_worth_waiting_for() -> None:
    exc = OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
    assert is_unavailable(exc) is True
    assert is_unavailable(wrapped(exc)) is True


def test_database_error_without_cause_is_not_an_outage() -> None:
    assert is_unavailable(DatabaseError("something else")) is False
    assert is_unavailable(ValueError("nope")) is False


# -- transaction retries ----------------------------------------------------------------------


@pytest.fixture
def engine() -> Any:
    eng = create_engine("sqlite://")
    yield eng
    eng.dispose()


def test_transaction_retries_a_deadlock(engine: Any) -> None:
    calls: list[int] = []

    def work(conn: Connection) -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise mysql_error(1213, "Deadlock found when trying to get lock")
        return "value"

    assert transaction(engine, work) == "value"
    assert len(calls) == 3


def test_transaction_retries_a_lock_wait_timeout(engine: Any) -> None:
    calls: list[int] = []

    def work(conn: Connection) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise mysql_error(1205, "Lock wait timeout exceeded")
        return 42

    assert transaction(engine, work) == 42
    assert len(calls) == 2


def test_transaction_gives_up_at_once_on_a_real_error(engine: Any) -> None:
    calls: list[int] = []

    def work(conn: Connection) -> None:
        calls.append(1)
        raise mysql_error(1146, "Table 'x.queue' doesn't exist")

    with pytest.raises(DatabaseError) as info:
        transaction(engine, work)
    assert len(calls) == 1
    assert "1146" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, OperationalError)


def test_transaction_stops_retrying_after_its_attempts(engine: Any) -> None:
    calls: list[int] = []

    def work(conn: Connection) -> None:
        calls.append(1)
        raise mysql_error(1213, "Deadlock")

    with pytest.raises(DatabaseError):
        transaction(engine, work, attempts=3)
    assert len(calls) == 3


# -- Galera: auto_increment_increment vs shard totals -----------------------------------------


def config_with_total(total: int) -> Config:
    entry = MissionEntry("drain", "* * * * *", do_queue=DoQueue(total=total))
    add_only = MissionEntry("report", "0 3 * * *")  # no do_queue: never warned about
    return Config(missions=(entry, add_only))


@pytest.mark.parametrize(("step", "total", "warns"), [
    (2, 4, True),
    (3, 6, True),
    (3, 4, False),
    (1, 4, False),
    (1, 1, False),
    (2, 1, False),
])
def test_shard_warnings(step: int, total: int, warns: bool) -> None:
    warnings = shard_warnings(config_with_total(total), step)
    if warns:
        assert len(warnings) == 1
        assert "'drain'" in warnings[0] and f"={step}" in warnings[0]
        assert f"total={total}" in warnings[0]
    else:
        assert warnings == []


# -- lease vs heartbeat -----------------------------------------------------------------------


def test_lease_must_cover_three_heartbeats() -> None:
    with pytest.raises(ConfigError, match=r"worker\.lease"):
        WorkerConfig(heartbeat=5, lease=10).validate()
    with pytest.raises(ConfigError, match=r"worker\.lease"):
        WorkerConfig(heartbeat=5, lease=14).validate()
    WorkerConfig(heartbeat=5, lease=15).validate()  # exactly three heartbeats is enough


# -- the heartbeat stops the shard before its lease runs out ----------------------------------


class DownRepo:
    """A repository whose database is unreachable for heartbeats."""

    def __init__(self) -> None:
        self.beats = 0

    def heartbeat(self, *args: Any, **kwargs: Any) -> bool:
        self.beats += 1
        raise DatabaseError("database error on mysql+pymysql://u:***@h/db: "
                            "OperationalError: (2013, 'Lost connection')")

    def forget(self, ids: Any) -> None:
        pass


def drive(current_task: int | None) -> tuple[int, DownRepo]:
    """The heartbeat thread against a database that stays down, for twenty failed beats (over
    three leases without a heartbeat); how often it said the lease was at risk."""
    repo = DownRepo()
    calls: list[float] = []
    stops: list[float] = []  # recorded here: an exception in its thread would go unseen
    cfg = WorkerConfig(heartbeat=0.05, lease=0.3)  # type: ignore[arg-type]
    hb = Heartbeat(repo, cfg, label="0/1", clock=lambda: datetime.now(UTC),  # type: ignore[arg-type]
                   on_stop_requested=lambda: stops.append(time.monotonic()),
                   on_lease_at_risk=lambda: calls.append(time.monotonic()))
    hb.worker_id = 1
    hb.current_task = current_task
    started = time.monotonic()
    hb._last_ok = started
    thread = threading.Thread(target=hb._loop, daemon=True)
    thread.start()
    wait_until(lambda: repo.beats >= 20, 30, "twenty failed heartbeats")
    hb._stopped.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert stops == [], "a failing heartbeat is not a stop request"
    if calls:
        # Not before half a lease without a heartbeat.
        assert calls[0] - started > cfg.lease / 2
    return len(calls), repo


def test_heartbeat_failures_while_a_task_runs_stop_the_shard_once() -> None:
    calls, _repo = drive(current_task=7)
    assert calls == 1


def test_heartbeat_failures_while_idle_do_not_kill_anything() -> None:
    calls, _repo = drive(current_task=None)
    assert calls == 0
