"""Fork server: run Python task scripts in forked children of a warm interpreter (opt-in).

Starting ``python script.py`` costs milliseconds of interpreter start-up per task. A
:class:`ForkServer` is one long-lived interpreter (``server.py``, started by its file path:
standard library only, so any Python >= 3.9 on Linux >= 5.3 will do, cronqueue installed in it
or not) that forks one child per task; the child becomes the task, runs the script's code in a
fresh ``__main__`` module, and ends the way the interpreter ends ``python script.py``.

What is kept from the exec path (``runner.Runner._start``/``_wait``/``_kill_group``):

* the exit status, as ``Popen.returncode``: 0, n, or minus the signal number. As CPython does
  it: ``sys.exit(None|int|other)`` (other printed, status 1; ints & 0xFF), an uncaught exception
  goes through ``sys.last_*`` and ``sys.excepthook`` with the same traceback as the exec path
  (none of the server's frames; none at all for a SyntaxError), stderr then stdout flushed
  right after the script, non-daemon threads joined, atexit handlers, stdout/stderr flushed
  (status 120 if stdout cannot be), the task's part of teardown (its modules cleared, so their
  finalizers run and files left open are flushed), and after an uncaught KeyboardInterrupt
  death by SIGINT;
* its own session and process group (pgid == pid). Signals to the group go through the server
  (:meth:`ForkedTask.signal_group`), which sends them only while the task is unreaped; when the
  task exits, the server SIGKILLs what is left of its group, then reaps it: a pgid the server
  signals can never be another process's;
* stdin from the given fd; stdout and stderr both to the given fd; no other fd open. The given
  environment exactly (``os.environ`` and the C environment; ``time.tzset()`` for TZ); the given
  cwd; ``sys.argv == [script, *args]``; ``sys.orig_argv`` the interpreter, its options, the
  script and args; ``sys.path[0]`` the script's real directory (none with -I/-P);
  ``__main__`` with the same attributes as CPython gives it; the dispositions of SIGTERM, SIGINT
  and SIGHUP the server started with (the client starts it as it would start ``python
  script.py``, so those are the exec path's);
* the task dies with its shard: when the client's end of the socket closes (even by SIGKILL),
  the server SIGKILLs the running task's group and exits (as it does on SIGTERM/SIGINT/SIGHUP).
  If the server dies unexpectedly, the task's process gets SIGKILL (``PR_SET_PDEATHSIG``) and
  the client raises :class:`ForkServerError` (what the task started survives, as when a shard
  is SIGKILLed on the exec path).

Known differences from ``python script.py`` (the price of not starting an interpreter):

* interpreter start-up happened once, in the server, with the *server's* environment and
  options: ``sys.flags``, ``sys.path`` (PYTHONPATH, site-packages, ``.pth`` files, ...), the
  ``PYTHON*`` variables, the locale (stdio and filesystem encodings) and PEP 538's coercion, the
  hash seed (one for all the tasks of a server). A task's values of these are in its
  ``os.environ`` but change nothing: the runner starts the server with the tasks' environment;
* modules already imported: the server's own (``json``, ``re``, ``enum``, ``socket``,
  ``select``, ``signal``, ``ctypes``, ``struct``, ``contextlib``, ``importlib.machinery``, ...
  and what they import), their import-time code run in the server (cwd ``/``). Module state is
  per child: nothing a task imports or changes reaches the server or the next task. ``random``
  re-seeds itself in the child (``os.register_at_fork``);
* ``sys.stdin``/``stdout``/``stderr`` are the server's stream objects (opened on /dev/null
  and a file at its start-up) on the task's fds: never the line buffering of a tty;
* the server's objects are frozen for the garbage collector (``gc.freeze()``) so that the
  child's collections do not touch them; teardown covers the task's own ``__main__`` and the
  modules it imported, not the interpreter (no ``Py_FinalizeEx``, the exit is ``os._exit``),
  and is skipped when it would run nothing: no module imported, and no object made by the
  task with a finalizer (``__del__``: open files, generators, ...), a class with one, or a
  weakref callback;
* the process: ``/proc/PID/cmdline`` and ``/proc/PID/environ`` show the *server's* command line
  and start-up environment (getenv and ``os.environ`` give the task's); the parent is the
  server, not the shard; ``sys.executable``, rlimits, umask, cgroup and uid/gid are the
  server's; memory starts as a copy-on-write copy of the server's;
* frames: the script's module code is called from the server (``inspect.stack()`` shows two
  frames of it; the recursion limit is reached two frames earlier);
* the script is read (by the server) from the open file it is given, and is a source file: no
  ``.pyc``, no directory or zip archive with a ``__main__.py``. Its code is the server's
  compilation of those very bytes, done once per script and source, unless compiling them
  warns or fails: then the child compiles them, so that the warning or error is the task's.

Not thread-safe: one ``ForkServer`` serves one caller. Do not let a forked copy of the client
(``os.fork``, multiprocessing's fork) outlive it: it would keep the socket open, and the server
would not notice that the client died.

Protocol: one AF_UNIX stream socket, one JSON object per line, ASCII.

* server → client, once: ``{"ready": server_pid}`` or ``{"error"}``;
* client → server: ``{"op": "spawn", "script", "args", "env", "cwd"}`` with three fds
  (SCM_RIGHTS): stdin, stdout, the script open for reading. The server reads and compiles the
  script (compiled once per name and source), forks; once the child is set up it answers
  ``{"spawned": pid, "seq": n}``, or ``{"error", "errno", "strerror", "filename"}`` (no such
  cwd, ...). The child runs the task's code only after that answer was sent: a server that dies
  before it is a spawn that failed (the runner then runs the task the exec way), never a task
  that may have run. ``seq`` names the child in what follows (a pid can be reused, a seq
  cannot);
* client → server: ``{"op": "signal", "seq", "sig"}``, no reply (dropped unless ``seq`` is a
  child not reaped yet);
* server → client, when a child has exited, its group was killed and it was reaped:
  ``{"exit": returncode, "seq"}``;
* EOF either way ends everything (the server kills its children's groups).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

from cronqueue.errors import CronqueueError

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
# Never in the server's environment unless asked for: the queue's own credentials (the server's
# start-up environment is readable in /proc/PID/environ by every task it forks).
_HIDDEN_ENV = ("CRONQUEUE_DB_URL",)
_RECV_SIZE = 1 << 16
_STDERR_TAIL = 2000

# An environment as Popen takes it: str, or bytes (os.environb-style) keys and values.
Env = Mapping[str, str] | Mapping[bytes, bytes]


class ForkServerError(CronqueueError):
    """The fork server could not be started, is not running, or died (a task it was running is
    lost: its process was killed, what it started may survive, as when a shard dies)."""


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class _Connection:
    """One server process and the client's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket,
                 errlog: IO[bytes]) -> None:
        self.proc = proc
        self.sock = sock
        self.errlog = errlog
        self.lost: str | None = None
        self._buffer = b""
        self.replies: deque[dict[str, Any]] = deque()
        self.tasks: set[int] = set()  # seqs of the running tasks
        self.exits: dict[int, int] = {}  # seq: returncode, until its ForkedTask takes it

    def pump(self, timeout: float | None, *, one_line: bool = False) -> None:
        """Read what the server sent (``one_line``: up to the end of a line, so that what comes
        after it, a task's exit, still makes the socket readable), waiting up to ``timeout``
        for something. Raises ForkServerError once the server is gone."""
        if self.lost is not None:
            raise ForkServerError(self.lost)
        if not select.select([self.sock], [], [], None if timeout is None
                             else max(0.0, timeout))[0]:
            return
        try:
            data = self.sock.recv(_RECV_SIZE, socket.MSG_PEEK if one_line else 0)
            if one_line:
                data = self.sock.recv(data.find(b"\n") + 1 or len(data))
        except OSError as exc:
            raise self.fail(f"fork server connection failed: {exc}") from None
        if not data:
            raise self.fail("fork server died")
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
                if "exit" in message:
                    seq = int(message["seq"])
                    if seq in self.tasks:
                        self.tasks.discard(seq)
                        self.exits[seq] = int(message["exit"])
                else:
                    if "spawned" in message:
                        self.tasks.add(int(message["seq"]))
                    self.replies.append(message)
            except (ValueError, TypeError, KeyError):
                raise self.fail(f"fork server sent garbage: {line[:200]!r}") from None

    def reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"fork server did not answer within {timeout:g}s")
            self.pump(remaining, one_line=True)
        return self.replies.popleft()

    def send(self, message: Mapping[str, object], fds: Sequence[int] = ()) -> None:
        if self.lost is not None:
            raise ForkServerError(self.lost)
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")
        try:
            sent = socket.send_fds(self.sock, [data], list(fds)) if fds else 0
            self.sock.sendall(data[sent:])
        except OSError as exc:
            raise self.fail(f"fork server connection failed: {exc}") from None

    def fail(self, reason: str) -> ForkServerError:
        """Give up on this server (kill it if it still runs) and describe why."""
        if self.lost is None:
            how = self._shutdown(timeout=1.0)
            tail = self._stderr_tail()
            self.errlog.close()
            self.lost = (f"{reason} (pid {self.proc.pid}, {how})"
                         + (f"; its stderr ends with: {tail}" if tail else ""))
        return ForkServerError(self.lost)

    def close(self, timeout: float) -> None:
        """Close our end (the server kills its children's groups and exits), reap it."""
        if self.lost is None:
            self._shutdown(timeout)
            self.lost = "fork server was closed"
        self.errlog.close()

    def _shutdown(self, timeout: float) -> str:
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # unreaped: the pid is still ours
            self.proc.wait()
            return "did not exit, killed"
        return _describe(self.proc.returncode)

    def _stderr_tail(self) -> str:
        try:
            size = self.errlog.seek(0, os.SEEK_END)
            self.errlog.seek(max(0, size - _STDERR_TAIL))
            return self.errlog.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""


class ForkedTask:
    """A task running in a child of the fork server (its pid is also its process group id)."""

    def __init__(self, conn: _Connection, pid: int, seq: int, argv: list[str]) -> None:
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None
        self._conn = conn
        self._seq = seq

    def fileno(self) -> int:
        """Readable when the server has something to say, e.g. that the task has exited (or
        the server died): then call :meth:`poll`. For select/poll."""
        return self._conn.sock.fileno()

    def poll(self) -> int | None:
        """The returncode if the task has exited, else None. Raises ForkServerError if the
        server died (the task is lost)."""
        if self.returncode is None:
            self._collect(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the task to exit; its returncode (``subprocess.TimeoutExpired`` after
        ``timeout`` seconds, ForkServerError if the server died)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._collect(remaining)
        return self.returncode

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the task's process group (via the server, which drops it once it has
        reaped the task). A no-op once the task's status is known."""
        if self.returncode is not None or self._seq in self._conn.exits:
            return
        self._conn.send({"op": "signal", "seq": self._seq, "sig": int(sig)})

    def _collect(self, timeout: float | None) -> None:
        conn = self._conn
        if self._seq not in conn.exits:
            try:
                conn.pump(timeout)
            except ForkServerError as exc:
                raise ForkServerError(f"{exc}; task pid {self.pid} lost") from None
        if self._seq in conn.exits:
            self.returncode = conn.exits.pop(self._seq)


class ForkServer:
    """A fork server for Python task scripts; see the module docstring.

    ``python`` is the interpreter's argv (``[sys.executable]``, ``["/usr/bin/python3.12",
    "-X", "dev"]``, ...); ``env`` is the server's own environment, i.e. what the interpreter
    starts up with (default: ours without ``CRONQUEUE_DB_URL``) - give it the environment the
    tasks get.
    """

    def __init__(self, python: Sequence[str], *, start_timeout: float = 10.0,
                 env: Env | None = None) -> None:
        if isinstance(python, str) or not python:
            raise ValueError("python must be a non-empty argv list")
        self.python = list(python)
        self.start_timeout = start_timeout
        self.env = None if env is None else _text_env(env)
        self._conn: _Connection | None = None

    def __enter__(self) -> ForkServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        conn = self._conn
        return conn is not None and conn.lost is None and conn.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's pid (None before start)."""
        return None if self._conn is None else self._conn.proc.pid

    def start(self) -> None:
        """Start the server, unless it runs; a dead one is replaced. Raises ForkServerError."""
        if self.running:
            return
        if self._conn is not None:
            self._conn.close(timeout=1.0)
            self._conn = None
        env = self.env
        if env is None:
            env = {k: v for k, v in os.environ.items() if k not in _HIDDEN_ENV}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        errlog = tempfile.TemporaryFile()  # noqa: SIM115 - kept by the connection
        try:
            proc = subprocess.Popen(
                [*self.python, SERVER_SCRIPT, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog,
                pass_fds=(theirs.fileno(),), close_fds=True, start_new_session=True, cwd="/",
                env=env)
        except (OSError, ValueError) as exc:
            ours.close()
            errlog.close()
            raise ForkServerError(f"cannot start fork server {self.python[0]!r}: {exc}") from exc
        finally:
            theirs.close()
        conn = _Connection(proc, ours, errlog)
        message = conn.reply(self.start_timeout)
        if "ready" not in message:
            raise conn.fail(f"fork server failed to start: {message.get('error', message)}")
        self._conn = conn

    def spawn(self, script: str, args: Sequence[str], *, env: Env, cwd: str,
              stdin: int | _HasFileno, stdout: int | _HasFileno, script_fd: int) -> ForkedTask:
        """Run the script open as ``script_fd`` (read, never opened by name; the caller's to
        close), named ``script`` (absolute: ``sys.argv[0]``, ``__file__``), with ``sys.argv ==
        [script, *args]``, in a forked child, in ``cwd``, with exactly ``env`` (str or bytes, as
        Popen takes it). ``stdin`` and ``stdout`` are fds or objects with ``fileno()``
        (``subprocess.DEVNULL`` works); stderr goes to stdout; they are the caller's to close.
        Returns once the child is set up. Raises ForkServerError (the server is not running, or
        died), OSError (the child could not be set up, e.g. no such cwd: as Popen would),
        ValueError/TypeError (a bad environment or argument)."""
        conn = self._conn
        if conn is None or conn.lost is not None:
            raise ForkServerError(conn.lost if conn is not None else "fork server not started")
        if not all(isinstance(a, str) for a in (script, cwd, *args)):
            raise TypeError("script, args and cwd must be str")
        if not os.path.isabs(script):
            raise ValueError(f"script must be an absolute path: {script!r}")
        request = {"op": "spawn", "script": script, "args": list(args), "env": _text_env(env),
                   "cwd": cwd}
        with contextlib.ExitStack() as stack:
            conn.send(request, [_fd(stdin, stack), _fd(stdout, stack), script_fd])
        answer = conn.reply(self.start_timeout)
        if "spawned" in answer:
            return ForkedTask(conn, int(answer["spawned"]), int(answer["seq"]),
                              [script, *args])
        if answer.get("errno") and answer.get("strerror"):
            filename = answer.get("filename")
            if filename is not None:
                raise OSError(int(answer["errno"]), str(answer["strerror"]), str(filename))
            raise OSError(int(answer["errno"]), str(answer["strerror"]))
        raise ForkServerError(f"fork server refused the task: {answer.get('error', answer)}")

    def close(self) -> None:
        """Stop the server; its children's process groups (a running task's) are killed first
        (by the server)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(timeout=5.0)


def _fd(value: int | _HasFileno, stack: contextlib.ExitStack) -> int:
    if isinstance(value, int):
        if value == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            return fd
        if value < 0:
            raise ValueError(f"not a file descriptor: {value}")
        return value
    return value.fileno()


def _text_env(env: Env) -> dict[str, str]:
    """As Popen checks it: str (or bytes, decoded as os.environ does) keys and values, no '='
    in a key, no NUL anywhere."""
    checked: dict[str, str] = {}
    for raw_key, raw_value in env.items():
        if not isinstance(raw_key, str | bytes) or not isinstance(raw_value, str | bytes):
            raise TypeError("environment keys and values must be str or bytes")
        key, value = os.fsdecode(raw_key), os.fsdecode(raw_value)
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"illegal environment variable: {key!r}")
        checked[key] = value
    return checked


def _describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
