"""Issue 11 #8: a first TERM/INT ends a shard that runs no task within about a second, also
while the database is unreachable. On 0.1.0 the shard kept retrying the database through the
first stop: `timeout 40 cronqueue work` with the database down took 5 min 3 s (outage_wait)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from tests.conftest import get_task as get
from tests.helpers import Procs, wait_until, write_script

# The helpers and fixtures of the outage tests (a real `cronqueue work`, a cuttable proxy).
from tests.integration.test_outage import (  # noqa: F401 - fixtures
    NEEDS_MARIADB,
    ON_MARIADB,
    Proxy,
    lines_with,
    proxy,
    start_work,
    write_config,
)

WITHIN = 2.0  # seconds from the signal to the exit (about 1 s asked; slack for a busy host)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_and_time(proc: subprocess.Popen[bytes], err: Path, sig: signal.Signals) -> float:
    """Send ``sig`` once; seconds until the process exited (fails after 30 s)."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 30 s after the first {sig.name}: {err.read_text()[-2000:]}")
    elapsed = time.monotonic() - sent
    print(f"exited {elapsed:.2f}s after the first {sig.name}")
    return elapsed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize(("down", "extra"), [
    ("mariadb", ()),  # waiting to register
    ("mariadb", ("--entry", "drain")),  # waiting for the shard lock (GET_LOCK)
    ("sqlite", ()),  # the file cannot be opened
], ids=["mariadb", "mariadb-entry", "sqlite"])
def test_first_stop_ends_a_shard_whose_database_is_down_at_start(
        down: str, extra: tuple[str, ...], sig: signal.Signals, tmp_path: Path,
        procs: Procs) -> None:
    url = (f"mysql+pymysql://root@127.0.0.1:{_unused_port()}/cq" if down == "mariadb"
           else f"sqlite:///{tmp_path / 'missing' / 'queue.db'}")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    proc, err = start_work(url, task_dir, tmp_path / "logs", tmp_path, write_config(tmp_path),
                           procs, "--total", "2", "--shard", "1", *extra)
    wait_until(lambda: lines_with(err, "database unavailable during"), 60, err.read_text)
    elapsed = _stop_and_time(proc, err, sig)
    assert proc.returncode == 0, err.read_text()
    assert elapsed < WITHIN, f"{elapsed:.1f}s: {err.read_text()}"
    assert lines_with(err, "stopped while waiting for the database"), err.read_text()


@NEEDS_MARIADB
@ON_MARIADB
def test_first_stop_ends_a_polling_shard_during_an_outage(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        proxy: Proxy, procs: Procs) -> None:  # noqa: F811
    """The database goes away while a shard with a budget polls an empty queue: its claim
    waits for the database (on 0.1.0 until the budget ran out), a first TERM ends it."""
    config = write_config(tmp_path, poll_interval=0.05)
    proc, err = start_work(proxy.url(db_url), task_dir, log_dir, tmp_path, config, procs,
                           "--max-seconds", "600")
    wait_until(lambda: lines_with(err, "start queues="), 60, err.read_text)
    proxy.pause()
    wait_until(lambda: lines_with(err, "database unavailable during claim"), 60, err.read_text)
    elapsed = _stop_and_time(proc, err, signal.SIGTERM)
    assert proc.returncode == 0, err.read_text()
    assert elapsed < WITHIN, f"{elapsed:.1f}s: {err.read_text()}"
    assert lines_with(err, "stopped while waiting for the database (during claim)")


@NEEDS_MARIADB
@ON_MARIADB
def test_first_stop_still_waits_for_outcomes_it_holds(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        proxy: Proxy, procs: Procs) -> None:  # noqa: F811
    """What the first stop must not give up: a finished task's outcome not yet written. The
    shard says it waits for it, writes it when the database is back, and the task ran once."""
    write_script(task_dir, "nap.sh", "echo ran >> ledger.log\nsleep 1\n")
    task_id = queue.add("nap.sh", max_attempts=3)
    config = write_config(tmp_path, outage_wait=60)
    proc, err = start_work(proxy.url(db_url), task_dir, log_dir, tmp_path, config, procs)
    wait_until(lambda: (task_dir / "ledger.log").exists(), 60, err.read_text)
    proxy.pause()
    wait_until(lambda: lines_with(err, "database unavailable during record"), 60, err.read_text)
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: lines_with(err, "stopping: waiting for the database to record first "
                                       "(stop again to exit without)"), 30, err.read_text)
    assert proc.poll() is None, err.read_text()
    assert get(queue, task_id).status is Status.RUNNING
    proxy.resume()
    assert proc.wait(timeout=60) == 0, err.read_text()
    task = get(queue, task_id)
    assert task.status is Status.DONE and task.attempts == 1, (task, err.read_text())
    assert (task_dir / "ledger.log").read_text() == "ran\n"
