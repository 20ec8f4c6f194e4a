"""The shard guard: one process per (mission entry, shard) at a time, on every host.

Two locks, both released by the kernel or the server the moment their holder dies (kill -9
included), so a crashed shard never blocks its successor:

* this host: ``flock`` on ``log_dir/locks/<database key>-<entry>.<shard>.lock`` (a lock an
  older version holds at ``<entry>.<shard>.lock`` is honoured);
* all hosts (a backend with named locks: MySQL/MariaDB ``GET_LOCK``): the server's named lock
  on a connection the shard keeps open for its life (``store.workers.ServerLock``). (SQLite is
  a single-host database: the file lock is the whole story there.)
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from cronqueue.errors import CronqueueError, DatabaseError
from cronqueue.process.logfiles import LogFileRefused, open_in_log_dir
from cronqueue.shard.proof import database_key
from cronqueue.store.engine import redact
from cronqueue.store.workers import ServerLock, lock_held, lock_name

log = logging.getLogger("cronqueue.guard")


def lock_path(log_dir: Path, entry: str, shard: int, url: str | URL) -> Path:
    """The shard's file lock, named after its database too: two installations sharing a
    log_dir (each with its own database) and an entry name would otherwise hold each other's
    lock, and one's shards would never start ("already running on this host")."""
    return log_dir / "locks" / f"{database_key(url)}-{entry}.{shard}.lock"


def legacy_lock_path(log_dir: Path, entry: str, shard: int) -> Path:
    """Where a shard of cronqueue before 0.2 held its lock: still honoured (only probed, never
    taken), so that an upgrade never starts a second copy of a shard an older one runs."""
    return log_dir / "locks" / f"{entry}.{shard}.lock"


def is_locked_here(log_dir: Path, entry: str, shard: int, url: str | URL) -> bool:
    """Does a live process on this host hold the shard's file lock? (Probe, then release.)"""
    return (_held(lock_path(log_dir, entry, shard, url))
            or _held(legacy_lock_path(log_dir, entry, shard)))


def _held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # missing, or a link nobody of ours made
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_locked_in_db(engine: Engine, entry: str, shard: int) -> bool:
    """Does a process on any host hold the shard's database lock? (False on SQLite.)"""
    try:
        return lock_held(engine, lock_name(engine, entry, shard))
    except DBAPIError as exc:
        raise DatabaseError(f"shard lock check on {redact(str(engine.url))}: "
                            f"{type(exc.orig).__name__}: {exc.orig}") from exc


class ShardGuard:
    """Held by a running shard; ``acquire()`` is False if the shard already runs elsewhere."""

    def __init__(self, engine: Engine, log_dir: Path, entry: str, shard: int) -> None:
        self.engine = engine
        self.log_dir = log_dir
        self.path = lock_path(log_dir, entry, shard, engine.url)
        self.legacy_path = legacy_lock_path(log_dir, entry, shard)
        self.server_lock = ServerLock(engine, lock_name(engine, entry, shard))
        self.holder = ""  # where the running copy is, when acquire() fails
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        try:
            return self._acquire()
        except DBAPIError as exc:  # surfaced like every other database error (URL redacted)
            self.release()
            raise DatabaseError(f"shard lock on {redact(str(self.engine.url))}: "
                                f"{type(exc.orig).__name__}: {exc.orig}") from exc

    def _acquire(self) -> bool:
        server_lock = self.server_lock.available
        try:
            # Never through a link planted in log_dir (root would create and lock its target).
            fd = open_in_log_dir(self.log_dir, self.path.relative_to(self.log_dir),
                                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except (OSError, LogFileRefused) as exc:  # a full log disk, a read-only one, a link
            if not server_lock:
                raise CronqueueError(
                    f"shard lock {self.path}: cannot hold it ({exc}); on SQLite it alone keeps "
                    "this shard from running twice on this host: not starting") from None
            log.warning("shard lock %s: cannot hold it (%s); the database lock (GET_LOCK) "
                        "alone keeps this shard from running twice", self.path, exc)
            handle = None
        else:
            handle = os.fdopen(fd, "ab")  # held open for the shard's life
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _held(self.legacy_path):  # an older cronqueue's copy of this shard runs
                    raise BlockingIOError
            except BlockingIOError:
                handle.close()
                self.holder = "this host"
                return False
        self._file = handle
        if not self.server_lock.acquire():
            self.release()
            self.holder = "another host"
            return False
        return True

    def verify(self) -> bool:
        """Do we still hold the database lock? A database restart drops it with the
        connection: take it again, unless another copy of this shard got it meanwhile."""
        if self.server_lock.verify():
            return True
        self.holder = "another host"
        return False

    def release(self) -> None:
        self.server_lock.release()
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None
