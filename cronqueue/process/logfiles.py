"""log_dir and its day logs, opened without following links someone else planted.

log_dir is opened once (created if missing) and kept as a descriptor; it may be a symbolic link
only if the link belongs to the shard's user or root (an operator's ``logs -> /var/log/cq``,
not a link planted in a shared parent). Day logs (``YYYY-MM-DD.log``) are opened relative to it
with ``O_NOFOLLOW`` (a planted link is refused, never written through), created ``0600``, and
used only if they are regular files of the shard's user or root with a single name (a planted
hard link to another file is refused too). The other files cronqueue keeps in log_dir (the
mission's ``shards.log``, the lock files under ``locks/``) are opened the same way by
``open_in_log_dir``: no component below log_dir is followed if it is a link.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cronqueue.errors import CronqueueError

_DAY_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT  # open_file_at adds O_NOFOLLOW and the rest
_DAY_MODE = 0o600


class LogFileRefused(CronqueueError):
    """log_dir or a day log is not what cronqueue would have created: not written to."""


class LogDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def fd(self) -> int:
        """log_dir, open (created if missing). Raises OSError or LogFileRefused."""
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_nlink > 0:
                    return self._fd
            except OSError:
                pass
            self.close()  # removed meanwhile: open it again
        uid = os.geteuid()
        self.path.mkdir(parents=True, exist_ok=True)
        link = os.lstat(self.path)
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (uid, 0):
            raise LogFileRefused(f"log_dir {self.path} is a symbolic link owned by uid "
                                 f"{link.st_uid}, not by the shard's user or root: refused")
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fd = fd
        return fd

    def open_day(self, day: str) -> int:
        """``log_dir/<day>.log`` for appending. Raises OSError or LogFileRefused."""
        name = f"{day}.log"
        return open_file_at(self.fd(), name, _DAY_FLAGS, _DAY_MODE, shown=self.path / name)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_in_log_dir(log_dir: str | Path, relpath: str | Path, flags: int,
                    mode: int = _DAY_MODE) -> int:
    """``log_dir/relpath`` opened with ``flags`` (``O_CREAT`` creates it ``mode``), its
    directories below log_dir created as needed (``0700``); no component below log_dir is
    followed if it is a link (a link someone planted in a shared log_dir would have root
    append to, create or lock a file of their choice), and each must be a directory or regular
    file of the shard's user or root (the file: with one name). log_dir itself is taken as
    ``LogDir`` takes it. Returns a descriptor (blocking, close-on-exec). Raises OSError or
    LogFileRefused."""
    relpath = Path(relpath)
    dir_fd = open_dir_in_log_dir(log_dir, relpath.parent)
    try:
        return open_file_at(dir_fd, relpath.name, flags, mode, shown=Path(log_dir) / relpath)
    finally:
        os.close(dir_fd)


def open_dir_in_log_dir(log_dir: str | Path, reldir: str | Path, *,
                        create: bool = True) -> int:
    """``log_dir/reldir`` as a directory descriptor (close-on-exec), each component below
    log_dir opened with ``O_NOFOLLOW`` relative to the one above and refused unless a
    directory of the shard's user or root; missing ones created ``0700`` (with ``create``;
    else FileNotFoundError, and log_dir itself is not created either). Raises OSError or
    LogFileRefused."""
    if create:
        top = LogDir(log_dir)
        dir_fd = os.dup(top.fd())
        top.close()
    else:
        dir_fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    uid = os.geteuid()
    try:
        for name in Path(reldir).parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except OSError as exc:
                if stat.S_ISLNK(_lmode(name, dir_fd)) or isinstance(exc, NotADirectoryError):
                    raise LogFileRefused(f"{Path(log_dir) / reldir}: {name} is not a "
                                         "directory (a symbolic link?): refused") from None
                raise
            os.close(dir_fd)
            dir_fd = fd
            owner = os.fstat(fd).st_uid
            if owner not in (uid, 0):
                raise LogFileRefused(f"{Path(log_dir) / reldir}: directory {name} is owned by "
                                     f"uid {owner}, not by the shard's user or root: refused")
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def open_file_at(dir_fd: int, name: str, flags: int, mode: int = _DAY_MODE, *,
                 shown: str | Path) -> int:
    """``name`` in the directory ``dir_fd``, opened with ``flags | O_NOFOLLOW`` (``O_CREAT``
    creates it ``mode``) and kept only if it is a regular file of the shard's user or root
    with one name; ``shown`` names it in errors. Returns a blocking, close-on-exec
    descriptor. Raises OSError or LogFileRefused."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
    except OSError:
        if stat.S_ISLNK(_lmode(name, dir_fd)):
            raise LogFileRefused(f"{shown} is a symbolic link: refused "
                                 "(never written through a link)") from None
        raise
    try:
        why = file_refusal(os.fstat(fd))
        if why:
            raise LogFileRefused(f"{shown} is {why}: refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_refusal(st: os.stat_result) -> str:
    """Why a file cronqueue keeps in log_dir is not one it would have created ("" if it
    is): not a regular file, owned by another user than the shard's or root, or with more
    than one name (a hard link planted to another file)."""
    return ("not a regular file" if not stat.S_ISREG(st.st_mode)
            else f"owned by uid {st.st_uid}" if st.st_uid not in (os.geteuid(), 0)
            else f"a file with {st.st_nlink} hard links" if st.st_nlink != 1
            else "")


def _lmode(name: str, dir_fd: int | None) -> int:
    try:
        return os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return 0
