"""The runner: real processes, no database. Tasks are built by hand as the claim would."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cronqueue.errors import (
    ProcessExitError,
    ProcessInterruptedError,
    ProcessSignaledError,
    ProcessTimeoutError,
    ScriptError,
    ScriptNotRunnable,
)
from cronqueue.model import Status, Task
from cronqueue.process.runner import Runner, RunResult
from tests.helpers import Procs, wait_gone, write_script

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
GRACE = 0.5


def make_task(taskscript: str, param: str = "null", *, task_id: int = 7,
              queue: str = "default", attempts: int = 1) -> Task:
    """A claimed, started task row, as the worker hands it to the runner."""
    return Task(
        id=task_id, queue=queue, taskscript=taskscript, param=param, status=Status.RUNNING,
        priority=0, ctime=T0, run_at=T0, attempts=attempts, max_attempts=3, timeout=None,
        unique_key=None, active_key=None, worker_host="testhost", worker_pid=os.getpid(),
        worker_pid_start=None, claim_token="t" * 32, lease_until=T0, started_at=T0,
        finished_at=None, exit_code=None, error=None, output=None)


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def command(runner: Runner, taskscript: str) -> list[str]:
    """How the runner would run ``taskscript``: its argv, the opened script's descriptor shown
    as the real path it was found at."""
    script = runner.resolve(taskscript)
    try:
        fd_path = f"/proc/self/fd/{script.fd}"
        return [script.opened.path if a == fd_path else a for a in script.argv]
    finally:
        script.close()


@pytest.fixture
def runner(task_dir: Path, log_dir: Path) -> Runner:
    return Runner(task_dir, log_dir, kill_grace=GRACE)


def run(runner: Runner, taskscript: str, param: str = "null", *, timeout: float | None = 60,
        attempt: int = 1, abort: Callable[[], bool] | None = None, **kw: object) -> RunResult:
    task = make_task(taskscript, param, **kw)  # type: ignore[arg-type]
    if abort is None:
        return runner.run(task, attempt=attempt, timeout=timeout)
    return runner.run(task, attempt=attempt, timeout=timeout, abort=abort)


# -- what the script sees ------------------------------------------------------------------------


def test_argv1_is_the_param_text_byte_for_byte(runner: Runner, task_dir: Path) -> None:
    param = json.dumps({"msg": "héllo \"wörld\" $HOME `id` ; | * \\n 日本", "n": [1, 2.5e10],
                        "sp": "  a  b  "}, ensure_ascii=False, separators=(",", ":"))
    write_script(task_dir, "echo_arg.sh",
                 'printf "%s" "$1" > arg.out\nprintf "%s" "$#" > argc.out\n')
    result = run(runner, "echo_arg.sh", param)
    assert result.ok, result
    assert (task_dir / "arg.out").read_bytes() == param.encode("utf-8")
    assert (task_dir / "argc.out").read_text() == "1"


def test_environment_has_task_vars_but_not_the_db_url(task_dir: Path, log_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_DB_URL", "mysql+pymysql://cq:secret@db/app")
    monkeypatch.setenv("CQ_UNIT_MARKER", "passed-through")
    runner = Runner(task_dir, log_dir, kill_grace=GRACE)
    write_script(task_dir, "env.py",
                 "import json, os\n"
                 "json.dump(dict(os.environ), open('env.json', 'w'))\n")
    result = run(runner, "env.py", attempt=2, task_id=1234, queue="emails")
    assert result.ok, result
    env = json.loads((task_dir / "env.json").read_text())
    assert env["CRONQUEUE_TASK_ID"] == "1234"
    assert env["CRONQUEUE_ATTEMPT"] == "2"
    assert env["CRONQUEUE_QUEUE"] == "emails"
    assert "CRONQUEUE_DB_URL" not in env
    assert "secret" not in json.dumps(env)
    assert env["CQ_UNIT_MARKER"] == "passed-through"



def test_task_vars_the_shard_inherited_are_replaced_not_doubled(
        task_dir: Path, log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard started from a task (its environment has that task's variables): the script's
    environment holds each variable once, with its own run's value (execve takes a list: a
    name given twice would reach the script twice, and getenv returns the first)."""
    for name, value in (("CRONQUEUE_TASK_ID", "1"), ("CRONQUEUE_ATTEMPT", "9"),
                        ("CRONQUEUE_QUEUE", "outer"), ("_CRONQUEUE_RUN", "f" * 32)):
        monkeypatch.setenv(name, value)
    runner = Runner(task_dir, log_dir, kill_grace=GRACE)
    write_script(task_dir, "rawenv.py",
                 "open('environ.out', 'wb').write(open('/proc/self/environ', 'rb').read())\n")
    try:
        result = run(runner, "rawenv.py", attempt=2, task_id=1234, queue="emails")
    finally:
        runner.close()
    assert result.ok, result
    names = [v.split(b"=", 1)[0] for v in (task_dir / "environ.out").read_bytes().split(b"\0")]
    for name in (b"CRONQUEUE_TASK_ID", b"CRONQUEUE_ATTEMPT", b"CRONQUEUE_QUEUE", b"_CRONQUEUE_RUN"):
        assert names.count(name) == 1, (name, names)
    raw = (task_dir / "environ.out").read_bytes().split(b"\0")
    assert b"CRONQUEUE_TASK_ID=1234" in raw and b"CRONQUEUE_ATTEMPT=2" in raw
    assert b"CRONQUEUE_QUEUE=emails" in raw and b"_CRONQUEUE_RUN=" + b"f" * 32 not in raw

def test_cwd_is_task_dir(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "sub/cwd.py", "import os\nopen('cwd.out', 'w').write(os.getcwd())\n")
    result = run(runner, "sub/cwd.py")
    assert result.ok, result
    assert (task_dir / "cwd.out").read_text() == os.path.realpath(task_dir)


def test_task_helper_inside_a_running_script(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "helper.py",
                 "import json\nfrom cronqueue.task import args, attempt, queue, task_id\n"
                 "json.dump([args(), task_id(), attempt(), queue()], open('h.json', 'w'))\n")
    result = run(runner, "helper.py", '{"day":"yesterday","n":[1,2]}', attempt=3,
                 task_id=99, queue="reports")
    assert result.ok, result.output
    assert json.loads((task_dir / "h.json").read_text()) == [
        {"day": "yesterday", "n": [1, 2]}, 99, 3, "reports"]


# -- how it is started -------------------------------------------------------------------------


def test_py_runs_with_the_current_interpreter(runner: Runner, task_dir: Path) -> None:
    path = write_script(task_dir, "which.py",
                        "import sys\nopen('exe.out', 'w').write(sys.executable)\n")
    assert command(runner, "which.py") == [sys.executable, os.path.realpath(path)]
    result = run(runner, "which.py")
    assert result.ok, result
    assert (task_dir / "exe.out").read_text() == sys.executable


def test_sh_runs_with_sh(runner: Runner, task_dir: Path) -> None:
    path = write_script(task_dir, "plain.sh", "x=shell; echo \"$x\" > sh.out\n", mode=0o644)
    assert command(runner, "plain.sh") == [shutil.which("sh"), os.path.realpath(path)]
    result = run(runner, "plain.sh")
    assert result.ok, result
    assert (task_dir / "sh.out").read_text() == "shell\n"


def test_executable_file_runs_directly_via_its_shebang(runner: Runner, task_dir: Path) -> None:
    # A .py name, but executable with a sh shebang: run directly, not with Python.
    path = write_script(task_dir, "direct.py", "#!/bin/sh\necho direct > direct.out\n",
                        mode=0o755)
    assert command(runner, "direct.py") == [os.path.realpath(path)]
    result = run(runner, "direct.py")
    assert result.ok, result.output
    assert (task_dir / "direct.out").read_text() == "direct\n"


def test_executable_without_extension(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "bin/tool", "#!/bin/sh\necho \"tool $1\"\n", mode=0o700)
    result = run(runner, "bin/tool", "[1]")
    assert result.ok, result.output
    assert result.output == "tool [1]\n"


def test_symlink_inside_task_dir_is_allowed(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "real.sh", "echo real\n")
    (task_dir / "alias.sh").symlink_to("real.sh")
    result = run(runner, "alias.sh")
    assert result.ok, result
    assert result.output == "real\n"


# -- outcomes ------------------------------------------------------------------------------------


def test_exit_0_is_ok(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "ok.sh", "echo fine\nexit 0\n")
    result = run(runner, "ok.sh")
    assert result.ok
    assert result.returncode == 0
    assert result.failure is None
    assert not result.permanent
    assert not result.interrupted
    assert result.output == "fine\n"


def test_duration_is_the_scripts_run_time(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "nap.sh", "sleep 0.3\n")
    started = time.monotonic()
    result = run(runner, "nap.sh")
    elapsed = time.monotonic() - started
    assert result.ok, result
    assert 0.3 <= result.duration <= elapsed, (result.duration, elapsed)


def test_exit_3_is_a_process_exit_failure(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "three.sh", "echo oops >&2\nexit 3\n")
    result = run(runner, "three.sh")
    assert not result.ok
    assert result.returncode == 3
    assert isinstance(result.failure, ProcessExitError)
    assert result.failure.record().startswith("ProcessExitError: ")
    assert "3" in str(result.failure)
    assert not result.permanent
    assert "oops" in result.output  # stderr is captured too


def test_killed_by_signal_is_a_signaled_failure(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "suicide.sh", "kill -KILL $$\n")
    result = run(runner, "suicide.sh")
    assert isinstance(result.failure, ProcessSignaledError)
    assert result.returncode == -9
    assert "SIGKILL" in str(result.failure)


def test_timeout_kills_the_whole_process_group(runner: Runner, task_dir: Path,
                                               procs: Procs) -> None:
    write_script(task_dir, "slow.sh",
                 "echo before\nsleep 300 &\necho $! > child.pid\nwait\necho never\n")
    result = run(runner, "slow.sh", timeout=2)
    child = read_pid(task_dir / "child.pid")
    procs.track(child)
    assert isinstance(result.failure, ProcessTimeoutError)
    assert not result.ok
    assert not result.permanent
    assert not result.interrupted
    assert result.returncode != 0
    assert "before" in result.output
    assert "never" not in result.output
    wait_gone(child, 5, f"grandchild {child} gone after the timeout")


def test_timeout_escalates_to_kill_when_term_is_ignored(runner: Runner, task_dir: Path,
                                                        procs: Procs) -> None:
    write_script(task_dir, "stubborn.sh",
                 "trap '' TERM\nsleep 300 &\necho $! > child.pid\nwait\nwait\n")
    result = run(runner, "stubborn.sh", timeout=2)
    child = read_pid(task_dir / "child.pid")
    procs.track(child)
    assert isinstance(result.failure, ProcessTimeoutError)
    assert result.returncode == -9
    wait_gone(child, 5, f"grandchild {child} gone with the SIGKILL of the group")


def test_background_child_does_not_hang_the_runner_and_is_killed(
        runner: Runner, task_dir: Path, procs: Procs) -> None:
    write_script(task_dir, "daemon.sh",
                 "sleep 300 &\necho $! > child.pid\necho launched\nexit 0\n")
    result = run(runner, "daemon.sh", timeout=30)
    child = read_pid(task_dir / "child.pid")
    procs.track(child)
    assert result.ok, result  # a hang would have ended in ProcessTimeoutError
    assert result.output == "launched\n"
    wait_gone(child, 5, f"leftover child {child} of the script's group gone")


def test_abort_interrupts_the_script(runner: Runner, task_dir: Path, procs: Procs) -> None:
    write_script(task_dir, "long.sh",
                 "sleep 300 &\necho $! > child.pid\ntouch started\nwait\n")
    started = task_dir / "started"
    result = run(runner, "long.sh", timeout=60, abort=started.exists)
    child = read_pid(task_dir / "child.pid")
    procs.track(child)
    assert result.interrupted
    assert isinstance(result.failure, ProcessInterruptedError)
    assert not result.ok
    wait_gone(child, 5, f"child {child} gone after the abort")


# -- output ------------------------------------------------------------------------------------


def test_output_tail_keeps_the_last_bytes(task_dir: Path, log_dir: Path) -> None:
    runner = Runner(task_dir, log_dir, kill_grace=GRACE, tail_bytes=100)
    data = b"".join(b"%05d\n" % i for i in range(2000))
    write_script(task_dir, "much.py",
                 "import sys\n"
                 "sys.stdout.buffer.write(b''.join(b'%05d\\n' % i for i in range(2000)))\n")
    result = run(runner, "much.py")
    assert result.ok, result
    assert result.output == data[-100:].decode()


def test_invalid_utf8_output_is_replaced(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "binary.py",
                 "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe done\\x00!')\n")
    result = run(runner, "binary.py")
    assert result.ok, result
    assert result.output.startswith("ok ")
    assert "\ufffd" in result.output
    assert result.output.endswith("done\ufffd!")
    assert "\x00" not in result.output
    result.output.encode("utf-8")  # storable as text


def test_big_output_tail_and_full_log(task_dir: Path, log_dir: Path) -> None:
    runner = Runner(task_dir, log_dir, kill_grace=GRACE, tail_bytes=4096)
    write_script(task_dir, "big.py",
                 "import sys\n"
                 "out = sys.stdout.buffer\n"
                 "out.write(b'BEGIN\\n')\n"
                 "for i in range(120_000):\n"
                 "    out.write(b'line %07d ................................\\n' % i)\n"
                 "out.write(b'END')\n")
    expected = b"BEGIN\n" + b"".join(
        b"line %07d ................................\n" % i for i in range(120_000)) + b"END"
    assert len(expected) > 5_000_000
    result = run(runner, "big.py", task_id=4242)
    assert result.ok, result
    assert result.output == expected[-4096:].decode()
    logs = list(log_dir.glob("*.log"))
    assert len(logs) == 1, logs
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.log", logs[0].name)
    content = logs[0].read_bytes()
    header, _, rest = content.partition(b"\n")
    assert b"task=4242" in header
    assert b"exit=0" in header
    assert rest.startswith(expected)
    assert content.count(b"line ") == 120_000


def test_log_appends_one_section_per_run(runner: Runner, task_dir: Path,
                                         log_dir: Path) -> None:
    write_script(task_dir, "a.sh", "printf first\n")
    write_script(task_dir, "b.sh", "echo second; exit 5\n")
    run(runner, "a.sh", task_id=1)
    run(runner, "b.sh", task_id=2)
    (log,) = log_dir.glob("*.log")
    lines = log.read_text().splitlines()
    headers = [line for line in lines if line.startswith("--- ")]
    assert len(headers) == 2
    assert "task=1" in headers[0]
    assert "task=2" in headers[1]
    assert "exit=5" in headers[1]
    assert "first" in lines  # a missing final newline is added
    assert "second" in lines


# -- refusals ------------------------------------------------------------------------------------


def assert_refused(result: RunResult, *, permanent: bool, match: str) -> None:
    assert not result.ok
    assert isinstance(result.failure, ScriptNotRunnable)
    assert result.permanent is permanent
    assert result.returncode is None
    assert re.search(match, str(result.failure)), str(result.failure)
    assert result.failure.record().startswith("ScriptNotRunnable: ")


def test_symlink_pointing_outside_task_dir_is_refused(runner: Runner, task_dir: Path,
                                                      tmp_path: Path) -> None:
    outside = write_script(tmp_path, "outside.sh", "#!/bin/sh\ntouch ran.out\n", mode=0o755)
    (task_dir / "escape.sh").symlink_to(outside)
    result = run(runner, "escape.sh")
    assert_refused(result, permanent=True, match="outside task_dir")
    assert not (task_dir / "ran.out").exists()
    assert not (tmp_path / "ran.out").exists()


def test_symlinked_directory_pointing_outside_is_refused(runner: Runner, task_dir: Path,
                                                         tmp_path: Path) -> None:
    write_script(tmp_path / "elsewhere", "job.sh", "touch ran.out\n")
    (task_dir / "linked").symlink_to(tmp_path / "elsewhere")
    assert_refused(run(runner, "linked/job.sh"), permanent=True, match="outside task_dir")


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o775, 0o777])
def test_group_or_world_writable_script_is_refused(runner: Runner, task_dir: Path,
                                                   mode: int) -> None:
    script = write_script(task_dir, "loose.sh", "touch ran.out\n", mode=mode)
    if not mode & 0o002:  # group-writable: for a group with a member other than us
        if os.geteuid() != 0:
            pytest.skip("needs root to give the script nobody's group")
        os.chown(script, -1, 65534)
    result = run(runner, "loose.sh")
    assert_refused(result, permanent=True, match="writable")
    assert not (task_dir / "ran.out").exists()


def test_directory_is_refused(runner: Runner, task_dir: Path) -> None:
    (task_dir / "adir.sh").mkdir()
    assert_refused(run(runner, "adir.sh"), permanent=True, match="not a regular file")


def test_missing_script_is_not_permanent(runner: Runner) -> None:
    assert_refused(run(runner, "not_deployed_yet.py"), permanent=False, match="not found")


def test_missing_interpreter_is_not_permanent_and_named(task_dir: Path, log_dir: Path) -> None:
    runner = Runner(task_dir, log_dir, {".php": ["cq-no-such-php-binary"]}, kill_grace=GRACE)
    write_script(task_dir, "page.php", "<?php echo 1;\n")
    result = run(runner, "page.php")
    assert_refused(result, permanent=False, match="cq-no-such-php-binary")


def test_unknown_extension_without_exec_bit_is_permanent(runner: Runner,
                                                         task_dir: Path) -> None:
    write_script(task_dir, "job.rb", "puts 1\n", mode=0o644)
    assert_refused(run(runner, "job.rb"), permanent=True, match=r"'\.rb'")


def test_configured_interpreter_with_arguments(task_dir: Path, log_dir: Path) -> None:
    runner = Runner(task_dir, log_dir, {".rb": ["sh", "-e"]}, kill_grace=GRACE)
    path = write_script(task_dir, "job.rb", "echo \"via sh -e: $1\"\nfalse\necho not-reached\n")
    assert command(runner, "job.rb")[1:] == ["-e", os.path.realpath(path)]
    result = run(runner, "job.rb", '"p"')
    assert isinstance(result.failure, ProcessExitError)
    assert result.output == "via sh -e: \"p\"\n"


def test_invalid_json_param_is_permanent_and_script_not_run(runner: Runner,
                                                            task_dir: Path) -> None:
    write_script(task_dir, "guarded.sh", "touch ran.out\n")
    result = run(runner, "guarded.sh", "{bad")
    assert_refused(result, permanent=True, match="JSON")
    assert not (task_dir / "ran.out").exists()


def test_nul_in_param_is_permanent(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "guarded.sh", "touch ran.out\n")
    result = run(runner, "guarded.sh", '"a\x00b"')
    assert_refused(result, permanent=True, match="NUL")
    assert not (task_dir / "ran.out").exists()


def test_oversized_param_is_permanent(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "guarded.sh", "touch ran.out\n")
    result = run(runner, "guarded.sh", '"' + "a" * 140_000 + '"')
    assert_refused(result, permanent=True, match="bytes")


@pytest.mark.parametrize("taskscript", ["/bin/sh", "../x.sh", "x;id", "-x.sh", ""])
def test_hand_inserted_bad_taskscript_is_permanent(runner: Runner, taskscript: str) -> None:
    assert_refused(run(runner, taskscript), permanent=True, match="taskscript")


def test_command_raises_script_error(runner: Runner) -> None:
    with pytest.raises(ScriptError) as info:
        command(runner, "/bin/sh")
    assert info.value.permanent is True
    with pytest.raises(ScriptError) as info:
        command(runner, "absent.sh")
    assert info.value.permanent is False


def test_unusable_log_dir_does_not_crash_the_runner(task_dir: Path, tmp_path: Path) -> None:
    # Writing the day log is best effort (a warning); an unusable log_dir must not make run()
    # raise, which would kill the shard with the task left running.
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    runner = Runner(task_dir, blocker, kill_grace=GRACE)
    write_script(task_dir, "ok.sh", "echo fine\n")
    result = run(runner, "ok.sh")
    assert isinstance(result, RunResult)
