"""kill -9 of a shard must not leave its task script running unsupervised."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from tests.conftest import cronqueue_cmd, wait_for, write_script


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_script_dies_with_its_shard(queue: Queue, db_url: str, task_dir: Path, log_dir: Path,
                                    tmp_path: Path) -> None:
    pidfile = tmp_path / "script.pid"
    write_script(task_dir, "long.sh", f'echo $$ > "{pidfile}"\nexec sleep 300\n')
    task_id = queue.add("long.sh")
    shard = subprocess.Popen(
        cronqueue_cmd("work", "--db", db_url, "--task-dir", str(task_dir), "--log-dir",
                      str(log_dir)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        script_pid = int(pidfile.read_text())
        assert _alive(script_pid)
        task = queue.get(task_id)
        assert task is not None and task.status is Status.RUNNING
        assert task.worker_pid == shard.pid and task.started_at is not None
        os.kill(shard.pid, signal.SIGKILL)
        shard.wait(timeout=10)
        assert wait_for(lambda: not _alive(script_pid), timeout=10), "orphaned script lives"
    finally:
        if shard.poll() is None:
            shard.kill()
