"""A shard's proof, on its host, that it is worker N of this database.

A ``cronqueue_workers`` row names a host, a pid and its start time; anyone who can write to the
database can forge one, naming any process on the host. So ``workers stop`` signals a pid only
when the process itself proves to be that shard: for its life a shard holds an ``flock`` on
``log_dir/locks/workers/<db>-<id>.lock`` (``<db>``: a hash of the database's identity, so
installations sharing a log_dir never meet), and the kernel's ``/proc/locks`` names the pid
holding a lock on that file's device and inode. An unrelated process holds no such lock and
cannot be made to. The signal then goes through a pidfd opened *before* the proof, so a pid
reused in between is never hit. Without proof (another host, another log_dir, no ``/proc``)
only the database flag is set, which the shard reads at its next heartbeat.

The lock directory and files are created ``0700``/``0600`` and reached as logfiles.py reaches
its files: each component opened with ``O_NOFOLLOW`` relative to the directory above, the file
used only if it is a regular file of the shard's user or root with one name. So a link planted
at a lock path (to a file some unrelated process flocks, or one root would create) is neither
created, locked, swept nor taken as proof.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import stat
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from cronqueue.process.identity import pid_start_ticks
from cronqueue.process.logfiles import (
    LogFileRefused,
    file_refusal,
    open_dir_in_log_dir,
    open_file_at,
)
from cronqueue.store.backends import backend_for

log = logging.getLogger("cronqueue.shardproof")


def database_key(url: str | URL) -> str:
    """A short name for the database ``url`` designates (no credentials in it)."""
    u = make_url(url)
    ident = backend_for(u.get_backend_name()).database_identity(u)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def lock_path(log_dir: str | Path, url: str | URL, worker_id: int) -> Path:
    return Path(log_dir) / LOCK_DIR / lock_name(url, worker_id)


LOCK_DIR = Path("locks") / "workers"  # below log_dir


def lock_name(url: str | URL, worker_id: int) -> str:
    return f"{database_key(url)}-{worker_id}.lock"


class WorkerLock:
    """Held by a running shard once it is registered as worker ``worker_id``."""

    def __init__(self, log_dir: str | Path, url: str | URL, worker_id: int) -> None:
        self.log_dir = Path(log_dir)
        self.path = lock_path(log_dir, url, worker_id)
        self.name = lock_name(url, worker_id)
        self._fd = -1
        self._dir_fd = -1  # the lock's directory, held with it: release unlinks in it

    def acquire(self) -> bool:
        """Take the lock; False (logged) if impossible: the shard is then stopped through the
        database only."""
        try:
            dir_fd = open_dir_in_log_dir(self.log_dir, LOCK_DIR)
        except (OSError, LogFileRefused) as exc:
            return self._without(exc)
        try:
            for _ in range(3):
                fd = open_file_at(dir_fd, self.name, os.O_RDWR | os.O_CREAT, 0o600,
                                  shown=self.path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if os.fstat(fd).st_ino == _lstat_at(dir_fd, self.name).st_ino:
                        self._fd, self._dir_fd = fd, dir_fd
                        _sweep(dir_fd, self.name)
                        return True
                except OSError:  # held, or unlinked meanwhile by a shard leaving: try again
                    pass
                os.close(fd)
        except (OSError, LogFileRefused) as exc:
            os.close(dir_fd)
            return self._without(exc)
        os.close(dir_fd)
        log.warning("cannot hold %s (held by another process): `workers stop` will reach "
                    "this shard through the database only", self.path)
        return False

    def _without(self, exc: Exception) -> bool:
        log.warning("cannot hold %s (%s): `workers stop` will reach this shard through "
                    "the database only", self.path, exc)
        return False

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self._dir_fd)  # still held: a successor re-creates
            os.close(self._fd)
            os.close(self._dir_fd)
            self._fd = self._dir_fd = -1


def _lstat_at(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _sweep(dir_fd: int, mine: str) -> None:
    """Remove the lock files of this database's shards that died without removing theirs
    (kill -9): those nobody holds. A shard between creating its file and locking it sees
    the file unlinked and takes a new one (``acquire`` checks the inode). Links and files
    that are not ours are left alone."""
    prefix = mine.rsplit("-", 1)[0] + "-"
    try:
        names = [n for n in os.listdir(dir_fd) if n.startswith(prefix) and n != mine]
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=dir_fd)
        except OSError:
            continue
        try:
            if file_refusal(os.fstat(fd)):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == _lstat_at(dir_fd, name).st_ino:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:  # held by a live shard, or gone meanwhile
            pass
        finally:
            os.close(fd)


def flock_holders(path: str | Path) -> set[int]:
    """The pids holding an ``flock`` on the file at ``path``, as ``/proc/locks`` lists them;
    none if ``path`` is a link (never followed) or not a regular file."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return set()
    return _holders(st) if stat.S_ISREG(st.st_mode) else set()


def _holders(st: os.stat_result) -> set[int]:
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return set()
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":  # "->": waiting for the lock, not holding it
            continue
        if fields[1] == "FLOCK" and fields[5] == where:
            with contextlib.suppress(ValueError):
                holders.add(int(fields[4]))
    return holders


def _lock_holders(log_dir: str | Path, url: str | URL, worker_id: int) -> set[int]:
    """The holders of worker ``worker_id``'s lock file, reached without following a link
    (nor creating anything); none unless it is a file a shard would have created (a regular
    file of the shard's user or root, one name, in directories of theirs)."""
    try:
        dir_fd = open_dir_in_log_dir(log_dir, LOCK_DIR, create=False)
    except (OSError, LogFileRefused):
        return set()
    try:
        st = _lstat_at(dir_fd, lock_name(url, worker_id))
    except OSError:
        return set()
    finally:
        os.close(dir_fd)
    return set() if file_refusal(st) else _holders(st)


def is_that_shard(log_dir: str | Path, url: str | URL, worker_id: int, pid: int,
                  pid_start: int | None) -> bool:
    """Is local ``pid`` (started at ``pid_start``) the shard registered as ``worker_id``?"""
    return (pid > 0 and pid_start is not None and pid_start_ticks(pid) == pid_start
            and pid in _lock_holders(log_dir, url, worker_id))


def signal_shard(log_dir: str | Path, url: str | URL, worker_id: int, pid: int,
                 pid_start: int | None, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` to ``pid`` if it proves to be the shard ``worker_id``; True if sent."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # gone, or no pidfd here: no signal without one
        return False
    try:
        if not is_that_shard(log_dir, url, worker_id, pid, pid_start):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:  # it exited meanwhile (ESRCH), or is not ours to signal (EPERM)
        return False
    finally:
        os.close(pidfd)
