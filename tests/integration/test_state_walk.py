"""Every edge of cronqueue.states, taken by the real code path and statement on a real
database: after each, the row is checked against the edge (status, attempts +1/-1/=/0, the
unique key held or released, each column it writes) and every other column is unchanged."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from cronqueue import Queue, Task
from cronqueue.errors import ProcessExitError, ProcessInterruptedError
from cronqueue.mission.rescue import rescue
from cronqueue.model import Status
from cronqueue.process.identity import Owner
from cronqueue.process.runner import RunResult
from cronqueue.shard.loop import Shard
from cronqueue.states import Attempts, Transition, Write, attempt_of_run
from cronqueue.store.claims import Claimer
from cronqueue.store.hasten import hasten
from cronqueue.store.outcomes import Finish, Flush
from tests.conftest import Clock

DEAD = Owner("thishost", 999999, 1)  # the shard that claims (and, for the rescue, "died")
ME = Owner("thishost", 4242, 77)  # the mission that rescues (same host: pids are judged)
_NOT_COLUMNS = {"problem", "bad_columns"}


class Walk:
    """Takes edges on one queue and checks the row after each."""

    def __init__(self, queue: Queue, clock: Clock) -> None:
        self.queue = queue
        self.clock = clock
        self.shard = Shard(queue.config, clock=clock)
        self.shard.store = queue.store
        self.taken: set[Transition] = set()
        self.tokens: dict[int, str] = {}
        self.claimed: dict[int, Task] = {}

    def row(self, task_id: int) -> Task | None:
        return self.queue.get(task_id)

    def take(self, transition: Transition, task_id: int | None, act: Any,
             **given: object) -> Any:
        """Run ``act`` (it takes ``transition``), then check the row against the edge."""
        before = None if task_id is None else self.row(task_id)
        now = self.clock.advance(1)
        result = act(now)
        task_id = result if task_id is None else task_id
        self.check(transition, before, self.row(task_id), now, given)
        self.taken.add(transition)
        return result

    def check(self, t: Transition, before: Task | None, after: Task | None, now: datetime,
              given: dict[str, object]) -> None:
        edge = t.edge
        if edge.target is None:
            assert after is None, f"{t}: the row is still there"
            return
        assert after is not None
        assert after.status is edge.target, f"{t}: status {after.status!r}"
        expected = {Attempts.RESET: 0}.get(edge.attempts)
        if expected is None:
            assert before is not None
            change = {Attempts.COUNTED: 1, Attempts.GIVEN_BACK: -1}.get(edge.attempts, 0)
            expected = before.attempts + change
        assert after.attempts == expected, f"{t}: attempts {after.attempts} != {expected}"
        held = after.status in (Status.PENDING, Status.RUNNING)
        assert (after.active_key == after.unique_key) if held else after.active_key is None, t
        for column, write in edge.writes.items():
            value = getattr(after, column)
            if write is Write.NULL:
                assert value is None, f"{t}: {column} = {value!r}"
            elif write is Write.NOW:
                assert value == now, f"{t}: {column} = {value!r}, not now"
            elif write is Write.UNIQUE_KEY:
                assert value == after.unique_key, t
            elif write is Write.BACKOFF:
                assert isinstance(value, datetime) and value > now, f"{t}: {column}"
            elif write is Write.LATER:
                assert before is not None
                own = getattr(before, column)
                assert value == max(own, now), f"{t}: {column} = {value!r}, own {own!r}"
            elif column in given:
                assert value == given[column], f"{t}: {column} = {value!r}"
        if before is None:
            return
        for f in fields(Task):  # the edge writes its columns, and only those
            if f.name not in {"status", "attempts", *edge.writes, *_NOT_COLUMNS}:
                assert getattr(after, f.name) == getattr(before, f.name), f"{t}: {f.name}"

    # -- the takers: the code paths of the shard, the rescue and the operator -------------

    def add(self, key: str, max_attempts: int) -> int:
        return int(self.take(Transition.ADDED, None, lambda now: self.queue.add(
            "t.sh", unique_key=key, max_attempts=max_attempts, run_at=now)))

    def claim(self, task_id: int) -> None:
        task = self.row(task_id)
        assert task is not None and task.run_at is not None
        self.clock.set(max(self.clock.now, task.run_at))

        def act(now: datetime) -> None:
            claimer = Claimer(self.queue.engine, DEAD, shard=0, total=1, queues=None,
                              lease=timedelta(seconds=60))
            c = claimer.claim(10, now)
            assert [t.id for t in c.tasks] == [task_id]
            self.tokens[task_id] = c.token
            self.claimed[task_id] = c.tasks[0]

        self.take(Transition.CLAIMED, task_id, act, worker_host=DEAD.host,
                  worker_pid=DEAD.pid, worker_pid_start=DEAD.pid_start)

    def flush(self, transition: Transition, task_id: int, **kw: Any) -> None:
        token = self.tokens[task_id]
        self.take(transition, task_id, lambda now: self.queue.store.outcomes.flush(Flush(
            token, now=now, lease_until=now + timedelta(seconds=60), **kw)))

    def run(self, task_id: int, transition: Transition, result: RunResult) -> None:
        """The shard's own decision (``_decide``) on a run's result, written by its group
        commit."""
        claimed, token = self.claimed[task_id], self.tokens[task_id]  # as the claim read it

        def act(now: datetime) -> None:
            decided, values = self.shard._decide(claimed, attempt_of_run(claimed), result,
                                                 now - timedelta(seconds=1))
            assert decided is transition
            outcomes = self.queue.store.outcomes
            flushed = outcomes.flush(Flush(token, [Finish(task_id, token, values, decided)]))
            assert flushed.recorded == {task_id}

        self.take(transition, task_id, act, exit_code=result.returncode, output=result.output)

    def reject(self, task_id: int) -> None:
        task, token = self.row(task_id), self.tokens[task_id]
        assert task is not None

        def act(now: datetime) -> None:
            outcomes = self.queue.store.outcomes
            flushed = outcomes.flush(Flush(token, [self.shard._reject(task, token)]))
            assert flushed.recorded == {task_id}

        self.take(Transition.REJECTED, task_id, act)

    def rescue(self, transition: Transition, task_id: int) -> None:
        def act(now: datetime) -> None:
            report = rescue(self.queue.store, self.queue.config.worker, now, me=ME,
                            alive=lambda pid, start: False, server_uptime=lambda: 10.0**9)
            outcome = {Transition.RELEASED: report.released, Transition.RESCUED: report.retried,
                       Transition.RESCUE_FAILED: report.failed}[transition]
            assert outcome == [task_id]

        self.take(transition, task_id, act)


OK = RunResult(0, 0.1, "ok\n")
FAIL = RunResult(1, 0.1, "oops\n", ProcessExitError("exit status 1"))
KILLED = RunResult(-15, 0.1, "", ProcessInterruptedError("stopped"), interrupted=True)


def test_every_edge_writes_what_the_state_machine_says(cq: Queue, clock: Clock) -> None:
    walk = Walk(cq, clock)

    # k1: retried, run now, returned, given back, released by its shard, done, purged.
    one = walk.add("k1", max_attempts=3)
    walk.claim(one)
    walk.flush(Transition.STARTED, one, mark=[one])  # attempt 1
    walk.run(one, Transition.RETRY, FAIL)
    walk.take(Transition.HASTENED, one, lambda now: hasten(cq.engine, one, now))  # run now
    walk.claim(one)
    walk.flush(Transition.STARTED, one, mark=[one])  # attempt 2
    walk.run(one, Transition.RETURNED, KILLED)  # given back: 1
    walk.claim(one)
    walk.flush(Transition.STARTED, one, mark=[one])
    walk.flush(Transition.GIVEN_BACK, one, unmark=[one])  # 1 again
    walk.claim(one)
    walk.flush(Transition.RELEASED, one, release=True)
    walk.claim(one)
    walk.flush(Transition.STARTED, one, mark=[one])  # attempt 2
    walk.run(one, Transition.DONE, OK)
    again = cq.add("t.sh", unique_key="k1")
    assert again != one  # the key was released: a new task with it is inserted
    cq.cancel(again)
    walk.take(Transition.PURGED, one, lambda now: cq.purge(0))

    # k2: rescued, failed by the rescue, requeued, released by the rescue, rejected.
    two = walk.add("k2", max_attempts=2)
    walk.claim(two)
    walk.flush(Transition.STARTED, two, mark=[two])
    walk.rescue(Transition.RESCUED, two)
    walk.claim(two)
    walk.flush(Transition.STARTED, two, mark=[two])
    walk.rescue(Transition.RESCUE_FAILED, two)
    walk.take(Transition.REQUEUED, two, lambda now: cq.retry(two))
    walk.claim(two)
    walk.rescue(Transition.RELEASED, two)
    walk.claim(two)
    walk.reject(two)

    # k3: failed at its last attempt, requeued, cancelled.
    three = walk.add("k3", max_attempts=1)
    walk.claim(three)
    walk.flush(Transition.STARTED, three, mark=[three])
    walk.run(three, Transition.FAILED, FAIL)
    walk.take(Transition.REQUEUED, three, lambda now: cq.retry(three))
    walk.take(Transition.CANCELLED, three, lambda now: cq.cancel(three))

    # k4: added for tomorrow, cancelled, requeued: it keeps tomorrow (issue 15: ran at once).
    tomorrow = clock.now + timedelta(days=1)
    four = int(walk.take(Transition.ADDED, None, lambda now: cq.add(
        "t.sh", unique_key="k4", run_at=tomorrow)))
    walk.take(Transition.CANCELLED, four, lambda now: cq.cancel(four))
    walk.take(Transition.REQUEUED, four, lambda now: cq.retry(four))
    task = cq.get(four)
    assert task is not None and task.run_at == tomorrow

    # k5: discarded while pending (`purge --status pending --include-pending --yes`).
    five = walk.add("k5", max_attempts=1)
    walk.take(Transition.DISCARDED, five, lambda now: cq.purge(0, statuses=[Status.PENDING]))

    assert walk.taken == set(Transition), set(Transition) - walk.taken
