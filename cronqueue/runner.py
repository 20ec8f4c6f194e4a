"""The runner: resolve a task script inside task_dir and run it, without a shell.

``argv[1]`` is the stored param text. The script runs in its own session and process group;
on timeout (or a forced stop) the whole group gets TERM, then KILL after a grace period, and
whatever is left of the group when the script exits is killed too. If the shard dies, the
watchdog kills the group (see watchdog.py; ``PR_SET_PDEATHSIG`` if it cannot run). ``subprocess``
stays on its fast ``vfork`` path: no ``preexec_fn``, no wrapper ``exec``. Output goes
to an unnamed temporary file (a daemonized grandchild holding it cannot block us); its tail is
kept for the row, the whole appended to ``log_dir/YYYY-MM-DD.log``.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .child import Child, ExecChild, ForkedChild
from .config import DEFAULT_INTERPRETERS
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
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .forkserver import ForkServer

log = logging.getLogger("cronqueue.runner")

# Never handed to task scripts: the queue's own credentials.
_HIDDEN_ENV = ("CRONQUEUE_DB_URL",)
_PR_SET_PDEATHSIG = 1
_SMALL_OUTPUT = 64 * 1024  # bytes of output appended to the day log in a single write
_RESOLVE_TTL = 1.0  # seconds a script's resolution (path, checks, interpreter) is reused


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
                 max_log_bytes: int = 64 * 1024 * 1024, python_fork: bool = False,
                 python_preload: Sequence[str] = ()) -> None:
        self.task_dir = Path(os.path.realpath(task_dir))
        self.log_dir = Path(log_dir)
        self.interpreters = {k: list(v) for k, v in
                             (DEFAULT_INTERPRETERS if interpreters is None
                              else interpreters).items()}
        self.tail_bytes = tail_bytes
        self.kill_grace = kill_grace
        self.max_log_bytes = max_log_bytes
        self.python_fork = python_fork
        self.python_preload = list(python_preload)
        self._forkserver: ForkServer | None = None  # started on first use
        self._which: dict[str, str | None] = {}
        # Encoded once: subprocess would encode every variable again for every task.
        self._base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()
                          if k not in _HIDDEN_ENV}
        self._resolved: dict[str, tuple[float, list[str]]] = {}
        self._watchdog = Watchdog()
        self._log_fd: int | None = None  # today's log, kept open (O_APPEND)
        self._log_day = ""
        self._log_dir_ok = False
        self._devnull = -1

    def close(self) -> None:
        if self._forkserver is not None:
            self._forkserver.close()
            self._forkserver = None
        self._watchdog.close()
        self._close_log()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

    # -- resolution ---------------------------------------------------------------------------

    def command(self, taskscript: str) -> list[str]:
        """argv (without the param) for a task script. Raises ``ScriptError``. A resolution
        is reused for up to a second (a burst of the same script is checked once)."""
        now = time.monotonic()
        cached = self._resolved.get(taskscript)
        if cached is not None and now - cached[0] < _RESOLVE_TTL:
            return cached[1]
        argv = self._resolve(taskscript)
        if len(self._resolved) > 1000:
            self._resolved.clear()
        self._resolved[taskscript] = (now, argv)
        return argv

    def _resolve(self, taskscript: str) -> list[str]:
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
            label: str = "", tick: Callable[[], None] | None = None) -> RunResult:
        """Run ``task`` to its end. ``abort()`` is checked whenever ``wake_fd`` (the shard's
        signal wake-up fd) is readable and at least every second; ``tick()`` is called about
        once a second while the script runs."""
        started = time.monotonic()
        try:
            argv = self.command(task.taskscript)
            _check_param(task.param)
        except ScriptError as exc:
            return RunResult(None, 0.0, str(exc), ScriptNotRunnable(str(exc)),
                             permanent=exc.permanent)
        env = self._base_env.copy()
        env[b"CRONQUEUE_TASK_ID"] = b"%d" % task.id
        env[b"CRONQUEUE_ATTEMPT"] = b"%d" % attempt
        env[b"CRONQUEUE_QUEUE"] = os.fsencode(task.queue)
        out = self._output_fd()
        try:
            stdin = self._stdin_fd(task.secret)
            try:
                child = self._start(argv, task.param, env, out, stdin, task.id, attempt)
            except OSError as exc:
                self._watchdog.watch(0)
                msg = f"cannot start {argv[0]}: {exc.strerror or exc}"
                return RunResult(None, time.monotonic() - started, msg, ScriptNotRunnable(msg))
            finally:
                if stdin != self._devnull:
                    os.close(stdin)
            deadline = None if timeout is None else started + timeout
            outcome = self._wait(child, deadline, abort, wake_fd, tick)
            if outcome != "exited":
                self._kill_group(child)
            returncode = child.reap()
            self._watchdog.watch(0)
            duration = time.monotonic() - started
            size = os.fstat(out).st_size
            tail = _decode(os.pread(out, min(size, self.tail_bytes),
                                    max(0, size - self.tail_bytes)))
            self._append_log(out, size, task, attempt, returncode, duration, label)
        finally:
            os.close(out)
        failure: TaskFailure | None = None
        if outcome == "timeout":
            failure = ProcessTimeoutError(f"ran past its {timeout:g}s timeout; process group "
                                          "killed")
        elif outcome == "abort":
            failure = ProcessInterruptedError("shard stopped hard; process group killed")
        elif child.lost:
            failure = ProcessSignaledError(f"lost with the Python fork server ({child.lost})")
        elif returncode < 0:
            failure = ProcessSignaledError(f"killed by {_signame(-returncode)}")
        elif returncode > 0:
            failure = ProcessExitError(f"exit status {returncode}")
        return RunResult(returncode, duration, tail, failure, interrupted=outcome == "abort")

    def _start(self, argv: list[str], param: str, env: dict[bytes, bytes], out: int,
               stdin: int, task_id: int, attempt: int) -> Child:
        if self._forkable(argv):
            forked = self._fork(argv[-1], param, env, out, stdin)
            if forked is not None:
                return forked
        kwargs: dict[str, Any] = {}
        if not self._watchdog.start() and sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = _set_pdeathsig  # slow (full fork), only without a watchdog
        self._watchdog.arm(task_id, attempt)  # before the spawn: see watchdog.py
        proc = subprocess.Popen(
            [*argv, param], stdin=stdin, stdout=out,
            stderr=subprocess.STDOUT, cwd=self.task_dir, env=env, start_new_session=True,
            close_fds=True, **kwargs)
        self._watchdog.watch(proc.pid)
        return ExecChild(proc)

    def _wait(self, child: Child, deadline: float | None, abort: Callable[[], bool],
              wake_fd: int | None, tick: Callable[[], None] | None) -> str:
        """Until the script exits ('exited', left unreaped), times out, or abort() is set."""
        # The child's fd becomes readable when it exits; the signal wake-up fd when the shard
        # gets TERM/INT. Without them (old kernels, library use) we poll briefly instead.
        done_fd = child.ready_fd()
        fds = [fd for fd in (done_fd, wake_fd) if fd is not None]
        cap = 1.0 if done_fd is not None else 0.005
        if wake_fd is None:
            cap = min(cap, 0.1)  # abort() can only be noticed by polling
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
            if (child.exited() if done_fd is None or done_fd in ready else False):
                return "exited"
            if tick is not None and not ready:
                tick()

    def _kill_group(self, child: Child) -> None:
        child.signal_group(signal.SIGTERM)
        end = time.monotonic() + self.kill_grace
        while time.monotonic() < end:
            if child.exited():
                return
            time.sleep(0.02)
        child.signal_group(signal.SIGKILL)

    # -- the Python fast path -----------------------------------------------------------------

    def _forkable(self, argv: list[str]) -> bool:
        """A ``.py`` script run by the configured ``.py`` interpreter (not one executable on
        its own: its shebang may name another interpreter)."""
        if not self.python_fork or len(argv) < 2 or not argv[-1].endswith(".py"):
            return False
        interp = self.interpreters.get(".py")
        return interp is not None and argv[:-1] == [self._find(interp[0]), *interp[1:]]

    def _fork(self, script: str, param: str, env: dict[bytes, bytes], out: int,
              stdin: int) -> Child | None:
        """Start ``script`` in the fork server (started on first use); None — logged — if the
        server cannot run it: the task then takes the exec path."""
        from .forkserver import ForkServer, ForkServerError

        if self._forkserver is None:
            interp = self.interpreters[".py"]
            self._forkserver = ForkServer(
                [self._find(interp[0]) or interp[0], *interp[1:]], preload=self.python_preload,
                env=self._base_env)
        try:
            self._forkserver.start()
            task = self._forkserver.spawn(
                script, [param], env=env,
                cwd=str(self.task_dir), stdin=stdin, stdout=out)
        except ForkServerError as exc:
            log.warning("python fork server unavailable (%s): running %s the exec way",
                        exc, printable(script))
            return None
        return ForkedChild(task)

    # -- output -------------------------------------------------------------------------------

    def _output_fd(self) -> int:
        """An unnamed temporary file for the output, in log_dir if it is usable."""
        try:
            if not self._log_dir_ok:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self._log_dir_ok = True
            try:
                return os.open(self.log_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError:  # a file system without O_TMPFILE
                with tempfile.TemporaryFile(dir=self.log_dir) as handle:
                    return os.dup(handle.fileno())
        except OSError as exc:
            self._log_dir_ok = False
            log.warning("log_dir %s is unusable (%s): output kept only in the row",
                        self.log_dir, exc)
            with tempfile.TemporaryFile() as handle:
                return os.dup(handle.fileno())

    def _stdin_fd(self, secret: str | None) -> int:
        """The task's stdin: its secret in an unnamed file (no pipe to block on, nothing on
        disk by name), or /dev/null (kept open)."""
        if secret is None:
            if self._devnull < 0:
                self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            return self._devnull
        with tempfile.TemporaryFile() as handle:
            handle.write(secret.encode("utf-8"))
            handle.flush()
            fd = os.dup(handle.fileno())
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def _append_log(self, out: int, size: int, task: Task, attempt: int, returncode: int,
                    duration: float, label: str) -> None:
        """Append the header and the output to today's log, under an exclusive ``flock``
        (shards share the file)."""
        now = datetime.now(UTC)
        header = (f"--- {now.isoformat(timespec='milliseconds')} task={task.id} "
                  f"attempt={attempt} queue={printable(task.queue)} "
                  f"script={printable(task.taskscript)} "
                  f"shard={label} exit={returncode} duration={duration:.3f}s bytes={size}\n")
        try:
            fd = self._log_file(now)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if size <= _SMALL_OUTPUT:  # the usual case: one write
                    body = os.pread(out, size, 0)
                    end = b"\n" if body and not body.endswith(b"\n") else b""
                    _write_all(fd, header.encode() + body + end)
                else:
                    _write_all(fd, header.encode())
                    _copy(out, fd, min(size, self.max_log_bytes))
                    if size > self.max_log_bytes:
                        _write_all(fd, f"\n[... {size - self.max_log_bytes} more bytes not "
                                       f"kept; max_log_bytes={self.max_log_bytes}]\n".encode())
                    elif os.pread(out, 1, size - 1) != b"\n":
                        _write_all(fd, b"\n")
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:
            log.warning("task=%d could not write output to %s: %s", task.id,
                        self.log_dir / f"{now:%Y-%m-%d}.log", exc)
            self._close_log()

    def _log_file(self, now: datetime) -> int:
        """Today's log, opened once per day (again if it was deleted meanwhile)."""
        day = f"{now:%Y-%m-%d}"
        if self._log_fd is not None and (day != self._log_day
                                         or os.fstat(self._log_fd).st_nlink == 0):
            self._close_log()
        if self._log_fd is None:
            self._log_fd = os.open(self.log_dir / f"{day}.log",
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._log_day = day
        return self._log_fd

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


def _check_param(param: str) -> None:
    """A hand-inserted row may hold anything: the param must be JSON that fits argv."""
    try:
        check_param_text(param)
        json.loads(param)
    except InvalidTask as exc:
        raise ScriptError(str(exc), permanent=True) from None
    except ValueError as exc:
        raise ScriptError(f"param is not valid JSON: {exc}", permanent=True) from None


def _copy(src: int, fd: int, limit: int) -> None:
    offset = 0
    while offset < limit:
        chunk = os.pread(src, min(limit - offset, 1 << 20), offset)
        if not chunk:
            break
        _write_all(fd, chunk)
        offset += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def printable(text: str) -> str:
    """``text`` for a log line: as is if printable, else its repr (a hand-inserted row may
    hold newlines or control characters, which would forge or break log lines)."""
    return text if text.isprintable() else repr(text)


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
