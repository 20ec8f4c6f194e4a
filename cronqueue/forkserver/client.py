"""Fork server: run Python task scripts in forked children of a warm interpreter (opt-in).

Starting ``python script.py`` costs tens of milliseconds of interpreter start-up per task. A
:class:`ForkServer` is one long-lived interpreter (``_forkserver_main.py``: standard library
only, so any Python >= 3.9 on Linux will do, cronqueue installed in it or not) that forks one
child per task; the child becomes the task, runs the script's code in a fresh ``__main__``
module, and ends the way the interpreter ends ``python script.py``.

Forking, and what a child sets up whatever its task, happen ahead of time: the client keeps two
children forked and waiting (asking for a replacement when a task has exited), so starting a
task is one message to a waiting child and its answer. And the server compiles each script it
is told about (the first child to run it compiles it itself), so that the children forked after
that have its code; a child uses that code only if the file it opens is, by ``fstat()``, the one
the server compiled. A trivial task costs about a tenth of ``python script.py``.

What is kept from the exec path (``runner.Runner._spawn``/``_wait``/``_kill_group``):

* the exit status, as ``Popen.returncode``: 0, n, or minus the signal number. As CPython does
  it: ``sys.exit(None|int|other)`` (other printed, status 1; ints & 0xFF), an uncaught exception
  goes through ``sys.last_*`` and ``sys.excepthook`` with the same traceback as the exec path
  (none of the server's frames; none at all for a SyntaxError), stderr then stdout flushed
  right after the script, non-daemon threads joined (``threading._shutdown``), atexit
  handlers, stdout/stderr flushed (status 120 if stdout cannot be), teardown, flushed again,
  and after an uncaught KeyboardInterrupt death by SIGINT. A missing script: CPython's "can't
  open file" message and status 2; a ``.pyc`` file runs as compiled code;
* its own session and process group (pgid == pid). Signals to the group go through the server
  (:meth:`ForkedTask.signal_group`), which sends them only while the task is unreaped; when the
  task exits, the server SIGKILLs what is left of its group, then reaps it: a pgid the server
  signals can never be another process's;
* stdin from the given fd; stdout and stderr both to the given fd; no other fd open. The given
  environment exactly, in its order (``os.environ`` and the C environment, so getenv and
  programs the task starts see it too; ``time.tzset()`` for TZ); the given cwd;
  ``sys.argv == [script, *args]``; ``sys.orig_argv`` the interpreter's options + script + args;
  ``sys.path[0]`` the script's real directory (none with -I/-P); ``__main__`` with the same
  attributes as CPython gives it; the signal dispositions and mask the server's interpreter
  started with (the client starts it as it would start ``python script.py``, so those are the
  exec path's);
* the task dies with its shard: when the client's end of the socket closes (even by SIGKILL),
  the server SIGKILLs the running task's group (and its waiting children) and exits (as it
  does on SIGTERM/SIGINT/SIGHUP). If the server dies unexpectedly, the task's process (and the
  waiting children) get SIGKILL (``PR_SET_PDEATHSIG``) and
  the client raises :class:`ForkServerError` (what the task started survives, as when a shard
  is SIGKILLed on the exec path).

Known differences from ``python script.py`` (the price of not starting an interpreter):

* interpreter start-up happened once, in the server, with the *server's* environment and
  options: ``sys.flags``, ``-X`` options, ``sys.path`` (PYTHONPATH, PYTHONHOME, PYTHONUSERBASE,
  PYTHONNOUSERSITE, PYTHONPLATLIBDIR, site-packages, ``.pth`` files, sitecustomize),
  PYTHONHASHSEED, PYTHONIOENCODING, PYTHONUTF8, PYTHONUNBUFFERED, PYTHONWARNINGS
  (``sys.warnoptions``), PYTHONDONTWRITEBYTECODE, PYTHONPYCACHEPREFIX, PYTHONOPTIMIZE,
  PYTHONDEVMODE, PYTHONFAULTHANDLER, PYTHONTRACEMALLOC, PYTHONINTMAXSTRDIGITS, PYTHONSAFEPATH,
  and the locale (LANG, LC_ALL, LC_CTYPE: stdio and filesystem encodings). A task's values of
  these are in its ``os.environ`` but change nothing. Start the server with the environment the
  tasks get (``env=``); :meth:`ForkServer.startup_env_mismatch` names the ones that differ;
* PEP 538's C-locale coercion (``LC_CTYPE=C.UTF-8`` added to the environment) happened in the
  server: the task's ``os.environ`` is exactly the given one, without it;
* one hash randomization seed for all the tasks of a server (and the server): ``hash()`` of
  str/bytes gives the same values in each of them;
* modules already imported: the preloaded ones and those the server uses itself (``json``,
  ``re``, ``enum``, ``socket``, ``selectors``, ``select``, ``signal``, ``ctypes``, ``struct``,
  ``array``, ``stat``, ``warnings``, ``importlib.machinery``/``util``, ``atexit``, ``gc``,
  ``contextlib``, ``types``, ``__future__``, ... and what they import). Their
  import-time code ran in the server, with its environment and cwd ``/``. Module state is per
  child: nothing a task imports or changes reaches the server or the next task;
* random state: ``random`` re-seeds itself in the child (``os.register_at_fork``);
  ``os.urandom``, ``secrets``, ``uuid.uuid4`` and ``tempfile`` names are per process anyway. A
  preloaded module with its own generator that does not re-seed at fork (``numpy.random``'s
  global state, for one) gives every task the same sequence;
* preloaded modules: threads they started do not exist in the child; fds they hold are closed
  in the child (their objects do not know); connections, locks and caches are copies of the
  server's. Do not preload modules that connect or start threads at import time;
* ``sys.stdin``/``stdout``/``stderr`` are the server's stream objects (opened on /dev/null at
  its start-up) on the task's fds: encoding and buffering were chosen then (never the line
  buffering of a tty; for the files the runner gives, the same choice);
* the server's objects are frozen for the garbage collector (``gc.freeze()``:
  ``gc.get_freeze_count()`` is not 0) so that the child's collections do not touch them;
* teardown at exit covers the task's own ``__main__`` and the modules it imported (garbage
  collected, ``sys.modules`` entries set to None, dicts cleared last-imported first): their
  finalizers run, files left open are flushed, ``NamedTemporaryFile`` s deleted. Objects that
  only the server's or preloaded modules hold are not finalized, the interpreter itself is not
  finalized (no ``Py_FinalizeEx``, the exit is ``os._exit``);
* the process: ``/proc/PID/cmdline`` (``ps``, ``pgrep -f``) and ``/proc/PID/environ`` show the
  *server's* command line and start-up environment (getenv and ``os.environ`` give the task's);
  the parent is the server, not the shard; rlimits, umask, nice, cgroup, capabilities and
  uid/gid are the server's (the shard's when it started the server); ``sys.executable`` is the
  server's interpreter; memory starts as a copy-on-write copy of the server's. The process was
  forked (and set up its session) before the task was handed to it: its start time
  (``/proc/PID/stat``, ``psutil.Process().create_time()``) is that earlier time; between tasks
  two such children wait (own sessions, the server's command line);
* the script's code may be the server's compilation of it (the same code, from the same bytes:
  never for a file changed in the last 2 s, a ``.pyc``, or a source whose compilation warns or
  fails, which the child compiles itself, so that warnings and errors go to the task's output):
  then the file is opened, as CPython opens it (same errors), but not read;
* frames: the script's module code is called from the server (``sys._getframe(1)``,
  ``inspect.stack()``, ``traceback.print_stack()`` show two frames of it; the recursion limit
  is reached two frames earlier);
* ``python dir/`` and ``python archive.zip`` (a ``__main__.py`` inside) are not supported: the
  path is read as a source (or ``.pyc``) file.

Python >= 3.9 (``socket.send_fds``, ``os.pidfd_open``, ``os.waitstatus_to_exitcode``), Linux.
Not thread-safe: one ``ForkServer`` serves one caller, one task at a time. Do not let a forked
copy of the client (``os.fork``, multiprocessing's fork) outlive it: it would keep the socket
open, and the server would not notice that the client died.

Protocol: AF_UNIX stream sockets, one JSON object per line, ASCII. The client's socket to the
server:

* server → client, once: ``{"ready": server_pid, "version": [3, 11, 7]}`` or ``{"error"}``;
* client → server: ``{"op": "fork"}``, optionally with ``"compile": "/abs/script.py"`` (to
  compile first). The server forks a child, then sends ``{"child": pid, "seq": n}`` with two
  fds (SCM_RIGHTS): the client's end of a socket to that child (its channel) and the read end of
  a pipe whose write end the server closes after sending the child's status (or by dying): the
  task's :meth:`ForkedTask.fileno`. Or, if it cannot fork, ``{"error", "op": "fork", "errno",
  "strerror"}``. ``seq`` names the child in what follows (a pid can be reused, a seq cannot);
* client → server: ``{"op": "signal", "seq", "sig"}``, no reply (dropped unless ``seq`` is a
  child not reaped yet);
* server → client, when a child (waiting or running a task) has exited and been reaped:
  ``{"exit": returncode, "pid", "seq"}``;
* EOF either way ends everything (the server kills its children's groups).

A child's channel: the client sends the task, ``{"script", "args", "env", "cwd"}`` with the stdin
and stdout fds, and optionally a third: the script, open for reading (the child then reads the
code from it, never opening ``script`` by name, which is only the script's name then); the
child answers, once set up and before running any of the task's code,
``{"ok": 1}`` (with ``"compile": "/abs/script.py"`` if it had no compiled code for the script),
or ``{"error", "errno", "strerror", "filename"}`` (it could not be set up: no such cwd, ...; it
exits) or ``{"error"}``; then it closes its end. EOF without an answer: the child died before
taking the task (the client tries the next one).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
# Never in the server's environment unless asked for: the queue's own credentials (the server's
# start-up environment is readable in /proc/PID/environ by every task it forks).
_HIDDEN_ENV = ("CRONQUEUE_DB_URL",)
_LOCALE_ENV = ("LANG", "LC_ALL", "LC_CTYPE")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
_RECV_SIZE = 1 << 16
_STDERR_TAIL = 2000
_SPAWN_TRIES = 3  # children found dead before they took a task, replaced
# Children kept forked ahead of the tasks: with two, one task after another, each has had two
# tasks' time to get ready (setting a child up costs about as much as running a small task).
_CHILDREN_AHEAD = 2


# An environment as Popen takes it: str, or bytes (os.environb-style) keys and values.
Env = Mapping[str, str] | Mapping[bytes, bytes]


class ForkServerError(Exception):
    """The fork server could not be started, is not running, or died (a task it was running is
    lost: its process was killed, what it started may survive, as when a shard dies)."""


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class _Waiting:
    """A child the server forked for our next task, waiting for it."""

    def __init__(self, pid: int, seq: int, channel: socket.socket, done_fd: int) -> None:
        self.pid = pid
        self.seq = seq
        self.channel = channel
        self.done_fd = done_fd

    def request(self, data: bytes, fds: Sequence[int], timeout: float) -> dict[str, Any] | None:
        """Hand the child its task; its answer, None if it died first (it ran no task code)."""
        try:
            sent = socket.send_fds(self.channel, [data], list(fds))
            if sent < len(data):
                self.channel.sendall(data[sent:])
        except OSError:
            return None
        answer = b""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.channel, select.POLLIN)
        while not answer.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(0, int(remaining * 1000 + 0.999))):
                raise TimeoutError
            try:
                chunk = self.channel.recv(_RECV_SIZE)
            except OSError:
                return None
            if not chunk:
                return None
            answer += chunk
        reply = json.loads(answer)
        return reply if isinstance(reply, dict) else {"error": reply}

    def close(self) -> None:
        self.channel.close()
        if self.done_fd >= 0:
            os.close(self.done_fd)
            self.done_fd = -1


class _Connection:
    """One server process and the client's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket,
                 errlog: IO[bytes]) -> None:
        self.proc = proc
        self.sock = sock
        self.errlog = errlog
        self.server_pid = proc.pid
        self.lost: str | None = None
        self.killed = False  # by us, because it did not exit when asked to
        self._buffer = b""
        self._fds: deque[int] = deque()
        self.replies: deque[dict[str, Any]] = deque()
        self.waiting: deque[_Waiting] = deque()  # children for our next tasks, oldest first
        self.forks_asked = 0  # children (or fork errors) on their way
        self.fork_error: dict[str, Any] | None = None
        self.compile_hint: str | None = None  # for the server, once the running task ends
        self.tasks: set[int] = set()  # seqs of the children that took a task, until collected
        self.exits: dict[int, int] = {}  # seq: returncode, until its ForkedTask takes it

    # -- receiving ------------------------------------------------------------------------------

    def pump(self, timeout: float | None) -> None:
        """Read what the server sent, waiting up to ``timeout`` for something. Raises
        ForkServerError once the server is gone."""
        if self.lost is not None:
            raise ForkServerError(self.lost)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))):
            return
        while True:  # all there is: a read stops at a message with fds (an announcement)
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, _RECV_SIZE, 4,
                                                  socket.MSG_CMSG_CLOEXEC)
            except OSError as exc:
                raise self.fail(f"fork server connection failed: {exc}") from None
            self._fds.extend(fds)
            if not data:
                raise self.fail("fork server died")
            self._buffer += data
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                try:
                    self._handle(json.loads(line))
                except (ValueError, TypeError, KeyError, IndexError):
                    raise self.fail(f"fork server sent garbage: {line[:200]!r}") from None
            if self.lost is not None or not poller.poll(0):
                return

    def _handle(self, message: dict[str, Any]) -> None:
        if "exit" in message:
            seq = int(message["seq"])
            waited = [child for child in self.waiting if child.seq == seq]
            if waited:  # died waiting
                self.waiting.remove(waited[0])
                waited[0].close()
            elif seq in self.tasks:
                self.tasks.discard(seq)
                self.exits[seq] = int(message["exit"])
                # Its replacement is forked now, not while it ran: the server is then free to
                # report the exit at once (and a child in stock takes the next task).
                hint, self.compile_hint = self.compile_hint, None
                with contextlib.suppress(ForkServerError):  # (the status is ours all the same)
                    self.ask_for_children(hint)
        elif "child" in message:
            channel = socket.socket(fileno=self._fds.popleft())
            done_fd = self._fds.popleft()
            self.waiting.append(
                _Waiting(int(message["child"]), int(message["seq"]), channel, done_fd))
            self.forks_asked = max(0, self.forks_asked - 1)
            self.fork_error = None  # a later fork worked
        elif message.get("op") == "fork":
            self.fork_error = message
            self.forks_asked = max(0, self.forks_asked - 1)
        else:
            self.replies.append(message)

    def reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"fork server did not answer within {timeout:g}s")
            self.pump(remaining)
        return self.replies.popleft()

    def take_child(self, timeout: float) -> _Waiting:
        """The child for our next task (asked for if need be). Raises ForkServerError, or
        OSError if the server could not fork."""
        deadline = time.monotonic() + timeout
        self.ask_for_children()  # (none missing, unless children died or a fork failed)
        while not self.waiting:
            if self.fork_error is not None:
                error, self.fork_error = self.fork_error, None
                if error.get("errno") and error.get("strerror"):
                    raise OSError(int(error["errno"]), str(error["strerror"]))
                raise ForkServerError(f"fork server cannot fork: {error.get('error')}")
            self.ask_for_children()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"fork server did not fork within {timeout:g}s")
            self.pump(remaining)
        return self.waiting.popleft()

    # -- sending --------------------------------------------------------------------------------

    def send(self, message: Mapping[str, object]) -> None:
        if self.lost is not None:
            raise ForkServerError(self.lost)
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self.fail(f"fork server connection failed: {exc}") from None

    def ask_for_children(self, compile_script: str | None = None) -> None:
        """Have the server fork children for our next tasks now, up to _CHILDREN_AHEAD of them
        (counting those on their way), compiling ``compile_script`` first, for them and the
        children after them."""
        while len(self.waiting) + self.forks_asked < _CHILDREN_AHEAD and self.lost is None:
            message: dict[str, object] = {"op": "fork"}
            if compile_script is not None:
                message["compile"] = compile_script
                compile_script = None
            self.send(message)
            self.forks_asked += 1

    # -- ending ---------------------------------------------------------------------------------

    def fail(self, reason: str) -> ForkServerError:
        """Give up on this server (kill it if it still runs) and describe why."""
        if self.lost is None:
            self._shutdown(timeout=1.0)
            how = ("did not exit, killed" if self.killed
                   else _describe(self.proc.returncode))
            tail = self._stderr_tail()
            self.errlog.close()
            self.lost = (f"{reason} (pid {self.server_pid}, {how})"
                         + (f"; its stderr ends with: {tail}" if tail else ""))
        return ForkServerError(self.lost)

    def close(self, timeout: float) -> None:
        """Close our end (the server kills its children's groups and exits), reap it."""
        self._shutdown(timeout)
        self.errlog.close()
        if self.lost is None:
            self.lost = "fork server was closed"

    def _shutdown(self, timeout: float) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        while self._fds:
            os.close(self._fds.popleft())
        while self.waiting:
            self.waiting.popleft().close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # unreaped: the pid is still ours
            self.proc.wait()
            self.killed = True

    def _stderr_tail(self) -> str:
        try:
            size = self.errlog.seek(0, os.SEEK_END)
            self.errlog.seek(max(0, size - _STDERR_TAIL))
            text = self.errlog.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return text


class ForkedTask:
    """A task running in a child of the fork server (its pid is also its process group id)."""

    def __init__(self, conn: _Connection, child: _Waiting, argv: list[str]) -> None:
        self.pid = child.pid
        self.args = argv
        self.returncode: int | None = None
        self._conn = conn
        self._seq = child.seq
        self._done_fd = child.done_fd
        conn.tasks.add(child.seq)

    def fileno(self) -> int:
        """Readable once the task has exited and its status can be collected without blocking
        (or the server died: then :meth:`poll`/:meth:`wait` raise). For select/poll."""
        if self._done_fd < 0:
            raise ValueError("ForkedTask is closed")
        return self._done_fd

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

    def close(self) -> None:
        """Release :meth:`fileno` (also done when the object is garbage collected)."""
        if self._done_fd >= 0:
            os.close(self._done_fd)
            self._done_fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _collect(self, timeout: float | None) -> None:
        conn = self._conn
        if self._seq not in conn.exits:
            if conn.lost is not None:
                raise ForkServerError(f"{conn.lost}; task pid {self.pid} lost")
            try:
                conn.pump(timeout)
            except ForkServerError as exc:
                raise ForkServerError(f"{exc}; task pid {self.pid} lost") from None
        if self._seq in conn.exits:
            self.returncode = conn.exits.pop(self._seq)


class ForkServer:
    """A fork server for Python task scripts; see the module docstring.

    ``python`` is the interpreter's argv (``[sys.executable]``, ``["/usr/bin/python3.12",
    "-X", "dev"]``, ...); ``preload`` modules are imported once, at start; ``env`` is the
    server's own environment, i.e. what the interpreter starts up with (default: ours without
    ``CRONQUEUE_DB_URL``) - give it the environment the tasks get.
    """

    def __init__(self, python: Sequence[str], *, preload: Sequence[str] = (),
                 start_timeout: float = 10.0, env: Env | None = None) -> None:
        if isinstance(python, str) or not python:
            raise ValueError("python must be a non-empty argv list")
        for name in preload:
            if not _MODULE_NAME.match(name):
                raise ValueError(f"not a module name: {name!r}")
        self.python = list(python)
        self.preload = list(preload)
        self.start_timeout = start_timeout
        self.env = None if env is None else _checked_env(env)
        self._conn: _Connection | None = None
        self._task: ForkedTask | None = None
        self._server_env: dict[str, str] | None = None

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
        return None if self._conn is None else self._conn.server_pid

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
                [*self.python, SERVER_SCRIPT, str(theirs.fileno()), *self.preload],
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
        conn.ask_for_children()  # forked while we do other things
        self._conn = conn
        self._server_env = env

    def startup_env_mismatch(self, env: Env) -> list[str]:
        """Names of the variables that shape interpreter start-up (``PYTHON*``, ``LANG``,
        ``LC_ALL``, ``LC_CTYPE``) set differently in ``env`` than in the server's environment:
        a task with such an environment would not get what ``python script.py`` would give it
        (the caller may run it the exec way instead)."""
        server_env = self._server_env if self._server_env is not None else (
            self.env if self.env is not None else os.environ)
        env = _checked_env(env)
        names = {k for k in (*env, *server_env) if k.startswith("PYTHON") or k in _LOCALE_ENV}
        return sorted(k for k in names if env.get(k) != server_env.get(k))

    def spawn(self, script: str, args: Sequence[str], *, env: Env, cwd: str,
              stdin: int | _HasFileno, stdout: int | _HasFileno,
              script_fd: int | None = None) -> ForkedTask:
        """Run ``script`` with ``sys.argv == [script, *args]`` in a forked child, in ``cwd``,
        with exactly ``env`` (str or bytes, as Popen takes it). ``stdin`` and ``stdout`` are fds
        or objects with ``fileno()`` (``subprocess.DEVNULL`` works); stderr goes to stdout;
        they are the caller's to close. ``script_fd``: the script, open for reading (the
        caller's to close): its code is read from it, ``script`` names it (``sys.argv[0]``,
        ``__file__``) but is not opened. Returns once the child is set up. Raises
        ForkServerError (the server is not running, or died), OSError (the child could not be
        set up, e.g. no such cwd: as Popen would), ValueError/TypeError (a bad environment or
        argument), RuntimeError (the previous task still runs)."""
        conn = self._conn
        if conn is None or conn.lost is not None:
            raise ForkServerError(conn.lost if conn is not None else "fork server not started")
        previous = self._task
        if (previous is not None and previous._conn is conn and previous.returncode is None
                and previous.poll() is None):
            raise RuntimeError(f"task pid {previous.pid} is still running")
        env_dict = _checked_env(env)
        if not all(isinstance(a, str) for a in (script, cwd, *args)):
            raise TypeError("script, args and cwd must be str")
        request = {"script": script, "args": list(args), "env": env_dict, "cwd": cwd}
        data = (json.dumps(request, separators=(",", ":")) + "\n").encode("ascii")
        with contextlib.ExitStack() as stack:
            fds = [_fd(stdin, stack), _fd(stdout, stack)]
            if script_fd is not None:
                fds.append(script_fd)
            for _ in range(_SPAWN_TRIES):
                child = conn.take_child(self.start_timeout)
                try:
                    answer = child.request(data, fds, self.start_timeout)
                except TimeoutError:
                    child.close()
                    raise conn.fail(f"fork server child did not answer within "
                                    f"{self.start_timeout:g}s") from None
                except ValueError:
                    child.close()
                    raise conn.fail("fork server child sent garbage") from None
                child.channel.close()
                if answer is None:  # died before it took the task: try the next one
                    child.close()
                    continue
                if answer.get("ok"):
                    # Its replacement is asked for once it has exited (_Connection._handle);
                    # given this script, the server compiles it first, for the next children.
                    conn.compile_hint = answer.get("compile")
                    task = ForkedTask(conn, child, [script, *args])
                    self._task = task
                    return task
                child.close()  # it exits: replaced at once
                conn.ask_for_children()
                if answer.get("errno") is not None and answer.get("strerror") is not None:
                    filename = answer.get("filename")
                    if filename is not None:
                        raise OSError(int(answer["errno"]), str(answer["strerror"]), filename)
                    raise OSError(int(answer["errno"]), str(answer["strerror"]))
                raise ForkServerError(f"fork server refused the task: "
                                      f"{answer.get('error', answer)}")
        raise ForkServerError(f"fork server children died {_SPAWN_TRIES} times before taking "
                              "a task")

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


def _checked_env(env: Env) -> dict[str, str]:
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
