"""MySQL 8 and MariaDB (through PyMySQL): row locks, ``SKIP LOCKED`` (MySQL >= 8.0.1, MariaDB
>= 10.6), ``GET_LOCK`` named locks, ``max_allowed_packet``, MariaDB's ``INSERT ... RETURNING``
(>= 10.5)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Select,
    create_engine,
    event,
    func,
    literal_column,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from cronqueue.store.backends.base import Backend, driver_code, server_url
from cronqueue.store.backends.pymysql_tls import share_preferred_tls

# 1213 deadlock, 1205 lock wait timeout. Retried, never surfaced as failures.
RETRY_CODES = frozenset({1213, 1205})
# Server gone, restarting, unreachable, connection killed, too many connections, read-only.
UNAVAILABLE_CODES = frozenset({1040, 1053, 1077, 1290, 1836, 1927, 2002, 2003, 2005, 2006,
                               2013, 2026, 2055})
PING_AFTER_IDLE = 1.0  # seconds a pooled connection may idle before it is pinged

_UPTIME = text("SHOW GLOBAL STATUS LIKE 'Uptime'")
_MAX_PACKET = text("SELECT @@max_allowed_packet")
_STEP = text("SELECT @@auto_increment_increment")
_GET_LOCK = text("SELECT GET_LOCK(:name, 0)")
_RELEASE_LOCK = text("SELECT RELEASE_LOCK(:name)")
_IS_USED = text("SELECT IS_USED_LOCK(:name)")
_IS_MINE = text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()")


def _ours(exc: BaseException) -> bool:
    """A MySQL driver's error: its first argument is the numeric server or client code."""
    return isinstance(driver_code(exc)[0], int) and getattr(exc, "orig", None) is not None


def _version(dialect: Dialect) -> tuple[Any, ...]:
    return tuple(dialect.server_version_info or ())


class MysqlBackend(Backend):
    name: ClassVar[str] = "mysql"
    dialects: ClassVar[tuple[str, ...]] = ("mysql", "mariadb")
    serialized_writers: ClassVar[bool] = False
    row_locks: ClassVar[bool] = True
    named_locks: ClassVar[bool] = True
    server: ClassVar[bool] = True
    placeholder: ClassVar[str] = "%s"  # PyMySQL's format paramstyle

    def normalize_url(self, url: URL) -> URL:
        """``mysql://`` and ``mariadb://`` mean PyMySQL (the driver we ship with)."""
        return server_url(url, "pymysql")

    def create_engine(self, url: str) -> Engine:
        engine = create_engine(
            url,
            hide_parameters=True,  # error texts never carry the values (secrets, params)
            pool_recycle=1800,  # well under the server's wait_timeout
            # Every use ends its transaction (``transaction()`` commits or rolls back): the
            # rollback the pool would send on each check-in is a wasted round trip.
            pool_reset_on_return=None,
            isolation_level="READ COMMITTED",
            connect_args={"charset": "utf8mb4", "connect_timeout": 10},
        )
        share_preferred_tls(engine)  # no CA bundle loaded per connection: pymysql_tls.py

        # A restarted server or an idle timeout must not turn into a failed call: a
        # connection that sat idle in the pool is pinged before use (a dead one is replaced).
        # One in constant use (a shard, a loop of add()) is not: that ping would cost a round
        # trip per call.
        @event.listens_for(engine, "checkin")
        def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
            record.info["cq_idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            since = record.info.get("cq_idle_since")
            if since is not None and time.monotonic() - since > PING_AFTER_IDLE:
                try:
                    dbapi_conn.ping(reconnect=False)
                except Exception as exc:
                    raise DisconnectionError(f"stale pooled connection: {exc}") from exc

        return engine

    def skip_locked(self, dialect: Dialect) -> bool:
        """MySQL >= 8.0.1, MariaDB >= 10.6 (of a connected dialect)."""
        version = _version(dialect)
        if not version:
            return False
        if getattr(dialect, "is_mariadb", False):
            return version[:2] >= (10, 6)
        return version[:3] >= (8, 0, 1)

    def by_primary_key(self, stmt: Select[Any], table: Any) -> Select[Any]:
        return self.by_index(stmt, table, "PRIMARY")

    def by_index(self, stmt: Select[Any], table: Any, index: str) -> Select[Any]:
        for dialect in self.dialects:  # a hint names the dialect it is rendered for
            stmt = stmt.with_hint(table, f"FORCE INDEX ({index})", dialect)
        return stmt

    def insert_unique(self, table: Any, key_column: Any) -> Insert:
        """``ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)``: ``lastrowid`` is then the
        existing row's id."""
        from sqlalchemy.dialects import mysql

        ident = table.c.id
        return mysql.insert(table).on_duplicate_key_update({ident.name: func.last_insert_id(ident)})

    def unique_id(self, conn: Connection, result: CursorResult[Any], existing: Any) -> int:
        return int(result.lastrowid)

    def insert_or_add(self, table: Any, rows: Select[Any], key: Sequence[str]) -> Insert:
        """``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE c = c + VALUES(c)`` (``VALUES()``
        is what MySQL 8 and MariaDB both take after a SELECT)."""
        from sqlalchemy.dialects import mysql

        names = [c.name for c in rows.selected_columns]
        stmt = mysql.insert(table).from_select(names, rows)
        return stmt.on_duplicate_key_update(
            {n: table.c[n] + stmt.inserted[n] for n in names if n not in key})

    def microseconds(self, start: Any, end: Any) -> ColumnElement[int]:
        return func.timestampdiff(literal_column("MICROSECOND"), start, end,
                                  type_=BigInteger())

    def max_statement_bytes(self, conn: Connection) -> int | None:
        return int(conn.execute(_MAX_PACKET).scalar_one())

    def auto_increment_step(self, conn: Connection) -> int:
        return int(conn.execute(_STEP).scalar_one())

    def server_uptime(self, conn: Connection) -> float | None:
        return float(conn.execute(_UPTIME).one()[1])

    def lock_acquire(self, conn: Connection, name: str) -> bool:
        got = conn.execute(_GET_LOCK, {"name": name}).scalar()
        conn.commit()
        return got == 1

    def lock_release(self, conn: Connection, name: str) -> None:
        conn.execute(_RELEASE_LOCK, {"name": name})
        conn.commit()

    def lock_held(self, conn: Connection, name: str) -> bool:
        holder = conn.execute(_IS_USED, {"name": name}).scalar()
        conn.commit()
        return holder is not None

    def lock_mine(self, conn: Connection, name: str) -> bool:
        mine = conn.execute(_IS_MINE, {"name": name}).scalar()
        conn.commit()
        return mine == 1

    def is_transient(self, exc: BaseException) -> bool:
        return (isinstance(exc, OperationalError) and _ours(exc)
                and driver_code(exc)[0] in RETRY_CODES)

    def is_unavailable(self, exc: BaseException) -> bool:
        if not isinstance(exc, InterfaceError | OperationalError) or not _ours(exc):
            return False
        if isinstance(exc, InterfaceError):
            return True
        code = driver_code(exc)[0]
        return code in UNAVAILABLE_CODES or code in RETRY_CODES
