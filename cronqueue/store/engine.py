"""Engines and transactions: dialect set-up, transient-error retries, URL redaction.

Build an engine inside the process that uses it (never share one across ``fork``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote_plus

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)

from cronqueue.errors import ConfigError, DatabaseError

log = logging.getLogger("cronqueue.db")
T = TypeVar("T")

# MySQL/MariaDB: 1213 deadlock, 1205 lock wait timeout. Retried, never surfaced as failures.
_MYSQL_RETRY_CODES = frozenset({1213, 1205})
# Server gone, restarting, unreachable, connection killed, too many connections, read-only.
_MYSQL_UNAVAILABLE_CODES = frozenset({1040, 1053, 1077, 1290, 1836, 1927, 2002, 2003, 2005,
                                      2006, 2013, 2026, 2055})
SUPPORTED = ("sqlite", "mysql", "mariadb")
PING_AFTER_IDLE = 1.0  # seconds a pooled MySQL connection may idle before it is pinged


# Where a password sits in URL text: ?password=X / ?passwd=X, and user:PASSWORD@host. A key
# may be percent-encoded (``?pass%77ord=X``): SQLAlchemy decodes it, so the redaction must too.
_QUERY_ARG_RE = re.compile(r"[?&]([^=&#]*)=([^&#]*)")
_QUERY_SECRET_KEYS = ("password", "passwd")


def secret_spans(url: str) -> list[tuple[int, int]]:
    """(start, end) of every password in the URL text: the values of ``password=`` and
    ``passwd=`` query arguments, and the password of ``user:password@``, which ends at the
    authority's *last* ``@`` (an unencoded ``@`` in a password is all covered). Errs on the side
    of covering too much."""
    spans = [m.span(2) for m in _QUERY_ARG_RE.finditer(url)
             if unquote_plus(m.group(1)).lower() in _QUERY_SECRET_KEYS]
    begin = url.find("://")
    if begin < 0:
        return spans
    begin += 3
    at = next((i for i in range(len(url) - 1, begin - 1, -1) if url[i] == "@"
               and not any(s <= i < e for s, e in spans)), -1)
    colon = url.find(":", begin, at) if at >= 0 else -1
    if colon >= 0:
        spans.append((colon + 1, at))
    return sorted(spans)


def redact(url: str) -> str:
    """The URL with every password form replaced by ``***`` (safe for logs and errors)."""
    try:
        make_url(url)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"
    out, last = [], 0
    for start, end in secret_spans(url):
        out += [url[last:start], "***"]
        last = end
    return "".join(out) + url[last:]


def normalize_url(url: str) -> str:
    """``mysql://`` and ``mariadb://`` mean PyMySQL (the driver we ship with). A password given
    as ``?password=``/``?passwd=`` moves into ``user:password@`` (where SQLAlchemy hides it in
    ``repr(engine.url)``), and an unencoded ``@`` in a password is taken as part of it."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"db_url: not a database URL: {redact(url)!r}") from None
    if parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=parsed.drivername + "+pymysql")
    if parsed.get_backend_name() not in SUPPORTED:
        raise ConfigError(
            f"db_url: unsupported database {parsed.get_backend_name()!r} "
            f"(use sqlite:///FILE or mysql+pymysql://user:pw@host/db)"
        )
    if parsed.get_backend_name() != "sqlite":
        if parsed.password is not None and parsed.host and "@" in parsed.host:
            extra, host = parsed.host.rsplit("@", 1)
            parsed = parsed.set(password=f"{parsed.password}@{extra}", host=host)
        given = [k for k in parsed.query if k.lower() in _QUERY_SECRET_KEYS]
        if len(given) + (parsed.password is not None) > 1:
            raise ConfigError("db_url: the password is given twice (user:password@ and "
                              "?password= or ?passwd=): give it once")
        if given:
            password = parsed.query[given[0]]
            if not isinstance(password, str):
                raise ConfigError(f"db_url: {given[0]}= is given twice: give it once")
            parsed = parsed.difference_update_query(given).set(password=password)
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
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

    # A restarted server or an idle timeout must not turn into a failed call: a connection
    # that sat idle in the pool is pinged before use (a dead one is replaced). One in constant
    # use (a shard, a loop of add()) is not: that ping would cost a round trip per call.
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


def _sqlite_text(data: bytes) -> str:
    return str(data, "utf-8", "surrogateescape")


def _sqlite_engine(url: str) -> Engine:
    _create_private(make_url(url).database)
    engine = create_engine(url, hide_parameters=True,
                           connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so we can issue BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        # Text that is not UTF-8 (written by hand) would fail the whole result, so the claim
        # of every row with it: decoded with surrogate escapes, Task.from_row names it.
        dbapi_conn.text_factory = _sqlite_text
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that upgrades
        # later fails with SQLITE_BUSY under load instead of waiting.
        readonly = conn.get_execution_options().get("cq_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


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


def database_file_warning(url: str) -> str | None:
    """For ``cronqueue check``: an SQLite database file, ``-wal`` or ``-shm`` that other users
    may read (e.g. created by 0.1.0, 0644): its rows hold task secrets."""
    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:" \
            or path.startswith("file:"):
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


def is_transient(exc: BaseException) -> bool:
    """Deadlocks, lock-wait timeouts and a busy SQLite file: safe to retry the transaction."""
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    if isinstance(code, int) and code in _MYSQL_RETRY_CODES:
        return True
    text = str(orig).lower()
    return "database is locked" in text or "database is busy" in text


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (restart, network):
    worth waiting for. Not: constraint violations, SQL errors, a missing table."""
    cause = exc.__cause__ if isinstance(exc, DatabaseError) else exc
    if isinstance(cause, InterfaceError):
        return True
    if not isinstance(cause, OperationalError):
        return False
    orig = cause.orig
    code = orig.args[0] if orig is not None and orig.args else None
    if isinstance(code, int):
        return code in _MYSQL_UNAVAILABLE_CODES or code in _MYSQL_RETRY_CODES
    text = str(orig).lower()
    return "locked" in text or "unable to open" in text or "disk i/o" in text


def transaction(engine: Engine, work: Callable[[Connection], T], *, readonly: bool = False,
                attempts: int = 10) -> T:
    """Run ``work`` in one transaction, retrying the whole of it on a transient error."""
    for attempt in range(1, attempts + 1):
        try:
            conn_ctx = engine.connect()
            with conn_ctx as conn:
                if readonly:
                    conn = conn.execution_options(cq_readonly=True)
                with conn.begin():
                    return work(conn)
        except DBAPIError as exc:
            if attempt < attempts and is_transient(exc):
                pause = min(1.0, 0.005 * 2**attempt) * (0.5 + random.random())
                log.info("transient database error (%s); retry %d in %.3fs",
                         _short(exc), attempt, pause)
                time.sleep(pause)
                continue
            raise DatabaseError(f"database error on {redact(str(engine.url))}: "
                                f"{_short(exc)}") from exc
    raise AssertionError("unreachable")


def _short(exc: DBAPIError) -> str:
    orig = exc.orig
    return f"{type(orig).__name__}: {orig}" if orig is not None else str(exc).splitlines()[0]


def supports_json_insert(dialect: Any) -> bool:
    """``JSON_TABLE`` with ``INSERT ... RETURNING``: MariaDB >= 10.6 (of a connected dialect)."""
    version = dialect.server_version_info
    return bool(getattr(dialect, "is_mariadb", False) and version
                and tuple(version[:2]) >= (10, 6))


def supports_skip_locked(engine: Engine) -> bool:
    """``FOR UPDATE SKIP LOCKED``: MySQL >= 8.0.1, MariaDB >= 10.6. Never on SQLite."""
    dialect = engine.dialect
    if dialect.name not in ("mysql", "mariadb"):
        return False
    version = dialect.server_version_info
    if version is None:
        with engine.connect():
            version = dialect.server_version_info
    if version is None:
        return False
    if getattr(dialect, "is_mariadb", False):
        return tuple(version[:2]) >= (10, 6)
    return tuple(version[:3]) >= (8, 0, 1)
