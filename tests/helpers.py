"""The tests' helpers, one copy each: waiting on an event, watching that nothing happens for a
while, whether a process is gone, the processes a test starts (killed at its end if still
running), the environment a child gets, and task scripts.

Waits poll for the event itself (a file appearing, a row changing, a process gone) and fail
with what was awaited; a fixed sleep followed by an assertion is a race on a busy host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

Detail = str | Callable[[], object]


def _say(what: Detail) -> str:
    return str(what() if callable(what) else what)


def wait_until(predicate: Callable[[], T], timeout: float = 30.0,
               what: Detail = "the condition", *, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something true and return that; after ``timeout``
    seconds fail, naming ``what`` (a text, or a function giving one, e.g. a process's log,
    read only then)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"not within {timeout:g} s: {_say(what)}")
        time.sleep(interval)


def holds_for(predicate: Callable[[], object], seconds: float,
              what: Detail = "the condition", *, interval: float = 0.02) -> None:
    """``predicate`` stays true for ``seconds``: the one kind of test that must let time pass
    (nothing may happen for a while). Fails as soon as it turns false."""
    end = time.monotonic() + seconds
    while True:
        if not predicate():
            raise AssertionError(f"no longer true after {seconds - (end - time.monotonic()):.2f}"
                                 f" s: {_say(what)}")
        if time.monotonic() >= end:
            return
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its reaper (it runs no more; PID 1 in a
    container may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rfind(")") + 2:].split()[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10.0, what: Detail = "") -> None:
    """Wait until ``pid`` is gone (see ``process_gone``)."""
    wait_until(lambda: process_gone(pid), timeout, what or f"pid {pid} gone")


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(name))
    return found


def kill_leftovers(procs: Iterable[subprocess.Popen[bytes] | subprocess.Popen[str] | int]
                   ) -> None:
    """SIGKILL what a test started and left running (a ``Popen``, reaped; or a pid the test's
    own script wrote down). Never anything else."""
    for proc in procs:
        if isinstance(proc, int):
            if not process_gone(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc, signal.SIGKILL)
        elif proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``CRONQUEUE_*`` (a developer's own settings must
    not reach the processes a test starts), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONQUEUE_")}
    env.update(extra)
    return env


def cronqueue_cmd(*args: str) -> list[str]:
    """argv that runs the installed ``cronqueue`` CLI with this interpreter."""
    return [sys.executable, "-m", "cronqueue", *args]


class Procs:
    """The processes a test starts (the ``procs`` fixture): each with a clean environment and
    its output in a log file of its own; whatever still runs at the test's end is killed."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes] | subprocess.Popen[str] | int] = []

    def start(self, argv: list[str], *, log: Path | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None
              ) -> subprocess.Popen[bytes]:
        """Start ``argv`` (stdin closed, stdout and stderr to ``log`` or nowhere)."""
        out: IO[bytes] | int = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(argv, env=clean_env() if env is None else env, cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        finally:
            if not isinstance(out, int):
                out.close()
        self.started.append(proc)
        return proc

    def track(self, proc: subprocess.Popen[bytes] | subprocess.Popen[str] | int) -> None:
        """Kill this one too at the end if it still runs (a pid: one the test started)."""
        self.started.append(proc)

    def kill_leftovers(self) -> None:
        kill_leftovers(self.started)


def write_script(task_dir: Path, name: str, body: str, mode: int = 0o644) -> Path:
    """Write a task script (``mode`` 0o755 makes it run directly, via its shebang)."""
    path = task_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    path.chmod(mode)
    return path
