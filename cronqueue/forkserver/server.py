"""cronqueue's fork server: a warm Python interpreter that forks one child per task script.

Started by ``cronqueue.forkserver.client.ForkServer`` only, as ``python THIS_FILE SOCKET_FD``,
with the interpreter (and options) that would run ``python script.py``, where cronqueue may not
be installed: this file imports nothing but the standard library (Python >= 3.9, Linux >= 5.3).
``client.py`` describes the protocol, what a task gets, and how that differs from ``python
script.py``.

For each request the server forks; the child leaves the server's loop, becomes the task (its
own session, the start-up signal dispositions, the task's fds and nothing else, cwd,
environment, argv, ``sys.path[0]``, a fresh ``__main__``), reports to the server that it is set
up and waits for its go, given once the client has been answered (so a task the client was not
told about never runs: a server dying then is a spawn that failed, not a task that may have
run), runs the script's code and ends as CPython's
``Py_RunMain`` would (SystemExit, excepthook, threads, atexit, flushes, the task's part of
teardown unless it would run nothing, SIGINT after KeyboardInterrupt, C's stdio flushed), then
``os._exit``.
The server reports each child's exit once it has killed what is left of the child's process
group and reaped it.
"""

from __future__ import annotations

import sys

# The keys of a script's __main__ namespace as this interpreter makes it (the task's __main__
# gets the same ones, in the same order).
_MAIN_KEYS = [key for key in globals() if key.startswith("__") and key.endswith("__")]

if __name__ == "__main__" and (sys.version_info < (3, 9) or sys.platform != "linux"):
    sys.exit("the cronqueue fork server needs Python >= 3.9 on Linux")

import _signal  # type: ignore[import-not-found]  # noqa: E402 - signal's C half: no enums
import array  # noqa: E402
import atexit  # noqa: E402
import builtins  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from _weakref import CallableProxyType, ProxyType, ReferenceType  # noqa: E402
from _weakref import ref as _weakref  # noqa: E402
from importlib.machinery import SourceFileLoader  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType, FrameType, ModuleType
    from typing import NoReturn

_SETUP_FAILED = 127  # status of a child that ran no task code
_RECV_SIZE = 1 << 16
_FDS_SPACE = socket.CMSG_SPACE(16 * array.array("i").itemsize)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What `python script.py` would have had (the client starts us as it would start that).
_STARTUP_HANDLERS = {int(sig): _signal.getsignal(int(sig)) for sig in _STOP_SIGNALS}
_CHANGED: list[tuple[int, object]] = []  # (signal, startup handler) for those the server set
_ARGV0: str = getattr(sys, "orig_argv", [sys.executable])[0]
# Interpreter options, as sys.orig_argv gives them before the script (none but with -X, -O...).
_OPTIONS: list[str] = list(getattr(sys, "orig_argv", [])[1:-len(sys.argv)])
# -I and -P: no script directory on sys.path (for the server as for a task).
_SCRIPT_DIR_ON_PATH = not (getattr(sys.flags, "safe_path", False) or sys.flags.isolated)
_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PDEATHSIG_ARGS = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL),
                   ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
# close_range(2) is 436 on the architectures of the common syscall table (Linux >= 5.9); others
# (alpha, mips, ...) number it differently: there, fds are closed one by one.
_SYS_CLOSE_RANGE = 436 if os.uname().machine in (
    "x86_64", "i386", "i486", "i586", "i686", "aarch64", "aarch64_be", "armv6l", "armv7l",
    "armv8l", "riscv64", "ppc64", "ppc64le", "s390x", "loongarch64") else -1
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long
_CLOSE_RANGE_ARGS = (ctypes.c_long(_SYS_CLOSE_RANGE),)
_FD_MAX = ctypes.c_uint(0xFFFFFFFF)
_TZ = os.environ.get("TZ")  # the server's: a task with the same TZ needs no tzset()
# ctypes sets up a function's first call lazily: done here, not again in every child.
_prctl(ctypes.c_int(3), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
       ctypes.c_ulong(0))  # PR_GET_DUMPABLE: changes nothing
if _SYS_CLOSE_RANGE > 0:
    _syscall(*_CLOSE_RANGE_ARGS, 1, 0, 0)  # first > last: EINVAL, closes nothing
# C's stdio, flushed as exit() would (os._exit does not): what a task wrote through a C library
# (ctypes, an extension) to a pipe or file sits in its buffers. Nothing of the server's is.
_fflush = ctypes.CDLL(None, use_errno=True).fflush
_fflush.argtypes = (ctypes.c_void_p,)
_fflush(None)


class _Stop(BaseException):
    """TERM, INT or HUP: kill the children's groups and exit."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


class _Request:
    """In a new child: the task it is to become."""

    def __init__(self, request: dict[str, object], fds: list[int], report: socket.socket,
                 server: _Server, source: bytes, code: CodeType | None,
                 real_dir: str) -> None:
        self.request = request
        self.fds = fds  # stdin, stdout
        self.source = source  # the script's, as the server read it from the file it was given
        self.real_dir = real_dir  # the directory of the file it was given (sys.path[0])
        self.code = code  # ... and compiled, unless its compilation failed or warned
        self.report = report  # to the server: b"ok" once set up (then the go: b"g"), or why not
        self.server_sock = server.sock
        self.server_pid = server.pid
        self.server_modules = server.modules  # left alone by the task's teardown


# -- the server ---------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, object]) -> None:
    sock.sendall((json.dumps(message) + "\n").encode("ascii"))


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.buffer = b""  # what the client sent, not handled yet
        self.fds: list[int] = []  # the fds that came with it, not handed to a child yet
        self.children: dict[int, tuple[int, int]] = {}  # seq: (pid, pidfd), until reaped
        self.by_pidfd: dict[int, int] = {}  # pidfd: seq
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.seq = 0
        self.modules = frozenset(sys.modules) - {"__main__"}  # (imports are done by now)
        _FINALIZES.update(_classes())

    def serve(self) -> _Request | None:
        """Serve the client until it goes away (None) - or, in a forked child, its task."""
        try:
            while True:
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    request = self._handle(line)
                    if request is not None:
                        return request
                if not self._wait():
                    return None
        finally:
            if os.getpid() == self.pid:
                self._close()

    def _wait(self) -> bool:
        """Wait for the client or a child's exit; report the exits. False: the client is gone."""
        for fd, _ in self.poller.poll():
            if fd in self.by_pidfd:
                self._reap(self.by_pidfd.pop(fd))
                continue
            try:
                data, ancillary, _, _ = self.sock.recvmsg(_RECV_SIZE, _FDS_SPACE,
                                                          socket.MSG_CMSG_CLOEXEC)
            except ConnectionResetError:  # the client died with our messages unread
                return False
            for level, kind, fd_data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(fd_data[:len(fd_data) - len(fd_data) % fds.itemsize])
                    self.fds.extend(fds)
            if not data:
                return False
            self.buffer += data
        return True

    def _reap(self, seq: int) -> None:
        """A child has exited (its pidfd said so): kill what is left of its process group (the
        unreaped leader keeps the pgid from being anyone else's), reap it, report it."""
        pid, pidfd = self.children.pop(seq)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        _send(self.sock, {"exit": os.waitstatus_to_exitcode(status), "seq": seq})

    def _handle(self, line: bytes) -> _Request | None:
        request = json.loads(line)
        op = request.get("op") if isinstance(request, dict) else None
        if op == "signal":
            # Only to a child not reaped yet: its pgid cannot be anyone else's.
            seq, sig = request.get("seq"), request.get("sig")
            child = self.children.get(seq) if isinstance(seq, int) else None
            if child is not None and isinstance(sig, int):
                _killpg(child[0], sig)
            return None
        if op == "spawn" and len(self.fds) >= 3:
            fds, self.fds = self.fds[:3], self.fds[3:]
            return self._spawn(request, fds)
        _send(self.sock, {"error": f"bad request {line[:100]!r}"})
        return None

    def _spawn(self, request: dict[str, object], fds: list[int]) -> _Request | None:
        """Read and compile the script; fork the task's child; in it, return what it needs.
        Here, wait until it is set up (or has failed), then answer the client."""
        script = request.get("script")
        try:
            if not isinstance(script, str):
                raise ValueError("bad spawn request")
            source = _pread_all(fds[2])
            real_dir = _real_dir(fds[2], script)
        except (OSError, ValueError) as exc:
            _close(*fds)
            _send(self.sock, _failure(exc))
            return None
        _close(fds.pop())
        code = _compiled(script, source)
        self.seq += 1
        report, child_report = socket.socketpair()
        # Made here, not in the child: a class instantiated only in children would have its
        # code and its instances' shared keys written to (copied) in every one of them.
        req = _Request(request, fds, child_report, self, source, code, real_dir)
        for stream in (sys.stdout, sys.stderr):  # nothing of ours may end up in a task's output
            stream.flush()
        _freeze(self.seq)
        try:
            pid = os.fork()
        except OSError as exc:
            del req
            report.close()
            child_report.close()
            _close(*fds)
            _send(self.sock, {"error": f"fork failed: {exc}", "errno": exc.errno or 0,
                              "strerror": exc.strerror or str(exc), "filename": None})
            return None
        if pid == 0:
            report.close()
            return req
        del req
        child_report.close()
        _close(*fds)
        with report:
            answer = _read_all(report.fileno())
            if answer != b"ok":  # it ran none of the task's code, and exits (or has died)
                os.waitpid(pid, 0)
                _send(self.sock, json.loads(answer) if answer else
                      {"error": "the child died while it was being set up"})
                return None
            pidfd = os.pidfd_open(pid)
            self.children[self.seq] = (pid, pidfd)
            self.by_pidfd[pidfd] = self.seq
            self.poller.register(pidfd, select.POLLIN)
            _send(self.sock, {"spawned": pid, "seq": self.seq})
            with contextlib.suppress(OSError):  # (it died meanwhile: its exit will tell)
                report.sendall(b"g")
        return None

    def _close(self) -> None:
        """Kill the children's process groups, reap them."""
        for pid, pidfd in self.children.values():
            _killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pidfd)
        self.children.clear()


# Scripts compiled by the server, by name and source (the bytes it read from the file it was
# given), oldest first; None: the child compiles it (the errors or warnings are the task's).
_CODE: dict[tuple[str, bytes], CodeType | None] = {}
_CODE_SIZE = 64


def _compiled(script: str, source: bytes) -> CodeType | None:
    key = (script, source)
    if key not in _CODE:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            try:
                code: CodeType | None = compile(source, script, "exec", dont_inherit=True)
            except Exception:
                code = None
        _CODE[key] = None if warned else code
        while len(_CODE) > _CODE_SIZE:
            del _CODE[next(iter(_CODE))]
    return _CODE[key]


def _real_dir(fd: int, script: str) -> str:
    """The directory of the open file ``fd`` (the exec path's ``sys.path[0]``: the real
    directory of the script run as /proc/self/fd/N), one readlink; by the name if /proc says
    nothing usable."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if not target.startswith("/") or target.endswith(" (deleted)"):
        target = os.path.realpath(script)
    return os.path.dirname(target)


def _failure(exc: OSError | ValueError | TypeError) -> dict[str, object]:
    """Why a task could not be set up, for the client (which raises it as an OSError)."""
    return {"error": f"cannot start task: {exc}", "errno": getattr(exc, "errno", None) or 22,
            "strerror": getattr(exc, "strerror", None) or str(exc),
            "filename": getattr(exc, "filename", None)}


def _freeze(seq: int) -> None:
    """Move the server's objects out of the garbage collector's sight: a child's collections
    (its teardown makes three) then leave them alone, and their pages stay shared with the
    server instead of being copied into every child. Now and then, collect the server's own
    garbage."""
    if seq % 1024 == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _main(argv: list[str]) -> _Request | None:
    sock = socket.socket(fileno=int(argv[0]))
    sock.set_inheritable(False)
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        _send(sock, {"error": f"no pidfd_open() (Python >= 3.9, Linux >= 5.3 needed): {exc}"})
        return None
    for sig, handler in _STARTUP_HANDLERS.items():
        if handler != _signal.SIG_IGN:
            signal.signal(sig, _stop)
            _CHANGED.append((sig, handler))
    _send(sock, {"ready": os.getpid()})
    request = _Server(sock).serve()
    if request is None:
        sock.close()
    return request


# -- the child: becoming the task -----------------------------------------------------------------


def _become(req: _Request) -> str:
    """What ``Popen(..., start_new_session=True)`` and ``exec python script.py`` give the task;
    then report to the server. Returns the script's name. Exits if the task could not be set up
    (the server tells the client why)."""
    for sig, handler in _CHANGED:
        _signal.signal(sig, handler)
    os.setsid()
    _prctl(*_PDEATHSIG_ARGS)
    if os.getppid() != req.server_pid:  # the server died before prctl: so do we
        os._exit(_SETUP_FAILED)
    req.server_sock.close()
    stdin, stdout = req.fds
    request = req.request
    script, args, env, cwd = (request.get("script"), request.get("args"), request.get("env"),
                              request.get("cwd"))
    try:
        if not (isinstance(script, str) and isinstance(cwd, str) and isinstance(args, list)
                and isinstance(env, dict)):
            raise ValueError("bad spawn request")
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stdout, 2)
        _close_fds_but(req.report.fileno())  # every fd but 0-2 and the server's report
        os.chdir(cwd)
        _set_environ(env)
    except (OSError, ValueError, TypeError) as exc:
        req.report.sendall(json.dumps(_failure(exc)).encode("ascii"))
        os._exit(_SETUP_FAILED)
    if env.get("TZ") != _TZ:
        time.tzset()  # TZ as the task's environment says (the server's is set already)
    sys.argv = [script, *args]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [_ARGV0, *_OPTIONS, script, *args]
    if _SCRIPT_DIR_ON_PATH:
        sys.path[0] = req.real_dir
    req.report.sendall(b"ok")
    req.report.shutdown(socket.SHUT_WR)
    if req.report.recv(1) != b"g":  # the server died before the client was told
        os._exit(_SETUP_FAILED)
    req.report.close()
    return script


def _close_fds_but(keep: int) -> None:
    """Close every fd above 2 but ``keep``: two close_range() calls (Linux >= 5.9), else one
    by one as /proc lists them."""
    if _SYS_CLOSE_RANGE > 0 \
            and (keep <= 3 or _syscall(*_CLOSE_RANGE_ARGS, 3, keep - 1, 0) == 0) \
            and _syscall(*_CLOSE_RANGE_ARGS, keep + 1, _FD_MAX, 0) == 0:
        return
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) > 2 and int(fd) != keep:
            _close(int(fd))


# The server's environment, decoded: a task's is compared with it without touching os.environ.
_ENV_NAMES = tuple(os.environ)
_ENV_VALUES = tuple(os.environ.values())


def _set_environ(env: dict[str, str]) -> None:
    """``os.environ`` (and the C environment, which programs the task starts inherit) becomes
    exactly ``env``, in its order. ``env`` is usually the server's environment with variables
    added at its end: then only those are set (putenv keeps the others' places), which spares
    copying the pages of the server's environment into the child."""
    names, values, count = tuple(env), tuple(env.values()), len(_ENV_NAMES)
    if names[:count] != _ENV_NAMES:
        os.environ.clear()
        os.environ.update(env)
        return
    first = 0 if values[:count] != _ENV_VALUES else count
    for i in range(first, len(names)):
        if i >= count or values[i] != _ENV_VALUES[i]:
            os.environ[names[i]] = values[i]


def _pread_all(fd: int) -> bytes:
    """The whole file, whatever the offset of its (shared) open file description."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _new_main(script: str) -> ModuleType:
    """A fresh ``__main__`` module, now ``sys.modules["__main__"]``, as CPython makes it."""
    main = type(sys)("__main__")
    del sys.modules["__main__"]  # the server's: from now on, __main__ is the first of the task's
    sys.modules["__main__"] = main
    values: dict[str, object] = {
        "__name__": "__main__", "__doc__": None, "__package__": None,
        "__loader__": SourceFileLoader("__main__", script), "__spec__": None,
        "__annotations__": {}, "__builtins__": builtins, "__file__": script, "__cached__": None}
    for key in _MAIN_KEYS:
        main.__dict__[key] = values.get(key)
    return main


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


def _print_traceback(exc: BaseException) -> None:
    import traceback  # not the server's: needed only when a hook fails

    traceback.print_exception(type(exc), exc, exc.__traceback__)


def _print_exception(exc: BaseException) -> None:
    """As the interpreter reports an uncaught exception (sys.last_*, then sys.excepthook)."""
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException as hook_exc:
        if hook_exc.__context__ is exc:  # (raised while no exception was being handled)
            hook_exc.__context__ = None
        if hook_exc.__traceback__ is not None:  # from the hook's own frame on
            hook_exc.__traceback__ = hook_exc.__traceback__.tb_next
        _write_stderr("Error in sys.excepthook:\n")
        _print_traceback(hook_exc)
        _write_stderr("\nOriginal exception was:\n")
        _print_traceback(exc)


def _write_stderr(text: str) -> None:
    with contextlib.suppress(BaseException):
        sys.stderr.write(text)


def _flush_std_files() -> bool:
    """As the interpreter flushes them at exit: False if stdout could not be flushed."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not getattr(stream, "closed", False):
            try:
                stream.flush()
            except BaseException as exc:
                if stream is sys.stdout:
                    ok = False
                    _write_stderr(f"Exception ignored in: {stream!r}\n")
                    _print_traceback(exc)
    return ok


def _clear_module_dict(namespace: dict[str, object]) -> None:
    """As the interpreter clears a module at teardown: _private names first, then the rest."""
    for private in (True, False):
        for key in list(namespace):
            if key == "__builtins__" or (private and not (key[:1] == "_" and key[1:2] != "_")):
                continue
            namespace[key] = None


def _teardown(server_modules: frozenset[str]) -> None:
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
    for name in [name for name in sys.modules if name not in server_modules]:  # import order
        module = sys.modules[name]
        sys.modules[name] = None  # type: ignore[assignment]  # as the interpreter: no re-import
        if isinstance(module, type(sys)):
            refs.append(_weakref(module))
        del module
    gc.collect()
    for ref in reversed(refs):  # last imported, first cleared
        alive = ref()
        if alive is not None:
            _clear_module_dict(alive.__dict__)
        del alive
    gc.collect()


_FINALIZES: dict[type, bool] = {}  # see _classes()
_MODULE = type(sys)
# Above this many objects of the task's (not frozen), teardown runs without looking at them.
_FEW_OBJECTS = 5000


def _nothing_to_finalize(server_modules: frozenset[str]) -> bool:
    """True if the task's part of teardown would run no code of anyone's (no finalizer, no
    weakref callback, no file to flush), so that skipping it changes nothing but the time it
    takes (a third of a trivial task's: every page it touches is copied from the server): no
    module was added to sys.modules, and none of the objects made since the fork (the only
    ones the teardown can free: the server's are frozen) is a module but the task's
    ``__main__`` (the task imported none), has a ``__del__`` (files, generators, sockets,
    classes with one, ...), is a class defining one (its instances may be untracked), or is a
    weak reference with a callback. (Not by going through sys.modules: that would write to the
    refcount of every name in it, copying the server's pages they are in.)"""
    try:
        if len(sys.modules) != len(server_modules) + 1:
            return False
        objects = gc.get_objects()
        if len(objects) > _FEW_OBJECTS:
            return False
        finalizes, main = _FINALIZES.get, sys.modules.get("__main__")
        for obj in objects:
            kind = type(obj)
            if (finalizes(kind, True) or kind is ProxyType or kind is CallableProxyType
                    or (isinstance(obj, type) and _finalizes(obj))
                    or (isinstance(obj, ReferenceType) and obj.__callback__ is not None)
                    or (isinstance(obj, _MODULE) and obj is not main)):
                return False
        return True
    except Exception:  # a strange object: let the teardown deal with it
        return False


def _classes() -> dict[type, bool]:
    """Every class there is (in the server, before the first fork), and whether it defines
    ``__del__``: a child looks its objects' classes up here (a class it made is not here: it
    then counts as one that finalizes)."""
    found: dict[type, bool] = {}
    todo: list[type] = [object]
    while todo:
        kind = todo.pop()
        if kind not in found:
            found[kind] = _finalizes(kind)
            with contextlib.suppress(TypeError):
                todo.extend(type.__subclasses__(kind))
    return found


def _finalizes(kind: type) -> bool:
    """Whether ``kind`` or a base defines ``__del__`` (tp_finalize too): looked up in the
    classes' own namespaces, not by getattr (no AttributeError raised each time)."""
    return any("__del__" in base.__dict__ for base in type.__dict__["__mro__"].__get__(kind))


def _exit_task(status: int, sigint: bool, server_modules: frozenset[str]) -> NoReturn:
    """The interpreter's exit path: join non-daemon threads, atexit handlers, flush (120 if
    stdout cannot be), teardown, flush again; die by SIGINT after an uncaught KeyboardInterrupt."""
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except BaseException as exc:
            _print_traceback(exc)
    atexit._run_exitfuncs()
    if not _flush_std_files():
        status = 120
    try:
        if not _nothing_to_finalize(server_modules):
            _teardown(server_modules)
    except BaseException as exc:
        _print_traceback(exc)
    if not _flush_std_files():
        status = 120
    if sigint:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        status = 128 + signal.SIGINT  # SIGINT is blocked: as the interpreter then does
    _fflush(None)  # C's stdio, as the interpreter's exit() does (a death by SIGINT does not)
    os._exit(status)


def _flush_io() -> None:
    """As the interpreter does right after running the main script: stderr, then stdout,
    errors ignored."""
    for stream in (sys.stderr, sys.stdout):
        with contextlib.suppress(BaseException):
            stream.flush()


def _run_task(req: _Request) -> tuple[int, bool, frozenset[str]]:
    """Become the task and run its script: (exit status, died of KeyboardInterrupt, the
    names of the server's modules, which the task's teardown leaves alone)."""
    server_modules = req.server_modules
    try:
        script = _become(req)
    except BaseException:  # a signal, say, before the task's code: it never ran
        os._exit(_SETUP_FAILED)
    code, source = req.code, req.source
    del req
    try:
        main = _new_main(script)
        if code is None:
            code = compile(source, script, "exec", dont_inherit=True)
        del source
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
    try:
        _request = _main(sys.argv[1:])
    except _Stop:
        _request = None
    if _request is not None:  # a forked child: from here on, this process is the task
        _exit_task(*_run_task(_request))
