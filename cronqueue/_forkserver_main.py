"""cronqueue's fork server: a warm Python interpreter that forks one child per task script.

Started by ``cronqueue.forkserver.ForkServer`` only, as ``python THIS_FILE SOCKET_FD [MODULE ...]``,
possibly with an interpreter where cronqueue is not installed: this file imports nothing but the
standard library (Python >= 3.9, Linux). ``cronqueue/forkserver.py`` describes the protocol,
what a task gets, and how that differs from ``python script.py``.

Each child leaves the server's loop and becomes the task: its own session, the task's fds, cwd,
environment, argv and ``sys.path[0]``, a fresh ``__main__``; runs the script's code; and exits
as CPython's ``Py_RunMain`` would (SystemExit, excepthook, threads, atexit, flushes, the task's
part of teardown, SIGINT after KeyboardInterrupt), then ``os._exit``.
"""

from __future__ import annotations

import sys

# The keys of a script's __main__ namespace as this interpreter makes it (the task's __main__
# gets the same ones, in the same order).
_MAIN_KEYS = [key for key in globals() if key.startswith("__") and key.endswith("__")]

# `python THIS_FILE` put this file's directory first on sys.path: the cronqueue package, whose
# modules (queue, task, config, ...) would shadow the standard library. Drop it before importing
# anything that is not loaded yet; each task gets its own script's directory there instead.
_SCRIPT_DIR_ON_PATH = not (getattr(sys.flags, "safe_path", False) or sys.flags.isolated)
if __name__ == "__main__" and _SCRIPT_DIR_ON_PATH and sys.path:
    del sys.path[0]

if __name__ == "__main__" and (sys.version_info < (3, 9) or sys.platform != "linux"):
    sys.exit("the cronqueue fork server needs Python >= 3.9 on Linux")

import atexit  # noqa: E402
import builtins  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import marshal  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from _weakref import ref as _weakref  # noqa: E402
from importlib import import_module  # noqa: E402
from importlib.machinery import SourceFileLoader, SourcelessFileLoader  # noqa: E402
from importlib.util import MAGIC_NUMBER  # noqa: E402
from types import CodeType, ModuleType  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType
    from typing import NoReturn

_PR_SET_PDEATHSIG = 1
_SETUP_FAILED = 127  # status of a child whose setup failed (it ran no task code)
_RECV_SIZE = 1 << 16
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# argv[0] and the interpreter options this interpreter was started with (for sys.orig_argv).
_ARGV_PREFIX: list[str] = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
_ARGV_PREFIX = _ARGV_PREFIX[:max(1, len(_ARGV_PREFIX) - len(sys.argv))]


def _startup_dispositions() -> dict[int, Callable[[int, FrameType | None], object] | int]:
    """Every signal's disposition as this interpreter started (inherited SIG_IGN included):
    what a task's ``python script.py`` would have had, since the client starts us the way it
    would start that."""
    found: dict[int, Callable[[int, FrameType | None], object] | int] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if handler is not None:  # None: set from C, cannot be restored from Python
            found[sig] = handler
    return found


_STARTUP_HANDLERS = _startup_dispositions()
_STARTUP_MASK = signal.pthread_sigmask(signal.SIG_BLOCK, [])
_libc = ctypes.CDLL(None, use_errno=True)


class _Job:
    """A spawn request, checked by the server, then taken over by the forked child."""

    def __init__(self, request: dict[str, object], stdin: int, stdout: int,
                 sock: socket.socket, server_pid: int) -> None:
        self.script = _text(request.get("script"))
        args = request.get("args")
        env = request.get("env")
        if not isinstance(args, list) or not isinstance(env, dict):
            raise ValueError("args must be a list and env an object")
        self.args = [_text(a) for a in args]
        self.env = {_text(k): _text(v) for k, v in env.items()}
        self.cwd = _text(request.get("cwd"))
        self.stdin = stdin
        self.stdout = stdout
        self.report = -1  # the child's end of the setup pipe
        self.changed_signals: list[int] = []  # whose disposition the child must restore
        self.sock = sock
        self.server_pid = server_pid


class _Running:
    """The server's view of its one running child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd: int | None = None
        self.done_w: int | None = None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


# -- the server ---------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, object], fds: Sequence[int] = ()) -> None:
    data = (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _fork(job: _Job) -> _Job | _Running | dict[str, object]:
    """Fork a child for ``job``; in the child, return the job. In the server, wait until the
    child has set itself up, and return it running, or the error reply."""
    report_r, report_w = os.pipe()
    _flush_stdio()  # nothing of ours may end up in the task's output
    _freeze()
    try:
        pid = os.fork()
    except OSError as exc:
        _close(report_r, report_w)
        return {"error": f"fork failed: {exc}", "errno": exc.errno or 0,
                "strerror": exc.strerror or str(exc), "filename": None}
    if pid == 0:
        os.close(report_r)
        job.report = report_w
        return job
    os.close(report_w)
    report = _read_all(report_r)  # EOF: the child is set up (or died trying)
    os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        try:
            failure = json.loads(report)
        except ValueError:
            failure = {"errno": 0, "strerror": report.decode("utf-8", "replace")}
        return {"error": f"cannot start task: {failure.get('strerror')}", **failure}
    running = _Running(pid)
    try:
        running.pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        running.pidfd = None  # no pidfds: poll for the exit instead
    return running


def _freeze() -> None:
    """Move the server's objects out of the garbage collector's sight: a child's collections
    (and its teardown) then leave them alone, and their pages stay shared with the server
    instead of being copied into every child. Now and then, collect the server's own garbage."""
    global _forks
    _forks += 1
    if _forks % 1024 == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


_forks = 0


def _collect(running: _Running) -> int | None:
    """The child's returncode, if it has exited: first kill what is left of its process group
    (the unreaped leader keeps the pgid from being reused), then reap it."""
    try:
        if os.waitid(os.P_PID, running.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
    except ChildProcessError:  # pragma: no cover - reaped by someone else: its pgid is not ours
        status = None
    else:
        _signal_group(running.pid, signal.SIGKILL)
        _, status = os.waitpid(running.pid, 0)
    _close(running.pidfd)
    running.pidfd = None
    return -signal.SIGKILL if status is None else os.waitstatus_to_exitcode(status)


def _serve(sock: socket.socket, preload: Sequence[str]) -> _Job | None:
    """Serve requests until the client goes away (None), or return the job of a forked child
    (in that child)."""
    server_pid = os.getpid()
    stop: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for sig in _STOP_SIGNALS:
        if _STARTUP_HANDLERS.get(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, _frame: stop.append(signum))
    running: _Running | None = None
    try:
        for name in preload:
            try:
                import_module(name)
            except BaseException as exc:
                traceback.print_exc()
                _send(sock, {"error": f"cannot preload {name!r}: "
                                      f"{type(exc).__name__}: {exc}"})
                return None
        changed = [sig for sig, handler in _startup_dispositions().items()
                   if sig in _STARTUP_HANDLERS and _STARTUP_HANDLERS[sig] is not handler]
        _flush_stdio()
        _send(sock, {"ready": server_pid, "version": list(sys.version_info[:3])})
        buffer = b""
        fds: list[int] = []
        while not stop:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            timeout: int | None = None
            if running is not None:
                if running.pidfd is not None:
                    poller.register(running.pidfd, select.POLLIN)
                else:
                    timeout = 10
            ready = {fd for fd, _ in poller.poll(timeout)}
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 256):
                            break
                    except BlockingIOError:
                        break
            if running is not None and (running.pidfd is None or running.pidfd in ready):
                returncode = _collect(running)
                if returncode is not None:
                    pid, done_w, running = running.pid, running.done_w, None
                    _send(sock, {"exit": returncode, "pid": pid})
                    _close(done_w)  # after the status is on its way: readable means collectable
            if sock.fileno() not in ready:
                continue
            try:
                data, new_fds, _, _ = socket.recv_fds(sock, _RECV_SIZE, 16,
                                                      socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError:
                data, new_fds = b"", []
            fds.extend(new_fds)
            if not data:
                return None  # the client is gone: the finally clause kills the task group
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                if not isinstance(request, dict):
                    continue
                op = request.get("op")
                if op == "signal":
                    # Only to a child not reaped yet: its pgid cannot belong to anyone else.
                    signum = request.get("sig")
                    if (running is not None and request.get("pid") == running.pid
                            and isinstance(signum, int) and signum in signal.valid_signals()):
                        _signal_group(running.pid, signum)
                elif op == "spawn":
                    taken, fds = fds[:2], fds[2:]
                    if running is not None or len(taken) != 2:
                        _close(*taken)
                        _send(sock, {"error": "busy: a task is running" if running is not None
                                     else "spawn request without its two file descriptors"})
                        continue
                    try:
                        job = _Job(request, taken[0], taken[1], sock, server_pid)
                        job.changed_signals = changed
                        result: _Job | _Running | dict[str, object] = _fork(job)
                    except ValueError as exc:
                        result = {"error": f"bad spawn request: {exc}"}
                    finally:
                        if os.getpid() == server_pid:
                            _close(*taken)
                    if isinstance(result, _Job):
                        return result
                    if isinstance(result, dict):
                        _send(sock, result)
                        continue
                    running = result
                    done_r, running.done_w = os.pipe()
                    try:
                        _send(sock, {"pid": running.pid}, [done_r])
                    finally:
                        os.close(done_r)
                else:
                    _send(sock, {"error": f"unknown request {op!r}"})
        return None
    finally:
        if os.getpid() == server_pid:
            if running is not None:
                _signal_group(running.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(running.pid, 0)
                _close(running.pidfd, running.done_w)
            signal.set_wakeup_fd(-1)
            _close(wake_r, wake_w)


def _main(argv: list[str]) -> _Job | None:
    fd = int(argv[0])
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    job = _serve(sock, argv[1:])
    if job is None:
        sock.close()
    return job


# -- the child: becoming the task ---------------------------------------------------------------


def _fail_setup(job: _Job, exc: OSError | ValueError) -> NoReturn:
    if isinstance(exc, OSError):
        failure = {"errno": exc.errno or 0, "strerror": exc.strerror or str(exc),
                   "filename": exc.filename if isinstance(exc.filename, str) else None}
    else:
        failure = {"errno": 22, "strerror": str(exc), "filename": None}
    try:
        os.write(job.report, json.dumps(failure).encode("ascii"))
    finally:
        os._exit(_SETUP_FAILED)


def _close_other_fds(keep: set[int]) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: close a generous range instead
        fds = list(range(3, 1 << 16))
    for fd in fds:
        if fd not in keep:
            _close(fd)


def _become_task(job: _Job) -> None:
    """Everything ``Popen(..., start_new_session=True)`` + ``exec python script.py`` would give
    the task, as far as a forked interpreter can have it."""
    signal.set_wakeup_fd(-1)
    for sig in job.changed_signals:
        with contextlib.suppress(OSError, ValueError, TypeError):
            signal.signal(sig, _STARTUP_HANDLERS[sig])
    signal.pthread_sigmask(signal.SIG_SETMASK, _STARTUP_MASK)
    try:
        os.setsid()
        _libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                    ctypes.c_ulong(0), ctypes.c_ulong(0))
        if os.getppid() != job.server_pid:  # the server died before prctl: so do we
            os.kill(os.getpid(), signal.SIGKILL)
        job.sock.close()
        os.dup2(job.stdin, 0)
        os.dup2(job.stdout, 1)
        os.dup2(job.stdout, 2)
        for fd in {job.stdin, job.stdout} - {0, 1, 2}:
            os.close(fd)
        os.chdir(job.cwd)
        _close_other_fds({0, 1, 2, job.report})
        os.environ.clear()
        os.environ.update(job.env)
    except (OSError, ValueError) as exc:
        _fail_setup(job, exc)
    time.tzset()  # TZ as the task's environment says
    sys.argv = [job.script, *job.args]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [*_ARGV_PREFIX, job.script, *job.args]
    if _SCRIPT_DIR_ON_PATH:
        sys.path.insert(0, os.path.dirname(os.path.realpath(job.script)))
    if not os.path.isabs(job.script):  # __file__, code and tracebacks get it absolute (3.9+)
        job.script = os.path.join(os.getcwd(), job.script)
    for finder in list(sys.path_importer_cache.values()):  # directory listings may be stale
        invalidate = getattr(finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()
    os.close(job.report)  # EOF tells the server that the task is set up


def _load(script: str) -> tuple[CodeType | bytes, ModuleType]:
    """The script's source (or code, for a compiled file), and its fresh ``__main__`` module,
    now ``sys.modules["__main__"]``. ``script`` is absolute (as the interpreter makes it)."""
    main = ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as handle:
            data = handle.read()
    except OSError as exc:  # as the interpreter says it (and its exit status)
        sys.stderr.write(f"{_ARGV_PREFIX[0]}: can't open file {script!r}: "
                         f"[Errno {exc.errno}] {exc.strerror}\n")
        sys.exit(2)
    compiled = script.endswith(".pyc") or data[:2] == MAGIC_NUMBER[:2]
    loader = (SourcelessFileLoader if compiled else SourceFileLoader)("__main__", script)
    values: dict[str, object] = {
        "__name__": "__main__", "__doc__": None, "__package__": None, "__loader__": loader,
        "__spec__": None, "__annotations__": {}, "__builtins__": builtins, "__file__": script,
        "__cached__": None}
    for key in _MAIN_KEYS:
        main.__dict__[key] = values.get(key)
    if not compiled:
        return data, main
    if data[:4] != MAGIC_NUMBER:
        raise RuntimeError("Bad magic number in .pyc file")
    code = marshal.loads(data[16:])  # noqa: S302 - what `python file.pyc` does
    if not isinstance(code, CodeType):
        raise RuntimeError("Bad code object in .pyc file")
    return code, main


# -- the child: ending as the interpreter ends -------------------------------------------------


def _system_exit_status(exc: SystemExit) -> int:
    """As the interpreter handles an uncaught SystemExit (prints a non-int code)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if -(1 << 63) <= code < (1 << 63) else 0xFF
    _write_stderr(f"{code}\n")
    return 1


def _print_exception(exc: BaseException) -> None:
    """As the interpreter reports an uncaught exception (sys.last_*, then sys.excepthook)."""
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        _write_stderr("sys.excepthook is missing\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return
    try:
        hook(type(exc), exc, exc.__traceback__)
    except BaseException as hook_exc:
        _write_stderr("Error in sys.excepthook:\n")
        traceback.print_exception(type(hook_exc), hook_exc, hook_exc.__traceback__)
        _write_stderr("\nOriginal exception was:\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__)


def _write_stderr(text: str) -> None:
    with contextlib.suppress(BaseException):
        if sys.stderr is not None:
            sys.stderr.write(text)


def _unraisable(where: object) -> None:
    exc = sys.exc_info()[1]
    if exc is not None:
        with contextlib.suppress(BaseException):
            _write_stderr(f"Exception ignored in: {where!r}\n")
            traceback.print_exception(type(exc), exc, exc.__traceback__)


def _flush_std_files() -> bool:
    """As the interpreter flushes them at exit: False if stdout could not be flushed."""
    ok = True
    stdout, stderr = sys.stdout, sys.stderr
    if stdout is not None and not getattr(stdout, "closed", False):
        try:
            stdout.flush()
        except BaseException:
            _unraisable(stdout)
            ok = False
    if stderr is not None and not getattr(stderr, "closed", False):
        with contextlib.suppress(BaseException):
            stderr.flush()
    return ok


def _clear_module_dict(namespace: dict[str, object]) -> None:
    """As the interpreter clears a module at teardown: _private names first, then the rest."""
    for private in (True, False):
        for key in list(namespace):
            if key == "__builtins__" or (private and not (key[:1] == "_" and key[1:2] != "_")):
                continue
            namespace[key] = None


def _teardown(server_modules: set[str]) -> None:
    """The task's part of interpreter teardown: collect its garbage, then drop its __main__ and
    the modules it imported, so that finalizers run and files it left open are flushed. The
    server's (frozen) objects and modules are left alone: touching them would copy every page
    of the server's memory into the child."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    for name in ("stdin", "stdout", "stderr"):  # the interpreter's, not the task's wrappers
        setattr(sys, name, getattr(sys, f"__{name}__", None))
    gc.collect()
    refs = []
    for name in [n for n in sys.modules if n not in server_modules]:  # and __main__
        module = sys.modules[name]
        sys.modules[name] = None  # type: ignore[assignment]  # as the interpreter: no re-import
        if isinstance(module, ModuleType):
            refs.append(_weakref(module))
        del module
    gc.collect()
    for ref in reversed(refs):  # last imported, first cleared
        alive = ref()
        if alive is not None:
            _clear_module_dict(alive.__dict__)
        del alive
    gc.collect()


def _exit_task(status: int, sigint: bool, server_modules: set[str]) -> NoReturn:
    """The interpreter's exit path: join non-daemon threads, atexit handlers, flush (120 if
    stdout cannot be), teardown, flush again; die by SIGINT after an uncaught KeyboardInterrupt."""
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except BaseException:
            _unraisable(threading)
    atexit._run_exitfuncs()
    if not _flush_std_files():
        status = 120
    try:
        _teardown(server_modules)
    except BaseException:
        _unraisable(_teardown)
    if not _flush_std_files():
        status = 120
    if sigint:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        status = 128 + signal.SIGINT  # SIGINT is blocked: as the interpreter then does
    os._exit(status)


def _flush_io() -> None:
    """As the interpreter does right after running the main script: stderr, then stdout,
    errors ignored."""
    for stream in (sys.stderr, sys.stdout):
        with contextlib.suppress(BaseException):
            stream.flush()


def _run_task(job: _Job) -> tuple[int, bool, set[str]]:
    """Become the task and run its script: (exit status, died of KeyboardInterrupt, names of
    the modules that are the server's)."""
    _become_task(job)
    server_modules = set(sys.modules) - {"__main__"}
    code: CodeType | None = None
    try:
        source, main = _load(job.script)
        code = (source if isinstance(source, CodeType)
                else compile(source, job.script, "exec", dont_inherit=True))
        del job, source
        exec(code, main.__dict__)  # noqa: S102
    except SystemExit as exc:
        _flush_io()
        return _system_exit_status(exc), False, server_modules
    except BaseException as exc:
        _flush_io()
        # The printed traceback starts at the script's own frame (nothing of ours above it;
        # none at all for a syntax error), as for ``python script.py``.
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code is not code:
            tb = tb.tb_next
        exc.__traceback__ = tb
        del tb
        _print_exception(exc)
        return 1, isinstance(exc, KeyboardInterrupt), server_modules
    _flush_io()
    return 0, False, server_modules


if __name__ == "__main__":
    _job = _main(sys.argv[1:])
    if _job is not None:  # a forked child: from here on, this process is the task
        _exit_task(*_run_task(_job))
