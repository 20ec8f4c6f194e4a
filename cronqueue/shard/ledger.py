"""The ledger of one claim: what a shard has started and finished, written in group commits.

A commit per task is the cost that keeps table queues far from the cost of spawning processes
(each commit is a durable log flush). The ledger writes in windows instead:

* Before a window of tasks runs, one commit marks all of them started (the ``started`` edge
  of ``cronqueue.states``, the only one that counts an attempt): should the shard die, every
  task of the window whose outcome is not recorded has had its attempt counted, and the rescue
  runs it again (``rescued``) or fails it at its last attempt (``rescue_failed``).
* Outcomes are buffered and written in one commit per window (``worker.flush_every`` tasks),
  at the latest ``worker.flush_interval`` seconds after the oldest one, and always before the
  shard exits or claims again.

What a ``kill -9`` of the shard then costs: the tasks of the current window whose outcome was
still buffered run again (at most ``flush_every`` tasks, or ``flush_interval`` seconds of
work), after the usual retry backoff. A window only holds tasks on their first attempt that
may be retried: a task on a later attempt, or with ``max_attempts = 1``, runs alone, with its
start committed before it runs and its outcome right after — so a task that kills its shard
is charged exactly its own attempts, and at-most-once tasks are never run twice. A normal stop
(TERM, end of budget) writes everything, gives back the attempt of marked tasks that did not
run (``given_back``) and releases the claimed rows it never marked (``released``).

A marked task starts only while the claim still holds it: the window's first task is fenced
by the mark itself; before each later one, the ledger reads which of the window's marked rows
are still running under the claim's token (one statement for the whole window), unless such a
read or the mark is less than ``FENCE_FRESH`` old. A rescue of the shard's rows (wrongful,
early, or after an outage) thus stops the window at the task that was running, instead of
starting up to a window of tasks whose results would be fenced out and which would run again.
The freshness bound keeps trivial tasks at one read per bound instead of one per task (a start
always races a rescue that lands after its read; the bound widens that race). It is a hundredth
of the retry backoff a rescued task waits before it may run again, between ``FENCE_FRESH``
(20 ms) and ``FENCE_STALEST`` (0.25 s): 0.1 s with the default 10 s backoff, far below it, so a
rescued task still never runs in two places at once (:func:`fence_fresh`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from cronqueue.model import Task
from cronqueue.store.outcomes import Finish, Flush, Flushed

FENCE_FRESH = 0.02  # seconds a read of the claim's fence (or the mark) stays good, at least
FENCE_STALEST = 0.25  # ... and at most, whatever the backoff


def fence_fresh(backoff: float) -> float:
    """How long a fence read stays good with this retry ``backoff`` (seconds): a hundredth of
    it, within ``FENCE_FRESH``..``FENCE_STALEST``. On MariaDB a read costs about 1 ms of the
    shard's CPU; at the floor, trivial tasks paid one every 6-10 tasks."""
    return min(FENCE_STALEST, max(FENCE_FRESH, backoff / 100))


class Ledger:
    def __init__(self, token: str, tasks: Sequence[Task], *, window: int, interval: float,
                 careful: Callable[[Task], bool], write: Callable[[Flush], Flushed],
                 try_write: Callable[[Flush], Flushed | None],
                 clock: Callable[[], datetime], lease_until: Callable[[datetime], datetime],
                 on_lost: Callable[[Finish], None],
                 held: Callable[[Sequence[int]], set[int]],
                 fresh: float | None = None) -> None:
        self.token = token
        self.fresh = FENCE_FRESH if fresh is None else fresh  # see fence_fresh()
        self.tasks = list(tasks)
        self.window = max(1, window)
        self.interval = interval
        self.careful = careful
        self.write = write  # rides out outages: must not lose an outcome
        self.try_write = try_write  # one attempt; None if the database is unavailable
        self.clock = clock
        self.lease_until = lease_until
        self.on_lost = on_lost
        self.held = held  # the fence read: which of these rows are running under our token
        self._index = {t.id: i for i, t in enumerate(self.tasks)}
        self._marked: set[int] = set()  # marked started, not run yet
        self._buffer: list[Finish] = []
        self._oldest = 0.0  # monotonic time of the oldest buffered outcome
        self._flush_next = False  # a careful task's outcome goes out with the next start
        self._fenced = float("-inf")  # monotonic time the marked rows were last known ours
        self._gone: set[int] = set()  # marked rows the fence found taken over: never run

    def begin(self, task: Task) -> bool:
        """Before ``task`` runs: make sure its start is committed. False if the claim no longer
        holds it (it was rescued meanwhile): do not run it."""
        if task.id in self._gone:
            return False
        if task.id in self._marked:
            if self._flush_next or self._overdue():
                self._commit(self._flush())
            self._check_fence()
            return task.id in self._marked
        marking = time.monotonic()
        window = [t.id for t in self._window_from(task)]
        flushed = self._commit(self._flush(mark=window))
        self._marked |= flushed.marked
        self._gone.update(i for i in window if i not in flushed.marked)  # rescued unstarted
        self._fenced = marking  # the mark is fenced: these rows were ours as it committed
        return task.id in self._marked

    def finish(self, task: Task, outcome: Finish) -> None:
        self._marked.discard(task.id)
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(outcome)
        if self.careful(task):
            self._flush_next = True
        # Written by the next begin() (with the next window's marks), tick() or close().

    def tick(self) -> None:
        """While a task runs: write buffered outcomes once they are ``interval`` old, without
        waiting out an outage (the next begin/finish/close will)."""
        if not self._overdue():
            return
        flush = self._flush()
        flushed = self.try_write(flush)
        if flushed is None:
            self._buffer[:0] = flush.finishes  # kept for the next attempt
        else:
            self._check(flush, flushed)

    def close(self) -> int:
        """Write what is buffered, give back marked tasks that did not run, release the
        claim's unstarted rows. Returns how many rows went back to pending unrun."""
        unrun = sorted(self._marked, key=self._index.__getitem__)
        flushed = self._commit(self._flush(unmark=unrun, release=True))
        self._marked.clear()
        return flushed.released

    # -- internals ----------------------------------------------------------------------------

    def _check_fence(self) -> None:
        """Drop the marked rows the claim no longer holds (rescued since the mark): they are
        neither run nor given back. Read at most once per ``self.fresh``."""
        now = time.monotonic()
        if now - self._fenced < self.fresh:
            return
        held = self.held(sorted(self._marked, key=self._index.__getitem__))
        self._gone |= self._marked - held
        self._marked &= held
        self._fenced = now

    def _overdue(self) -> bool:
        return bool(self._buffer) and time.monotonic() - self._oldest >= self.interval

    def _window_from(self, task: Task) -> list[Task]:
        if self.careful(task):
            return [task]
        window: list[Task] = []
        for t in self.tasks[self._index[task.id]:]:
            if t.problem is not None:
                continue  # never run nor marked: the shard fails it by id (worker._reject)
            if len(window) >= self.window or self.careful(t):
                break
            if t.id not in self._marked and t.id not in self._gone:
                window.append(t)
        return window

    def _flush(self, *, mark: Sequence[int] = (), unmark: Sequence[int] = (),
               release: bool = False) -> Flush:
        finishes, self._buffer = self._buffer, []
        self._flush_next = False
        now = self.clock()
        return Flush(self.token, finishes, mark, now, self.lease_until(now), unmark, release)

    def _commit(self, flush: Flush) -> Flushed:
        if not (flush.finishes or flush.mark or flush.unmark or flush.release):
            return Flushed()
        flushed = self.write(flush)
        self._check(flush, flushed)
        return flushed

    def _check(self, flush: Flush, flushed: Flushed) -> None:
        for outcome in flush.finishes:
            if outcome.task_id not in flushed.recorded:
                self.on_lost(outcome)
