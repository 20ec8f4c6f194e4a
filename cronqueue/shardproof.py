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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from .logfiles import LogFileRefused, open_in_log_dir
from .proc import pid_start_ticks

log = logging.getLogger("cronqueue.shardproof")


def database_key(url: str | URL) -> str:
    """A short name for the database ``url`` designates (no credentials in it)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        where = os.path.realpath(u.database) if u.database not in (None, "", ":memory:") \
            else ":memory:"
        ident = f"sqlite:{where}"
    else:
        ident = f"{u.get_backend_name()}:{u.host}:{u.port}:{u.database}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def lock_path(log_dir: str | Path, url: str | URL, worker_id: int) -> Path:
    return Path(log_dir) / "locks" / "workers" / f"{database_key(url)}-{worker_id}.lock"


class WorkerLock:
    """Held by a running shard once it is registered as worker ``worker_id``."""

    def __init__(self, log_dir: str | Path, url: str | URL, worker_id: int) -> None:
        self.log_dir = Path(log_dir)
        self.path = lock_path(log_dir, url, worker_id)
        self._fd = -1

    def acquire(self) -> bool:
        """Take the lock; False (logged) if impossible: the shard is then stopped through the
        database only."""
        try:
            for _ in range(3):
                # never through a link planted in log_dir (root would create and lock its target)
                fd = open_in_log_dir(self.log_dir, self.path.relative_to(self.log_dir),
                                     os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                        self._fd = fd
                        _sweep(self.path)
                        return True
                except OSError:  # held, or unlinked meanwhile by a shard leaving: try again
                    pass
                os.close(fd)
        except (OSError, LogFileRefused) as exc:
            log.warning("cannot hold %s (%s): `workers stop` will reach this shard through "
                        "the database only", self.path, exc)
            return False
        log.warning("cannot hold %s (held by another process): `workers stop` will reach "
                    "this shard through the database only", self.path)
        return False

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still held: a successor re-creates it
            os.close(self._fd)
            self._fd = -1


def _sweep(mine: Path) -> None:
    """Remove the lock files of this database's shards that died without removing theirs
    (kill -9): those nobody holds. A shard between creating its file and locking it sees
    the file unlinked and takes a new one (``acquire`` checks the inode)."""
    prefix = mine.name.rsplit("-", 1)[0] + "-"
    try:
        names = [n for n in os.listdir(mine.parent) if n.startswith(prefix) and n != mine.name]
    except OSError:
        return
    for name in names:
        path = mine.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        except OSError:  # held by a live shard, or gone meanwhile
            pass
        finally:
            os.close(fd)


def flock_holders(path: str | Path) -> set[int]:
    """The pids holding an ``flock`` on ``path``, as ``/proc/locks`` lists them."""
    try:
        st = os.stat(path)
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


def is_that_shard(log_dir: str | Path, url: str | URL, worker_id: int, pid: int,
                  pid_start: int | None) -> bool:
    """Is local ``pid`` (started at ``pid_start``) the shard registered as ``worker_id``?"""
    return (pid > 0 and pid_start is not None and pid_start_ticks(pid) == pid_start
            and pid in flock_holders(lock_path(log_dir, url, worker_id)))


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
