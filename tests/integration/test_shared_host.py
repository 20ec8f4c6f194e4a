"""A shared host (issue 11, item 2): cronqueue never signals or kills what is not its own.

Real `cronqueue work` processes: a neighbour installation's task survives our shard's kill -9;
`workers stop` signals only a process that proves to be that shard of this database.
"""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from cronqueue.process.identity import host_identity, pid_start_ticks
from cronqueue.store.workers import Workers
from tests.conftest import get_task, run_cli
from tests.helpers import (
    Procs,
    children,
    cronqueue_cmd,
    holds_for,
    process_gone,
    wait_gone,
    wait_until,
    write_script,
)

# The shard waits for this file, so the test decides when the task ends.
HOLD = 'echo $$ > run.pid\nwhile [ ! -e release ]; do sleep 0.05; done\necho released\n'
# A heartbeat far beyond the test's waits: a stop seen in time came from the signal.
SLOW_BEAT = "[worker]\nheartbeat = 60\nlease = 180\npoll_interval = 0.2\n"


def _shard(procs: Procs, db_url: str, task_dir: Path, log_dir: Path,
           *args: str) -> subprocess.Popen[bytes]:
    return procs.start(cronqueue_cmd("work", *args, "--db", db_url, "--task-dir", str(task_dir),
                                     "--log-dir", str(log_dir)), cwd=task_dir.parent)


@pytest.mark.any_backend  # what is signalled here
def test_a_dying_shard_never_kills_a_neighbour_installations_task(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        procs: Procs) -> None:
    """Two installations on one host, each running its task 1, attempt 1 (0.1.0: kill -9 of
    one shard and its watchdog killed the other installation's task too, by its
    CRONQUEUE_TASK_ID and CRONQUEUE_ATTEMPT)."""
    other = tmp_path / "neighbour"
    other_tasks, other_logs = other / "tasks", other / "logs"
    other_tasks.mkdir(parents=True)
    other_url = f"sqlite:///{other / 'queue.db'}"
    neighbour = Queue(other_url, task_dir=str(other_tasks), log_dir=str(other_logs))
    neighbour.init_db()
    try:
        for where in (task_dir, other_tasks):
            write_script(where, "hold.sh", HOLD)
        ours, theirs = queue.add("hold.sh"), neighbour.add("hold.sh")
        assert ours == theirs == 1
        a = _shard(procs, db_url, task_dir, log_dir)
        b = _shard(procs, other_url, other_tasks, other_logs)
        pid_files = (task_dir / "run.pid", other_tasks / "run.pid")
        wait_until(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), 30,
                   "both tasks running")
        our_run, their_run = (int(p.read_text()) for p in pid_files)
        procs.track(our_run)
        procs.track(their_run)
        helpers = [pid for pid in children(a.pid)
                   if b"CRONQUEUE_WATCHDOG_FDS" in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(helpers) == 1, "shard A's watchdog helper not found"

        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        wait_gone(our_run, 10, "our orphan gone")
        wait_gone(helpers[0], 10, "the watchdog helper gone: it has done its work")
        assert not process_gone(their_run), "the neighbour's task was killed by our watchdog"

        (other_tasks / "release").touch()
        assert b.wait(timeout=30) == 0
        task = get_task(neighbour, theirs)
        assert task.status is Status.DONE and task.exit_code == 0, task
        assert task.output is not None and "released" in task.output
    finally:
        neighbour.close()


def _register(queue: Queue, pid: int, pid_start: int | None) -> int:
    now = datetime.now(UTC)
    return Workers(queue.engine).register(
        host=host_identity(), pid=pid, pid_start=pid_start, entry=None, shard=0, total=1,
        queues="", started_at=now, heartbeat_at=now)


def _stop_flag(queue: Queue, worker_id: int) -> bool:
    return any(w.stop_requested for w in queue.workers() if w.id == worker_id)


@pytest.mark.any_backend  # what is signalled here
def test_workers_stop_never_signals_a_forged_rows_pid(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, procs: Procs) -> None:
    """A hand-written row names an unrelated local process (its real pid and start time):
    0.1.0 sent it SIGTERM. Now only the database flag is set, and the command says so."""
    bystander = procs.start(["sleep", "300"])
    ticks = pid_start_ticks(bystander.pid)
    assert ticks is not None
    forged = _register(queue, bystander.pid, ticks)
    assert [w.alive for w in queue.workers()] == [True]

    done = run_cli("workers", "stop", "--all", db_url=db_url, task_dir=task_dir,
                   log_dir=log_dir)
    # Nothing may happen to it for a while.
    holds_for(lambda: bystander.poll() is None, 1.0,
              lambda: f"the bystander lives (exit {bystander.returncode})")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and f"worker {forged} " in lines[0]
    assert "through the database only" in lines[0] and "did not prove" in lines[0]
    assert _stop_flag(queue, forged)


@pytest.mark.any_backend  # what is signalled here
def test_workers_stop_signals_the_real_shard_and_only_it(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        procs: Procs) -> None:
    config = tmp_path / "slow-beat.toml"
    config.write_text(SLOW_BEAT)
    shard = _shard(procs, db_url, task_dir, log_dir, "--config", str(config),
                   "--max-seconds", "300")
    wait_until(lambda: any(w.pid == shard.pid for w in queue.workers()), 30,
               "the shard registered")
    real = next(w for w in queue.workers() if w.pid == shard.pid)
    wait_until(lambda: (log_dir / "locks" / "workers").is_dir()
               and any((log_dir / "locks" / "workers").iterdir()), 30, "the shard's proof lock")

    # A forged row copying the real shard's pid and start time is not that shard either.
    forged = _register(queue, real.pid, real.pid_start)
    done = run_cli("workers", "stop", str(forged), db_url=db_url, task_dir=task_dir,
                   log_dir=log_dir)
    assert done.returncode == 0, done.stderr
    assert "through the database only" in done.stdout
    holds_for(lambda: shard.poll() is None, 1.0, "the shard not signalled")
    assert not _stop_flag(queue, real.id)

    done = run_cli("workers", "stop", str(real.id), "--config", str(config), db_url=db_url,
                   task_dir=task_dir, log_dir=log_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"asked worker {real.id} ({real.host}:{real.pid}, - shard "
                                   "0/1) to stop: sent SIGTERM")
    # Long before its first heartbeat (60 s) could have read the flag.
    assert shard.wait(timeout=30) == 0
    assert list((log_dir / "locks" / "workers").iterdir()) == []
