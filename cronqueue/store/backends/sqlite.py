"""SQLite: one file, one writer at a time (``BEGIN IMMEDIATE`` in WAL mode), no row locks,
no server (no named locks, no uptime, no statement size limit that matters)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Connection,
    CursorResult,
    Dialect,
    Engine,
    Float,
    Select,
    cast,
    create_engine,
    event,
    func,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from cronqueue.store.backends.base import Backend, driver_code

log = logging.getLogger("cronqueue.db")
_BEGIN_KEY = "cq_begin"  # a connection's next BEGIN, when not BEGIN IMMEDIATE


def _text(data: bytes) -> str:
    return str(data, "utf-8", "surrogateescape")


def _create_private(database: str | None) -> None:
    """Create a missing SQLite database file 0600 (owner only: rows hold task secrets). SQLite
    creates ``-wal`` and ``-shm`` with the database file's mode. An existing file keeps its
    mode (``cronqueue check`` warns about one others can read: ``database_file_warning``)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:  # no such directory, read-only...: SQLite will say it on connect
        log.debug("cannot create %s: %s", database, exc)


def _ours(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "orig", None), sqlite3.Error)


class SqliteBackend(Backend):
    name: ClassVar[str] = "sqlite"
    dialects: ClassVar[tuple[str, ...]] = ("sqlite",)
    serialized_writers: ClassVar[bool] = True
    row_locks: ClassVar[bool] = False
    named_locks: ClassVar[bool] = False
    server: ClassVar[bool] = False

    def database_identity(self, url: URL) -> str:
        """The file's real path (two spellings of one file are one database)."""
        where = (os.path.realpath(url.database) if url.database not in (None, "", ":memory:")
                 else ":memory:")
        return f"sqlite:{where}"

    def file_warning(self, url: URL) -> str | None:
        """The database file, ``-wal`` or ``-shm`` that other users may read (e.g. created by
        0.1.0, 0644): its rows hold task secrets."""
        path = url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        loose = []
        for name in (path, path + "-wal", path + "-shm"):
            try:
                mode = os.stat(name).st_mode & 0o777
            except OSError:
                continue
            if mode & 0o077:
                loose.append(f"{name} (mode {mode:o})")
        if not loose:
            return None
        return (f"{', '.join(loose)}: other users may read it, and rows hold task secrets: "
                f"chmod 600 {path}*")

    def create_engine(self, url: str) -> Engine:
        _create_private(make_url(url).database)
        engine = create_engine(url, hide_parameters=True,
                               connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from pysqlite so we can issue BEGIN IMMEDIATE ourselves.
            dbapi_conn.isolation_level = None
            # Text that is not UTF-8 (written by hand) would fail the whole result, so the
            # claim of every row with it: decoded with surrogate escapes, Task.from_row names it.
            dbapi_conn.text_factory = _text
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        # Writers take the write lock up front: a deferred transaction that upgrades later
        # fails with SQLITE_BUSY under load instead of waiting. The BEGIN is the dialect's own
        # begin step (its errors wrapped and judged like any statement's), sent straight to
        # the driver: an exec_driver_sql from the "begin" event cost ~25 us a transaction.
        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("cq_readonly", False):
                conn.connection.info[_BEGIN_KEY] = "BEGIN"

        def _do_begin(dbapi_conn: Any) -> None:
            dbapi_conn.driver_connection.execute(dbapi_conn.info.pop(_BEGIN_KEY, "BEGIN IMMEDIATE"))

        engine.dialect.do_begin = _do_begin  # type: ignore[method-assign,assignment]
        return engine

    def begin_write(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def skip_locked(self, dialect: Dialect) -> bool:
        return False

    def insert_unique(self, table: Any, key_column: Any) -> Insert:
        """``ON CONFLICT (key) DO NOTHING``: rowcount 0 means a duplicate, whose id
        ``unique_id`` then reads inside the same (write-locked) transaction."""
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key_column])

    def unique_id(self, conn: Connection, result: CursorResult[Any], existing: Any) -> int:
        if result.rowcount == 1:
            return int(result.lastrowid)
        return int(conn.execute(existing).scalar_one())

    def insert_or_add(self, table: Any, rows: Select[Any], key: Sequence[str]) -> Insert:
        """``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE SET c = c + excluded.c``."""
        from sqlalchemy.dialects import sqlite

        names = [c.name for c in rows.selected_columns]
        stmt = sqlite.insert(table).from_select(names, rows)
        return stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in key],
            set_={n: table.c[n] + stmt.excluded[n] for n in names if n not in key})

    def microseconds(self, start: Any, end: Any) -> ColumnElement[int]:
        """Times are ISO text here, which SQLite's date functions read to the millisecond:
        whole seconds (``%s``) and milliseconds (``%f``: ``SS.SSS``) apart, in integers,
        exact to the millisecond (``julianday``'s doubles were 20-40 us off)."""
        def seconds(t: Any) -> ColumnElement[int]:
            return cast(func.strftime("%s", t), BigInteger)

        def millis(t: Any) -> ColumnElement[int]:
            return cast(func.round(cast(func.strftime("%f", t), Float) * 1000), BigInteger) % 1000

        return ((seconds(end) - seconds(start)) * 1_000_000
                + (millis(end) - millis(start)) * 1000)

    def is_transient(self, exc: BaseException) -> bool:
        if not isinstance(exc, OperationalError) or not _ours(exc):
            return False
        text = driver_code(exc)[1].lower()
        return "database is locked" in text or "database is busy" in text

    def is_unavailable(self, exc: BaseException) -> bool:
        if isinstance(exc, InterfaceError) and _ours(exc):
            return True
        if not isinstance(exc, OperationalError) or not _ours(exc):
            return False
        text = driver_code(exc)[1].lower()
        return "locked" in text or "unable to open" in text or "disk i/o" in text
