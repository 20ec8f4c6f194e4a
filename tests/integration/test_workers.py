"""Real `cronqueue work` processes: the workers registry, heartbeats, stopping through the
database, and the one-process-per-(entry, shard) guard."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cronqueue import Queue, Status
from cronqueue.config import load_config
from cronqueue.model import Worker
from cronqueue.process.identity import host_identity, pid_start_ticks
from cronqueue.store.workers import Workers
from tests.helpers import Procs, clean_env, cronqueue_cmd, holds_for, wait_until, write_script

HEARTBEAT = 0.5
POLL = 0.2
CONFIG = f"[worker]\nheartbeat = {HEARTBEAT}\npoll_interval = {POLL}\n"


class Shards:
    """Starts `cronqueue work` processes on the test's database; kills leftovers at the end."""

    def __init__(self, procs: Procs, tmp_path: Path, db_url: str, task_dir: Path,
                 log_dir: Path) -> None:
        self.procs = procs
        self.tmp_path = tmp_path
        self.config = tmp_path / "cronqueue.toml"
        self.config.write_text(CONFIG)
        self.common = ["--db", db_url, "--task-dir", str(task_dir), "--log-dir", str(log_dir)]
        self.env = clean_env(CRONQUEUE_CONFIG=str(self.config))
        self.logs: dict[int, Path] = {}

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"shard-{len(self.logs)}.log"
        proc = self.procs.start(cronqueue_cmd("work", *args, *self.common), log=log,
                                env=self.env)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")


@pytest.fixture
def shards(procs: Procs, tmp_path: Path, db_url: str, task_dir: Path,
           log_dir: Path) -> Shards:
    return Shards(procs, tmp_path, db_url, task_dir, log_dir)


@pytest.fixture
def cq(shards: Shards, db_url: str, task_dir: Path, log_dir: Path) -> Iterator[Queue]:
    """A Queue with the same configuration as the shards."""
    cfg = load_config(shards.config, db_url=db_url, task_dir=str(task_dir),
                      log_dir=str(log_dir))
    assert cfg.worker.heartbeat == HEARTBEAT
    q = Queue(config=cfg)
    q.init_db()
    yield q
    q.close()


def workers_of(q: Queue, proc: subprocess.Popen[bytes]) -> list[Worker]:
    return [w for w in q.workers() if w.pid == proc.pid]


def the_worker(q: Queue, proc: subprocess.Popen[bytes], **want: Any) -> Worker | None:
    for w in workers_of(q, proc):
        if all(getattr(w, k) == v for k, v in want.items()):
            return w
    return None


def test_registry_heartbeat_and_stop(cq: Queue, shards: Shards, task_dir: Path) -> None:
    write_script(task_dir, "sleep2.sh", "sleep 2\n")
    proc = shards.start("--max-seconds", "30", "--queue", "default")
    w = wait_until(lambda: the_worker(cq, proc), 20, lambda: shards.log(proc))
    assert w.alive
    assert (w.host, w.pid, w.shard, w.total, w.entry) == (
        host_identity(), proc.pid, 0, 1, None)
    assert w.queues == "default"
    assert w.current_task is None and w.tasks_done == 0 and not w.stop_requested
    first_beat = w.heartbeat_at
    wait_until(lambda: (x := the_worker(cq, proc)) and x.heartbeat_at > first_beat, 10,
               "a heartbeat")

    # A task: seen as the current one while it runs, counted when done.
    first = cq.add("sleep2.sh")
    wait_until(lambda: the_worker(cq, proc, current_task=first), 20, lambda: shards.log(proc))
    wait_until(lambda: the_worker(cq, proc, current_task=None, tasks_done=1), 20,
               lambda: shards.log(proc))
    task = cq.get(first)
    assert task is not None and task.status is Status.DONE

    # Stop while the second task runs: it is finished, then the shard exits 0.
    second = cq.add("sleep2.sh")
    wait_until(lambda: the_worker(cq, proc, current_task=second), 20, lambda: shards.log(proc))
    asked = cq.stop_workers()
    assert [a.pid for a in asked] == [proc.pid]
    assert proc.wait(timeout=15) == 0, shards.log(proc)
    task = cq.get(second)
    assert task is not None and task.status is Status.DONE, shards.log(proc)
    assert workers_of(cq, proc) == []
    assert cq.workers() == []


def test_stop_through_the_database_only(cq: Queue, shards: Shards) -> None:
    proc = shards.start("--max-seconds", "30")
    w = wait_until(lambda: the_worker(cq, proc), 20, lambda: shards.log(proc))
    # No signal: only the row (as an operator on another host would do it).
    assert Workers(cq.engine).request_stop([w.id]) == 1
    # Seen at the next heartbeat; an idle shard wakes within poll_interval.
    assert proc.wait(timeout=HEARTBEAT + POLL + 8) == 0, shards.log(proc)
    assert "stop requested through the database" in shards.log(proc)
    assert workers_of(cq, proc) == []


def test_stop_through_the_database_finishes_the_current_task(cq: Queue, shards: Shards,
                                                             task_dir: Path) -> None:
    write_script(task_dir, "sleep2.sh", "sleep 2\n")
    running = cq.add("sleep2.sh")
    waiting = cq.add("sleep2.sh")
    proc = shards.start("--max-seconds", "30", "--batch", "10")
    w = wait_until(lambda: the_worker(cq, proc, current_task=running), 20,
                   lambda: shards.log(proc))
    Workers(cq.engine).request_stop([w.id])
    assert proc.wait(timeout=15) == 0, shards.log(proc)
    a, b = cq.get(running), cq.get(waiting)
    assert a is not None and a.status is Status.DONE
    # Claimed in the same batch but never started: released, not lost.
    assert b is not None and b.status is Status.PENDING and b.attempts == 0
    assert b.claim_token is None


def test_entry_guard_one_process_per_shard(cq: Queue, shards: Shards) -> None:
    args = ("--entry", "x", "--shard", "0", "--total", "1", "--max-seconds", "30")
    one, two = shards.start(*args), shards.start(*args)

    def one_exited() -> subprocess.Popen[bytes] | None:
        return next((p for p in (one, two) if p.poll() is not None), None)

    loser = wait_until(one_exited, 20, lambda: shards.log(one) + shards.log(two))
    winner = two if loser is one else one
    assert loser.returncode == 0, shards.log(loser)
    assert "already running" in shards.log(loser)
    assert winner.poll() is None, shards.log(winner)
    w = wait_until(lambda: the_worker(cq, winner), 20, lambda: shards.log(winner))
    assert w.entry == "x" and w.alive
    assert workers_of(cq, loser) == []

    # kill -9: the guard is freed with the process, a new one starts at once.
    os.kill(winner.pid, signal.SIGKILL)
    winner.wait(timeout=10)
    third = shards.start(*args)
    wait_until(lambda: the_worker(cq, third) or third.poll() is not None, 20,
               lambda: shards.log(third))
    assert third.poll() is None, shards.log(third)
    assert "already running" not in shards.log(third)

    # The killed one's row is still there (no deregistration) and shown as gone.
    stale = the_worker(cq, winner)
    assert stale is not None and stale.alive is False
    assert the_worker(cq, third, alive=True) is not None

    # Stopping the entry asks the live one only.
    asked = cq.stop_workers(entry="x")
    assert [a.pid for a in asked] == [third.pid]
    assert third.wait(timeout=15) == 0, shards.log(third)


def test_workers_judges_dead_and_reused_pids(cq: Queue) -> None:
    repo = Workers(cq.engine)
    here = host_identity()
    now = datetime.now(UTC)
    lease = cq.config.worker.lease
    gone = subprocess.Popen(["true"])
    gone.wait()
    me, my_start = os.getpid(), pid_start_ticks(os.getpid())
    assert my_start is not None

    def register(host: str, pid: int, pid_start: int | None, shard: int,
                 beat: datetime = now) -> int:
        return repo.register(host=host, pid=pid, pid_start=pid_start, entry="judge",
                                    shard=shard, total=5, queues="", started_at=beat,
                                    heartbeat_at=beat)

    ids = {
        "dead pid": register(here, gone.pid, 123, 0),
        "reused pid": register(here, me, my_start + 1, 1),
        "live": register(here, me, my_start, 2, now - timedelta(days=1)),
        "other host, fresh": register("some-other-host", 1, 1, 3),
        "other host, stale": register("some-other-host", 2, 2, 4,
                                      now - timedelta(seconds=lease + 5)),
    }
    alive = {w.id: w.alive for w in cq.workers()}
    assert alive == {
        ids["dead pid"]: False, ids["reused pid"]: False, ids["live"]: True,
        ids["other host, fresh"]: True, ids["other host, stale"]: False}

    # Asking dead rows to stop does nothing, and never signals the pid's new owner (us).
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        assert cq.stop_workers([ids["dead pid"], ids["reused pid"],
                                ids["other host, stale"]]) == []
        # A signal to us would be handled at once; still, nothing may arrive for a while.
        holds_for(lambda: got == [], 0.1, "no SIGTERM to this process")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert not any(w.stop_requested for w in cq.workers())


@pytest.mark.any_backend  # what is signalled here
def test_stopped_workers_carry_why_they_got_no_signal(
        cq: Queue, db_url: str, task_dir: Path, log_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The reason was worked out again by the CLI (comparing the row's host with
    socket.gethostname()); the one who decided not to signal now says why."""
    from tests.conftest import run_main

    repo = Workers(cq.engine)
    now = datetime.now(UTC)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        ticks = pid_start_ticks(bystander.pid)

        def register(host: str, pid: int, pid_start: int | None) -> int:
            return repo.register(host=host, pid=pid, pid_start=pid_start, entry=None,
                                        shard=0, total=1, queues="", started_at=now,
                                        heartbeat_at=now)

        far = register("some-other-host", 1, 1)
        forged = register(host_identity(), bystander.pid, ticks)
        why = {far: "a process on another host",
               forged: f"pid {bystander.pid} did not prove to be that shard here, so no signal"}
        asked = cq.stop_workers()
        assert {w.id: (w.signalled, w.no_signal_reason) for w in asked} == {
            i: (False, reason) for i, reason in why.items()}

        assert run_main(["workers", "stop", "--all", "--db", db_url, "--task-dir",
                         str(task_dir), "--log-dir", str(log_dir)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2
        for worker_id, reason in why.items():
            line = next(x for x in lines if f"worker {worker_id} " in x)
            assert f"through the database only ({reason}): it stops" in line
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
