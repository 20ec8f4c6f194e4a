"""A script started directly that the kernel will not run names the real cause (issue 15 item
4): no ``#!`` line ("Exec format error"), a ``#!`` line ending in CR from Windows line endings
("No such file or directory", or exit 127 through ``/usr/bin/env``), an interpreter that does
not exist. Real processes, no database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cronqueue.errors import ProcessExitError, ScriptNotRunnable
from cronqueue.process.runner import Runner
from tests.helpers import write_script
from tests.unit.test_runner import make_task

CRLF = ("#! line ends in CR (\\r): the file has Windows line endings (CRLF); convert it "
        "(dos2unix FILE, or sed -i 's/\\r$//' FILE)")


@pytest.fixture
def runner(task_dir: Path, log_dir: Path) -> Iterator[Runner]:
    r = Runner(task_dir, log_dir, tail_bytes=4096, kill_grace=0.5)
    yield r
    r.close()


def _error(runner: Runner, name: str) -> str:
    result = runner.run(make_task(name), attempt=1, timeout=30)
    assert result.failure is not None, result
    return result.failure.record()


@pytest.mark.parametrize(("name", "shebang"), [("job.py", "#!/usr/bin/env python3"),
                                               ("job.sh", "#!/bin/sh"),
                                               ("job", "#!/path/of/its/interpreter")])
def test_an_executable_script_without_a_shebang_says_so(runner: Runner, task_dir: Path,
                                                       name: str, shebang: str) -> None:
    write_script(task_dir, name, "print('hello')\n", mode=0o755)
    result = runner.run(make_task(name), attempt=1, timeout=30)
    assert isinstance(result.failure, ScriptNotRunnable)
    error = result.failure.record()
    assert error == (f"ScriptNotRunnable: cannot start {task_dir.resolve()}/{name}: no #! "
                     f"line: add `{shebang}` as its first line, or make it non-executable "
                     "(chmod -x) to run it by its extension (Exec format error)")


def test_a_shebang_with_windows_line_endings_says_so(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "crlf.sh", "#!/bin/sh\r\necho hello\r\n", mode=0o755)
    assert _error(runner, "crlf.sh") == (
        f"ScriptNotRunnable: cannot start {task_dir.resolve()}/crlf.sh: {CRLF} "
        "(No such file or directory)")


@pytest.mark.skipif(shutil.which("python3") is None or not Path("/usr/bin/env").exists(),
                    reason="needs /usr/bin/env and python3")
def test_a_crlf_env_shebang_exits_127_and_says_why(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "crlf.py", "#!/usr/bin/env python3\r\nprint(1)\r\n", mode=0o755)
    result = runner.run(make_task("crlf.py"), attempt=1, timeout=30)
    assert isinstance(result.failure, ProcessExitError) and result.returncode == 127
    assert result.failure.record() == f"ProcessExitError: exit status 127: {CRLF}"


def test_a_missing_interpreter_is_named(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "gone.py", "#!/usr/bin/python9.99 -u\nprint(1)\n", mode=0o755)
    assert _error(runner, "gone.py") == (
        f"ScriptNotRunnable: cannot start {task_dir.resolve()}/gone.py: its #! interpreter "
        "'/usr/bin/python9.99' does not exist (No such file or directory)")


def test_other_failures_keep_their_messages(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "exit127.sh", "#!/bin/sh\nexit 127\n", mode=0o755)
    result = runner.run(make_task("exit127.sh"), attempt=1, timeout=30)
    assert result.failure is not None and result.failure.record() == (
        "ProcessExitError: exit status 127")
    write_script(task_dir, "plain.py", "print('by extension')\n")  # not executable: by .py
    assert runner.run(make_task("plain.py"), attempt=1, timeout=30).ok
