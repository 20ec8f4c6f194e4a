"""Group commit (cronqueue/ledger.py) on real databases and real shard processes: what a shard
writes, when, and what a kill -9 of the shard costs."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cronqueue import Queue, Status
from cronqueue.config import load_config
from cronqueue.mission.rescue import rescue
from cronqueue.process.identity import Owner
from cronqueue.shard.loop import Shard
from cronqueue.store.claims import Claimer
from cronqueue.store.database import Store
from cronqueue.store.outcomes import Finish, Flush, Outcomes
from tests.conftest import get_task
from tests.helpers import (
    Procs,
    clean_env,
    cronqueue_cmd,
    wait_gone,
    wait_until,
    write_script,
)

# Each run appends "ID ATTEMPT" to runs.txt; "poison" kills its own shard.
TASK = ('echo "$CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT" >> runs.txt\n'
        'case "$1" in *poison*) kill -9 $PPID; sleep 5 ;; esac\n')


def runs(task_dir: Path) -> Counter[int]:
    path = task_dir / "runs.txt"
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines())


def config_file(tmp_path: Path, db_url: str, task_dir: Path, log_dir: Path, **worker: Any) -> Path:
    body = "\n".join(f"{k} = {v!r}" for k, v in worker.items())
    path = tmp_path / "cronqueue.toml"
    path.write_text(f'db_url = "{db_url}"\ntask_dir = "{task_dir}"\nlog_dir = "{log_dir}"\n'
                    f"[worker]\nbackoff = 0.01\nbackoff_max = 0.01\n{body}\n")
    return path


def run_shard_process(cfg: Path, tmp_path: Path) -> int:
    with (tmp_path / "shard.log").open("ab") as err:
        return subprocess.run(cronqueue_cmd("work", "--config", str(cfg)), env=clean_env(),
                              stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=tmp_path,
                              timeout=120, check=False).returncode


def rescue_now(q: Queue, cfg: Path) -> None:
    rescue(Store(q.engine), load_config(cfg).worker,
           datetime.now(UTC) + timedelta(seconds=1))


def drain(q: Queue, cfg: Path, tmp_path: Path, rounds: int = 10) -> None:
    """What cron does: run the shard, rescue what a dead one left, again."""
    for _ in range(rounds):
        run_shard_process(cfg, tmp_path)
        rescue_now(q, cfg)
        time.sleep(0.05)  # past the retry backoff (0.01 s): a wait on the clock, not an event
        if not q.list(status=Status.PENDING) and not q.list(status=Status.RUNNING):
            return


def test_one_commit_per_window_and_exact_times(db_url: str, task_dir: Path, log_dir: Path,
                                               queue: Queue) -> None:
    write_script(task_dir, "t.sh", TASK)
    ids = queue.add_many([("t.sh", i) for i in range(23)])
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      flush_every=10, flush_interval=600)
    shard = Shard(cfg)
    flushes: list[Flush] = []
    real_flush = Outcomes.flush

    def spy(outcomes: Outcomes, flush: Flush) -> Any:
        flushes.append(flush)
        return real_flush(outcomes, flush)

    Outcomes.flush = spy  # type: ignore[method-assign]
    try:
        report = shard.run()
    finally:
        Outcomes.flush = real_flush  # type: ignore[method-assign]
    assert report.done == 23
    # 23 tasks in windows of 10: three marks; the outcomes of a window go with the next mark.
    assert [len(f.mark) for f in flushes if f.mark] == [10, 10, 3]
    assert sum(len(f.finishes) for f in flushes) == 23
    assert len(flushes) <= 5, [(len(f.finishes), len(f.mark)) for f in flushes]
    assert runs(task_dir) == Counter(dict.fromkeys(ids, 1))
    for task_id in ids:
        task = get_task(queue, task_id)
        assert task.status is Status.DONE and task.attempts == 1 and task.exit_code == 0
        assert task.started_at is not None and task.finished_at is not None
        assert task.started_at <= task.finished_at  # each task's own times, not the window's


def test_flush_of_a_row_taken_over_records_the_others(queue: Queue) -> None:
    ids = queue.add_many([("t.sh", i) for i in range(3)])
    repo = Outcomes(queue.engine)
    now = datetime.now(UTC) + timedelta(seconds=1)
    claim = Claimer(queue.engine, Owner("h", 1, 1), shard=0, total=1, queues=None,
                    lease=timedelta(seconds=60)).claim(10, now)
    assert repo.flush(Flush(claim.token, mark=ids, now=now,
                            lease_until=now + timedelta(seconds=60))).marked == set(ids)
    # A rescuer takes the middle one over (its owner looked dead).
    taken = get_task(queue, ids[1])
    assert repo.settle(taken, {"status": int(Status.PENDING), "claim_token": None})
    done = {"status": int(Status.DONE), "exit_code": 0, "finished_at": now, "output": "ok"}
    flushed = repo.flush(Flush(claim.token, [Finish(i, claim.token, done) for i in ids]))
    assert flushed.recorded == {ids[0], ids[2]}
    assert get_task(queue, ids[1]).status is Status.PENDING
    assert [get_task(queue, i).status for i in (ids[0], ids[2])] == [Status.DONE] * 2


def test_shard_killed_mid_window_reruns_unrecorded_tasks_once_and_charges_the_culprit(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue) -> None:
    """A task that kills its shard (kill -9) in the middle of a window: the window's finished
    but unrecorded tasks run again once (alone, start committed first); the culprit is
    charged one attempt per kill and fails after max_attempts; nothing runs in parallel."""
    write_script(task_dir, "t.sh", TASK)
    ids = queue.add_many([("t.sh", "poison" if i == 4 else i) for i in range(8)])
    poison = ids[4]
    cfg = config_file(tmp_path, db_url, task_dir, log_dir, flush_every=50,
                      flush_interval=600.0, max_attempts=3)
    drain(queue, cfg, tmp_path)
    counts = runs(task_dir)
    bad = get_task(queue, poison)
    assert bad.status is Status.FAILED and bad.attempts == 3, bad
    assert (bad.error or "").startswith("ProcessMissingError")
    assert counts[poison] == 3
    for task_id in ids:
        if task_id == poison:
            continue
        task = get_task(queue, task_id)
        assert task.status is Status.DONE, task
        # Before the culprit: finished, unrecorded at the kill → at most one re-run.
        # After it: marked, never run → charged once, run once.
        assert 1 <= counts[task_id] <= 2, (task_id, counts)
        assert task.attempts == 2 or counts[task_id] == 1


def test_at_most_once_task_is_not_run_twice_when_its_shard_dies(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue) -> None:
    """``max_attempts = 1`` runs alone with its start committed first: killing the shard
    fails it instead of running it again, and the tasks before it are not re-run either."""
    write_script(task_dir, "t.sh", TASK)
    before = queue.add_many([("t.sh", i) for i in range(5)])
    once = queue.add("t.sh", "poison", max_attempts=1)
    after = queue.add_many([("t.sh", i) for i in range(3)])
    cfg = config_file(tmp_path, db_url, task_dir, log_dir, flush_every=50,
                      flush_interval=600.0)
    drain(queue, cfg, tmp_path)
    counts = runs(task_dir)
    assert counts[once] == 1
    task = get_task(queue, once)
    assert task.status is Status.FAILED and task.attempts == 1
    for task_id in before:
        assert counts[task_id] == 1, counts  # recorded before the careful task started
        assert get_task(queue, task_id).status is Status.DONE
    for task_id in after:
        assert get_task(queue, task_id).status is Status.DONE
        assert counts[task_id] == 1  # never marked: released without a charge


def test_outcomes_are_written_while_a_long_task_runs(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue,
        procs: Procs) -> None:
    write_script(task_dir, "quick.sh", "exit 0\n")
    write_script(task_dir, "slow.sh", "touch slow.started\nsleep 3\n")
    quick = queue.add("quick.sh")
    slow = queue.add("slow.sh")
    cfg = config_file(tmp_path, db_url, task_dir, log_dir, flush_every=50,
                      flush_interval=0.2)
    proc = procs.start(cronqueue_cmd("work", "--config", str(cfg)), cwd=tmp_path)
    wait_until(lambda: (task_dir / "slow.started").exists(), 30, "the slow task started")
    # Without the interval flush this would wait for the slow task (3 s).
    wait_until(lambda: get_task(queue, quick).status is Status.DONE, 2.5,
               "the quick task's outcome written while the slow one runs")
    assert get_task(queue, slow).status is Status.RUNNING
    assert proc.wait(timeout=60) == 0
    assert get_task(queue, slow).status is Status.DONE


@pytest.mark.any_backend  # the watchdog's
def test_watchdog_kills_the_task_group_when_the_shard_is_killed(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue,
        procs: Procs) -> None:
    write_script(task_dir, "hang.sh", "sleep 300 &\necho $! > child.pid\necho $$ > task.pid\n"
                                      "wait\n")
    queue.add("hang.sh")
    cfg = config_file(tmp_path, db_url, task_dir, log_dir)
    proc = procs.start(cronqueue_cmd("work", "--config", str(cfg)), cwd=tmp_path)
    wait_until(lambda: (task_dir / "child.pid").exists() and (task_dir / "task.pid").exists()
               and (task_dir / "task.pid").read_text().strip(), 30, "the task and its child")
    pids = [int((task_dir / f).read_text()) for f in ("task.pid", "child.pid")]
    for pid in pids:
        procs.track(pid)
    proc.kill()
    proc.wait()
    for pid in pids:  # the script and its background child: the whole group
        wait_gone(pid, 10, f"pid {pid} of the task's group gone with its shard")


@pytest.mark.parametrize("flush_every", [1, 7])
def test_every_window_size_drains_exactly_once(db_url: str, task_dir: Path, log_dir: Path,
                                               queue: Queue, flush_every: int) -> None:
    write_script(task_dir, "t.sh", TASK)
    ids = queue.add_many([("t.sh", i) for i in range(20)])
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      flush_every=flush_every, batch=6)
    assert Shard(cfg).run().done == 20
    assert runs(task_dir) == Counter(dict.fromkeys(ids, 1))


def test_a_window_rescued_while_it_runs_starts_none_of_the_rescued_tasks(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue,
        procs: Procs) -> None:
    """Issue 12 #2: a shard over 30 one-second tasks (one window) whose rows are rescued a
    few seconds in (by another host that judged the lease expired) starts none of the
    rescued tasks: only the one running at the rescue ran on, its result fenced out."""
    write_script(task_dir, "slow.sh", 'echo "$CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT" >> runs.txt\n'
                                      "sleep 1\n")
    ids = queue.add_many([("slow.sh", i) for i in range(30)])
    cfg = config_file(tmp_path, db_url, task_dir, log_dir, flush_every=50,
                      flush_interval=600.0)
    proc = procs.start(cronqueue_cmd("work", "--config", str(cfg)), log=tmp_path / "shard.log",
                       cwd=tmp_path)
    wait_until(lambda: sum(runs(task_dir).values()) >= 3, 60, "three tasks ran")
    # Another host, whose clock is past the lease: every row of the window is rescued
    # (pending again, run_at a lease ahead, so this burst shard cannot claim it again).
    report = rescue(Store(queue.engine), load_config(cfg).worker,
                    datetime.now(UTC) + timedelta(seconds=120), me=Owner("elsewhere", 1, 1),
                    server_uptime=lambda: 10.0**9)
    ran = runs(task_dir)
    assert sorted(report.retried) == ids, report
    assert proc.wait(timeout=60) == 0
    log = (tmp_path / "shard.log").read_text()
    assert runs(task_dir) == ran, log  # no rescued task started after the rescue
    assert 3 <= sum(ran.values()) <= 10 and max(ran.values()) == 1, ran
    assert log.count("outcome=lost-claim") == 30 - len(ran), log
    for task_id in ids:  # every result was fenced out: all pending, each for one re-run
        assert get_task(queue, task_id).status is Status.PENDING
