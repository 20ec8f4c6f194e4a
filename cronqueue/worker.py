"""The shard loop (``cronqueue work`` / do_queue): claim due rows of shard i of N, run them.

Burst mode by default: drain what is due, then exit (cron starts the shard again). With
``max_seconds`` it keeps polling until the budget is spent, so tasks added mid-minute start
within about ``poll_interval``. Signal handlers only set flags: the first TERM/INT finishes the
current task and exits; a second one kills it and returns it to pending. Claimed rows that were
never started are released on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

from .claim import Claimer
from .config import Config
from .db import make_engine
from .errors import DatabaseError
from .guard import ShardGuard
from .model import Status, Task
from .proc import Owner
from .repository import Finish, Repository, Start
from .runner import Runner, RunResult

log = logging.getLogger("cronqueue.worker")
# Empty claims in a row, while rows of ours are due but locked by others, before we give up
# for this round (a duplicate of this shard may be holding them; they are not lost).
_MAX_CONTENDED = 50


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ShardReport:
    done: int = 0
    retried: int = 0
    failed: int = 0
    returned: int = 0  # killed by a hard stop, back to pending
    lost: int = 0  # our claim was gone when we wrote (fenced out)
    released: int = 0  # claimed but not started, back to pending
    outcomes: dict[int, str] = field(default_factory=dict)

    already_running: str = ""  # set when the guard found this shard running elsewhere

    @property
    def ran(self) -> int:
        return self.done + self.retried + self.failed + self.returned


class Shard:
    def __init__(self, config: Config, *, total: int = 1, shard: int = 0,
                 queues: Sequence[str] | None = None, batch: int | None = None,
                 max_seconds: float | None = None, entry: str | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if total < 1 or not 0 <= shard < total:
            raise ValueError(f"--shard must be in 0..{total - 1} for --total {total}")
        self.config = config
        self.total = total
        self.shard = shard
        self.queues = list(queues or [])
        self.batch = batch or config.worker.batch
        self.max_seconds = max_seconds
        self.clock = clock
        self.entry = entry
        self.label = f"{entry}:{shard}/{total}" if entry else f"{shard}/{total}"
        self.report = ShardReport()
        self._stop = False
        self._force = False
        self._wake_r: int | None = None
        self._current: int | None = None
        self._worker_id: int | None = None

    # -- signals (handlers only set flags) ----------------------------------------------------

    def request_stop(self, force: bool = False) -> None:
        if self._stop or force:
            self._force = True
        self._stop = True

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop()

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = r
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)
            os.close(r)
            os.close(w)
            self._wake_r = None

        return restore

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._wake_r is None:
            time.sleep(seconds)
            return
        if select.select([self._wake_r], [], [], seconds)[0]:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> ShardReport:
        restore = self._install_signals()
        cfg = self.config
        engine = make_engine(cfg.db_url)  # built here, in the process that uses it
        guard = ShardGuard(engine, cfg.log_dir, self.entry, self.shard) if self.entry else None
        heartbeat = threading.Event()
        try:
            self.repo = Repository(engine)
            if guard is not None and not guard.acquire():
                self.report.already_running = guard.holder
                log.info("shard=%s already running on %s; not starting", self.label,
                         guard.holder)
                return self.report
            self._register(heartbeat)
            self.runner = Runner(cfg.task_dir, cfg.log_dir, cfg.interpreters,
                                 tail_bytes=cfg.worker.output_tail,
                                 kill_grace=cfg.worker.kill_grace,
                                 max_log_bytes=cfg.worker.max_log_bytes)
            claimer = Claimer(engine, Owner.me(), shard=self.shard, total=self.total,
                              queues=self.queues, lease=timedelta(seconds=cfg.worker.lease))
            started = time.monotonic()
            deadline = None if self.max_seconds is None else started + self.max_seconds
            log.info("shard=%s start queues=%s batch=%d budget=%s db=%s", self.label,
                     ",".join(self.queues) or "*", self.batch,
                     "burst" if deadline is None else f"{self.max_seconds:g}s", cfg.safe_db_url)
            contended = 0
            while not self._stop and not _past(deadline):
                now = self.clock()
                claim = claimer.claim(self.batch, now)
                if not claim.tasks:
                    if contended < _MAX_CONTENDED and claimer.any_due(now):
                        contended += 1  # rows of ours were locked for an instant: again
                        self._sleep(0.005 * contended)
                        continue
                    if deadline is None:
                        break
                    contended = 0
                    self._sleep(min(cfg.worker.poll_interval, deadline - time.monotonic()))
                    continue
                contended = 0
                self._run_claim(claim.token, claim.tasks, deadline)
            r = self.report
            log.info("shard=%s exit ran=%d done=%d retried=%d failed=%d returned=%d "
                     "released=%d lost=%d duration=%.3fs", self.label, r.ran, r.done, r.retried,
                     r.failed, r.returned, r.released, r.lost, time.monotonic() - started)
            return self.report
        finally:
            heartbeat.set()
            self._deregister()
            if guard is not None:
                guard.release()
            engine.dispose()
            restore()

    # -- registry and heartbeat ---------------------------------------------------------------

    def _register(self, stopped: threading.Event) -> None:
        me = Owner.me()
        self._worker_id = self.repo.register_worker(
            host=me.host, pid=me.pid, pid_start=me.pid_start, entry=self.entry,
            shard=self.shard, total=self.total, queues=",".join(self.queues),
            started_at=self.clock(), heartbeat_at=self.clock())
        thread = threading.Thread(target=self._heartbeat_loop, args=(stopped,),
                                  name="cronqueue-heartbeat", daemon=True)
        thread.start()

    def _heartbeat_loop(self, stopped: threading.Event) -> None:
        assert self._worker_id is not None
        while not stopped.wait(self.config.worker.heartbeat):
            try:
                asked = self.repo.heartbeat(self._worker_id, self.clock(), self._current,
                                            self.report.ran)
            except Exception as exc:  # the loop must survive any database trouble
                log.warning("shard=%s heartbeat failed: %s", self.label, exc)
                continue
            if asked and not self._stop:
                log.info("shard=%s stop requested through the database; finishing the "
                         "current task", self.label)
                self.request_stop()

    def _deregister(self) -> None:
        if self._worker_id is None:
            return
        try:
            self.repo.forget_workers([self._worker_id])
        except DatabaseError as exc:  # the rescue forgets it later
            log.warning("shard=%s could not deregister: %s", self.label, exc)
        self._worker_id = None

    def _run_claim(self, token: str, tasks: list[Task], deadline: float | None) -> None:
        pending: Finish | None = None
        try:
            for task in tasks:
                if self._stop or _past(deadline):
                    break
                pending = self._run_one(task, token, pending)
        finally:
            try:
                if pending is not None:
                    self._record(pending, None)
                released = self.repo.release_unstarted(token)
            except DatabaseError as exc:
                log.error("shard=%s could not record/release claim %s: %s", self.label, token,
                          exc)
                raise
            if released:
                self.report.released += released
                log.info("shard=%s released=%d unstarted tasks", self.label, released)

    def _run_one(self, task: Task, token: str, pending: Finish | None) -> Finish | None:
        """Mark ``task`` started (in the same commit as the previous outcome), run it, and return
        its outcome for the next commit."""
        cfg = self.config.worker
        now = self.clock()
        timeout = task.timeout or cfg.timeout
        # Without heartbeats the lease must outlast the longest legitimate run.
        lease_until = now + timedelta(seconds=timeout + cfg.kill_grace + cfg.lease)
        started = self._record(pending, Start(task.id, token, now, lease_until))
        if not started:
            self.report.lost += 1
            log.warning("task=%d shard=%s outcome=lost-claim (no longer ours; not run)",
                        task.id, self.label)
            return None
        attempt = task.attempts + 1
        self._current = task.id
        result = self.runner.run(task, attempt=attempt, timeout=timeout,
                                 abort=lambda: self._force, wake_fd=self._wake_r,
                                 label=self.label)
        self._current = None
        outcome, values = self._decide(task, attempt, result)
        max_attempts = task.max_attempts or cfg.max_attempts
        log_fn = log.info if outcome == "done" else log.warning
        log_fn("task=%d shard=%s outcome=%s attempt=%d/%d duration=%.3fs exit=%s script=%s%s",
               task.id, self.label, outcome, attempt, max_attempts, result.duration,
               result.returncode, task.taskscript,
               f" error={values['error']!r}" if values.get("error") else "")
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)
        self.report.outcomes[task.id] = outcome
        return Finish(task.id, token, values)

    def _record(self, finish: Finish | None, start: Start | None) -> bool:
        finished, started = self.repo.record(finish, start)
        if finish is not None and not finished:
            self.report.lost += 1
            log.warning("task=%d shard=%s result not recorded: claim %s was taken over",
                        finish.task_id, self.label, finish.token)
        return started

    def _decide(self, task: Task, attempt: int, result: RunResult) -> tuple[str, dict[str, object]]:
        cfg = self.config.worker
        now = self.clock()
        values: dict[str, object] = {"exit_code": result.returncode, "output": result.output,
                                     "lease_until": None}
        if result.ok:
            values.update(status=int(Status.DONE), finished_at=now, error=None, active_key=None)
            return "done", values
        assert result.failure is not None
        values["error"] = result.failure.record()
        if result.interrupted:
            values.update(status=int(Status.PENDING), attempts=attempt - 1, run_at=now,
                          claim_token=None)
            return "returned", values
        max_attempts = task.max_attempts or cfg.max_attempts
        if not result.permanent and attempt < max_attempts:
            delay = cfg.backoff_delay(attempt)
            values.update(status=int(Status.PENDING), run_at=now + timedelta(seconds=delay),
                          claim_token=None)
            return "retried", values
        values.update(status=int(Status.FAILED), finished_at=now, active_key=None)
        return "failed", values


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
