"""The Python fast path keeps the runner's contract: every .py behaviour here is run through
the exec path and through the fork server, and must come out the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cronqueue.errors import (
    ProcessExitError,
    ProcessInterruptedError,
    ProcessSignaledError,
    ProcessTimeoutError,
)
from cronqueue.process.runner import Runner, RunResult
from tests.helpers import wait_gone, wait_until, write_script
from tests.unit.test_runner import make_task

MODES = ["exec", "fork"]


@pytest.fixture(params=MODES)
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runner]:
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    r = Runner(task_dir, tmp_path / "logs", kill_grace=0.5,
               python_fork=request.param == "fork")
    yield r
    r.close()


def run(runner: Runner, script: str, param: str = "null", timeout: float | None = 30,
        **kw: object) -> RunResult:
    return runner.run(make_task(script, param), attempt=1, timeout=timeout, **kw)  # type: ignore[arg-type]


def forked(runner: Runner) -> bool:
    return runner._forkserver is not None and runner._forkserver.running


@pytest.mark.parametrize(("body", "code", "failure"), [
    ("pass\n", 0, None),
    ("import sys\nsys.exit(3)\n", 3, ProcessExitError),
    ("import sys\nsys.exit('bad thing')\n", 1, ProcessExitError),
    ("raise ValueError('boom')\n", 1, ProcessExitError),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", -9, ProcessSignaledError),
])
def test_exit_status_and_failure(runner: Runner, body: str, code: int,
                                 failure: type[Exception] | None) -> None:
    write_script(runner.task_dir, "t.py", body)
    result = run(runner, "t.py")
    assert result.returncode == code
    assert (type(result.failure) if result.failure else None) is failure
    assert forked(runner) == (runner.python_fork)
    if body.startswith("raise"):
        assert "ValueError: boom" in result.output and "Traceback" in result.output
    if "bad thing" in body:
        assert result.output.strip() == "bad thing"


def test_argv_env_cwd_stdout_and_stderr(runner: Runner) -> None:
    write_script(runner.task_dir, "t.py", (
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'name': __name__,\n"
        "  'path0': sys.path[0], 'cwd': os.getcwd(),\n"
        "  'task': os.environ.get('CRONQUEUE_TASK_ID'),\n"
        "  'attempt': os.environ.get('CRONQUEUE_ATTEMPT'),\n"
        "  'db': os.environ.get('CRONQUEUE_DB_URL')}), flush=True)\n"
        "print('to stderr', file=sys.stderr)\n"))
    result = run(runner, "t.py", '{"a": "\\u00e9 \\"q\\""}')
    assert result.ok, result.output
    first, second = result.output.splitlines()
    seen = json.loads(first)
    assert seen == {"argv": ['{"a": "\\u00e9 \\"q\\""}'], "name": "__main__",
                    "path0": str(runner.task_dir), "cwd": str(runner.task_dir), "task": "7",
                    "attempt": "1", "db": None}
    assert second == "to stderr"


def test_secret_arrives_on_stdin(runner: Runner) -> None:
    write_script(runner.task_dir, "t.py", "import sys\nprint(sys.stdin.read()[::-1])\n")
    task = make_task("t.py")
    result = runner.run(replace(task, secret="s3cret"), attempt=1, timeout=30)
    assert result.output.strip() == "terc3s"


def test_timeout_kills_the_whole_group(runner: Runner) -> None:
    write_script(runner.task_dir, "t.py", (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "open('child.pid', 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"))
    started = time.monotonic()
    result = run(runner, "t.py", timeout=1.5)
    assert isinstance(result.failure, ProcessTimeoutError)
    assert time.monotonic() - started < 10
    child = int((runner.task_dir / "child.pid").read_text())
    wait_gone(child, 5, "the task's child gone after the timeout")


def test_abort_interrupts(runner: Runner) -> None:
    write_script(runner.task_dir, "t.py", "import time\ntime.sleep(300)\n")
    started = time.monotonic()
    result = run(runner, "t.py", abort=lambda: time.monotonic() - started > 0.5)
    assert isinstance(result.failure, ProcessInterruptedError) and result.interrupted


def test_each_task_gets_a_fresh_module_state_and_random(runner: Runner) -> None:
    write_script(runner.task_dir, "t.py", (
        "import random, sys\n"
        "print('leak' if 'leaky_mod' in sys.modules else 'clean', random.random())\n"
        "sys.modules['leaky_mod'] = sys\n"))
    first = run(runner, "t.py").output.split()
    second = run(runner, "t.py").output.split()
    assert first[0] == second[0] == "clean"
    assert first[1] != second[1]


def test_fork_server_death_is_a_failure_then_it_restarts(tmp_path: Path) -> None:
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    runner = Runner(task_dir, tmp_path / "logs", python_fork=True)
    try:
        write_script(task_dir, "ok.py", "print('ok')\n")
        assert run(runner, "ok.py").ok
        assert runner._forkserver is not None
        server = runner._forkserver.pid
        assert server is not None
        write_script(task_dir, "kill.py", f"import os, signal\nos.kill({server}, 9)\n"
                                          "import time\ntime.sleep(30)\n")
        result = run(runner, "kill.py")
        assert not result.ok and "fork server" in result.output + str(result.failure)
        again = run(runner, "ok.py")  # a new server
        assert again.ok and runner._forkserver.pid != server
    finally:
        runner.close()


def test_shard_killed_kills_forked_task(tmp_path: Path) -> None:
    """The shard (here: a process running the runner) dies by SIGKILL: the fork server sees
    its socket close and kills the task's group."""
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    write_script(task_dir, "hang.py", "import os, time\nopen('pid', 'w').write(str(os.getpid()))"
                                      "\ntime.sleep(300)\n")
    code = (
        "import sys\n"
        "from cronqueue.process.runner import Runner\n"
        "from tests.unit.test_runner import make_task\n"
        f"r = Runner({str(task_dir)!r}, {str(tmp_path / 'logs')!r}, python_fork=True)\n"
        "r.run(make_task('hang.py'), attempt=1, timeout=None)\n")
    shard = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    pid_file = task_dir / "pid"
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the task started")
    task_pid = int(pid_file.read_text())
    os.kill(shard.pid, signal.SIGKILL)
    shard.wait()
    wait_gone(task_pid, 10, "the forked task gone with its shard")


def test_executable_py_with_shebang_takes_the_exec_path(tmp_path: Path) -> None:
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    runner = Runner(task_dir, tmp_path / "logs", python_fork=True)
    try:
        write_script(task_dir, "x.py", f"#!{sys.executable}\nimport os\nprint(os.getppid())\n",
                     mode=0o755)
        result = run(runner, "x.py")
        assert result.ok and int(result.output) == os.getpid()  # our child, not the server's
        assert runner._forkserver is None
    finally:
        runner.close()


def test_a_fork_server_that_cannot_start_leaves_tasks_to_the_exec_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("cronqueue.forkserver.client.SERVER_SCRIPT", str(tmp_path / "gone.py"))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    runner = Runner(task_dir, tmp_path / "logs", python_fork=True)
    try:
        write_script(task_dir, "t.py", "import os, sys\nprint(os.getppid(), sys.argv[1])\n")
        result = run(runner, "t.py", '"p"')
        assert result.ok, result.output
        assert result.output.split() == [str(os.getpid()), '"p"']  # our child: the exec path
        assert "fork server unavailable" in caplog.text and "the exec way" in caplog.text
    finally:
        runner.close()


def test_a_task_that_kills_the_fork_server_at_once_runs_once(tmp_path: Path) -> None:
    """The child runs the task's code only once the shard was told it started: the server's
    death is then the task's failure, never a reason to run it again the exec way."""
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    runner = Runner(task_dir, tmp_path / "logs", python_fork=True)
    try:
        write_script(task_dir, "ok.py", "pass\n")
        assert run(runner, "ok.py").ok
        assert runner._forkserver is not None and runner._forkserver.pid is not None
        write_script(task_dir, "kill.py", (
            "import os, signal\n"
            "open('ran', 'a').write('x')\n"
            f"os.kill({runner._forkserver.pid}, signal.SIGKILL)\n"
            "import time\ntime.sleep(30)\n"))
        result = run(runner, "kill.py")
        assert isinstance(result.failure, ProcessSignaledError), result
        assert "fork server" in str(result.failure)
        assert (task_dir / "ran").read_text() == "x"
    finally:
        runner.close()


def test_python_preload_is_ignored_and_said_so(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """worker.python_preload stays accepted (a config naming it still loads), but the fork
    server preloads nothing: the shard says so."""
    runner = Runner(tmp_path, tmp_path / "logs", python_fork=True, python_preload=["json"])
    runner.close()
    assert "python_preload is obsolete and ignored" in caplog.text
