"""Engines and transactions: the URL (normalized and redacted), the engine of its backend,
transactions retried on a transient error.

Build an engine inside the process that uses it (never share one across ``fork``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote_plus

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
)

from cronqueue.errors import ConfigError, DatabaseError
from cronqueue.store.backends import BACKENDS, backend_for
from cronqueue.store.backends.base import SECRET_QUERY_KEYS

log = logging.getLogger("cronqueue.db")
T = TypeVar("T")

# Where a password sits in URL text: ?password=X / ?passwd=X, and user:PASSWORD@host. A key
# may be percent-encoded (``?pass%77ord=X``): SQLAlchemy decodes it, so the redaction must too.
_QUERY_ARG_RE = re.compile(r"[?&]([^=&#]*)=([^&#]*)")


def secret_spans(url: str) -> list[tuple[int, int]]:
    """(start, end) of every password in the URL text: the values of ``password=`` and
    ``passwd=`` query arguments, and the password of ``user:password@``, which ends at the
    authority's *last* ``@`` (an unencoded ``@`` in a password is all covered). Errs on the side
    of covering too much."""
    spans = [m.span(2) for m in _QUERY_ARG_RE.finditer(url)
             if unquote_plus(m.group(1)).lower() in SECRET_QUERY_KEYS]
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
    """The URL as the engine gets it: each backend's normalization (``mysql://`` and
    ``mariadb://`` mean PyMySQL; a password given as ``?password=`` moves into
    ``user:password@``...). Refuses an unparseable URL and an unsupported database."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"db_url: not a database URL: {redact(url)!r}") from None
    try:
        backend = backend_for(parsed.get_backend_name())
    except ValueError:
        raise ConfigError(
            f"db_url: unsupported database {parsed.get_backend_name()!r} "
            f"(use sqlite:///FILE or mysql+pymysql://user:pw@host/db)"
        ) from None
    normalized = backend.normalize_url(parsed)
    check_driver(normalized, url)
    return normalized.render_as_string(hide_password=False)


_SHIPPED_DRIVERS = frozenset({"pymysql", "pysqlite"})  # cronqueue's own: nothing to load


def check_driver(url: URL, given: str) -> None:
    """The URL's driver exists and its module is installed, else one ``ConfigError`` line
    naming the driver (``mysql+pymsql://`` was a ``NoSuchModuleError`` traceback at the first
    statement). The drivers cronqueue ships are known; another is loaded here, once."""
    driver = url.get_driver_name()
    if driver in _SHIPPED_DRIVERS:
        return
    where = f"in {redact(given)!r}"
    ours = "sqlite:///FILE" if url.get_backend_name() == "sqlite" else \
        "mysql+pymysql://user:pw@host/db"
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"db_url: no driver {driver!r} for {url.get_backend_name()} {where} "
                          f"(mistyped? cronqueue ships {ours})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(f"db_url: driver {driver!r} {where} is not installed "
                          f"({type(exc).__name__}: {exc}); cronqueue ships {ours}") from None


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    return backend_for(make_url(url).get_backend_name()).create_engine(url)


def database_file_warning(url: str) -> str | None:
    """For ``cronqueue check``: a database file that other users may read (rows hold task
    secrets), or None (a server database, a private file)."""
    parsed = make_url(url)
    return backend_for(parsed.get_backend_name()).file_warning(parsed)


def is_transient(exc: BaseException) -> bool:
    """A deadlock, a lock-wait timeout, a busy file: safe to retry the transaction. (Each
    backend judges the errors of its own driver.)"""
    return any(b.is_transient(exc) for b in BACKENDS)


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (restart, network):
    worth waiting for. Not: constraint violations, SQL errors, a missing table. (``exc``: a
    driver error or the ``DatabaseError`` raised from one; each backend judges its own.)"""
    cause = exc.__cause__ if isinstance(exc, DatabaseError) else exc
    if cause is None:
        return False
    return isinstance(cause, InterfaceError) or any(b.is_unavailable(cause) for b in BACKENDS)


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
