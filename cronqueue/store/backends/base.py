"""What differs between databases, behind one object per backend.

The rest of ``cronqueue.store`` writes portable SQLAlchemy statements and asks the backend only
what cannot be portable: how to build the engine, which locking the server offers, the
multi-row insert forms, its limits and settings, its named locks, and which of its errors are
worth a retry. Nothing outside ``store/backends/`` branches on the dialect's name (except the
column types of ``store/schema.py`` and the DDL the CLI prints).

A backend is stateless: capabilities that depend on the server's version take a connected
``Dialect`` (or a ``Connection``); values read from the server are cached by the caller.

Adding a database means one new module here (a ``Backend`` subclass, registered in
``backends/__init__.py``) and ``tests/contract/test_backend.py`` passing against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Connection, CursorResult, Dialect, Engine, Select
from sqlalchemy.engine import URL
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from cronqueue.errors import ConfigError

SECRET_QUERY_KEYS = ("password", "passwd")  # a password given as a URL query argument


class NotSupported(Exception):
    """The backend has no such capability (check its flag before asking)."""


class Backend(ABC):
    name: ClassVar[str]
    dialects: ClassVar[tuple[str, ...]]  # SQLAlchemy dialect/backend names it serves
    # One writer at a time: a write transaction takes the database's only write lock when it
    # begins (SQLite ``BEGIN IMMEDIATE``), so what it reads stays as read until it commits.
    serialized_writers: ClassVar[bool]
    # ``SELECT ... FOR UPDATE`` locks the rows read until commit.
    row_locks: ClassVar[bool]
    # Server-wide named locks held by a connection and freed when it dies (``GET_LOCK``).
    named_locks: ClassVar[bool]
    # A database server (settings and an uptime to read); False: an embedded file, where
    # those have fixed answers and asking them costs no transaction.
    server: ClassVar[bool]
    max_lock_name: ClassVar[int] = 64  # characters a named lock's name may have
    # A positional parameter in the driver's SQL (``store/enqueue.py`` renders its INSERTs).
    placeholder: ClassVar[str] = "?"

    # -- URL and engine -------------------------------------------------------------------------

    def normalize_url(self, url: URL) -> URL:
        """The URL as ``create_engine`` gets it (a default driver, the password in place)."""
        return url

    def database_identity(self, url: URL) -> str:
        """What names the database ``url`` designates, without credentials (equal for two URLs
        of one database): hashed into the names of a shard's locks."""
        return f"{url.get_backend_name()}:{url.host}:{url.port}:{url.database}"

    def file_warning(self, url: URL) -> str | None:
        """For ``cronqueue check``: why the database's files may leak rows (task secrets)."""
        return None

    @abstractmethod
    def create_engine(self, url: str) -> Engine:
        """An engine for ``url`` (already normalized) with this backend's session set-up."""

    # -- capabilities (of a connected dialect: some depend on the server's version) -------------

    @abstractmethod
    def skip_locked(self, dialect: Dialect) -> bool:
        """``SELECT ... FOR UPDATE SKIP LOCKED``: lock rows, passing over rows others hold."""

    def returning(self, dialect: Dialect) -> bool:
        """A multi-row ``INSERT ... VALUES ... RETURNING id``; else one INSERT per row (its
        lastrowid). The ids of one multi-row INSERT increase in VALUES order (sorted = input
        order): see ``store/enqueue.py``."""
        return bool(getattr(dialect, "insert_returning", False))

    def begin_write(self, cursor: Any) -> None:  # noqa: B027 (a hook: empty by default)
        """Start a write transaction on a driver cursor, as the engine's own begin does (a
        driver outside autocommit mode begins by itself: nothing to send)."""

    def by_primary_key(self, stmt: Select[Any], table: Any) -> Select[Any]:
        """``stmt`` (rows of ``table`` found by primary key) kept off the other indexes: only
        the rows named are read, and locked by a ``FOR UPDATE``."""
        return stmt

    def by_index(self, stmt: Select[Any], table: Any, index: str) -> Select[Any]:
        """``stmt`` read through ``table``'s index ``index``, whatever else the planner might
        pick (on a server whose planner needs telling)."""
        return stmt

    # -- the insert-unique form ------------------------------------------------------------------

    @abstractmethod
    def insert_unique(self, table: Any, key_column: Any) -> Insert:
        """An INSERT that, when ``key_column``'s unique index already holds the value, inserts
        nothing and fails nothing: ``unique_id`` then names the row that holds it."""

    @abstractmethod
    def unique_id(self, conn: Connection, result: CursorResult[Any],
                  existing: Any) -> int:
        """The id ``insert_unique`` inserted, or the holder's: ``existing`` is a statement
        selecting that id (run only when needed, in the same transaction)."""

    # -- counters (store/rollup.py) --------------------------------------------------------------

    @abstractmethod
    def insert_or_add(self, table: Any, rows: Select[Any], key: Sequence[str]) -> Insert:
        """``INSERT INTO table (...) SELECT ...`` (``rows``' columns labelled as the table's)
        that, for a row whose ``key`` columns exist already, adds each other value to the
        existing row's instead: counters, never decremented. One statement."""

    @abstractmethod
    def microseconds(self, start: Any, end: Any) -> ColumnElement[int]:
        """``end - start`` (two time columns) in whole microseconds; NULL when either is not
        a time."""

    # -- limits and settings ---------------------------------------------------------------------

    def max_statement_bytes(self, conn: Connection) -> int | None:
        """The largest statement the server accepts (bytes); None: no limit that matters."""
        return None

    def auto_increment_step(self, conn: Connection) -> int:
        """How far apart consecutive auto-increment ids are (Galera, multi-primary: > 1)."""
        return 1

    def server_uptime(self, conn: Connection) -> float | None:
        """Seconds since the database server started; None for an embedded database."""
        return None

    # -- named locks -----------------------------------------------------------------------------

    def lock_acquire(self, conn: Connection, name: str) -> bool:
        """Take ``name`` for ``conn`` without waiting; False if another connection holds it."""
        raise NotSupported(f"{self.name}: no named locks")

    def lock_release(self, conn: Connection, name: str) -> None:
        raise NotSupported(f"{self.name}: no named locks")

    def lock_held(self, conn: Connection, name: str) -> bool:
        """Does any connection hold ``name``?"""
        raise NotSupported(f"{self.name}: no named locks")

    def lock_mine(self, conn: Connection, name: str) -> bool:
        """Does ``conn`` itself hold ``name``?"""
        raise NotSupported(f"{self.name}: no named locks")

    # -- errors ----------------------------------------------------------------------------------

    @abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """A deadlock, a lock-wait timeout, a busy file: retrying the transaction may work.
        False for errors of other backends' drivers."""

    @abstractmethod
    def is_unavailable(self, exc: BaseException) -> bool:
        """The server could not be reached or dropped the connection (restart, network),
        or is busy: worth waiting for. Not: constraint violations, SQL errors, a missing
        table. False for errors of other backends' drivers."""


def driver_code(exc: BaseException) -> tuple[Any, str]:
    """(first argument, text) of the driver error under a SQLAlchemy error (or of ``exc``)."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        orig = exc
    code = orig.args[0] if orig.args else None
    return code, str(orig)


def server_url(url: URL, driver: str) -> URL:
    """A server URL normalized: ``driver`` when none is named; a password given as
    ``?password=``/``?passwd=`` moves into ``user:password@`` (where SQLAlchemy hides it in
    ``repr(engine.url)``), and an unencoded ``@`` in a password is taken as part of it."""
    if "+" not in url.drivername:
        url = url.set(drivername=f"{url.drivername}+{driver}")
    if url.password is not None and url.host and "@" in url.host:
        extra, host = url.host.rsplit("@", 1)
        url = url.set(password=f"{url.password}@{extra}", host=host)
    given = [k for k in url.query if k.lower() in SECRET_QUERY_KEYS]
    if len(given) + (url.password is not None) > 1:
        raise ConfigError("db_url: the password is given twice (user:password@ and "
                          "?password= or ?passwd=): give it once")
    if given:
        password = url.query[given[0]]
        if not isinstance(password, str):
            raise ConfigError(f"db_url: {given[0]}= is given twice: give it once")
        url = url.difference_update_query(given).set(password=password)
    return url
