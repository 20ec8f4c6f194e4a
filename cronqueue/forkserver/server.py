"""cronqueue's fork server: a warm Python interpreter that forks one child per task script.

Started by ``forkserver.client.ForkServer`` only, as ``python THIS_FILE SOCKET_FD [MODULE ...]``,
possibly with an interpreter where cronqueue is not installed: this file imports nothing but the
standard library (Python >= 3.9, Linux). ``cronqueue/forkserver.py`` describes the protocol,
what a task gets, and how that differs from ``python script.py``.

The server forks a child whenever the client asks for one (the client keeps two waiting), so
that forking is not part of starting a task. The child leaves the server's loop and sets up
what does not depend on the task (its own session, the signal dispositions and mask, no fds but
its channel to the client), then waits. The client sends the request straight to it; the child
becomes the task: the task's fds, cwd, environment, argv and ``sys.path[0]``, a fresh
``__main__``; answers; runs the script's code (compiled by the server beforehand when it can:
see ``_CODE_CACHE``); and exits as CPython's ``Py_RunMain`` would (SystemExit, excepthook,
threads, atexit, flushes, the task's part of teardown, SIGINT after KeyboardInterrupt), then
``os._exit``.

Copy-on-write shapes the code: every object a child touches (a reference count is a write)
has its page copied from the server, a few microseconds each, hundreds per child. So the child
touches as little of the server's state as it can, does what it can before the client waits for
it, and leaves the server's loop with little to unwind; the server, whose every write after a
fork is a copy too, does little per task.
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

import _signal  # type: ignore[import-not-found]  # noqa: E402 - signal's C half: no enums
import _socket  # noqa: E402
import array  # noqa: E402
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
import stat  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from _weakref import ref as _weakref  # noqa: E402
from importlib import import_module  # noqa: E402
from importlib.machinery import FileFinder, SourceFileLoader, SourcelessFileLoader  # noqa: E402
from importlib.util import MAGIC_NUMBER  # noqa: E402
from types import CodeType, ModuleType  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType
    from typing import NoReturn

_PR_SET_PDEATHSIG = 1
_SETUP_FAILED = 127  # status of a child that ran no task code
_RECV_SIZE = 1 << 16
# A request's stdin, stdout and (optionally) the script, open.
_FDS_SPACE = socket.CMSG_SPACE(3 * array.array("i").itemsize)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# argv[0] and the interpreter options this interpreter was started with (for sys.orig_argv).
_ARGV_PREFIX: list[str] = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
_ARGV_PREFIX = _ARGV_PREFIX[:max(1, len(_ARGV_PREFIX) - len(sys.argv))]

# Scripts compiled by the server, by absolute path: (the file's _file_key when it was read, its
# code). A child forked afterwards has them; it opens the script as CPython would and uses the
# code only if fstat() gives the same key. Bounded: the oldest entries go first.
_CODE_CACHE: dict[str, tuple[tuple[int, ...], CodeType]] = {}
_CODE_CACHE_SIZE = 128
# A file changed this recently is not cached: a later change within the file system's timestamp
# granularity (a clock tick; 2 s on FAT) could leave its key as it was.
_RACY_NS = 2_000_000_000


def _startup_dispositions() -> dict[int, Callable[[int, FrameType | None], object] | int]:
    """Every signal's disposition as this interpreter started (inherited SIG_IGN included):
    what a task's ``python script.py`` would have had, since the client starts us the way it
    would start that."""
    found: dict[int, Callable[[int, FrameType | None], object] | int] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = _signal.getsignal(int(sig))
        except (OSError, ValueError):
            continue
        if handler is not None:  # None: set from C, cannot be restored from Python
            found[sig] = handler
    return found


_STARTUP_HANDLERS = _startup_dispositions()
_STARTUP_MASK: set[int] = _signal.pthread_sigmask(_signal.SIG_BLOCK, [])
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PDEATHSIG_ARGS = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL),
                   ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


class _Child:
    """The server's view of one of its children (waiting for a task, or running one)."""

    def __init__(self, pid: int, seq: int, done_w: int) -> None:
        self.pid = pid
        self.seq = seq  # the client's name for it: pids can be reused, seqs are not
        self.done_w = done_w  # closed once the child's status has been sent
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None  # no pidfds: poll for the exit instead


class _Idle:
    """In a new child: what it needs from the server to become a task."""

    def __init__(self, sock: socket.socket, channel: _socket.socket, state: _ServerState,
                 server_pid: int) -> None:
        self.sock = sock  # the server's, to close
        self.channel = channel  # to the client: the request comes in, the answer goes out
        self.state = state
        self.server_pid = server_pid


class _ServerState:
    """What the server changed (or has) that a task must not inherit, as of the end of its
    start-up (preloads included); the server changes nothing after that."""

    def __init__(self) -> None:
        # Dispositions to restore (raw, as the _signal module takes them); whether the signal
        # mask must be.
        now = _startup_dispositions()
        self.signals = [(sig, handler) for sig, handler in _STARTUP_HANDLERS.items()
                        if sig in now and now[sig] != handler]
        self.mask_changed = _signal.pthread_sigmask(_signal.SIG_BLOCK, []) != _STARTUP_MASK
        # The environment, decoded: a task's is compared with it without touching os.environ.
        self.env_names = tuple(os.environ)
        self.env_values = tuple(os.environ.values())
        self._imported()

    def refresh(self) -> None:
        """Before a fork. (The server imports nothing after its start-up: just in case.)"""
        if len(self.modules) != len(sys.modules) - 1:
            self._imported()

    def _imported(self) -> None:
        self.modules = frozenset(sys.modules) - {"__main__"}  # the server's: no task's teardown
        # What the server's imports cached of the directories on sys.path (and of zip files)
        # may be stale by the time a task imports anything: read it again then. A FileFinder's
        # invalidate_caches() only marks its listing stale (read again on its next use, in a
        # task), so that is done here, once for all the children; other finders' are called
        # in each child.
        self.invalidate: list[Callable[[], object]] = []
        for finder in list(sys.path_importer_cache.values()):
            invalidate = getattr(finder, "invalidate_caches", None)
            if isinstance(finder, FileFinder):
                finder.invalidate_caches()
            elif invalidate is not None:
                self.invalidate.append(invalidate)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _file_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- the server ---------------------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, object], fds: Sequence[int] = ()) -> None:
    data = (json.dumps(message) + "\n").encode("ascii")
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
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _cache_code(path: str) -> None:
    """Compile the script at ``path`` (absolute, as a child names it) for the children forked
    from now on, unless it cannot be cached: not a regular source file, changed too recently,
    or compiling it fails or warns (a child compiles it then, with the errors and warnings on
    the task's stderr, as ``python script.py``)."""
    cached = _CODE_CACHE.pop(path, None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # never a FIFO's wait
        try:
            st = os.fstat(fd)
            if cached is not None and cached[0] == _file_key(st):  # (a child forked before)
                _CODE_CACHE[path] = cached
                return
            if not stat.S_ISREG(st.st_mode):
                return
            data = _read_all(fd)
        finally:
            os.close(fd)
        if (time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
                or path.endswith(".pyc") or data[:2] == MAGIC_NUMBER[:2]):
            return
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            code = compile(data, path, "exec", dont_inherit=True)
    except Exception:  # the child will meet (and report) it
        return
    if warned:
        return
    _CODE_CACHE[path] = (_file_key(st), code)
    while len(_CODE_CACHE) > _CODE_CACHE_SIZE:
        del _CODE_CACHE[next(iter(_CODE_CACHE))]


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


def _collect(child: _Child) -> int | None:
    """The child's returncode, if it has exited: first kill what is left of its process group
    (the unreaped leader keeps the pgid from being reused), then reap it."""
    try:
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
    except ChildProcessError:  # pragma: no cover - reaped by someone else: its pgid is not ours
        status = None
    else:
        _signal_group(child.pid, signal.SIGKILL)
        _, status = os.waitpid(child.pid, 0)
    _close(child.pidfd)
    child.pidfd = None
    return -signal.SIGKILL if status is None else os.waitstatus_to_exitcode(status)


class _Server:
    """The server: its socket to the client, its children, its loop. The loop returns whenever
    the client asks for a child, and the fork happens here, in :meth:`run`: the child then
    leaves the server with little of its state to let go of (each object it lets go of, or
    touches, has its page copied from the server)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.stop: list[int] = []  # signals asking us to stop
        self.wake_r, self.wake_w = os.pipe()
        self.children: dict[int, _Child] = {}  # by seq
        self.seq = 0
        self.buffer = b""  # what the client sent, not handled yet

    def run(self, preload: Sequence[str]) -> _Idle | None:
        """Serve the client until it goes away (None), or return what a forked child needs
        (in that child)."""
        try:
            state = self._start(preload)
            while state is not None and self._serve():
                idle = self._fork(state)
                if idle is not None:
                    return idle
            return None
        finally:
            if os.getpid() == self.pid:
                self._close()

    def _start(self, preload: Sequence[str]) -> _ServerState | None:
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in _STOP_SIGNALS:
            if _STARTUP_HANDLERS.get(sig) != _signal.SIG_IGN:
                signal.signal(sig, lambda signum, _frame: self.stop.append(signum))
        for name in preload:
            try:
                import_module(name)
            except BaseException as exc:
                import traceback

                traceback.print_exc()
                _send(self.sock, {"error": f"cannot preload {name!r}: "
                                           f"{type(exc).__name__}: {exc}"})
                return None
        state = _ServerState()
        _flush_stdio()
        _send(self.sock, {"ready": self.pid, "version": list(sys.version_info[:3])})
        return state

    def _serve(self) -> bool:
        """Handle the client's requests and the children's exits until the client asks for
        a child (True), goes away or we are told to stop (False)."""
        while not self.stop:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if self._handle(line):
                    return True
            if not self._wait():
                return False
        return False

    def _wait(self) -> bool:
        """Wait for something to do; report the children that exited. False if the client is
        gone."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        timeout: int | None = None
        for child in self.children.values():
            if child.pidfd is not None:
                poller.register(child.pidfd, select.POLLIN)
            else:
                timeout = 10
        ready = {fd for fd, _ in poller.poll(timeout)}
        if self.wake_r in ready:
            while True:
                try:
                    if not os.read(self.wake_r, 256):
                        break
                except BlockingIOError:
                    break
        for child in list(self.children.values()):
            if child.pidfd is None or child.pidfd in ready:
                returncode = _collect(child)
                if returncode is not None:
                    del self.children[child.seq]
                    _send(self.sock, {"exit": returncode, "pid": child.pid, "seq": child.seq})
                    _close(child.done_w)  # after the status is sent: readable = collectable
        if self.sock.fileno() not in ready:
            return True
        try:
            data = self.sock.recv(_RECV_SIZE)
        except ConnectionResetError:
            data = b""
        self.buffer += data
        return bool(data)

    def _handle(self, line: bytes) -> bool:
        """Handle one request; True if it asks for a child."""
        request = json.loads(line)
        if not isinstance(request, dict):
            return False
        op = request.get("op")
        if op == "signal":
            # Only to a child not reaped yet: its pgid cannot belong to anyone else.
            seq, signum = request.get("seq"), request.get("sig")
            child = self.children.get(seq) if isinstance(seq, int) else None
            if child is not None and isinstance(signum, int) and signum in signal.valid_signals():
                _signal_group(child.pid, signum)
        elif op == "fork":
            script = request.get("compile")
            if isinstance(script, str) and os.path.isabs(script):
                _cache_code(script)
            return True
        else:
            _send(self.sock, {"error": f"unknown request {op!r}"})
        return False

    def _fork(self, state: _ServerState) -> _Idle | None:
        """Fork a child for the client's next task. In the child, return what it needs; in the
        server, announce it to the client (with the client's end of its channel and the read
        end of its done pipe), or the failure. (Until the child has copied what it writes to,
        whatever the server writes to is copied for it: the server does little after the
        fork.)"""
        self.seq += 1
        channel, child_end = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        done_r, done_w = os.pipe()  # the child closes its copies at once
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                array.array("i", [channel.fileno(), done_r]))]
        _flush_stdio()  # nothing of ours may end up in a task's output
        state.refresh()
        _freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            _close(channel.detach(), child_end.detach(), done_r, done_w)
            _send(self.sock, {"error": f"fork failed: {exc}", "op": "fork",
                              "errno": exc.errno or 0, "strerror": exc.strerror or str(exc)})
            return None
        if pid == 0:
            channel.close()
            return _Idle(self.sock, child_end, state, self.pid)
        self.children[self.seq] = _Child(pid, self.seq, done_w)
        try:
            message = b'{"child":%d,"seq":%d}\n' % (pid, self.seq)
            if self.sock.sendmsg([message], fds) < len(message):
                raise OSError("short send")
        finally:
            _close(channel.detach(), child_end.detach(), done_r)
        return None

    def _close(self) -> None:
        """Kill the children's process groups, reap them."""
        for child in self.children.values():
            _signal_group(child.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
            _close(child.pidfd, child.done_w)
        signal.set_wakeup_fd(-1)
        _close(self.wake_r, self.wake_w)


def _main(argv: list[str]) -> _Idle | None:
    fd = int(argv[0])
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    idle = _Server(sock).run(argv[1:])
    if idle is None:
        sock.close()
    return idle


# -- the child: waiting for its task --------------------------------------------------------------


def _close_other_fds(keep: int) -> None:
    """Close every fd but 0, 1, 2 and ``keep``."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: close a generous range instead
        fds = list(range(3, 1 << 16))
    for fd in fds:
        if fd > 2 and fd != keep:
            try:  # noqa: SIM105 - no context manager per fd: the less touched, the better
                os.close(fd)
            except OSError:
                pass


def _prepare(idle: _Idle) -> None:
    """What ``Popen(..., start_new_session=True)`` + ``exec python`` give every task, done
    before the task is known (the client is not waiting for it yet)."""
    _signal.set_wakeup_fd(-1)
    for sig, handler in idle.state.signals:
        try:  # noqa: SIM105 - (a context manager touches more: see _close_other_fds)
            _signal.signal(sig, handler)
        except (OSError, ValueError, TypeError):
            pass
    if idle.state.mask_changed:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _STARTUP_MASK)
    try:
        os.setsid()
        _prctl(*_PDEATHSIG_ARGS)
        if os.getppid() != idle.server_pid:  # the server died before prctl: so do we
            os.kill(os.getpid(), signal.SIGKILL)
        idle.sock.close()
        _close_other_fds(idle.channel.fileno())
    except OSError:
        os._exit(_SETUP_FAILED)
    for invalidate in idle.state.invalidate:
        invalidate()


def _warm_up() -> None:
    """Do now, once, what setting up and ending a task do again (with the same code and objects,
    and nothing a task could tell): the server's pages they touch are copied now, not while the
    client waits for the task."""
    json.loads('{"script": "/a", "args": ["b"], "env": {"C": "d"}, "cwd": "/"}')
    json.dumps({"ok": 1, "compile": "/a"})
    os.path.join("/", os.path.dirname(os.path.realpath(sys.executable or "/")))
    time.tzset()  # as the server has it (the task's environment is not there yet)
    ModuleType("__main__")
    SourceFileLoader("__main__", "/a")
    gc.collect()


def _receive(channel: _socket.socket) -> tuple[bytes, list[int]]:
    """The client's request (one line; b"" if the client went away) and its fds."""
    data = b""
    fds = array.array("i")
    while not data.endswith(b"\n"):
        chunk, ancillary, _, _ = channel.recvmsg(_RECV_SIZE, _FDS_SPACE, socket.MSG_CMSG_CLOEXEC)
        for level, kind, fd_data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(fd_data[:len(fd_data) - len(fd_data) % fds.itemsize])
        if not chunk:
            return b"", list(fds)
        data += chunk
    return data, list(fds)


def _answer(channel: _socket.socket, message: dict[str, object]) -> None:
    channel.sendall((json.dumps(message) + "\n").encode("ascii"))


def _refuse(channel: _socket.socket, exc: OSError | ValueError) -> NoReturn:
    """Tell the client why the task could not be set up (it ran no code), and exit."""
    if isinstance(exc, OSError):
        failure: dict[str, object] = {
            "errno": exc.errno or 0, "strerror": exc.strerror or str(exc),
            "filename": exc.filename if isinstance(exc.filename, str) else None}
    else:
        failure = {"errno": 22, "strerror": str(exc), "filename": None}
    _give_up(channel, {"error": f"cannot start task: {failure['strerror']}", **failure})


def _give_up(channel: _socket.socket, answer: dict[str, object]) -> NoReturn:
    try:
        _answer(channel, answer)
    finally:
        os._exit(_SETUP_FAILED)


def _set_environ(env: dict[str, str], state: _ServerState) -> None:
    """``os.environ`` (and the C environment, which programs the task starts inherit) becomes
    exactly ``env``, in its order. ``env`` is usually the server's environment with variables
    added at its end: then only those are set (putenv keeps the others' places)."""
    names, values, count = tuple(env), tuple(env.values()), len(state.env_names)
    if names[:count] != state.env_names:
        os.environ.clear()
        os.environ.update(env)
        return
    # (Comparing tuples leaves the server's strings as they are: their pages stay shared.)
    first = 0 if values[:count] != state.env_values else count
    for i in range(first, len(names)):
        if i >= count or values[i] != state.env_values[i]:
            os.environ[names[i]] = values[i]


class _Task:
    """The task's script, as the child opened it (or why it could not)."""

    def __init__(self, script: str) -> None:
        self.script = script  # absolute, as the interpreter makes it (3.9+)
        self.fd = -1
        self.error: OSError | None = None
        self.code: CodeType | None = None  # the server's compiled code, if still valid


def _claim(idle: _Idle) -> _Task:
    """Wait for the task; become it; open its script; answer the client. Then only the task's
    fds 0, 1 and 2 are open."""
    channel = idle.channel
    data, fds = _receive(channel)
    if not data:
        os._exit(_SETUP_FAILED)  # the client went away (or gave up on us)
    try:
        request = json.loads(data)
        if not isinstance(request, dict) or len(fds) not in (2, 3):
            raise ValueError("a spawn request is an object, with two or three file "
                             "descriptors")
        script = _text(request.get("script"))
        args, env = request.get("args"), request.get("env")
        if not isinstance(args, list) or not isinstance(env, dict):
            raise ValueError("args must be a list and env an object")
        args = [_text(a) for a in args]
        env = {_text(k): _text(v) for k, v in env.items()}
        cwd = _text(request.get("cwd"))
    except ValueError as exc:
        _give_up(channel, {"error": f"bad spawn request: {exc}"})
    try:
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        os.dup2(fds[1], 2)
        for fd in fds[:2]:
            os.close(fd)
        os.chdir(cwd)
        _set_environ(env, idle.state)
    except (OSError, ValueError) as exc:
        _refuse(channel, exc)
    time.tzset()  # TZ as the task's environment says
    sys.argv = [script, *args]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [*_ARGV_PREFIX, script, *args]
    if _SCRIPT_DIR_ON_PATH:
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    task = _Task(script if os.path.isabs(script) else os.path.join(os.getcwd(), script))
    answer: dict[str, object] = {"ok": 1}
    try:
        # Given the script open (the runner checked that very file), read it from there: the
        # name may meanwhile lead elsewhere.
        task.fd = fds[2] if len(fds) == 3 else os.open(task.script, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(task.fd)
        if stat.S_ISDIR(st.st_mode):  # as open() says it
            raise IsADirectoryError(21, os.strerror(21), task.script)
    except OSError as exc:
        task.error = exc
    else:
        cached = _CODE_CACHE.get(task.script)
        if cached is not None and cached[0] == _file_key(st):
            task.code = cached[1]
        elif not task.script.endswith(".pyc"):
            answer["compile"] = task.script  # for the server, to compile for the next tasks
    try:
        _answer(channel, answer)
    except OSError:
        os._exit(_SETUP_FAILED)  # the client is gone
    channel.close()
    return task


def _load(task: _Task) -> tuple[CodeType | bytes, ModuleType]:
    """The script's code (or source), and its fresh ``__main__`` module, now
    ``sys.modules["__main__"]``."""
    script = task.script
    main = ModuleType("__main__")
    del sys.modules["__main__"]  # the server's: from now on, __main__ is the first of the task's
    sys.modules["__main__"] = main
    data = b""
    try:
        if task.error is not None:
            raise task.error
        if task.code is None:
            data = _read_all(task.fd)
    except OSError as exc:  # as the interpreter says it (and its exit status)
        sys.stderr.write(f"{_ARGV_PREFIX[0]}: can't open file {script!r}: "
                         f"[Errno {exc.errno}] {exc.strerror}\n")
        sys.exit(2)
    finally:
        _close(task.fd)
    compiled = task.code is None and (script.endswith(".pyc") or data[:2] == MAGIC_NUMBER[:2])
    loader = (SourcelessFileLoader if compiled else SourceFileLoader)("__main__", script)
    values: dict[str, object] = {
        "__name__": "__main__", "__doc__": None, "__package__": None, "__loader__": loader,
        "__spec__": None, "__annotations__": {}, "__builtins__": builtins, "__file__": script,
        "__cached__": None}
    for key in _MAIN_KEYS:
        main.__dict__[key] = values.get(key)
    if task.code is not None:
        return task.code, main
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


def _print_traceback(exc: BaseException) -> None:
    import traceback  # not the server's: needed only when a hook fails

    traceback.print_exception(type(exc), exc, exc.__traceback__)


def _print_exception(exc: BaseException) -> None:
    """As the interpreter reports an uncaught exception (sys.last_*, then sys.excepthook)."""
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        _write_stderr("sys.excepthook is missing\n")
        _print_traceback(exc)
        return
    try:
        hook(type(exc), exc, exc.__traceback__)
    except BaseException as hook_exc:
        _write_stderr("Error in sys.excepthook:\n")
        _print_traceback(hook_exc)
        _write_stderr("\nOriginal exception was:\n")
        _print_traceback(exc)


def _write_stderr(text: str) -> None:
    with contextlib.suppress(BaseException):
        if sys.stderr is not None:
            sys.stderr.write(text)


def _unraisable(where: object) -> None:
    exc = sys.exc_info()[1]
    if exc is not None:
        with contextlib.suppress(BaseException):
            _write_stderr(f"Exception ignored in: {where!r}\n")
            _print_traceback(exc)


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


def _task_modules(server_modules: frozenset[str]) -> list[str]:
    """The names of the task's modules, in import order: __main__ (made the last entry of
    sys.modules when the task started) and those after it, but not the server's (which a task
    may have imported again). Only these entries are looked at: the server's stay untouched."""
    names: list[str] = []
    for name in reversed(sys.modules):
        if name == "__main__":
            names.append(name)
            names.reverse()
            return names
        if name not in server_modules:
            names.append(name)
    return [name for name in sys.modules if name not in server_modules]  # __main__ was removed


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
    for name in _task_modules(server_modules):
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


def _exit_task(status: int, sigint: bool, server_modules: frozenset[str]) -> NoReturn:
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


def _run_task(idle: _Idle) -> tuple[int, bool, frozenset[str]]:
    """Wait for the task, become it and run its script: (exit status, died of
    KeyboardInterrupt, names of the modules that are the server's)."""
    server_modules = idle.state.modules
    try:
        _prepare(idle)
        _warm_up()
        task = _claim(idle)
    except BaseException:  # a signal, say, before the task's code: it never ran
        os._exit(_SETUP_FAILED)
    del idle
    code: CodeType | None = None
    try:
        source, main = _load(task)
        code = (source if isinstance(source, CodeType)
                else compile(source, task.script, "exec", dont_inherit=True))
        del task, source
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
    _idle = _main(sys.argv[1:])
    if _idle is not None:  # a forked child: from here on, this process is (about to be) the task
        _exit_task(*_run_task(_idle))
