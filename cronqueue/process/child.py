"""A running task script, whichever way it was started: one interface for the runner's wait,
timeout and kill logic.

* :class:`ExecChild` — an exec'd child (the runner's ``_spawn``, or a ``subprocess.Popen``),
  in its own session and process group. Exit is seen through a pidfd and left unreaped
  (``WNOWAIT``) until the rest of the group has been killed, so a process group id the runner
  signals is never another process's.
* :class:`ForkedChild` — a child of the Python fork server (cronqueue/forkserver/), which
  applies the same rule on its side: signals go through it and it reaps only after the group
  kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # forkserver is imported only by shards that use it
    from cronqueue.forkserver.client import ForkedTask


class Child(Protocol):
    pid: int
    lost: str  # why the task's status is unknown (its fork server died), else ""

    def ready_fd(self) -> int | None:
        """Readable once the script has exited (None: poll ``exited()`` instead)."""

    def exited(self) -> bool: ...

    def signal_group(self, sig: int) -> None: ...

    def reap(self) -> int:
        """Kill what is left of the group, collect the status (Popen-style returncode)."""


class ExecChild:
    def __init__(self, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.proc = proc  # reaps through Popen when it started the child (its own bookkeeping)
        self.pid = pid
        self.lost = ""
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def ready_fd(self) -> int | None:
        return self._pidfd

    def exited(self) -> bool:
        """Leaves the child unreaped (WNOWAIT) so its pid stays reserved."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> int:
        # The leader is a zombie (its pid cannot be reused): clear out the rest of its group,
        # then reap it.
        self.signal_group(signal.SIGKILL)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.proc is not None:
            return self.proc.wait()
        try:
            return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): as Popen.wait, 0
            return 0


class ForkedChild:
    def __init__(self, task: ForkedTask) -> None:
        from cronqueue.forkserver.client import ForkServerError

        self._error = ForkServerError
        self.task = task
        self.pid = task.pid
        self.lost = ""

    def ready_fd(self) -> int | None:
        return None if self.lost else self.task.fileno()

    def exited(self) -> bool:
        if self.lost:
            return True
        try:
            return self.task.poll() is not None
        except self._error as exc:
            self.lost = str(exc)
            return True

    def signal_group(self, sig: int) -> None:
        if not self.lost:
            with contextlib.suppress(self._error, OSError):
                self.task.signal_group(sig)

    def reap(self) -> int:
        try:
            if not self.lost:
                return self.task.wait()
        except self._error as exc:
            self.lost = str(exc)
        return -int(signal.SIGKILL)  # the server's death took the task (PR_SET_PDEATHSIG)
