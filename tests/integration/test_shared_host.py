"""A shared host (issue 11, item 2): cronqueue never signals or kills what is not its own.

Real `cronqueue work` processes: a neighbour installation's task survives our shard's kill -9;
`workers stop` signals only a process that proves to be that shard of this database.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from cronqueue.process.identity import host_identity, pid_start_ticks
from cronqueue.store.repository import Repository
from tests.conftest import cronqueue_cmd, get_task, process_gone, run_cli, wait_for, write_script

# The shard waits for this file, so the test decides when the task ends.
HOLD = 'echo $$ > run.pid\nwhile [ ! -e release ]; do sleep 0.05; done\necho released\n'
# A heartbeat far beyond the test's waits: a stop seen in time came from the signal.
SLOW_BEAT = "[worker]\nheartbeat = 60\nlease = 180\npoll_interval = 0.2\n"


class Procs:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONQUEUE_")}
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(proc)
        return proc


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    for proc in p.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _shard(procs: Procs, db_url: str, task_dir: Path, log_dir: Path,
           *args: str) -> subprocess.Popen[bytes]:
    return procs.start(cronqueue_cmd("work", *args, "--db", db_url, "--task-dir", str(task_dir),
                                     "--log-dir", str(log_dir)), cwd=task_dir.parent)


def _children(pid: int) -> list[int]:
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


def _alive(pid: int) -> bool:
    return not process_gone(pid)


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
        assert wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pid_files))
        our_run, their_run = (int(p.read_text()) for p in pid_files)
        helpers = [pid for pid in _children(a.pid)
                   if b"CRONQUEUE_WATCHDOG_FDS" in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(helpers) == 1, "shard A's watchdog helper not found"

        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=10)
        assert wait_for(lambda: process_gone(our_run), timeout=10), "our orphan lives"
        assert wait_for(lambda: process_gone(helpers[0]), timeout=10)  # it has done its work
        assert _alive(their_run), "the neighbour's task was killed by our watchdog"

        (other_tasks / "release").touch()
        assert b.wait(timeout=30) == 0
        task = get_task(neighbour, theirs)
        assert task.status is Status.DONE and task.exit_code == 0, task
        assert task.output is not None and "released" in task.output
    finally:
        neighbour.close()


def _register(queue: Queue, pid: int, pid_start: int | None) -> int:
    now = datetime.now(UTC)
    return Repository(queue.engine).register_worker(
        host=host_identity(), pid=pid, pid_start=pid_start, entry=None, shard=0, total=1,
        queues="", started_at=now, heartbeat_at=now)


def _stop_flag(queue: Queue, worker_id: int) -> bool:
    return any(w.stop_requested for w in queue.workers() if w.id == worker_id)


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
    assert not wait_for(lambda: bystander.poll() is not None, timeout=1.0), \
        f"the bystander died: {bystander.returncode}"
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and f"worker {forged} " in lines[0]
    assert "through the database only" in lines[0] and "did not prove" in lines[0]
    assert _stop_flag(queue, forged)


def test_workers_stop_signals_the_real_shard_and_only_it(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        procs: Procs) -> None:
    config = tmp_path / "slow-beat.toml"
    config.write_text(SLOW_BEAT)
    shard = _shard(procs, db_url, task_dir, log_dir, "--config", str(config),
                   "--max-seconds", "300")
    assert wait_for(lambda: any(w.pid == shard.pid for w in queue.workers()))
    real = next(w for w in queue.workers() if w.pid == shard.pid)
    assert wait_for(lambda: (log_dir / "locks" / "workers").is_dir()
                    and any((log_dir / "locks" / "workers").iterdir()))

    # A forged row copying the real shard's pid and start time is not that shard either.
    forged = _register(queue, real.pid, real.pid_start)
    done = run_cli("workers", "stop", str(forged), db_url=db_url, task_dir=task_dir,
                   log_dir=log_dir)
    assert done.returncode == 0, done.stderr
    assert "through the database only" in done.stdout
    assert not wait_for(lambda: shard.poll() is not None, timeout=1.0)
    assert not _stop_flag(queue, real.id)

    done = run_cli("workers", "stop", str(real.id), "--config", str(config), db_url=db_url,
                   task_dir=task_dir, log_dir=log_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"asked worker {real.id} ({real.host}:{real.pid}, - shard "
                                   "0/1) to stop: sent SIGTERM")
    # Long before its first heartbeat (60 s) could have read the flag.
    assert shard.wait(timeout=30) == 0
    assert list((log_dir / "locks" / "workers").iterdir()) == []
