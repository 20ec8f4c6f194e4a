"""The fork server: real processes. Where it can, a test runs the same script through the fork
server and as ``python script.py`` (the exec path) and wants the same status and output.

``CRONQUEUE_TEST_FORKSERVER_PYTHON`` (e.g. ``/usr/bin/python3.12``) runs the server, and the exec
path compared with it, on another interpreter (the server needs only the standard library)."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

from cronqueue.errors import CronqueueError
from cronqueue.forkserver.client import Env, ForkedTask, ForkServer, ForkServerError
from tests.helpers import process_gone, wait_until

PYTHON = shlex.split(os.environ.get("CRONQUEUE_TEST_FORKSERVER_PYTHON", "")) or [sys.executable]
TIMEOUT = 10.0


def task_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
            "CQ_TEST": "yes", **extra}


def script(tmp_path: Path, body: str, name: str = "task.py") -> Path:
    path = tmp_path / "tasks" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def server() -> Iterator[ForkServer]:
    # Started with the tasks' environment, as the runner does: the interpreter's start-up
    # (PYTHONUNBUFFERED, say, which the test run may have) is the server's.
    fs = ForkServer(PYTHON, env=task_env())
    fs.start()
    yield fs
    fs.close()


def spawn(fs: ForkServer, path: Path, args: Sequence[str] = (), *, env: Env | None = None,
          cwd: Path | None = None, stdin: int | IO[bytes] = subprocess.DEVNULL,
          stdout: int | IO[bytes] = subprocess.DEVNULL, name: Path | None = None) -> ForkedTask:
    """``path`` run by the fork server as the runner does it: from the open file (named
    ``name``, by default ``path``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fs.spawn(str(name or path), args, env=task_env() if env is None else env,
                        cwd=str(cwd or path.parent), stdin=stdin, stdout=stdout, script_fd=fd)
    finally:
        os.close(fd)


def run_fork(fs: ForkServer, path: Path, args: tuple[str, ...] = ("{}",), *,
             env: Env | None = None, cwd: Path | None = None,
             stdin: bytes = b"") -> tuple[int, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp:
        inp.write(stdin)
        inp.seek(0)
        task = spawn(fs, path, args, env=env, cwd=cwd, stdin=inp, stdout=out)
        returncode = task.wait(TIMEOUT)
        out.seek(0)
        return returncode, out.read().decode()


def run_exec(path: Path, args: tuple[str, ...] = ("{}",), *, env: Env | None = None,
             cwd: Path | None = None, stdin: bytes = b"") -> tuple[int, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp:
        inp.write(stdin)
        inp.seek(0)
        proc = subprocess.run([*PYTHON, str(path), *args], stdin=inp, stdout=out,
                              stderr=subprocess.STDOUT, env=task_env() if env is None else env,
                              cwd=cwd or path.parent, start_new_session=True, timeout=TIMEOUT,
                              check=False)
        out.seek(0)
        return proc.returncode, out.read().decode()


def alive(pid: int) -> bool:
    return not process_gone(pid)


def read_pids(path: Path, count: int) -> list[int]:
    """Pids a task writes to ``path``, one a line, once it has written ``count`` of them."""
    assert wait_until(lambda: path.exists() and len(path.read_text().split()) >= count, 5.0)
    return [int(x) for x in path.read_text().split()]


# -- the exec path's contract -------------------------------------------------------------------

SAME_AS_EXEC = {
    "ok": ("print('hello')", 0),
    "exit-3": ("import sys; sys.exit(3)", 3),
    "exit-msg": ("import sys; sys.exit('giving up')", 1),
    "exit-none": ("raise SystemExit", 0),
    "exit-true": ("import sys; sys.exit(True)", 1),
    "exit-256": ("import sys; sys.exit(256)", 0),
    "exit-minus-1": ("import sys; sys.exit(-1)", 255),
    "exit-tuple": ("import sys; sys.exit((1, 2))", 1),
    "exception": ("""
        def inner():
            raise ValueError('boom')
        try:
            {}['x']
        except KeyError:
            inner()
        """, 1),
    "syntax-error": ("def broken(:\n    pass\n", 1),
    "keyboard-interrupt": ("raise KeyboardInterrupt", -signal.SIGINT),
    "killed-by-signal": ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
                         -signal.SIGTERM),
    "os-exit": ("import os\nprint('lost: never flushed')\nos._exit(7)", 7),
    "output-order": ("""
        import sys
        print('out 1')
        print('err 1', file=sys.stderr)
        print('out 2', flush=True)
        sys.stderr.write('err 2 without newline')
        print('out 3')
        """, 0),
    "excepthook": ("""
        import sys
        sys.excepthook = lambda t, v, tb: print('hooked', t.__name__, v)
        raise RuntimeError('x')
        """, 1),
    "excepthook-fails": ("""
        import sys
        def hook(t, v, tb):
            raise OSError('the hook failed')
        sys.excepthook = hook
        raise RuntimeError('x')
        """, 1),
    "sys-path": ("import sys; print(sys.path)", 0),  # nothing of the server's directory
    "atexit-and-threads": ("""
        import atexit, sys, threading, time
        atexit.register(lambda: print('atexit ran, thread done:', done))
        done = []
        def work():
            time.sleep(0.2)
            done.append(1)
            print('thread done', flush=True)
        threading.Thread(target=work).start()
        print('main done', flush=True)
        sys.exit(4)
        """, 4),
    "main-module": ("""
        import json, sys
        g = {k: repr(v) if k != '__builtins__' else type(v).__name__
             for k, v in globals().items() if k not in ('json', 'sys')}
        g['__loader__'] = type(__loader__).__name__
        print(json.dumps(g, sort_keys=True))
        print(sys.argv, sys.path[0], __name__ == '__main__', sys.modules['__main__'] is
              sys.modules[__name__])
        import __main__; print(__main__.__file__)
        """, 0),
    "fds": ("import os; print(sorted(os.listdir('/proc/self/fd')))", 0),
    "signals": ("""
        import signal
        print({s.name: str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM,
               signal.SIGPIPE, signal.SIGCHLD, signal.SIGHUP, signal.SIGXFSZ, signal.SIGUSR1)})
        print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        """, 0),
    "session": ("""
        import os
        print(os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid())
        """, 0),
    "unclosed-file-flushed": ("""
        import sys
        log = open('left-open.txt', 'w')
        log.write('written, never closed')
        class Noisy:
            def __del__(self):
                print('finalizer ran')
        noisy = Noisy()
        """, 0),
    "stdlib-teardown": ("""
        import asyncio, concurrent.futures, logging, sqlite3, sys, tempfile
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
        logging.info('start %s', sys.argv[1:])
        async def main():
            await asyncio.sleep(0.01)
            return 42
        print(asyncio.run(main()))
        pool = concurrent.futures.ThreadPoolExecutor(2)  # never shut down
        print(sum(pool.map(lambda x: x * 2, range(10))))
        db = sqlite3.connect(':memory:')
        db.execute('create table t (x)')
        named = tempfile.NamedTemporaryFile('w', dir='.', prefix='named-')  # deleted at exit
        named.write('x')
        logging.warning('end')
        """, 0),
    # No module imported: the task's objects alone tell whether its teardown runs code.
    "finalizer-no-import": ("""
        class Noisy:
            def __del__(self):
                print('finalizer ran')
        noisy = Noisy()
        print('main done')
        """, 0),
    "finalizer-untracked-instance": ("""
        class Slotted:
            __slots__ = ()
            def __del__(self):
                print('untracked finalizer ran')
        kept = Slotted()
        """, 0),
    "finalizer-in-a-cycle": ("""
        class Node:
            def __del__(self):
                print('cycle finalizer ran')
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        """, 0),
    "suspended-generator": ("""
        def numbers():
            try:
                yield 1
            finally:
                print('generator closed')
        it = numbers()
        print(next(it))
        """, 0),
    "nothing-to-finalize": ("import json, sys; print(json.loads(sys.argv[1]))", 0),
    # C's stdio (a C library, ctypes) is block-buffered on a pipe or file: flushed by the exit,
    # after Python's own streams.
    "c-stdio": ("""
        import ctypes
        print('python first')
        ctypes.CDLL(None).printf(b'from C stdio\\n')
        """, 0),
    "stdin": ("import sys; print(repr(sys.stdin.read()))", 0),
    "argv-and-cwd": ("import os, sys; print(sys.argv[1:], os.getcwd())", 0),
}


@pytest.mark.parametrize(("body", "expected"), list(SAME_AS_EXEC.values()),
                         ids=list(SAME_AS_EXEC))
def test_same_status_and_output_as_exec(server: ForkServer, tmp_path: Path, body: str,
                                        expected: int) -> None:
    path = script(tmp_path, body)
    workdir = tmp_path / "work"
    workdir.mkdir()
    args, stdin = ('{"a": 1}', "second"), b"secret\nstdin"
    exec_rc, exec_out = run_exec(path, args, cwd=workdir, stdin=stdin)
    exec_files = files_in(workdir, clear=True)
    fork_rc, fork_out = run_fork(server, path, args, cwd=workdir, stdin=stdin)
    assert exec_rc == expected
    assert (fork_rc, fork_out) == (exec_rc, exec_out)
    assert files_in(workdir) == exec_files  # what the task left behind


def files_in(directory: Path, *, clear: bool = False) -> dict[str, str]:
    found = {p.name: p.read_text() for p in directory.iterdir()}
    if clear:
        for name in found:
            (directory / name).unlink()
    return found


@pytest.mark.parametrize("options", [["-I"], ["-X", "dev", "-O"], ["-S", "-B"]],
                         ids=lambda o: " ".join(o))
def test_interpreter_options_apply_as_for_exec(tmp_path: Path, options: list[str]) -> None:
    path = script(tmp_path, """
        import sys
        print(sys.path[0], getattr(sys, 'orig_argv', [''])[1:], sys.flags.isolated,
              sys.flags.optimize,
              sys.flags.dev_mode, sys.flags.no_site, sys.flags.dont_write_bytecode)
        """)
    exec_result = subprocess.run([*PYTHON, *options, str(path), "x"], capture_output=True,
                                 text=True, env=task_env(), check=True)
    with ForkServer([*PYTHON, *options], env=task_env()) as fs:
        assert run_fork(fs, path, ("x",)) == (0, exec_result.stdout)


def test_output_flush_failure_is_status_120(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "print('x' * 10)")
    with open("/dev/full", "wb") as full:
        task = spawn(server, path, stdout=full)
        assert task.wait(TIMEOUT) == 120
        exec_rc = subprocess.run([*PYTHON, str(path)], stdout=full, stderr=subprocess.STDOUT,
                                 env=task_env(), check=False).returncode
    assert exec_rc == 120


def test_environment_is_exactly_the_given_one(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CQ_ONLY_IN_SERVER", "1")
    monkeypatch.setenv("CRONQUEUE_DB_URL", "sqlite:///secret.db")
    path = script(tmp_path, """
        import json, os, subprocess
        print(json.dumps(dict(os.environ)))
        # what a program it starts inherits: the C-level environment
        out = subprocess.run(['env', '-0'], capture_output=True, check=True).stdout
        print(json.dumps(dict(kv.split('=', 1) for kv in out.decode().split('\\0') if kv)))
        print(json.dumps(open('/proc/self/environ').read().count('CRONQUEUE_DB_URL')))
        """)
    env = task_env(TZ="Asia/Tokyo", WEIRD="a b\nc=d \u00e9")
    with ForkServer(PYTHON) as fs:
        returncode, output = run_fork(fs, path, env=env)
    assert returncode == 0, output
    seen, inherited, leaked = (json.loads(line) for line in output.splitlines())
    assert seen == env
    assert inherited == env
    assert leaked == 0  # the server's start-up environment never had the queue's credentials


def test_bytes_environment_as_popen_takes_it(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "import os; print(os.environb[b'RAW'], os.environ['PLAIN'])")
    env = {os.fsencode(k): os.fsencode(v) for k, v in task_env(PLAIN="p").items()}
    env[b"RAW"] = b"\xff\xfe not utf-8"
    expected = (0, "b'\\xff\\xfe not utf-8' p\n")
    assert run_exec(path, env=env) == expected
    assert run_fork(server, path, env=env) == expected


def test_tz_follows_the_task_environment(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "import time; print(time.tzname[0], time.localtime(0).tm_hour)")
    assert run_fork(server, path, env=task_env(TZ="UTC")) == (0, "UTC 0\n")
    assert run_fork(server, path, env=task_env(TZ="JST-9")) == (0, "JST 9\n")


def test_missing_cwd_is_oserror_like_popen(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "print('never')")
    with pytest.raises(FileNotFoundError) as info:
        spawn(server, path, cwd=tmp_path / "nope")
    assert info.value.filename == str(tmp_path / "nope")
    assert run_fork(server, path) == (0, "never\n")  # the server goes on


def test_bad_environment_is_refused_like_popen(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "pass")
    for env in ({"A=B": "x"}, {"A": "x\0y"}):
        with pytest.raises(ValueError, match="illegal environment variable"):
            spawn(server, path, env=env)


def test_the_script_is_read_from_the_given_file_not_by_name(server: ForkServer,
                                                             tmp_path: Path) -> None:
    """The runner hands over the very file it checked: what the name leads to meanwhile is
    never run."""
    checked = script(tmp_path, "import sys; print('checked', sys.argv[0], __file__)", "a.py")
    other = script(tmp_path, "print('other')", "b.py")
    with tempfile.TemporaryFile() as out:
        assert spawn(server, checked, name=other, stdout=out).wait(TIMEOUT) == 0
        out.seek(0)
        assert out.read().decode() == f"checked {other} {other}\n"
    with pytest.raises(ValueError, match="absolute"):
        spawn(server, checked, name=Path("a.py"))


# -- process groups, timeouts, signals ----------------------------------------------------------


def test_group_kill_on_timeout_kills_grandchildren(server: ForkServer, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""
        import os, subprocess, time
        # one grandchild that dies of TERM, one that ignores it
        a = subprocess.Popen(['sleep', '100'])
        b = subprocess.Popen(['sh', '-c', 'trap "" TERM; exec sleep 100'])
        with open({str(pids)!r}, 'w') as fh:
            fh.write(f'{{os.getpid()}} {{a.pid}} {{b.pid}}\\n')
        time.sleep(100)
        """)
    with tempfile.TemporaryFile() as out:
        task = spawn(server, path, stdout=out)
        leader, term_dies, term_ignored = read_pids(pids, 3)
        assert leader == task.pid
        assert os.getpgid(term_ignored) == task.pid
        assert task.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            task.wait(0.05)
        task.signal_group(signal.SIGTERM)
        assert task.wait(TIMEOUT) == -signal.SIGTERM
    # the leader died of TERM: what was left of its group got KILL before it was reaped
    assert wait_until(lambda: process_gone(term_dies) and process_gone(term_ignored), 2.0)
    task.signal_group(signal.SIGKILL)  # reaped: a no-op, never a signal to a reused pgid


def test_leader_ignoring_term_gets_kill(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(100)
        """)
    with tempfile.TemporaryFile() as out:
        task = spawn(server, path, stdout=out)
        assert wait_until(lambda: os.pread(out.fileno(), 10, 0) == b"ready\n", 5.0)
        task.signal_group(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            task.wait(0.2)
        task.signal_group(signal.SIGKILL)
        assert task.wait(TIMEOUT) == -signal.SIGKILL


def test_leftovers_of_a_finished_task_are_killed(server: ForkServer, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""
        import subprocess
        child = subprocess.Popen(['sleep', '100'])
        open({str(pids)!r}, 'w').write(str(child.pid))
        """)
    assert run_fork(server, path) == (0, "")
    (leftover,) = read_pids(pids, 1)
    assert wait_until(lambda: process_gone(leftover), 2.0)


def test_fileno_becomes_readable_when_the_task_exits(server: ForkServer,
                                                     tmp_path: Path) -> None:
    path = script(tmp_path, "import time; time.sleep(0.3)")
    task = spawn(server, path)
    assert select.select([task.fileno()], [], [], 0.05)[0] == []
    assert task.poll() is None
    assert select.select([task.fileno()], [], [], TIMEOUT)[0] == [task.fileno()]
    assert task.poll() == 0  # (the runner's wait: readable, then poll)
    assert task.wait() == 0


def test_fileno_is_readable_for_a_task_that_exits_at_once(server: ForkServer,
                                                          tmp_path: Path) -> None:
    """Its exit may come right behind the answer to the spawn: still readable then."""
    path = script(tmp_path, "pass")
    for _ in range(20):
        task = spawn(server, path)
        assert select.select([task.fileno()], [], [], TIMEOUT)[0] == [task.fileno()]
        assert task.poll() == 0


# -- the server's life --------------------------------------------------------------------------


def test_tasks_reuse_the_server_and_do_not_leak_into_it(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "helper_mod.py").write_text("VALUE = 42\n")
    path = script(tmp_path, """
        import json, os, random, sys
        before = sorted(m for m in sys.modules if m != '__main__')
        import colorsys, helper_mod
        sys.modules['json'].EXTRA = 'set by a task'
        print(json.dumps([os.getppid(), before, random.random()]))
        """)
    with ForkServer(PYTHON) as fs:
        (rc1, out1), (rc2, out2) = run_fork(fs, path), run_fork(fs, path)
        assert (rc1, rc2) == (0, 0), out1 + out2
        server1, before1, random1 = json.loads(out1)
        server2, before2, random2 = json.loads(out2)
        assert server1 == server2 == fs.pid
        assert before1 == before2  # nothing task 1 imported (or changed) reached the server
        assert "colorsys" not in before2 and "helper_mod" not in before2
        assert random1 != random2  # re-seeded in every child


def test_start_is_idempotent_and_close_stops(tmp_path: Path) -> None:
    fs = ForkServer(PYTHON)
    assert not fs.running
    with pytest.raises(ForkServerError, match="not started"):
        fs.spawn("/x.py", [], env={}, cwd="/", stdin=-3, stdout=1, script_fd=0)
    fs.start()
    pid = fs.pid
    assert pid is not None
    fs.start()
    assert fs.pid == pid and fs.running
    fs.close()
    assert not fs.running and process_gone(pid)


def test_close_kills_a_running_task_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""
        import os, subprocess, time
        child = subprocess.Popen(['sleep', '100'])
        open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')
        time.sleep(100)
        """)
    fs = ForkServer(PYTHON)
    fs.start()
    spawn(fs, path)
    leader, grandchild = read_pids(pids, 2)
    fs.close()
    assert wait_until(lambda: process_gone(leader) and process_gone(grandchild), 2.0)


def test_bad_interpreter_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(ForkServerError, match="cannot start"):
        ForkServer([str(tmp_path / "no-python")]).start()
    fs = ForkServer(["sh", "-c", "echo broken >&2; exit 3"], start_timeout=2.0)
    with pytest.raises(ForkServerError, match="broken"):
        fs.start()


def test_server_killed_task_lost_and_dies(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "import time; print('up', flush=True); time.sleep(100)")
    with tempfile.TemporaryFile() as out:
        task = spawn(server, path, stdout=out)
        assert wait_until(lambda: os.pread(out.fileno(), 3, 0) == b"up\n", 5.0)
        old_pid = server.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        assert select.select([task.fileno()], [], [], TIMEOUT)[0]  # the runner wakes up
        with pytest.raises(CronqueueError, match=r"died.*lost"):  # a ForkServerError
            task.wait(TIMEOUT)
        with pytest.raises(ForkServerError):
            task.signal_group(signal.SIGTERM)
    assert wait_until(lambda: process_gone(task.pid), 2.0)  # PR_SET_PDEATHSIG
    assert not server.running
    with pytest.raises(ForkServerError, match="died"):
        spawn(server, path)
    server.start()  # a new one
    assert server.pid != old_pid
    assert run_fork(server, script(tmp_path, "print('again')", "again.py")) == (0, "again\n")


def test_server_terminated_kills_the_task_group(server: ForkServer, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""
        import os, subprocess, time
        child = subprocess.Popen(['sh', '-c', 'trap "" TERM; exec sleep 100'])
        open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')
        time.sleep(100)
        """)
    task = spawn(server, path)
    leader, grandchild = read_pids(pids, 2)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGTERM)  # a stop, not a crash: it cleans up
    with pytest.raises(ForkServerError, match="lost"):
        task.wait(TIMEOUT)
    assert wait_until(lambda: process_gone(leader) and process_gone(grandchild), 2.0)


CLIENT = """
import json, os, signal, subprocess, sys, tempfile
from cronqueue.forkserver.client import ForkServer
fs = ForkServer(json.loads(sys.argv[2]))
fs.start()
task = fs.spawn(sys.argv[1], [], env={"PATH": os.environ["PATH"]}, cwd="/", stdin=-3,
                stdout=tempfile.TemporaryFile(), script_fd=os.open(sys.argv[1], os.O_RDONLY))
# a shard's own handlers: TERM and INT to its process group must not reach the server
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps([fs.pid, task.pid]), flush=True)
sys.stdin.read()
fs.close()
"""


def start_client(tmp_path: Path) -> tuple[subprocess.Popen[str], int, int, int]:
    """A shard stand-in in its own process group: (client, server pid, task pid,
    grandchild pid)."""
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""
        import os, subprocess, time
        child = subprocess.Popen(['sleep', '100'])
        open({str(pids)!r}, 'w').write(str(child.pid))
        time.sleep(100)
        """)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(path), json.dumps(PYTHON)],
                              stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert client.stdout is not None
    server_pid, task_pid = json.loads(client.stdout.readline())
    (grandchild,) = read_pids(pids, 1)
    return client, server_pid, task_pid, grandchild


def test_client_killed_kills_task_and_server(tmp_path: Path) -> None:
    client, server_pid, task_pid, grandchild = start_client(tmp_path)
    assert all(alive(pid) for pid in (server_pid, task_pid, grandchild))
    client.kill()
    client.wait()
    assert wait_until(lambda: all(process_gone(pid) for pid in (server_pid, task_pid,
                                                               grandchild)), 2.0)


def test_signals_to_the_shard_group_miss_server_and_task(tmp_path: Path) -> None:
    client, server_pid, task_pid, grandchild = start_client(tmp_path)
    try:
        os.killpg(client.pid, signal.SIGINT)
        os.killpg(client.pid, signal.SIGTERM)
        # The signals must miss them: nothing may happen for a while.
        time.sleep(0.3)
        assert client.poll() is None
        assert all(alive(pid) for pid in (server_pid, task_pid, grandchild))
        assert os.getsid(server_pid) == server_pid and os.getsid(task_pid) == task_pid
    finally:
        assert client.stdin is not None
        client.stdin.close()  # the client closes the fork server: task group killed
        client.wait(TIMEOUT)
    assert wait_until(lambda: all(process_gone(pid) for pid in (server_pid, task_pid,
                                                               grandchild)), 2.0)


# -- compiled once, by the server ----------------------------------------------------------------

CACHED = {
    "traceback": ("""
        import sys
        def inner():
            raise ValueError(sys.argv[1])
        inner()
        """, 1),
    "warning-at-compile": ("import sys\nx = 1\nprint(x is 1, sys.argv[1:])\n", 0),
    "syntax-error": (SAME_AS_EXEC["syntax-error"][0], 1),
    "main-module": (SAME_AS_EXEC["main-module"][0], 0),
}


@pytest.mark.parametrize("name", list(CACHED))
def test_compiled_by_the_server_same_as_exec(server: ForkServer, tmp_path: Path,
                                             name: str) -> None:
    """The server compiles a script once, for the tasks after; one whose compilation warns or
    fails each child compiles itself, so that the warning or error is the task's output."""
    body, expected = CACHED[name]
    path = script(tmp_path, body)
    exec_result = run_exec(path, ("arg",))
    assert exec_result[0] == expected
    for _ in range(3):
        assert run_fork(server, path, ("arg",)) == exec_result


def test_a_changed_script_is_run_as_it_now_is(server: ForkServer, tmp_path: Path) -> None:
    path = script(tmp_path, "print('first')\n")
    for _ in range(2):
        assert run_fork(server, path) == (0, "first\n")
    stat = path.stat()
    path.write_text("print('other')\n")  # same size, same mtime: the code is the source's
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run_fork(server, path) == (0, "other\n")


def test_environment_order_as_given(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import json, os, subprocess
        out = subprocess.run(['env', '-0'], capture_output=True, check=True).stdout
        print(json.dumps([list(os.environ), [kv.split('=', 1)[0]
                                             for kv in out.decode().split('\\0') if kv]]))
        """)
    server_env = task_env(A_FIRST="1", Z_LAST="2")
    with ForkServer(PYTHON, env=server_env) as fs:
        for env in ({**server_env, "ADDED": "x", "ALSO": "y"},  # the server's, extended
                    {**server_env, "A_FIRST": "changed", "NEW": "z"},
                    dict(reversed(list(server_env.items()))),  # another order
                    {"PATH": server_env["PATH"], "ONLY": "this"}):
            returncode, output = run_fork(fs, path, env=env)
            assert returncode == 0, output
            seen, inherited = json.loads(output)
            assert seen == inherited == list(env)
