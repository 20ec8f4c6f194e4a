"""The watchdog: if the shard dies (even by ``kill -9``), its running task's process group dies.

One small helper process per shard, started once. The shard keeps the process group of the
task it is running in an 8-byte shared memory slot (a ``memfd``; writing it costs no system
call) and holds the write end of a pipe. When that pipe reaches end of file — the shard exited
or was killed — the helper reads the slot and SIGKILLs that group, then exits. This replaces a
per-task ``PR_SET_PDEATHSIG``, which needs either a ``preexec_fn`` (forcing ``subprocess`` off
its fast ``vfork`` path onto a full fork of the shard) or an extra ``exec`` of ``setpriv`` per
task (which doubled the cost of a small task), and it kills the whole group where the death
signal reached only the direct child.

The slot also holds the task id and attempt of the task being started, written before the
spawn: a shard killed after starting the script but before it could write the group id leaves
a task the group kill would miss. On the shard's death the helper then also looks through
``/proc`` for processes whose environment carries that ``CRONQUEUE_TASK_ID`` and
``CRONQUEUE_ATTEMPT`` (the run's own, so an earlier run of the task is never hit) and kills
them, their group if they lead one; it looks again a moment later, for a script still
between ``vfork`` and ``exec``.

The helper runs in its own session (a Ctrl-C meant for the shard does not reach it) and is
``python -S -c`` with a few lines of code: it imports nothing beyond ``os``, ``signal`` and
``time``.
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
import os, signal, time
pipe, slot = (int(x) for x in os.environ["CRONQUEUE_WATCHDOG_FDS"].split(","))
while os.read(pipe, 64):
    pass
raw = os.pread(slot, 24, 0)
pgid, task, attempt = (int.from_bytes(raw[i:i + 8], "little", signed=True) for i in (0, 8, 16))
if pgid > 0:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
if task > 0:
    marks = (b"\\0CRONQUEUE_TASK_ID=%d\\0" % task, b"\\0CRONQUEUE_ATTEMPT=%d\\0" % attempt)
    me = os.getpid()
    for pause in (0, 0.05, 0.25):
        time.sleep(pause)
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            try:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    env = b"\\0" + f.read() + b"\\0"
                if all(m in env for m in marks):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
"""
_SLOT = struct.Struct("<qqq")  # pgid, task id, attempt
_PGID = struct.Struct("<q")


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

    def arm(self, task_id: int, attempt: int) -> None:
        """Run ``attempt`` of task ``task_id`` is about to start (before the spawn)."""
        if self._slot is not None:
            _SLOT.pack_into(self._slot, 0, 0, task_id, attempt)

    def watch(self, pgid: int) -> None:
        """``pgid`` is the group to kill should the shard die; 0: the task is over, nothing
        to kill."""
        if self._slot is not None:
            if pgid:
                _PGID.pack_into(self._slot, 0, pgid)
            else:
                _SLOT.pack_into(self._slot, 0, 0, 0, 0)

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
