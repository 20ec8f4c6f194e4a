"""Issue 12.1: hosts that share a hostname (containers with ``network_mode: host``, Kubernetes
``hostNetwork``, one ``hostname:``) but not a pid namespace. Each "host" here is a real pid
namespace (``unshare --pid --fork --mount-proc``, the suite runs as root) under our hostname,
on one database (for SQLite, one file both namespaces open)."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from tests.conftest import get_task
from tests.helpers import clean_env, cronqueue_cmd, wait_gone, wait_until, write_script

NS = ["unshare", "--pid", "--fork", "--mount-proc"]


def _in_namespace(*args: str, db_url: str, task_dir: Path, log_dir: Path,
                  config: Path | None = None) -> subprocess.Popen[str]:
    """``cronqueue ARGS`` as pid 1 of a new pid namespace (a "host" sharing our hostname)."""
    extra = ["--config", str(config)] if config else []
    env = clean_env()
    return subprocess.Popen(
        [*NS, *cronqueue_cmd(*args, "--db", db_url, "--task-dir", str(task_dir), "--log-dir",
                             str(log_dir), *extra)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _mission(**kw: object) -> str:
    """One ``cronqueue mission`` in a fresh pid namespace; its log (stderr)."""
    proc = _in_namespace("mission", "--log-level", "info", **kw)  # type: ignore[arg-type]
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


def _namespace_init(unshare_pid: int) -> int | None:
    """The pid (in our namespace) of the process ``unshare --fork`` started: the namespace's
    init; killing it kills everything in the namespace."""
    try:
        kids = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def _runs(ledger: Path) -> list[int]:
    return [int(line.split()[0]) for line in ledger.read_text().splitlines()] \
        if ledger.exists() else []


@pytest.mark.slow
def test_a_neighbour_namespace_under_our_hostname_does_not_rescue_live_shards(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    """0.1.0 (findings "Hosts that share a hostname"): the mission of one namespace judged the
    other's running rows by hostname + pid: its own pid 1 had another start time, so every live
    row was "dead" and rescued; the tasks ran again (about 110 of 120 twice)."""
    ledger = tmp_path / "runs.log"
    write_script(task_dir, "t.sh", f'echo "$CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT" >> {ledger}\n'
                                   "sleep 0.3\n")
    ids = [queue.add("t.sh", {"n": i}) for i in range(20)]
    host_a = _in_namespace("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    try:
        wait_until(lambda: _runs(ledger), 60, "host A ran a task")
        rescues = []
        while host_a.poll() is None:  # host B's mission ticks while A works
            rescues += [line for line in _mission(db_url=db_url, task_dir=task_dir,
                                                  log_dir=log_dir).splitlines()
                        if "outcome=" in line]
        assert host_a.returncode == 0
    finally:
        if host_a.poll() is None:
            host_a.kill()
        host_a.communicate(timeout=30)
    assert rescues == []
    assert sorted(_runs(ledger)) == ids  # each task once
    for task_id in ids:
        task = get_task(queue, task_id)
        assert task.status is Status.DONE and task.attempts == 1, task


@pytest.mark.slow
def test_a_killed_namespace_is_rescued_by_its_lease(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    """The rows of a namespace that died are judged by their lease from a neighbour under the
    same hostname: kept while it runs (its pid, dead or someone else's here, proves nothing),
    rescued at the first tick after it expires."""
    config = tmp_path / "cronqueue.toml"
    config.write_text("[worker]\nlease = 6\nheartbeat = 2\n")
    write_script(task_dir, "long.sh", "exec sleep 300\n")
    task_id = queue.add("long.sh")
    host_a = _in_namespace("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir,
                           config=config)
    try:
        wait_until(lambda: get_task(queue, task_id).started_at is not None, 60,
                   "the task started")
        init = _namespace_init(host_a.pid)
        assert init is not None
        os.kill(init, signal.SIGKILL)  # the whole "host" dies
        host_a.communicate(timeout=30)
        wait_gone(init, 10, "the namespace's init gone")
        lease_until = get_task(queue, task_id).lease_until
        assert lease_until is not None
        kw = {"db_url": db_url, "task_dir": task_dir, "log_dir": log_dir, "config": config}
        assert "outcome=" not in _mission(**kw)  # its lease still runs
        task = get_task(queue, task_id)
        assert task.status is Status.RUNNING and task.lease_until == lease_until
        wait_until(lambda: datetime.now(UTC) > lease_until, 30, "the lease run out")
        rescued_at = datetime.now(UTC)
        log = _mission(**kw)
        assert f"task={task_id} " in log and "outcome=retried" in log, log
        task = get_task(queue, task_id)
        assert task.status is Status.PENDING and "was lost" in (task.error or ""), task
        assert rescued_at - lease_until < timedelta(seconds=60)  # within lease + one tick
    finally:
        if host_a.poll() is None:
            host_a.kill()
            host_a.communicate(timeout=30)
