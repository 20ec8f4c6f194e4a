"""The watchdog: if the shard dies (even by ``kill -9``), its running task's process group dies.

One small helper process per shard, started once. The shard keeps the process group of the
task it is running in an 8-byte shared memory slot (a ``memfd``; writing it costs no system
call) and holds the write end of a pipe. When that pipe reaches end of file — the shard exited
or was killed — the helper reads the slot and SIGKILLs that group, then exits. This replaces a
per-task ``PR_SET_PDEATHSIG``, which needs either a ``preexec_fn`` (forcing ``subprocess`` off
its fast ``vfork`` path onto a full fork of the shard) or an extra ``exec`` of ``setpriv`` per
task (which doubled the cost of a small task), and it kills the whole group where the death
signal reached only the direct child.

The helper runs in its own session (a Ctrl-C meant for the shard does not reach it) and is
``python -S -c`` with a few lines of code: it imports nothing beyond ``os`` and ``signal``.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import subprocess
import sys

log = logging.getLogger("cronqueue.watchdog")

_CODE = """\
import os, signal
pipe, slot = (int(x) for x in os.environ["CRONQUEUE_WATCHDOG_FDS"].split(","))
while os.read(pipe, 64):
    pass
pgid = int.from_bytes(os.pread(slot, 8, 0), "little", signed=True)
if pgid > 0:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""
_SLOT = struct.Struct("<q")


class Watchdog:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None  # the pipe's write end: closing it wakes the helper
        self._slot: mmap.mmap | None = None
        self._broken = False  # could not start: do not try again

    @property
    def running(self) -> bool:
        return self._slot is not None

    def start(self) -> bool:
        """Start the helper; False (logged) if it cannot be started."""
        if self._slot is not None:
            return True
        if self._broken:
            return False
        r, w = os.pipe()
        memfd = -1
        try:
            memfd = os.memfd_create("cronqueue-watchdog", os.MFD_CLOEXEC)
            os.ftruncate(memfd, _SLOT.size)
            slot = mmap.mmap(memfd, _SLOT.size)
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _CODE], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(r, memfd),
                env={"CRONQUEUE_WATCHDOG_FDS": f"{r},{memfd}"}, start_new_session=True)
        except (OSError, AttributeError) as exc:  # AttributeError: no memfd_create here
            os.close(w)
            self._broken = True
            log.warning("watchdog could not start (%s): tasks get PR_SET_PDEATHSIG instead",
                        exc)
            return False
        finally:
            os.close(r)
            if memfd >= 0:
                os.close(memfd)
        self._fd, self._slot = w, slot
        return True

    def watch(self, pgid: int) -> None:
        """``pgid`` is the group to kill should the shard die (0: none)."""
        if self._slot is not None:
            _SLOT.pack_into(self._slot, 0, pgid)

    def close(self) -> None:
        """Stop the helper (after the last task: the slot is empty, it kills nothing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self._slot is not None:
            self._slot.close()
            self._slot = None
