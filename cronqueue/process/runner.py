"""The runner: resolve a task script inside task_dir and run it, without a shell.

The script is opened beneath task_dir without following links out of it and checked
(scriptpath.py); the very file checked is executed, as ``/proc/self/fd/N`` (an interpreter gets
that path as the script's), so no rename or link swapped in meanwhile can change what runs.
``argv[1]`` is the stored param text. The script runs in its own session and process group;
on timeout (or a forced stop) the whole group gets TERM, then KILL after a grace period, and
whatever is left of the group when the script exits is killed too. If the shard dies, the
watchdog kills the group (see watchdog.py; ``PR_SET_PDEATHSIG`` if it cannot run). The script
is started by the ``vfork`` + ``exec`` that ``subprocess.Popen`` uses (``_spawn``), called
directly with the environment encoded once per shard (Popen encodes every variable again for
every task: half the spawn's CPU); no ``preexec_fn``, no wrapper ``exec``. Output goes
through a pipe that the runner reads while it waits (capture.py): a bounded head on disk, the
tail in memory; the row gets the last ``tail_bytes``, ``log_dir/YYYY-MM-DD.log`` (opened without
following links: logfiles.py) head, marker and tail. While the script runs, the row's tail as it
stands is handed to ``live`` about once a second when the output grew (the shard's heartbeat
writes it to the row, for the dashboard): nothing for a task that ends within its first second.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
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

from cronqueue.config import DEFAULT_INTERPRETERS
from cronqueue.errors import (
    InvalidTask,
    ProcessExitError,
    ProcessInterruptedError,
    ProcessSignaledError,
    ProcessTimeoutError,
    ScriptError,
    ScriptNotRunnable,
    TaskFailure,
)
from cronqueue.model import Task
from cronqueue.process.capture import Capture, Captured, unnamed_file
from cronqueue.process.child import Child, ExecChild, ForkedChild
from cronqueue.process.logfiles import LogDir, LogFileRefused
from cronqueue.process.scriptpath import (
    OpenedScript,
    exec_problem,
    exit_problem,
    is_executable,
    open_beneath,
)
from cronqueue.process.watchdog import RUN_VAR, Watchdog
from cronqueue.spec import NESTING_HINT, check_param_text, check_taskscript
from cronqueue.text import visible

if TYPE_CHECKING:
    from cronqueue.forkserver.client import ForkServer

# What subprocess.Popen calls to vfork and exec (the same arguments from 3.11 to 3.13; typed
# Any: typeshed's stub refuses the None that Popen itself passes as preexec_fn).
_fork_exec: Any
try:
    from _posixsubprocess import fork_exec as _fork_exec
except ImportError:  # pragma: no cover - not CPython on POSIX
    _fork_exec = None
_DIRECT = _fork_exec is not None and (3, 11) <= sys.version_info[:2] <= (3, 13)

log = logging.getLogger("cronqueue.runner")

# Never handed to task scripts: the queue's own credentials.
_HIDDEN_ENV = ("CRONQUEUE_DB_URL",)
# Set per task: a value the shard itself inherited is not passed on as well.
_TASK_VARS = (b"CRONQUEUE_TASK_ID", b"CRONQUEUE_ATTEMPT", b"CRONQUEUE_QUEUE", RUN_VAR)
_PR_SET_PDEATHSIG = 1
_SMALL_OUTPUT = 64 * 1024  # bytes of output appended to the day log in a single write
_TAIL_KEPT = 1 << 20  # bytes of the end of a long output kept in memory (at most)


@dataclass(frozen=True, slots=True)
class Script:
    """A resolved task script: ``argv`` (without the param) runs the open file ``opened.fd``
    (the caller closes it: :meth:`close`)."""

    opened: OpenedScript
    argv: list[str]
    forkable: bool  # a .py file for the configured .py interpreter (the fork server may run it)

    @property
    def fd(self) -> int:
        return self.opened.fd

    def close(self) -> None:
        os.close(self.opened.fd)


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
        if python_preload:
            log.warning("worker.python_preload is obsolete and ignored: the fork server "
                        "preloads no modules")
        self._forkserver: ForkServer | None = None  # started on first use
        self._which: dict[str, str | None] = {}
        # Encoded once: subprocess would encode every variable again for every task.
        self._base_env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()
                          if k not in _HIDDEN_ENV}
        self._env_list = [k + b"=" + v for k, v in self._base_env.items()
                          if k not in _TASK_VARS]  # execve's form, for _spawn
        self._cwd = str(self.task_dir)
        self._euid = os.geteuid()
        self._watchdog = Watchdog()
        self._logs = LogDir(self.log_dir)
        self._log_fd: int | None = None  # today's log, kept open (O_APPEND)
        self._log_day = ""
        self._devnull = -1
        # What is kept of one task's output: the head on disk, the tail in memory.
        self._tail_kept = max(tail_bytes, min(max_log_bytes // 2, _TAIL_KEPT))
        self._head_kept = max(0, max_log_bytes - self._tail_kept)

    def close(self) -> None:
        if self._forkserver is not None:
            self._forkserver.close()
            self._forkserver = None
        self._watchdog.close()
        self._close_log()
        self._logs.close()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1

    # -- resolution ---------------------------------------------------------------------------

    def resolve(self, taskscript: str) -> Script:
        """Open and check ``taskscript`` beneath task_dir; how to run it. Raises
        ``ScriptError``. Done for every run: no name is trusted twice (opening costs a few
        microseconds per path component)."""
        try:
            check_taskscript(taskscript)
        except InvalidTask as exc:
            raise ScriptError(str(exc), permanent=True) from None
        opened = open_beneath(str(self.task_dir), taskscript, euid=self._euid)
        try:
            return self._how(taskscript, opened)
        except BaseException:
            os.close(opened.fd)
            raise

    def _how(self, taskscript: str, opened: OpenedScript) -> Script:
        path = f"/proc/self/fd/{opened.fd}"
        if is_executable(opened.st, self._euid):
            return Script(opened, [path], forkable=False)
        ext = os.path.splitext(opened.path)[1]
        interp = self.interpreters.get(ext)
        if not interp:
            raise ScriptError(f"taskscript {taskscript!r} is not executable and no interpreter "
                              f"is configured for {ext or 'files without extension'!r}",
                              permanent=True)
        exe = self._find(interp[0])
        if exe is None:
            raise ScriptError(f"interpreter {interp[0]!r} for {ext} scripts not found",
                              permanent=False)
        return Script(opened, [exe, *interp[1:], path],
                      forkable=self.python_fork and ext == ".py")

    def _find(self, program: str) -> str | None:
        if program not in self._which:
            self._which[program] = shutil.which(program)
        return self._which[program]

    # -- execution ----------------------------------------------------------------------------

    def run(self, task: Task, *, attempt: int, timeout: float | None,
            abort: Callable[[], bool] = lambda: False, wake_fd: int | None = None,
            label: str = "", tick: Callable[[], None] | None = None,
            live: Callable[[int, str], None] | None = None) -> RunResult:
        """Run ``task`` to its end. ``abort()`` is checked whenever ``wake_fd`` (the shard's
        signal wake-up fd) is readable and at least every second; ``tick()`` is called about
        once a second while the script runs, and ``live(task id, output)`` then too if the
        output grew since (``output``: the row's tail as it stands, as the outcome keeps it)."""
        started = time.monotonic()
        try:
            script = self.resolve(task.taskscript)
        except ScriptError as exc:
            return RunResult(None, 0.0, str(exc), ScriptNotRunnable(str(exc)),
                             permanent=exc.permanent)
        try:
            return self._run(task, script, attempt, timeout, abort, wake_fd, label, tick,
                             live, started)
        finally:
            script.close()

    def _run(self, task: Task, script: Script, attempt: int, timeout: float | None,
             abort: Callable[[], bool], wake_fd: int | None, label: str,
             tick: Callable[[], None] | None, live: Callable[[int, str], None] | None,
             started: float) -> RunResult:
        try:
            _check_param(task.param)
        except ScriptError as exc:
            return RunResult(None, 0.0, str(exc), ScriptNotRunnable(str(exc)),
                             permanent=exc.permanent)
        task_vars = [b"CRONQUEUE_TASK_ID=%d" % task.id, b"CRONQUEUE_ATTEMPT=%d" % attempt,
                     b"CRONQUEUE_QUEUE=" + os.fsencode(task.queue)]
        capture = Capture(self._head_file, self._head_kept, self._tail_kept)
        try:
            stdin = self._stdin_fd(task.secret)
            try:
                child = self._start(script, task.param, task_vars, capture.write_fd, stdin)
            except OSError as exc:
                self._watchdog.watch(0)
                direct = len(script.argv) == 1  # executed itself: its #! line may say why
                what = script.opened.path if direct else script.argv[0]
                why = exec_problem(script.opened, exc.errno or 0) if direct else None
                msg = (f"cannot start {visible(what)}: {why} ({exc.strerror})" if why
                       else f"cannot start {visible(what)}: {exc.strerror or exc}")
                return RunResult(None, time.monotonic() - started, msg, ScriptNotRunnable(msg))
            finally:
                if stdin != self._devnull:
                    os.close(stdin)
                capture.started()
            deadline = None if timeout is None else started + timeout
            try:
                outcome = self._wait(child, deadline, abort, wake_fd, tick, capture, live,
                                     task.id)
                if outcome != "exited":
                    self._kill_group(child, capture)
            finally:  # whatever went wrong, no script of ours is left running or unreaped
                returncode = child.reap()
            self._watchdog.watch(0)
            duration = time.monotonic() - started
            captured = capture.finish()
            logged = self._append_log(captured, task, attempt, returncode, duration, label)
            output = self._row_output(captured, logged)
        finally:
            capture.close()
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
            why = exit_problem(script.opened, returncode) if len(script.argv) == 1 else None
            failure = ProcessExitError(f"exit status {returncode}" + (f": {why}" if why else ""))
        return RunResult(returncode, duration, output, failure, interrupted=outcome == "abort")

    def _start(self, script: Script, param: str, task_vars: list[bytes], out: int,
               stdin: int) -> Child:
        """Start the script; ``task_vars`` (``NAME=value``) are added to the shard's
        environment."""
        if script.forkable:
            forked = self._fork(script, param, self._env_dict(task_vars), out, stdin)
            if forked is not None:
                return forked
        watched = self._watchdog.start()
        token = self._watchdog.arm()  # before the spawn: see watchdog.py
        argv = [*script.argv, param]
        # The script's fd stays open across exec: the kernel hands a shebang's interpreter
        # /proc/self/fd/N, and an interpreter by extension gets that path too.
        child: Child
        if watched and _DIRECT and os.path.dirname(argv[0]):
            child = ExecChild(_spawn(argv, [*self._env_list, *task_vars, RUN_VAR + b"=" + token],
                                     self._cwd, stdin, out, script.fd))
        else:  # no watchdog (PR_SET_PDEATHSIG needs a preexec_fn: a full fork), or no _spawn
            kwargs: dict[str, Any] = {}
            if not watched and sys.platform.startswith("linux"):
                kwargs["preexec_fn"] = _set_pdeathsig
            env = self._env_dict(task_vars)
            env[RUN_VAR] = token
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, cwd=self.task_dir,
                env=env, start_new_session=True, close_fds=True, pass_fds=(script.fd,),
                **kwargs)
            child = ExecChild(proc.pid, proc)
        self._watchdog.watch(child.pid)
        return child

    def _env_dict(self, task_vars: list[bytes]) -> dict[bytes, bytes]:
        env = self._base_env.copy()
        for var in task_vars:
            name, _, value = var.partition(b"=")
            env[name] = value
        return env

    def _wait(self, child: Child, deadline: float | None, abort: Callable[[], bool],
              wake_fd: int | None, tick: Callable[[], None] | None,
              capture: Capture, live: Callable[[int, str], None] | None = None,
              task_id: int = 0) -> str:
        """Until the script exits ('exited', left unreaped), times out, or abort() is set;
        its output is read meanwhile (and shown to ``live`` once a second if it grew)."""
        # The child's fd becomes readable when it exits; the signal wake-up fd when the shard
        # gets TERM/INT; the output pipe when there is output. Without a child's fd (old
        # kernels) or the wake-up fd (library use) we poll briefly instead.
        done_fd = child.ready_fd()
        cap = 1.0 if done_fd is not None else 0.005
        if wake_fd is None:
            cap = min(cap, 0.1)  # abort() can only be noticed by polling
        last_tick = time.monotonic()
        shown = 0  # bytes of output when live() was last called
        while True:
            if abort():
                return "abort"
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "timeout"
            if now - last_tick >= 1.0:
                if tick is not None:
                    tick()
                if live is not None and capture.total != shown:
                    shown = capture.total
                    live(task_id, self._tail_text(capture.last, capture.dropped,
                                                  capture.disk_error))
                last_tick = now
            fds = [fd for fd in (done_fd, wake_fd) if fd is not None]
            if not capture.eof:
                fds.append(capture.read_fd)
            step = cap if deadline is None else min(cap, deadline - now)
            ready = select.select(fds, [], [], step)[0]
            if capture.read_fd in ready:
                capture.pump()
            if wake_fd is not None and wake_fd in ready:
                _drain(wake_fd)
            if (child.exited() if done_fd is None or done_fd in ready else False):
                return "exited"

    def _kill_group(self, child: Child, capture: Capture) -> None:
        child.signal_group(signal.SIGTERM)
        end = time.monotonic() + self.kill_grace
        while time.monotonic() < end:
            if child.exited():
                return
            if capture.eof:
                time.sleep(0.02)
            elif select.select([capture.read_fd], [], [], 0.02)[0]:
                capture.pump()  # a script reporting as it stops is not blocked on its output
        child.signal_group(signal.SIGKILL)

    # -- the Python fast path -----------------------------------------------------------------

    def _fork(self, script: Script, param: str, env: dict[bytes, bytes], out: int,
              stdin: int) -> Child | None:
        """Start ``script`` in the fork server (started on first use); None — logged — if the
        server cannot run it: the task then takes the exec path. The server's child reads the
        code from the checked file (a descriptor of it), never by name."""
        from cronqueue.forkserver.client import ForkServer, ForkServerError

        if self._forkserver is None:
            interp = self.interpreters[".py"]
            self._forkserver = ForkServer([self._find(interp[0]) or interp[0], *interp[1:]],
                                          env=self._base_env)
        try:
            code_fd = os.open(f"/proc/self/fd/{script.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot reopen %s for the fork server (%s): running it the exec way",
                        visible(script.opened.path), exc)
            return None
        try:
            self._forkserver.start()
            task = self._forkserver.spawn(
                script.opened.path, [param], env=env,
                cwd=str(self.task_dir), stdin=stdin, stdout=out, script_fd=code_fd)
        except ForkServerError as exc:
            log.warning("python fork server unavailable (%s): running %s the exec way",
                        exc, visible(script.opened.path))
            return None
        finally:
            os.close(code_fd)
        return ForkedChild(task)

    # -- output -------------------------------------------------------------------------------

    def _head_file(self) -> int | None:
        """An unnamed file for a long output's head: in log_dir, else in the temporary
        directory, else None."""
        return unnamed_file(self._log_dir_fd())

    def _log_dir_fd(self) -> int | None:
        """log_dir, open, or None (logged) if it is unusable: output is then kept only in
        the row (and in a temporary file while the task runs)."""
        try:
            return self._logs.fd()
        except (OSError, LogFileRefused) as exc:
            log.warning("log_dir %s is unusable (%s): output kept only in the row",
                        self.log_dir, exc)
            return None

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

    def _row_output(self, captured: Captured, logged: str) -> str:
        """The row's ``output``: the last ``tail_bytes`` kept, after a note if output was
        lost (a full or failing log_dir never fails the task: it is said here)."""
        return self._tail_text(captured.last, captured.not_kept, captured.disk_error, logged)

    def _tail_text(self, last: Callable[[int], bytes], not_kept: int, disk_error: str,
                   logged: str = "") -> str:
        """The last ``tail_bytes`` of the output (``last(n)``: its last n bytes kept), after
        the notes on what was lost; the outcome's, and the running task's (``live``)."""
        notes = []
        if disk_error and not_kept:
            notes.append(f"{not_kept} bytes of output lost: log_dir failed ({disk_error})")
        if logged:
            notes.append(f"output not written to the day log ({logged})")
        note = "".join(f"[cronqueue: {n}]\n" for n in notes).encode()
        room = max(0, self.tail_bytes - len(note))
        return _decode(note[:self.tail_bytes] + last(room))

    def _append_log(self, captured: Captured, task: Task, attempt: int, returncode: int,
                    duration: float, label: str) -> str:
        """Append the header and what was kept of the output to today's log, under an
        exclusive ``flock`` (shards share the file). Returns why it could not ("" if done)."""
        now = datetime.now(UTC)
        header = (f"--- {now.isoformat(timespec='milliseconds')} task={task.id} "
                  f"attempt={attempt} queue={visible(task.queue)} "
                  f"script={visible(task.taskscript)} "
                  f"shard={label} exit={returncode} duration={duration:.3f}s "
                  f"bytes={captured.total}\n").encode()
        marker = captured.marker(self.max_log_bytes)
        try:
            fd = self._log_file(now)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if captured.head + len(captured.tail) <= _SMALL_OUTPUT:  # usual: one write
                    body = b"".join(captured.head_chunks()) + marker + captured.tail
                    end = b"\n" if body and not body.endswith(b"\n") else b""
                    _write_all(fd, header + body + end)
                else:
                    _write_all(fd, header)
                    for chunk in captured.head_chunks():
                        _write_all(fd, chunk)
                    last = captured.last(1)
                    _write_all(fd, marker + captured.tail
                               + (b"\n" if last != b"\n" else b""))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, LogFileRefused) as exc:
            log.warning("task=%d could not write output to %s: %s", task.id,
                        self.log_dir / f"{now:%Y-%m-%d}.log", exc)
            self._close_log()
            self._logs.close()
            return getattr(exc, "strerror", None) or str(exc)
        return ""

    def _log_file(self, now: datetime) -> int:
        """Today's log, opened once per day (again if it was deleted meanwhile)."""
        day = f"{now:%Y-%m-%d}"
        if self._log_fd is not None and (day != self._log_day
                                         or os.fstat(self._log_fd).st_nlink == 0):
            self._close_log()
        if self._log_fd is None:
            self._log_fd = self._logs.open_day(day)
            self._log_day = day
        return self._log_fd

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None


def _spawn(argv: list[str], env: list[bytes], cwd: str, stdin: int, out: int,
           keep: int) -> int:
    """What ``subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=STDOUT, cwd=cwd,
    env=..., start_new_session=True, close_fds=True, pass_fds=(keep,))`` does, given the
    environment as execve takes it (``NAME=value``). Returns the pid once ``exec`` succeeded;
    raises OSError as Popen would if it failed (the child reaped)."""
    assert _fork_exec is not None
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    low = []
    while err_w < 3:  # as Popen: the child's error pipe may not be one of its stdio fds
        low.append(err_w)
        err_w = os.dup(err_w)
    for fd in low:
        os.close(fd)
    try:
        try:
            pid: int = _fork_exec(
                argv, (os.fsencode(argv[0]),), True, tuple(sorted((keep, err_w))), cwd, env,
                stdin, -1, -1, out, -1, out, err_r, err_w,
                True, True, -1, None, None, None, -1, None,
                getattr(subprocess, "_USE_VFORK", True))
        finally:
            os.close(err_w)
        data = b""
        while part := os.read(err_r, 50000):  # EOF once exec succeeded
            data += part
            if len(data) > 50000:
                break
    finally:
        os.close(err_r)
    if data:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise _spawn_error(data, argv[0], cwd)
    return pid


def _spawn_error(data: bytes, executable: str, cwd: str) -> Exception:
    """The exception the child reported (``Name:hex errno:text``), as Popen raises it."""
    try:
        name, hex_errno, text = data.split(b":", 2)
        kind = getattr(builtins, name.decode("ascii"), None)
        num = int(hex_errno, 16)
    except ValueError:
        return OSError(errno.EIO, f"bad error data from the child: {data[:200]!r}")
    if not (isinstance(kind, type) and issubclass(kind, OSError)):
        return OSError(errno.EIO, text.decode("utf-8", "replace"))
    # Failed before exec: 3.11 and 3.12 say "noexec" (Popen names the cwd), 3.13 says
    # "noexec:chdir" for the cwd and "noexec" for another step (Popen names no file).
    where: str | None = executable
    if text == b"noexec:chdir" or (text == b"noexec" and sys.version_info < (3, 13)):
        where = cwd
    elif text == b"noexec":
        where = None
    message = (os.strerror(num) if num
               else "" if text.startswith(b"noexec") else text.decode("utf-8", "replace"))
    return kind(num, message) if where is None else kind(num, message, where)


def _check_param(param: str) -> None:
    """A hand-inserted row may hold anything: the param must be JSON that fits argv."""
    try:
        check_param_text(param)
        json.loads(param)
    except InvalidTask as exc:
        raise ScriptError(str(exc), permanent=True) from None
    except ValueError as exc:
        raise ScriptError(f"param is not valid JSON: {exc}", permanent=True) from None
    except RecursionError:
        raise ScriptError(f"param is nested too deeply to decode ({NESTING_HINT})",
                          permanent=True) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


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
