"""A shard's heartbeat: a thread that proves the shard alive and keeps its claims leased.

Every ``worker.heartbeat`` seconds it updates the shard's row in ``cronqueue_workers`` (current
task, tasks done), extends ``lease_until`` of every row the shard holds to now + ``worker.lease``,
and reads ``stop_requested`` (a stop asked through the database, from any host). While a task
runs, the beat also writes the task's output tail to its row when it grew since the last beat
(``show``, from the runner about once a second): the dashboard follows it. The main thread only
publishes an immutable snapshot; the database write is this thread's, so an outage never blocks
the task or the reading of its output.

If heartbeats keep failing (database unreachable) for half a lease while a task runs, the shard
kills its task and stops: past the lease another host may rescue the task, and it must never
run in two places at once. Its outcome is then written once the database is back (fenced by
the claim token), or the rescue takes the task over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from cronqueue.config import WorkerConfig
from cronqueue.process.identity import Owner
from cronqueue.store.engine import is_unavailable
from cronqueue.store.workers import LiveOutput, Workers

log = logging.getLogger("cronqueue.heartbeat")


class Heartbeat:
    def __init__(self, workers: Workers, cfg: WorkerConfig, *, label: str,
                 clock: Callable[[], datetime], on_stop_requested: Callable[[], None],
                 on_lease_at_risk: Callable[[], None],
                 still_ours: Callable[[], bool] = lambda: True) -> None:
        self.workers = workers
        self.cfg = cfg
        self.label = label
        self.clock = clock
        self.on_stop_requested = on_stop_requested
        self.on_lease_at_risk = on_lease_at_risk
        self.still_ours = still_ours  # the shard guard, re-checked at every beat
        self.worker_id: int | None = None
        self.current_task: int | None = None
        self.token: str | None = None  # the claim whose rows we hold
        self.tasks_done = 0
        # The running task's output tail (show()), replaced whole by the main thread; the last
        # one written (or given up on): a snapshot is written once.
        self.live: LiveOutput | None = None
        self._live_sent: LiveOutput | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()
        self._at_risk = False
        self._failing = False

    def lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.cfg.lease)

    def start(self, *, entry: str | None, shard: int, total: int, queues: str) -> None:
        me = Owner.me()
        now = self.clock()
        self.worker_id = self.workers.register(
            host=me.host, pid=me.pid, pid_start=me.pid_start, entry=entry, shard=shard,
            total=total, queues=queues, started_at=now, heartbeat_at=now)
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="cronqueue-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self.cfg.heartbeat + 10)
        if self.worker_id is not None:
            try:
                self.workers.forget([self.worker_id])
            except Exception as exc:  # the rescue forgets the row later
                log.warning("shard=%s could not deregister: %s", self.label, exc)
            self.worker_id = None

    def show(self, task_id: int, output: str) -> None:
        """The running task's output tail as it stands (the main thread; the runner calls it
        about once a second while the output grows): the next beat writes it to the row."""
        token = self.token
        if token is not None:
            self.live = LiveOutput(token, task_id, output)  # one assignment: atomic

    def beat(self) -> None:
        """One heartbeat (the thread calls it; tests may too)."""
        assert self.worker_id is not None
        now = self.clock()
        live = self.live
        if live is self._live_sent:
            live = None
        try:
            asked = self.workers.heartbeat(self.worker_id, now, self.current_task,
                                           self.tasks_done, token=self.token,
                                           lease_until=self.lease_until(now), live=live)
        except Exception as exc:
            if live is not None and not is_unavailable(exc):
                # the database refused it (not an outage): the next beats go without this
                # snapshot, so that the output never costs the lease
                self._live_sent = live
                log.warning("shard=%s task=%d output not shown live: %s", self.label,
                            live.task_id, str(exc).splitlines()[0])
            raise
        if live is not None:
            self._live_sent = live
        if self._failing:
            log.warning("shard=%s heartbeat back after %.0fs", self.label,
                        time.monotonic() - self._last_ok)
            self._failing = False
        self._last_ok = time.monotonic()
        self._at_risk = False
        if not self.still_ours():
            log.error("shard=%s lost its shard lock (database restarted and another copy took "
                      "it): stopping", self.label)
            asked = True
        if asked:
            self.on_stop_requested()

    def _loop(self) -> None:
        while not self._stopped.wait(self.cfg.heartbeat):
            try:
                self.beat()
            except Exception as exc:  # the loop must survive any database trouble
                silent = time.monotonic() - self._last_ok
                if not self._failing:  # one line per outage, not one per beat
                    self._failing = True
                    log.warning("shard=%s heartbeat failing: %s", self.label,
                                str(exc).splitlines()[0])
                if silent > self.cfg.lease / 2 and self.current_task is not None \
                        and not self._at_risk:
                    self._at_risk = True
                    log.error("shard=%s task=%d lease at risk after %.0fs without heartbeat: "
                              "killing the task and stopping", self.label, self.current_task,
                              silent)
                    self.on_lease_at_risk()
