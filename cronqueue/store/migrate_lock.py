"""The migration lock: one ``cronqueue migrate`` at a time on a database, from any host.

What the backend offers decides how (``store/backends``): with serialized writers (SQLite) the
whole upgrade is one write transaction (``BEGIN IMMEDIATE``: the lock, and all or nothing);
with named locks (MySQL/MariaDB ``GET_LOCK``) the lock is held by the connection that runs the
migrations, on a name derived from the database's name, and each step is committed as it
completes (DDL commits there anyway: see ``migrate.py``). A second ``migrate`` waits, says once
that it waits, and then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from cronqueue.store.backends import Backend, backend_for

log = logging.getLogger("cronqueue.migrate")
_POLL = 0.25  # seconds between two tries of a named lock another migrate holds
_WAITING = "waiting for the migration lock: another `cronqueue migrate` is running on this database"


@dataclass
class Session:
    """A connection that holds the migration lock. ``atomic``: one transaction for it all;
    else each step is committed as it completes."""

    conn: Connection
    atomic: bool
    who: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def checkpoint(self) -> None:
        if not self.atomic:
            self.conn.commit()


@contextmanager
def locked(engine: Engine) -> Iterator[Session]:
    backend = backend_for(engine)
    with engine.connect() as conn:
        if backend.serialized_writers:
            _begin_write(conn, backend)
            try:
                yield Session(conn, atomic=True)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return
        name = lock_name(conn)
        told = False
        while not backend.lock_acquire(conn, name):
            if not told:
                log.info(_WAITING)
                told = True
            time.sleep(_POLL)
        try:
            yield Session(conn, atomic=False)
            conn.commit()
        finally:
            with suppress(DBAPIError):
                conn.rollback()
                backend.lock_release(conn, name)


def lock_name(conn: Connection) -> str:
    """The named lock of one database's migrations (names are server-wide, at most 64
    characters): the same from every host, whatever name that host gives the server."""
    database = conn.dialect.default_schema_name or conn.engine.url.database
    return "cronqueue:migrate:" + hashlib.sha256(str(database).encode()).hexdigest()[:40]


def _begin_write(conn: Connection, backend: Backend) -> None:
    """Serialized writers (SQLite): take the write lock (``BEGIN IMMEDIATE``, the engine's begin
    hook), in 1 s waits of the driver's busy timeout, saying once that it waits."""
    raw: Any = conn.connection.dbapi_connection
    before = raw.execute("PRAGMA busy_timeout").fetchone()[0]
    raw.execute("PRAGMA busy_timeout = 1000")
    told = False
    try:
        while True:
            try:
                conn.begin()
                return
            except OperationalError as exc:
                if not backend.is_transient(exc):
                    raise
                if not told:
                    log.info("%s (or another writer holds it)", _WAITING)
                    told = True
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(before)}")
