"""The watchdog: if the shard dies (even by ``kill -9``), its running task's process group dies.

One small helper process per shard, started once. The shard keeps the process group of the
task it is running in an 8-byte shared memory slot (a ``memfd``; writing it costs no system
call) and holds the write end of a pipe. When that pipe reaches end of file — the shard exited
or was killed — the helper reads the slot and SIGKILLs that group, then exits. This replaces a
per-task ``PR_SET_PDEATHSIG``, which needs either a ``preexec_fn`` (forcing ``subprocess`` off
its fast ``vfork`` path onto a full fork of the shard) or an extra ``exec`` of ``setpriv`` per
task (which doubled the cost of a small task), and it kills the whole group where the death
signal reached only the direct child.

The slot also holds a random token naming the run being started, written before the spawn
(a shard killed after starting the script but before it could write the group id leaves a task
the group kill would miss). The runner puts that token in the script's environment under a
private name (``_CRONQUEUE_RUN``, not part of the contract). On the shard's death the helper
kills:

* the group, if it is still ours: its leader started while the run was being spawned (its
  start time, in clock ticks since boot, lies between the readings of ``CLOCK_BOOTTIME`` taken
  by :meth:`Watchdog.arm` and :meth:`Watchdog.watch`: a pid reused after the shard's death
  starts later), or carries the token, or is gone (a pid is not reused while its zombie or its
  group lives; a live leader that started outside the window without the token is a reused
  pid and is left alone). The shard reads two clocks per run, not ``/proc/PID/stat`` (that
  read, racing the script's ``exec``, cost a quarter of a trivial task's spawn);
* every process whose environment carries the token (the run and what it started, its group
  if it leads one), looking again a moment later for a script still between ``vfork`` and
  ``exec``.

The token is unforgeable by anyone who cannot read our tasks' environments: ``CRONQUEUE_TASK_ID``
and ``CRONQUEUE_ATTEMPT`` are not (another installation on the host has its task 1, attempt 1
too, and 0.1.0 killed it).

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
import time

log = logging.getLogger("cronqueue.watchdog")

_CODE = """\
import os, signal, time
pipe, slot = (int(x) for x in os.environ["CRONQUEUE_WATCHDOG_FDS"].split(","))
while os.read(pipe, 64):
    pass
raw = os.pread(slot, 40, 0)
pgid, low, high = (int.from_bytes(raw[i:i + 8], "little", signed=True) for i in (0, 8, 16))
token = raw[24:40]
def started(pid):
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2:].split()[19])
def carries(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        return mark in b"\\0" + f.read() + b"\\0"
if any(token):
    mark = b"\\0_CRONQUEUE_RUN=" + token.hex().encode() + b"\\0"
    if pgid > 0:
        try:
            ours = low <= started(pgid) <= high or carries(pgid)
        except FileNotFoundError:
            ours = True  # the leader is gone: its pid, still the group's id, is not reused
        except (OSError, ValueError, IndexError):
            ours = False
        if ours:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
    me = os.getpid()
    for pause in (0, 0.05, 0.25):
        time.sleep(pause)
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            try:
                if carries(pid):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
"""
# The group id, the window its leader started in (clock ticks since boot: /proc/PID/stat's
# field 22), the run's token.
_SLOT = struct.Struct("<qqq16s")
_GROUP = struct.Struct("<qqq")
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
RUN_VAR = b"_CRONQUEUE_RUN"  # private: the run's token in the script's environment


class Watchdog:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None  # the pipe's write end: closing it wakes the helper
        self._slot: mmap.mmap | None = None
        self._broken = False  # could not start: do not try again
        self._armed = 0  # boot ticks when the current run was armed (the window's start)

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

    def arm(self) -> bytes:
        """A run is about to start (call before the spawn): returns its token, to put in the
        script's environment as ``RUN_VAR``."""
        token = os.urandom(16)
        if self._slot is not None:
            _SLOT.pack_into(self._slot, 0, 0, 0, 0, token)
        self._armed = _boot_ticks() - 1  # a tick early: rounding can only widen the window
        return token.hex().encode()

    def watch(self, pgid: int) -> None:
        """``pgid`` (the script's pid: it leads its own group, and was spawned since
        :meth:`arm`) is the group to kill should the shard die; 0: the run is over, nothing to
        kill."""
        if self._slot is not None:
            if pgid:
                _GROUP.pack_into(self._slot, 0, pgid, self._armed, _boot_ticks())
            else:
                _SLOT.pack_into(self._slot, 0, 0, 0, 0, bytes(16))

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


def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/PID/stat gives a process's start in (the
    kernel rounds ``CLOCK_BOOTTIME`` down to them, in this time namespace as the helper's)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _TICK_NS
