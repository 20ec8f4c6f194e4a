"""Open a task script beneath task_dir without following any link out of it, and check who
may have changed it.

The script is found by walking its path one component at a time from an open descriptor of
task_dir, each component opened ``O_PATH | O_NOFOLLOW`` relative to the directory before it.
A symbolic link is read and its target walked the same way (a relative target from the link's
directory, an absolute one only if it names a place beneath task_dir's real path); ``..`` never
climbs above task_dir. No name is looked up twice: what is checked is the descriptor returned,
and the runner executes that very descriptor (``/proc/self/fd/N``), so swapping a file or a
directory for a link at any moment cannot make a file outside task_dir run.

Like sshd's StrictModes and cron, a script is refused when it, or a directory from task_dir down
to it (task_dir included), is owned by anyone but the shard's user or root, or is writable by
anyone else (world-writable, or group-writable for a group with another member): someone else
could have rewritten what runs as the shard's user.

(``openat2(RESOLVE_BENEATH)`` would resolve in one call, but the walk gives each directory's
``fstat`` for the ownership check for free, costs about as much for the usual one- or
two-component names, and is one code path on every kernel.)
"""

from __future__ import annotations

import errno
import functools
import grp
import os
import pwd
import stat
from dataclasses import dataclass

from cronqueue.errors import ScriptError

_MAX_LINKS = 40  # as the kernel's path walk (ELOOP beyond)
_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class OpenedScript:
    """A checked task script: ``fd`` (``O_PATH``, close-on-exec) is the caller's to close."""

    fd: int
    st: os.stat_result
    path: str  # where it was found: task_dir's real path + the walked components (for display)


def open_beneath(root: str, taskscript: str, *, euid: int | None = None) -> OpenedScript:
    """Open ``taskscript`` (relative, already syntax-checked) beneath the directory ``root``
    (an absolute real path). Raises ``ScriptError`` naming the culprit: permanent for
    escapes, loops, wrong types and loose permissions; not permanent for a missing file or an
    error that may pass (EACCES, EIO, ...)."""
    uid = os.geteuid() if euid is None else euid
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ScriptError(f"task_dir {root} does not exist", permanent=False) from None
    except OSError as exc:
        raise ScriptError(f"task_dir {root} cannot be opened: {exc.strerror or exc}",
                          permanent=False) from None
    stack: list[tuple[int, str]] = [(root_fd, root)]  # open directories, the first is root
    try:
        _strict(taskscript, root, os.fstat(root_fd), uid, "task_dir")
        return _walk(root, taskscript, stack, uid)
    finally:
        for fd, _ in stack:
            os.close(fd)


def _walk(root: str, taskscript: str, stack: list[tuple[int, str]], uid: int) -> OpenedScript:
    parts = [p for p in taskscript.split("/") if p not in ("", ".")]
    parts.reverse()  # a stack: the next component last
    links = 0
    while parts:
        name = parts.pop()
        if name == "..":
            if len(stack) == 1:
                raise ScriptError(f"taskscript {taskscript!r} resolves outside task_dir "
                                  f"({root}): refused", permanent=True)
            os.close(stack.pop()[0])
            continue
        dir_fd, dir_path = stack[-1]
        where = f"{dir_path}/{name}"
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise _os_error(taskscript, where, exc) from None
        keep = False
        try:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise ScriptError(f"taskscript {taskscript!r}: too many levels of symbolic "
                                      f"links at {where} (a symlink loop?)", permanent=True)
                try:  # the link opened, not whatever the name is now
                    target = os.readlink("", dir_fd=fd)
                except OSError as exc:
                    raise _os_error(taskscript, where, exc) from None
                if target.startswith("/"):
                    rest = _beneath(root, target)
                    if rest is None:
                        raise ScriptError(f"taskscript {taskscript!r} resolves outside "
                                          f"task_dir ({root}): {where} -> {target}: refused",
                                          permanent=True)
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                    target = rest
                parts.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if parts:  # a directory on the way
                if not stat.S_ISDIR(st.st_mode):
                    raise ScriptError(f"taskscript {taskscript!r}: {where} is not a directory",
                                      permanent=True)
                _strict(taskscript, where, st, uid, "directory")
                stack.append((fd, where))
                keep = True
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ScriptError(f"taskscript {taskscript!r} is not a regular file ({where})",
                                  permanent=True)
            _strict(taskscript, where, st, uid, "taskscript")
            keep = True
            return OpenedScript(fd, st, where)
        finally:
            if not keep:
                os.close(fd)
    raise ScriptError(f"taskscript {taskscript!r} is not a regular file (it names task_dir)",
                      permanent=True)


def _beneath(root: str, target: str) -> str | None:
    """``target`` (absolute) relative to ``root`` if it lies beneath it, else None."""
    norm = "/" + "/".join(p for p in target.split("/") if p not in ("", "."))
    if norm == root:
        return ""
    if norm.startswith(root.rstrip("/") + "/"):
        return norm[len(root.rstrip("/")) + 1:]
    return None


def strict_mode_problem(st: os.stat_result, uid: int) -> str | None:
    """sshd's StrictModes: owned by the shard's user or root, and writable by nobody else.
    Group-writable is accepted only for a group whose every member is that user or root (a
    user-private group: the default umask 002 of Debian and Ubuntu user accounts makes such
    directories). What is wrong with ``st`` (to follow its path), or None."""
    if st.st_uid not in (uid, 0):
        return f"is owned by uid {st.st_uid}, not by the shard's user (uid {uid}) or root"
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not _private_group(st.st_gid, uid)):
        return f"is group- or world-writable (mode {stat.S_IMODE(st.st_mode):o})"
    return None


@functools.lru_cache(maxsize=64)
def _private_group(gid: int, uid: int) -> bool:
    """Is every member of group ``gid`` (listed, or by primary group) ``uid`` or root?"""
    allowed = {0, uid}
    try:
        names = grp.getgrgid(gid).gr_mem
    except KeyError:
        return False  # a group nobody can name: assume the worst
    for name in names:
        try:
            if pwd.getpwnam(name).pw_uid not in allowed:
                return False
        except KeyError:
            return False
    return all(entry.pw_uid in allowed for entry in pwd.getpwall() if entry.pw_gid == gid)


def _strict(taskscript: str, where: str, st: os.stat_result, uid: int, what: str) -> None:
    problem = strict_mode_problem(st, uid)
    if problem:
        raise ScriptError(f"taskscript {taskscript!r} refused: {what} {where} {problem}",
                          permanent=True)


def _os_error(taskscript: str, where: str, exc: OSError) -> ScriptError:
    if exc.errno == errno.ENOENT:
        return ScriptError(f"taskscript {taskscript!r} not found ({where} does not exist)",
                           permanent=False)
    permanent = exc.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EINVAL)
    return ScriptError(f"taskscript {taskscript!r} cannot be opened at {where}: "
                       f"{exc.strerror or exc}", permanent=permanent)


def is_executable(st: os.stat_result, uid: int) -> bool:
    """Whether ``execve`` would let the shard's user run a file of this mode (root: any x
    bit). The owner is the user or root (checked before)."""
    mode = st.st_mode
    if uid == 0:
        return bool(mode & 0o111)
    if st.st_uid == uid:
        return bool(mode & stat.S_IXUSR)
    if st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


# -- why a script that was started directly did not run ------------------------------------------

_SHEBANG_FOR = {".py": "#!/usr/bin/env python3", ".sh": "#!/bin/sh", ".php": "#!/usr/bin/env php"}
_CRLF = ("#! line ends in CR (\\r): the file has Windows line endings (CRLF); convert it "
         "(dos2unix FILE, or sed -i 's/\\r$//' FILE)")


def first_line(opened: OpenedScript, most: int = 256) -> bytes | None:
    """The first bytes of an opened script, up to its first newline (read through
    ``/proc/self/fd``: the descriptor itself is ``O_PATH``); None if it cannot be read."""
    try:
        fd = os.open(f"/proc/self/fd/{opened.fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        return os.read(fd, most).split(b"\n", 1)[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def exec_problem(opened: OpenedScript, error: int) -> str | None:
    """What an executable script's first line says about ``execve`` failing with ``error``:
    ENOEXEC (no ``#!`` line: "Exec format error") or ENOENT (an interpreter with a CR at its
    end, from Windows line endings, or one that does not exist: "No such file or
    directory"); None when it says nothing more."""
    if error not in (errno.ENOEXEC, errno.ENOENT):
        return None
    line = first_line(opened)
    if line is None:
        return None
    if not line.startswith(b"#!"):
        if error != errno.ENOEXEC or line.startswith(b"\x7fELF"):
            return None
        shebang = _SHEBANG_FOR.get(os.path.splitext(opened.path)[1], "#!/path/of/its/interpreter")
        return (f"no #! line: add `{shebang}` as its first line, or make it non-executable "
                "(chmod -x) to run it by its extension")
    if line.endswith(b"\r"):
        return _CRLF
    words = line[2:].split()
    if error == errno.ENOENT and words:
        return f"its #! interpreter {os.fsdecode(words[0])!r} does not exist"
    return None


def exit_problem(opened: OpenedScript, returncode: int) -> str | None:
    """A script run through ``#!/usr/bin/env NAME\\r`` exits 127 (``env`` finds no
    ``NAME\\r``): the CRLF line is the cause."""
    if returncode != 127:
        return None
    line = first_line(opened)
    return _CRLF if line is not None and line.startswith(b"#!") and line.endswith(b"\r") \
        else None
