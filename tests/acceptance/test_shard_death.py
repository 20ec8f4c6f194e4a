"""kill -9 of a shard must not leave its task script running unsupervised."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from tests.helpers import Procs, cronqueue_cmd, process_gone, wait_gone, wait_until, write_script


@pytest.mark.slow
@pytest.mark.any_backend  # the watchdog's work: the database only records the start
def test_script_dies_with_its_shard(queue: Queue, db_url: str, task_dir: Path, log_dir: Path,
                                    tmp_path: Path, procs: Procs) -> None:
    pidfile = tmp_path / "script.pid"
    write_script(task_dir, "long.sh", f'echo $$ > "{pidfile}"\nexec sleep 300\n')
    task_id = queue.add("long.sh")
    shard = procs.start(cronqueue_cmd("work", "--db", db_url, "--task-dir", str(task_dir),
                                      "--log-dir", str(log_dir)))
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 30,
               "the script started")
    script_pid = int(pidfile.read_text())
    procs.track(script_pid)
    assert not process_gone(script_pid)
    task = queue.get(task_id)
    assert task is not None and task.status is Status.RUNNING
    assert task.worker_pid == shard.pid and task.started_at is not None
    os.kill(shard.pid, signal.SIGKILL)
    shard.wait(timeout=10)
    wait_gone(script_pid, 10, "the orphaned script gone")
