"""``runner._spawn`` (the ``vfork`` + ``exec`` that ``subprocess.Popen`` uses, called directly on
CPython 3.11-3.13) against ``subprocess.Popen`` itself, on the interpreter running the tests:
the same child (argv, environment, cwd, session, fds) and, for every way the start can fail,
the same exception (type, errno, text, file name). Real processes, no database."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cronqueue.process.runner import _DIRECT, _spawn

pytestmark = pytest.mark.skipif(not _DIRECT, reason="_spawn is used on CPython 3.11-3.13 only")

# What the child reports of itself: the same text from both starts.
PROBE = """\
import os, sys
print(sys.argv[1:], os.getcwd(), os.environ.get("CQ_PROBE"), sorted(os.environ))
print(os.getsid(0) == os.getpid() == os.getpgrp(), os.read(0, 100))
keep = int(sys.argv[2])
print(sorted(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) != keep), end=" ")
print(os.read(keep, 100))
"""


@pytest.fixture
def keep(tmp_path: Path) -> Iterator[int]:
    """A descriptor handed to the child (as the runner hands it the script's)."""
    path = tmp_path / "kept"
    path.write_bytes(b"kept file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def _popen(argv: list[str], cwd: str, stdin: int, out: int, keep: int) -> int:
    proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            env={"CQ_PROBE": "x"}, start_new_session=True, close_fds=True,
                            pass_fds=(keep,))
    return proc.wait(30)


def _direct(argv: list[str], cwd: str, stdin: int, out: int, keep: int) -> int:
    pid = _spawn(argv, [b"CQ_PROBE=x"], cwd, stdin, out, keep)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _run(start: str, argv: list[str], cwd: str, keep: int) -> tuple[int, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp:
        inp.write(b"input")
        inp.seek(0)
        os.lseek(keep, 0, os.SEEK_SET)
        code = (_popen if start == "popen" else _direct)(argv, cwd, inp.fileno(),
                                                          out.fileno(), keep)
        out.seek(0)
        return code, out.read().decode()


def test_the_child_is_the_one_popen_starts(tmp_path: Path, keep: int) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    argv = [sys.executable, "-S", str(probe), '{"a": 1}', str(keep)]
    popen = _run("popen", argv, str(tmp_path), keep)
    direct = _run("direct", argv, str(tmp_path), keep)
    assert popen[0] == 0, popen
    assert direct == popen


def _error(start: str, argv: list[str], cwd: str, keep: int) -> tuple[object, ...]:
    try:
        _run(start, argv, cwd, keep)
    except OSError as exc:
        return type(exc), exc.errno, exc.strerror, exc.filename
    raise AssertionError(f"{start}: {argv} started")


@pytest.mark.parametrize("case", ["no-such-program", "exec-format", "not-executable",
                                  "bad-interpreter", "no-such-cwd"])
def test_a_failed_start_raises_what_popen_raises(tmp_path: Path, keep: int, case: str) -> None:
    script = tmp_path / "script"
    cwd = str(tmp_path)
    if case == "no-such-program":
        script = tmp_path / "absent"
    elif case == "exec-format":
        script.write_text("echo no shebang line\n")
        script.chmod(0o755)
    elif case == "not-executable":
        script.write_text("#!/bin/sh\necho hello\n")
        script.chmod(0o644)
    elif case == "bad-interpreter":
        script.write_text("#!/nonexistent/interpreter\n")
        script.chmod(0o755)
    else:
        script.write_text("#!/bin/sh\necho hello\n")
        script.chmod(0o755)
        cwd = str(tmp_path / "gone")
    argv = [str(script), "{}"]
    popen = _error("popen", argv, cwd, keep)
    assert _error("direct", argv, cwd, keep) == popen
