"""Keep the database URL out of what task scripts can read about their ancestors.

A task can read ``/proc/$PPID/environ`` and ``/proc/$PPID/cmdline`` (its shard, in exec mode;
the shard is the fork server's parent in fork mode), and those of the mission that started the
shard. Both files show the memory the process was started with, whatever ``os.environ`` or
``sys.argv`` became since. So a shard or a mission, as it starts (before any task exists):

* takes ``CRONQUEUE_DB_URL`` out of its environment (no child inherits it), and
* overwrites, in that start-up memory, the variable's value and every password of a URL given
  on the command line (``--db URL``) with ``*``: ``ps`` shows ``--db mysql://u:****@host/db``.

Linux only (elsewhere, and if the memory does not look as expected, only the first part is
done). Root, or a process allowed to ptrace the shard, can still read its memory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from cronqueue.store.engine import secret_spans

log = logging.getLogger("cronqueue.conceal")
URL_VARIABLE = "CRONQUEUE_DB_URL"


def conceal_db_url(argv_urls: tuple[str, ...] = ()) -> None:
    """Hide ``CRONQUEUE_DB_URL`` and the passwords of ``argv_urls`` (URLs given as arguments)
    from this process's children and from ``/proc/PID/{environ,cmdline}``."""
    os.environ.pop(URL_VARIABLE, None)
    if not sys.platform.startswith("linux"):
        return
    try:
        areas = _start_areas()
    except (OSError, ValueError, IndexError) as exc:
        log.debug("cannot read this process's start-up memory areas: %s", exc)
        return
    if areas is None:
        return
    (arg_start, arg_end), (env_start, env_end) = areas
    prefix = URL_VARIABLE.encode() + b"="
    env = ctypes.string_at(env_start, env_end - env_start)
    offset = 0
    for entry in env.split(b"\0"):
        if entry.startswith(prefix):
            _fill(env_start + offset + len(prefix), len(entry) - len(prefix))
        offset += len(entry) + 1
    args = ctypes.string_at(arg_start, arg_end - arg_start)
    offset = 0
    for arg in args.split(b"\0"):
        for url in argv_urls:
            raw = url.encode("utf-8", "surrogateescape")
            where = arg.find(raw)
            if url and where >= 0:
                base = where + _byte_offset(url, 0)
                for start, end in secret_spans(url):
                    begin = _byte_offset(url, start)
                    _fill(arg_start + offset + base + begin, _byte_offset(url, end) - begin)
        offset += len(arg) + 1


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogateescape"))


def _start_areas() -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(arg_start, arg_end), (env_start, env_end) of this process (``/proc/self/stat`` fields
    48-51), checked against ``/proc/self/cmdline`` and ``/proc/self/environ``."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state): field N is fields[N - 3].
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    if not (0 < arg_start <= arg_end and 0 < env_start <= env_end):
        return None
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    with open("/proc/self/environ", "rb") as f:
        environ = f.read()
    if (ctypes.string_at(arg_start, arg_end - arg_start) != cmdline
            or ctypes.string_at(env_start, env_end - env_start) != environ):
        log.debug("start-up memory does not match /proc/self: left as is")
        return None
    return (arg_start, arg_end), (env_start, env_end)


def _fill(address: int, length: int) -> None:
    if length > 0:
        ctypes.memset(address, ord("*"), length)
