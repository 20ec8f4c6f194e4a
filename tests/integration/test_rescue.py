"""The rescue: tasks of dead shards come back (pending or failed), fenced by the claim token;
the workers registry forgets dead shards."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cronqueue import Queue, Status, Task
from cronqueue.config import Config
from cronqueue.mission.rescue import rescue
from cronqueue.process.identity import Owner
from cronqueue.store.claims import Claimer
from cronqueue.store.database import Store
from cronqueue.store.outcomes import Finish, Flush, Outcomes
from tests.helpers import Procs, cronqueue_cmd, wait_gone, wait_until, write_script

DEAD = Owner("thishost", 999999, 1)  # the shard that "died"
ME = Owner("thishost", 4242, 77)  # the mission that rescues (same host)


def long_up() -> float:
    """A database server that has been up for ages: lease expiry is trusted."""
    return 10.0**9
OTHER = Owner("otherhost", 999999, 1)


class Alive:
    """A fake pid check: records its calls; ``live`` pids are alive."""

    def __init__(self, *live: int) -> None:
        self.live = set(live)
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, pid: int, start: int | None) -> bool:
        self.calls.append((pid, start))
        return pid in self.live


@pytest.fixture
def cfg(queue: Queue) -> Config:
    return queue.config


@pytest.fixture
def repo(queue: Queue) -> Store:
    return queue.store


def _with(queue: Queue, outcomes: Outcomes) -> Store:
    """The queue's store, its running rows read and settled by ``outcomes``."""
    store = Store(queue.engine)
    store.outcomes = outcomes
    return store


def now_utc() -> datetime:
    return datetime.now(UTC)


def claim(queue: Queue, owner: Owner, *, limit: int = 10,
          now: datetime | None = None) -> tuple[str, list[Task]]:
    claimer = Claimer(queue.engine, owner, shard=0, total=1, queues=None,
                      lease=timedelta(seconds=queue.config.worker.lease))
    c = claimer.claim(limit, now or now_utc() + timedelta(seconds=1))
    return c.token, c.tasks


def start(repo: Store, task_id: int, token: str, now: datetime,
          lease: float = 900) -> None:
    assert repo.outcomes.flush(Flush(token, mark=[task_id], now=now, lease_until=now + timedelta(
        seconds=lease))).marked == {task_id}


def get(queue: Queue, task_id: int) -> Task:
    task = queue.get(task_id)
    assert task is not None
    return task


def done_values(now: datetime) -> dict[str, Any]:
    return {"status": int(Status.DONE), "finished_at": now, "exit_code": 0, "error": None,
            "lease_until": None, "active_key": None, "output": "ok\n"}


# -- this host: the pid tells ----------------------------------------------------------------


def test_dead_owner_started_task_is_retried_after_backoff(queue: Queue, repo: Store,
                                                          cfg: Config) -> None:
    task_id = queue.add("t.sh", {"x": 1}, max_attempts=3, unique_key="job-1")
    now = now_utc()
    token, [task] = claim(queue, DEAD)
    assert task.id == task_id
    start(repo, task_id, token, now)

    alive = Alive()
    report = rescue(repo, cfg.worker, now + timedelta(seconds=2), me=ME, alive=alive)
    assert report.retried == [task_id]
    assert report.failed == [] and report.released == []
    assert (DEAD.pid, DEAD.pid_start) in alive.calls

    task = get(queue, task_id)
    assert task.status is Status.PENDING
    assert task.attempts == 1  # the lost run counts as an attempt
    assert (task.error or "").startswith("ProcessMissingError")
    assert task.claim_token is None and task.lease_until is None
    assert task.finished_at is None and task.exit_code is None
    backoff = (task.run_at - (now + timedelta(seconds=2))).total_seconds()
    base = cfg.worker.backoff
    assert base <= backoff <= base * 1.25 + 0.001
    # Still active for its unique key: adding it again returns the same task.
    assert queue.add("t.sh", {"x": 1}, unique_key="job-1") == task_id

    # Not claimable before the backoff ends; claimable after, and runs as attempt 2.
    assert claim(queue, ME, now=task.run_at - timedelta(seconds=1))[1] == []
    token2, [again] = claim(queue, ME, now=task.run_at)
    assert again.id == task_id and again.attempts == 1
    start(repo, task_id, token2, task.run_at)
    assert get(queue, task_id).attempts == 2


def test_dead_owner_last_attempt_fails_and_frees_the_key(queue: Queue, repo: Store,
                                                         cfg: Config) -> None:
    task_id = queue.add("t.sh", max_attempts=1, unique_key="only-once")
    now = now_utc()
    token, _ = claim(queue, DEAD)
    start(repo, task_id, token, now)
    when = now + timedelta(seconds=3)
    report = rescue(repo, cfg.worker, when, me=ME, alive=Alive())
    assert report.failed == [task_id] and report.retried == []
    task = get(queue, task_id)
    assert task.status is Status.FAILED
    assert task.attempts == 1
    assert task.active_key is None
    assert task.finished_at == when
    assert (task.error or "").startswith("ProcessMissingError")
    assert task.claim_token is None
    # The key is free: a new task with it is inserted.
    assert queue.add("t.sh", unique_key="only-once") != task_id


def test_default_max_attempts_from_worker_config(queue: Queue, repo: Store,
                                                 cfg: Config) -> None:
    task_id = queue.add("t.sh")  # max_attempts NULL: the worker's (3)
    assert cfg.worker.max_attempts == 3
    when = now_utc()
    for attempt in (1, 2, 3):
        token, [task] = claim(queue, DEAD, now=when)
        assert task.attempts == attempt - 1
        start(repo, task_id, token, when)
        report = rescue(repo, cfg.worker, when, me=ME, alive=Alive())
        task = get(queue, task_id)
        if attempt < 3:
            assert report.retried == [task_id] and task.status is Status.PENDING
            when = task.run_at
        else:
            assert report.failed == [task_id] and task.status is Status.FAILED
    assert get(queue, task_id).attempts == 3


def test_claimed_but_unstarted_goes_straight_back(queue: Queue, repo: Store,
                                                  cfg: Config) -> None:
    started_id = queue.add("t.sh")
    waiting_id = queue.add("t.sh", max_attempts=1)
    now = now_utc()
    token, tasks = claim(queue, DEAD)
    assert [t.id for t in tasks] == [started_id, waiting_id]
    start(repo, started_id, token, now)
    before = get(queue, waiting_id)

    report = rescue(repo, cfg.worker, now, me=ME, alive=Alive())
    assert report.released == [waiting_id]
    assert report.retried == [started_id]
    task = get(queue, waiting_id)
    assert task.status is Status.PENDING
    assert task.attempts == 0  # never started: no attempt spent (even with max_attempts 1)
    assert task.error is None
    assert task.claim_token is None and task.lease_until is None
    assert task.run_at == before.run_at  # due again at once

    # The dead owner's token no longer starts it (it was released).
    assert repo.outcomes.flush(Flush(token, mark=[waiting_id], now=now,
                                     lease_until=now + timedelta(hours=1))).marked == set()


def test_live_owner_is_left_alone(queue: Queue, repo: Store, cfg: Config) -> None:
    a = queue.add("t.sh")
    b = queue.add("t.sh")
    now = now_utc()
    token, _ = claim(queue, DEAD)
    start(repo, a, token, now)
    before = {i: get(queue, i) for i in (a, b)}
    alive = Alive(DEAD.pid)
    report = rescue(repo, cfg.worker, now + timedelta(days=1), me=ME, alive=alive)
    # Same host: the pid decides, even long past the lease.
    assert report.retried == report.failed == report.released == []
    assert alive.calls
    for i in (a, b):
        assert get(queue, i) == before[i]
        assert get(queue, i).status is Status.RUNNING


def test_other_host_waits_for_the_lease(queue: Queue, repo: Store, cfg: Config) -> None:
    a = queue.add("t.sh")
    b = queue.add("t.sh")
    now = now_utc()
    token, _ = claim(queue, OTHER, now=now)  # claim lease: now + worker.lease for b
    start(repo, a, token, now, lease=600)
    lease_a = get(queue, a).lease_until
    lease_b = get(queue, b).lease_until
    assert lease_a is not None and lease_b is not None and lease_b < lease_a

    alive = Alive()  # "everything is dead" - but another host's pid means nothing here
    assert rescue(repo, cfg.worker, now, me=ME, alive=alive,
                    server_uptime=long_up).released == []
    assert alive.calls == []
    assert get(queue, a).status is Status.RUNNING and get(queue, b).status is Status.RUNNING

    # At the lease's end exactly: not yet.
    report = rescue(repo, cfg.worker, lease_b, me=ME, alive=alive,
                    server_uptime=long_up)
    assert report.released == [] and report.retried == []

    report = rescue(repo, cfg.worker, lease_b + timedelta(seconds=1), me=ME, alive=alive,
                    server_uptime=long_up)
    assert report.released == [b] and report.retried == []
    assert get(queue, b).status is Status.PENDING
    assert get(queue, a).status is Status.RUNNING

    report = rescue(repo, cfg.worker, lease_a + timedelta(seconds=1), me=ME, alive=alive,
                    server_uptime=long_up)
    assert report.retried == [a]
    task = get(queue, a)
    assert task.status is Status.PENDING and task.attempts == 1
    assert (task.error or "").startswith("ProcessMissingError")
    assert "otherhost" in (task.error or "")
    assert alive.calls == []


# -- fencing ------------------------------------------------------------------------------------



def test_expired_leases_are_not_trusted_right_after_a_server_restart(
        queue: Queue, repo: Store, cfg: Config) -> None:
    """While the database was down no lease could be renewed: after a restart the live shards
    get a lease + 30 s to reconnect before other hosts may take their tasks."""
    a = queue.add("t.sh")
    now = now_utc()
    token, _ = claim(queue, OTHER, now=now)
    start(repo, a, token, now)
    late = now + timedelta(hours=1)
    just_restarted = rescue(repo, cfg.worker, late, me=ME, alive=Alive(),
                            server_uptime=lambda: 5.0)
    assert just_restarted.retried == [] and get(queue, a).status is Status.RUNNING
    settled = rescue(repo, cfg.worker, late, me=ME, alive=Alive(),
                     server_uptime=lambda: cfg.worker.lease + 31.0)
    assert settled.retried == [a]

def test_owner_that_comes_back_after_the_rescue_is_fenced_out(queue: Queue, repo: Store,
                                                              cfg: Config) -> None:
    a = queue.add("t.sh")
    b = queue.add("t.sh")
    now = now_utc()
    token, _ = claim(queue, DEAD)
    start(repo, a, token, now)
    assert rescue(repo, cfg.worker, now, me=ME, alive=Alive()).retried == [a]
    rescued = {i: get(queue, i) for i in (a, b)}

    # The "dead" shard was only stalled: it records its result and starts the next task.
    later = now + timedelta(seconds=5)
    late = repo.outcomes.flush(Flush(token, [Finish(a, token, done_values(later))], mark=[b],
                                     now=later, lease_until=later + timedelta(hours=1)))
    assert late.recorded == set() and late.marked == set()
    for i in (a, b):
        assert get(queue, i) == rescued[i]
    assert get(queue, a).status is Status.PENDING
    assert (get(queue, a).error or "").startswith("ProcessMissingError")


def test_rescue_after_the_owner_finished_changes_nothing(queue: Queue, repo: Store,
                                                         cfg: Config) -> None:
    a = queue.add("t.sh")
    now = now_utc()
    token, _ = claim(queue, DEAD)
    start(repo, a, token, now)
    seen = repo.outcomes.running()  # a rescuer reads the running rows ...
    assert [t.id for t in seen] == [a]
    # ... and the owner finishes before the rescuer writes.
    assert repo.outcomes.record(Finish(a, token, done_values(now))) is True
    finished = get(queue, a)
    assert finished.status is Status.DONE

    class SeenBefore(Outcomes):
        def running(self) -> list[Task]:
            return seen

    report = rescue(_with(queue, SeenBefore(queue.engine)), cfg.worker, now, me=ME, alive=Alive())
    assert report.retried == report.failed == report.released == []
    assert get(queue, a) == finished

    # And a rescue that starts afterwards has nothing to look at.
    assert rescue(repo, cfg.worker, now, me=ME, alive=Alive()).retried == []
    assert get(queue, a) == finished


def test_two_rescuers_settle_once(queue: Queue, repo: Store, cfg: Config) -> None:
    a = queue.add("t.sh")
    now = now_utc()
    token, _ = claim(queue, DEAD)
    start(repo, a, token, now)
    seen = repo.outcomes.running()

    class SeenBefore(Outcomes):
        def running(self) -> list[Task]:
            return seen

    first = rescue(_with(queue, SeenBefore(queue.engine)), cfg.worker, now, me=ME, alive=Alive())
    second = rescue(_with(queue, SeenBefore(queue.engine)), cfg.worker, now, me=ME, alive=Alive())
    assert first.retried == [a] and second.retried == []
    assert get(queue, a).attempts == 1


# -- the workers registry -------------------------------------------------------------------


def _register(repo: Store, host: str, pid: int, heartbeat: datetime, **kw: Any) -> int:
    values = {"host": host, "pid": pid, "pid_start": 5, "entry": "e", "shard": 0, "total": 1,
              "queues": "", "started_at": heartbeat, "heartbeat_at": heartbeat}
    return repo.workers.register(**(values | kw))


def test_rescue_forgets_dead_workers(queue: Queue, repo: Store, cfg: Config) -> None:
    now = now_utc()
    stale = now - timedelta(seconds=cfg.worker.lease + 1)
    dead_here = _register(repo, "thishost", 999999, now)
    live_here = _register(repo, "thishost", 4242, stale, shard=1)  # pid decides here
    fresh_there = _register(repo, "otherhost", 999999, now, shard=2)
    stale_there = _register(repo, "otherhost", 999998, stale, shard=3)
    report = rescue(repo, cfg.worker, now, me=ME, alive=Alive(4242))
    assert report.forgotten_workers == 2
    assert sorted(w["id"] for w in repo.workers.rows()) == sorted([live_here, fresh_there])
    assert dead_here not in {w["id"] for w in repo.workers.rows()}
    assert stale_there not in {w["id"] for w in repo.workers.rows()}
    # Nothing more to forget.
    assert rescue(repo, cfg.worker, now, me=ME, alive=Alive(4242)).forgotten_workers == 0


# -- end to end: kill -9 of a real shard ------------------------------------------------------


def test_killed_shard_task_is_rescued_at_once(queue: Queue, repo: Store, cfg: Config,
                                              db_url: str, task_dir: Path, log_dir: Path,
                                              tmp_path: Path, procs: Procs) -> None:
    pidfile = tmp_path / "script.pid"
    write_script(task_dir, "long.sh", f'echo $$ > "{pidfile}"\nexec sleep 30\n')
    task_id = queue.add("long.sh", max_attempts=3)
    shard_log = tmp_path / "shard.log"
    shard = procs.start(cronqueue_cmd("work", "--db", db_url, "--task-dir", str(task_dir),
                                      "--log-dir", str(log_dir)), log=shard_log)

    def started() -> bool:
        task = queue.get(task_id)
        return (task is not None and task.started_at is not None and pidfile.exists()
                and pidfile.read_text().strip() != "")

    wait_until(started, 20, lambda: f"the task started: {shard_log.read_text()}")
    script_pid = int(pidfile.read_text())
    procs.track(script_pid)
    task = get(queue, task_id)
    assert task.status is Status.RUNNING and task.worker_pid == shard.pid

    os.kill(shard.pid, signal.SIGKILL)
    assert shard.wait(timeout=10) == -signal.SIGKILL
    wait_gone(script_pid, 10, "the script gone with its shard")

    [row] = repo.workers.rows()  # it could not deregister
    assert row["pid"] == shard.pid
    now = now_utc()
    report = rescue(repo, cfg.worker, now, me=Owner.me())
    assert report.retried == [task_id]
    assert report.forgotten_workers == 1 and repo.workers.rows() == []
    task = get(queue, task_id)
    assert task.status is Status.PENDING
    assert task.attempts == 1
    assert (task.error or "").startswith("ProcessMissingError")
    assert task.claim_token is None
    assert task.run_at > now


# -- issue 11, item 6: a running row without a claim token ------------------------------------


def _token_less(queue: Queue, *, started: bool = True) -> int:
    """A running row as a hand-written INSERT leaves it: no claim token, another host, an
    expired lease."""
    from sqlalchemy import text

    with queue.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO queue (taskscript, param, status, worker_host, worker_pid, lease_until,"
            " started_at, attempts) VALUES ('ok.sh', '{}', 2, 'otherhost', 123, "
            "'2020-01-01 00:00:00', :started, 1)"),
            {"started": "2020-01-01 00:00:00" if started else None})
        return int(conn.execute(text("SELECT MAX(id) FROM queue")).scalar_one())


def test_token_less_running_row_is_rescued_fenced_on_its_state(
        queue: Queue, repo: Store, cfg: Config) -> None:
    """0.1.0: an AssertionError in the rescue at every tick."""
    task_id = _token_less(queue)
    seen = get(queue, task_id)
    report = rescue(repo, cfg.worker, now_utc(), me=ME, alive=Alive(), server_uptime=long_up)
    assert report.retried == [task_id] and report.errors == []
    task = get(queue, task_id)
    assert task.status is Status.PENDING and task.claim_token is None
    assert task.error is not None and "without a claim token" in task.error
    # The fence: a row that changed since it was seen (here: claimed and run again, so its
    # attempts moved on) is not overwritten by a rescue acting on the old view.
    from sqlalchemy import text

    with queue.engine.begin() as conn:
        conn.execute(text("UPDATE queue SET status = 2, attempts = 2, error = NULL "
                          "WHERE id = :i"), {"i": task_id})
    assert not repo.outcomes.settle(seen, {"status": int(Status.FAILED)})
    assert get(queue, task_id).status is Status.RUNNING


def test_a_hand_written_worker_host_cannot_forge_the_rescue_log(
        queue: Queue, repo: Store, cfg: Config, caplog: pytest.LogCaptureFixture) -> None:
    """worker_host comes from the row: a newline or an escape in it was logged raw by the
    rescue (a forged line and terminal control in the mission's log)."""
    from sqlalchemy import text

    task_id = _token_less(queue)
    with queue.engine.begin() as conn:
        conn.execute(text("UPDATE queue SET worker_host = :h WHERE id = :i"),
                     {"h": "evil\n2026-01-01 00:00:00 INFO forged\x1b[2J", "i": task_id})
    with caplog.at_level("WARNING", logger="cronqueue.rescue"):
        report = rescue(repo, cfg.worker, now_utc(), me=ME, alive=Alive(),
                        server_uptime=long_up)
    assert report.retried == [task_id]
    lines = [r.getMessage() for r in caplog.records if f"task={task_id} " in r.getMessage()]
    assert lines and all(line.isprintable() for line in lines), lines
    assert "'evil\\n2026-01-01 00:00:00 INFO forged\\x1b[2J'" in lines[0]


def test_one_row_that_cannot_be_rescued_does_not_stop_the_others(
        queue: Queue, repo: Store, cfg: Config) -> None:
    first, second = _token_less(queue), _token_less(queue, started=False)

    class Flaky(Outcomes):
        def settle(self, task: Task, values: dict[str, Any]) -> bool:
            if task.id == first:
                raise RuntimeError("cannot write")
            return super().settle(task, values)

    report = rescue(_with(queue, Flaky(queue.engine)), cfg.worker, now_utc(), me=ME, alive=Alive(),
                    server_uptime=long_up)
    assert report.errors == [f"task={first}: RuntimeError: cannot write"]
    assert report.released == [second]
    assert get(queue, first).status is Status.RUNNING
    assert get(queue, second).status is Status.PENDING


def test_token_less_row_with_unreadable_attempts_is_still_rescued(
        queue: Queue, repo: Store, cfg: Config, backend: str) -> None:
    """Attempts that do not read as a number (SQLite keeps any text) must not make the fence
    miss forever: the row would stay running."""
    from sqlalchemy import text

    task_id = _token_less(queue)
    hostile = "'x'" if backend == "sqlite" else "-5"
    with queue.engine.begin() as conn:
        conn.execute(text(f"UPDATE queue SET attempts = {hostile} WHERE id = :i"),
                     {"i": task_id})
    report = rescue(repo, cfg.worker, now_utc(), me=ME, alive=Alive(), server_uptime=long_up)
    assert report.errors == []
    assert task_id in report.retried + report.failed
    assert get(queue, task_id).status is not Status.RUNNING


def test_token_less_row_with_a_bad_max_attempts_is_still_fenced_on_its_attempts(
        queue: Queue, repo: Store) -> None:
    """Whether attempts were readable was decided by searching "attempts" in the problem
    text, which a bad ``max_attempts`` matched: the fence then left attempts out, and a rescue
    acting on an old view overwrote a row that had been run again meanwhile."""
    from sqlalchemy import text

    task_id = _token_less(queue)
    with queue.engine.begin() as conn:
        conn.execute(text("UPDATE queue SET max_attempts = 0 WHERE id = :i"), {"i": task_id})
    seen = get(queue, task_id)
    assert seen.bad_columns == {"max_attempts"} and seen.attempts == 1
    with queue.engine.begin() as conn:
        conn.execute(text("UPDATE queue SET attempts = 2 WHERE id = :i"), {"i": task_id})
    assert not repo.outcomes.settle(seen, {"status": int(Status.FAILED)})
    assert get(queue, task_id).status is Status.RUNNING


def test_other_host_row_with_a_token_but_no_lease_is_rescued(
        queue: Queue, repo: Store, cfg: Config) -> None:
    """A claim sets token and lease together; a row of another host with a token and no lease
    (inserted by hand) would otherwise never expire: 0.1.0 left it running forever."""
    from sqlalchemy import text

    with queue.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO queue (taskscript, param, status, worker_host, worker_pid, claim_token,"
            " started_at, attempts) VALUES ('ok.sh', '{}', 2, 'otherhost', 123, 'tok', "
            "'2020-01-01 00:00:00', 1)"))
        task_id = int(conn.execute(text("SELECT MAX(id) FROM queue")).scalar_one())
    report = rescue(repo, cfg.worker, now_utc(), me=ME, alive=Alive(), server_uptime=long_up)
    assert report.retried == [task_id]
    assert get(queue, task_id).status is Status.PENDING
