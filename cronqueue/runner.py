"""The runner: resolve a task script inside task_dir and run it, without a shell.

``argv[1]`` is the stored param text. The script runs in its own session and process group;
on timeout (or a forced stop) the whole group gets TERM, then KILL after a grace period, and
whatever is left of the group when the script exits is killed too. If the shard dies, the
kernel kills the script (``setpriv --pdeathsig KILL``, else ``PR_SET_PDEATHSIG``). Output goes
to an unnamed temporary file (a daemonized grandchild holding it cannot block us); its tail is
kept for the row, the whole appended to ``log_dir/YYYY-MM-DD.log``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .errors import (
    InvalidTask,
    ProcessExitError,
    ProcessInterruptedError,
    ProcessSignaledError,
    ProcessTimeoutError,
    ScriptError,
    ScriptNotRunnable,
    TaskFailure,
)
from .model import Task
from .spec import check_param_text, check_taskscript

log = logging.getLogger("cronqueue.runner")

DEFAULT_INTERPRETERS: dict[str, list[str]] = {
    ".py": [sys.executable],
    ".sh": ["sh"],
    ".php": ["php"],
}
# Never handed to task scripts: the queue's own credentials.
_HIDDEN_ENV = ("CRONQUEUE_DB_URL",)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RunResult:
    returncode: int | None
    duration: float
    output: str
    failure: TaskFailure | None = None
    permanent: bool = False  # a failure that retrying cannot fix
    interrupted: bool = False  # we killed it because the shard was stopped hard

    @property
    def ok(self) -> bool:
        return self.failure is None


class Runner:
    def __init__(self, task_dir: str | Path, log_dir: str | Path,
                 interpreters: Mapping[str, Sequence[str]] | None = None, *,
                 tail_bytes: int = 4096, kill_grace: float = 5.0,
                 max_log_bytes: int = 64 * 1024 * 1024) -> None:
        self.task_dir = Path(os.path.realpath(task_dir))
        self.log_dir = Path(log_dir)
        self.interpreters = {k: list(v) for k, v in
                             (DEFAULT_INTERPRETERS if interpreters is None
                              else interpreters).items()}
        self.tail_bytes = tail_bytes
        self.kill_grace = kill_grace
        self.max_log_bytes = max_log_bytes
        self._which: dict[str, str | None] = {}
        self._base_env = {k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV}
        setpriv = shutil.which("setpriv")
        self._deathsig_prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []

    # -- resolution ---------------------------------------------------------------------------

    def command(self, taskscript: str) -> list[str]:
        """argv (without the param) for a task script. Raises ``ScriptError``."""
        try:
            check_taskscript(taskscript)
        except InvalidTask as exc:
            raise ScriptError(str(exc), permanent=True) from None
        path = os.path.realpath(self.task_dir / taskscript)
        if os.path.commonpath([path, self.task_dir]) != str(self.task_dir):
            raise ScriptError(f"taskscript {taskscript!r} resolves outside task_dir "
                              f"({path}): refused", permanent=True)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ScriptError(f"taskscript {taskscript!r} not found in {self.task_dir}",
                              permanent=False) from None
        if not os.path.isfile(path):
            raise ScriptError(f"taskscript {taskscript!r} is not a regular file",
                              permanent=True)
        if st.st_mode & 0o022:
            raise ScriptError(f"taskscript {taskscript!r} is group- or world-writable "
                              f"(mode {st.st_mode & 0o777:o}): refused", permanent=True)
        if os.access(path, os.X_OK):
            return [path]
        ext = os.path.splitext(path)[1]
        interp = self.interpreters.get(ext)
        if not interp:
            raise ScriptError(f"taskscript {taskscript!r} is not executable and no interpreter "
                              f"is configured for {ext or 'files without extension'!r}",
                              permanent=True)
        exe = self._find(interp[0])
        if exe is None:
            raise ScriptError(f"interpreter {interp[0]!r} for {ext} scripts not found",
                              permanent=False)
        return [exe, *interp[1:], path]

    def _find(self, program: str) -> str | None:
        if program not in self._which:
            self._which[program] = shutil.which(program)
        return self._which[program]

    # -- execution ----------------------------------------------------------------------------

    def run(self, task: Task, *, attempt: int, timeout: float | None,
            abort: Callable[[], bool] = lambda: False, wake_fd: int | None = None,
            label: str = "") -> RunResult:
        started = time.monotonic()
        try:
            argv = self.command(task.taskscript)
            _check_param(task.param)
        except ScriptError as exc:
            return RunResult(None, 0.0, str(exc), ScriptNotRunnable(str(exc)),
                             permanent=exc.permanent)
        env = dict(self._base_env)
        env.update(CRONQUEUE_TASK_ID=str(task.id), CRONQUEUE_ATTEMPT=str(attempt),
                   CRONQUEUE_QUEUE=task.queue)
        with self._output_file() as out, _stdin_for(task.secret) as stdin:
            try:
                proc = self._spawn([*argv, task.param], env, out, stdin)
            except OSError as exc:
                msg = f"cannot start {argv[0]}: {exc.strerror or exc}"
                return RunResult(None, time.monotonic() - started, msg, ScriptNotRunnable(msg))
            deadline = None if timeout is None else started + timeout
            outcome = self._wait(proc, deadline, abort, wake_fd)
            if outcome != "exited":
                self._kill_group(proc)
            # The leader is now a zombie (its pid cannot be reused): clear out the rest of its
            # group, then reap it.
            _signal_group(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            duration = time.monotonic() - started
            tail = self._tail(out)
            self._append_log(out, task, attempt, returncode, duration, label)
        failure: TaskFailure | None = None
        if outcome == "timeout":
            failure = ProcessTimeoutError(f"ran past its {timeout:g}s timeout; process group "
                                          "killed")
        elif outcome == "abort":
            failure = ProcessInterruptedError("shard stopped hard; process group killed")
        elif returncode < 0:
            failure = ProcessSignaledError(f"killed by {_signame(-returncode)}")
        elif returncode > 0:
            failure = ProcessExitError(f"exit status {returncode}")
        return RunResult(returncode, duration, tail, failure, interrupted=outcome == "abort")

    def _spawn(self, argv: list[str], env: dict[str, str], out: IO[bytes],
               stdin: IO[bytes] | int) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        if not self._deathsig_prefix and sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = _set_pdeathsig
        return subprocess.Popen(
            [*self._deathsig_prefix, *argv], stdin=stdin, stdout=out,
            stderr=subprocess.STDOUT, cwd=self.task_dir, env=env, start_new_session=True,
            close_fds=True, **kwargs)

    def _wait(self, proc: subprocess.Popen[bytes], deadline: float | None,
              abort: Callable[[], bool], wake_fd: int | None) -> str:
        """Until the script exits ('exited', left unreaped), times out, or abort() is set."""
        # A pidfd becomes readable when the child exits; the signal wake-up fd when the shard
        # gets TERM/INT. Without them (old kernels, library use) we poll briefly instead.
        try:
            pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        fds = [fd for fd in (pidfd, wake_fd) if fd is not None]
        cap = 1.0 if pidfd is not None else 0.005
        if wake_fd is None:
            cap = min(cap, 0.1)  # abort() can only be noticed by polling
        try:
            while True:
                if abort():
                    return "abort"
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return "timeout"
                step = cap if deadline is None else min(cap, deadline - now)
                ready = select.select(fds, [], [], step)[0]
                if wake_fd is not None and wake_fd in ready:
                    _drain(wake_fd)
                if pidfd in ready if pidfd is not None else _exited(proc.pid):
                    return "exited"
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        end = time.monotonic() + self.kill_grace
        while time.monotonic() < end:
            if _exited(proc.pid):
                return
            time.sleep(0.02)
        _signal_group(proc.pid, signal.SIGKILL)

    # -- output -------------------------------------------------------------------------------

    def _output_file(self) -> IO[bytes]:
        """An unnamed temporary file for the output, in log_dir if it is usable."""
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            return tempfile.TemporaryFile(dir=self.log_dir)
        except OSError as exc:
            log.warning("log_dir %s is unusable (%s): output kept only in the row",
                        self.log_dir, exc)
            return tempfile.TemporaryFile()

    def _tail(self, out: IO[bytes]) -> str:
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - self.tail_bytes))
        text = out.read().decode("utf-8", errors="replace")
        return text.replace("\x00", "\ufffd")

    def _append_log(self, out: IO[bytes], task: Task, attempt: int, returncode: int,
                    duration: float, label: str) -> None:
        now = datetime.now(UTC)
        path = self.log_dir / f"{now:%Y-%m-%d}.log"
        size = out.seek(0, os.SEEK_END)
        header = (f"--- {now.isoformat(timespec='milliseconds')} task={task.id} "
                  f"attempt={attempt} queue={printable(task.queue)} "
                  f"script={printable(task.taskscript)} "
                  f"shard={label} exit={returncode} duration={duration:.3f}s bytes={size}\n")
        try:
            with open(path, "ab") as log_file:
                fcntl.flock(log_file, fcntl.LOCK_EX)
                log_file.write(header.encode())
                out.seek(0)
                _copy(out, log_file, min(size, self.max_log_bytes))
                if size > self.max_log_bytes:
                    log_file.write(f"\n[... {size - self.max_log_bytes} more bytes not kept; "
                                   f"max_log_bytes={self.max_log_bytes}]\n".encode())
                elif size and not _ends_with_newline(out, size):
                    log_file.write(b"\n")
        except OSError as exc:
            log.warning("task=%d could not write output to %s: %s", task.id, path, exc)


@contextlib.contextmanager
def _stdin_for(secret: str | None) -> Iterator[IO[bytes] | int]:
    """The task's stdin: its secret in an unnamed file (no pipe to block on, nothing on
    disk by name), or /dev/null."""
    if secret is None:
        yield subprocess.DEVNULL
        return
    with tempfile.TemporaryFile() as handle:
        handle.write(secret.encode("utf-8"))
        handle.seek(0)
        yield handle


def _check_param(param: str) -> None:
    """A hand-inserted row may hold anything: the param must be JSON that fits argv."""
    try:
        check_param_text(param)
        json.loads(param)
    except InvalidTask as exc:
        raise ScriptError(str(exc), permanent=True) from None
    except ValueError as exc:
        raise ScriptError(f"param is not valid JSON: {exc}", permanent=True) from None


def _copy(src: IO[bytes], dst: IO[bytes], limit: int) -> None:
    remaining = limit
    while remaining > 0:
        chunk = src.read(min(remaining, 1 << 20))
        if not chunk:
            break
        dst.write(chunk)
        remaining -= len(chunk)


def _ends_with_newline(out: IO[bytes], size: int) -> bool:
    out.seek(size - 1)
    return out.read(1) == b"\n"


def printable(text: str) -> str:
    """``text`` for a log line: as is if printable, else its repr (a hand-inserted row may
    hold newlines or control characters, which would forge or break log lines)."""
    return text if text.isprintable() else repr(text)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exited(pid: int) -> bool:
    """Has the child exited? Leaves it unreaped (WNOWAIT) so its pid stays reserved."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child, only without setpriv
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
