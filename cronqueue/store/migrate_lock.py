"""The migration lock: one ``cronqueue migrate`` at a time on a database, from any host.

SQLite: the whole upgrade is one ``BEGIN IMMEDIATE`` transaction (the write lock; all or
nothing). MySQL/MariaDB: ``GET_LOCK`` on a name derived from the database's name, held on the
connection that runs the migrations (DDL commits each statement there: see ``migrate.py``).
A second ``migrate`` waits, says once that it waits, and then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from cronqueue.errors import DatabaseError

log = logging.getLogger("cronqueue.migrate")


@dataclass
class Session:
    """A connection that holds the migration lock. ``atomic``: one transaction for it all
    (SQLite); else each step is committed as it completes (MySQL/MariaDB DDL commits anyway)."""

    conn: Connection
    atomic: bool
    who: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def checkpoint(self) -> None:
        if not self.atomic:
            self.conn.commit()


@contextmanager
def locked(engine: Engine) -> Iterator[Session]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            _begin_immediate(conn)
            try:
                yield Session(conn, atomic=True)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return
        name = lock_name(conn)
        _get_lock(conn, name)
        try:
            yield Session(conn, atomic=False)
            conn.commit()
        finally:
            with suppress(DBAPIError):
                conn.rollback()
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()


def lock_name(conn: Connection) -> str:
    """The MySQL/MariaDB named lock of one database's migrations (names are server-wide,
    at most 64 characters): the same from every host, whatever name it uses for the server."""
    database = conn.execute(text("SELECT DATABASE()")).scalar()
    conn.commit()
    return "cronqueue:migrate:" + hashlib.sha256(str(database).encode()).hexdigest()[:40]


def _get_lock(conn: Connection, name: str) -> None:
    wait = 0
    while True:
        got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                           {"name": name, "wait": wait}).scalar()
        conn.commit()
        if got == 1:
            return
        if got is None:
            raise DatabaseError("GET_LOCK failed for the migration lock")
        if wait == 0:
            log.info("waiting for the migration lock: another `cronqueue migrate` is running "
                     "on this database")
        wait = 5


def _begin_immediate(conn: Connection) -> None:
    """SQLite: take the write lock (``BEGIN IMMEDIATE``, by the engine's begin hook), saying
    once that it waits for another writer."""
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
                if "locked" not in str(exc.orig).lower() and "busy" not in str(exc.orig).lower():
                    raise
                if not told:
                    log.info("waiting for the migration lock: another `cronqueue migrate` (or a "
                             "writer) holds the database")
                    told = True
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(before)}")
