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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TypeVar

from cronqueue import decode, states
from cronqueue.config import Config
from cronqueue.errors import CronqueueError, DatabaseError, InternalError, InvalidRow
from cronqueue.model import Task
from cronqueue.process.identity import Owner
from cronqueue.process.runner import Runner, RunResult
from cronqueue.shard.guard import ShardGuard
from cronqueue.shard.handover import Handover
from cronqueue.shard.heartbeat import Heartbeat
from cronqueue.shard.ledger import Ledger, fence_fresh
from cronqueue.shard.proof import WorkerLock
from cronqueue.states import Transition
from cronqueue.store.claims import Claimer
from cronqueue.store.database import Store
from cronqueue.store.engine import is_unavailable, make_engine
from cronqueue.store.outcomes import Finish, Flush, Flushed
from cronqueue.store.rows import SECRET_ELSEWHERE
from cronqueue.store.version import require_current
from cronqueue.text import visible

log = logging.getLogger("cronqueue.worker")
# Empty claims in a row, while rows of ours are due but locked by others, before we give up
# for this round (a duplicate of this shard may be holding them; they are not lost).
_MAX_CONTENDED = 50
_MAX_OUTAGE_PAUSE = 5.0  # seconds between retries while the database is unreachable
# The report's name of each edge a run's outcome takes (ShardReport fields, log lines).
_OUTCOME = {Transition.DONE: "done", Transition.RETRY: "retried", Transition.FAILED: "failed",
            Transition.RETURNED: "returned"}
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _StoppedWaiting(CronqueueError):
    """A stop came while the shard, holding no task, waited for an unreachable database."""


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
    refused: str = ""  # a shard-level fault (task_dir missing): why it claimed nothing more

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
        self.policy = config.worker.retry
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
        self._stop_at = 0.0
        self._lease_lost = False  # the heartbeat could not renew our lease: kill the task
        self._deadline: float | None = None  # monotonic end of the budget (None: burst)
        self._handover: Handover | None = None  # ticks that passed while we ran (budgeted)
        self._overrun_until: float | None = None  # past the budget, waiting for the next tick
        self._looked_at = float("-inf")  # when we last looked for a newer tick (monotonic)
        self.runner: Runner | None = None

    # -- signals (handlers only set flags) ----------------------------------------------------

    def request_stop(self, force: bool = False) -> None:
        if self._stop or force:
            self._force = True
        if not self._stop:
            self._stop_at = time.monotonic()
        self._stop = True

    def _lease_at_risk(self) -> None:
        """From the heartbeat thread: kill the task before another host may rescue it, and
        stop; unlike a hard stop, keep waiting for the database to record the outcome."""
        self._lease_lost = True
        if not self._stop:
            self._stop_at = time.monotonic()
        self._stop = True

    def _abort_task(self) -> bool:
        """Kill the running task? After a second stop, when the lease is at risk, or when the
        first stop's ``worker.stop_grace`` has run out."""
        return self._force or self._lease_lost or (
            self._stop and time.monotonic() - self._stop_at > self.config.worker.stop_grace)

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
        self.store = Store(engine)
        self.heartbeat = Heartbeat(self.store.workers, cfg.worker, label=self.label,
                                   clock=self.clock,
                                   on_stop_requested=self._stop_requested_remotely,
                                   on_lease_at_risk=self._lease_at_risk,
                                   still_ours=guard.verify if guard else lambda: True)
        started = time.monotonic()
        deadline = None if self.max_seconds is None else started + self.max_seconds
        # How long a burst shard waits for an unreachable database before giving up.
        patience = deadline if deadline is not None else started + cfg.worker.outage_wait
        proof: WorkerLock | None = None
        try:
            # A database behind (or ahead of) this cronqueue: SchemaVersionError, exit 2.
            self._db("check the schema", lambda: require_current(engine), until=patience)
            if self._task_dir_missing():  # every task would fail: claim none of them
                return self.report
            if guard is not None and not self._db("lock", guard.acquire, until=patience):
                self.report.already_running = guard.holder
                log.info("shard=%s already running on %s; not starting", self.label,
                         guard.holder)
                return self.report
            self._db("register", lambda: self.heartbeat.start(
                entry=self.entry, shard=self.shard, total=self.total,
                queues=",".join(self.queues)), until=patience)
            if self.heartbeat.worker_id is not None:  # proof for `workers stop` on this host
                proof = WorkerLock(cfg.log_dir, engine.url, self.heartbeat.worker_id)
                proof.acquire()
            self.runner = Runner(cfg.task_dir, cfg.log_dir, cfg.interpreters,
                                 tail_bytes=cfg.worker.output_tail,
                                 kill_grace=cfg.worker.kill_grace,
                                 max_log_bytes=cfg.worker.max_log_bytes,
                                 python_fork=cfg.worker.python_fork,
                                 python_preload=cfg.worker.python_preload)
            claimer = Claimer(engine, Owner.me(), shard=self.shard, total=self.total,
                              queues=self.queues, lease=timedelta(seconds=cfg.worker.lease))
            log.info("shard=%s start queues=%s batch=%d budget=%s db=%s", self.label,
                     ",".join(self.queues) or "*", self.batch,
                     "burst" if deadline is None else f"{self.max_seconds:g}s", cfg.safe_db_url)
            if deadline is not None and self.entry is not None:
                entry, budget = self.entry, deadline - started
                self._handover = self._db("look at the ticks", lambda: Handover(
                    self.store.runs, entry, budget, self.clock), until=patience)
            self._loop(claimer, deadline)
            while guard is not None and self._taken_back(guard):
                self._loop(claimer, self._deadline)
            r = self.report
            log.info("shard=%s exit ran=%d done=%d retried=%d failed=%d returned=%d "
                     "released=%d lost=%d duration=%.3fs", self.label, r.ran, r.done, r.retried,
                     r.failed, r.returned, r.released, r.lost, time.monotonic() - started)
            return self.report
        except _StoppedWaiting as exc:  # issue 11 #8: a first TERM/INT ends it at once
            log.warning("shard=%s stopped while waiting for the database (%s); exiting "
                        "after %.1fs, no task taken", self.label, exc,
                        time.monotonic() - started)
            return self.report
        finally:
            if self.runner is not None:
                self.runner.close()
            self.heartbeat.stop()
            if proof is not None:
                proof.release()
            if guard is not None:
                guard.release()
            engine.dispose()
            restore()

    def _loop(self, claimer: Claimer, deadline: float | None) -> None:
        cfg = self.config.worker
        contended = 0
        self._deadline = deadline
        while not self._stop and not self._spent():
            deadline = self._deadline  # a tick that passed while we ran extends it
            patience = (time.monotonic() + cfg.outage_wait if deadline is None
                        else max(deadline, self._overrun_until or deadline))
            claim = self._db("claim", lambda: claimer.claim(self.batch, self.clock()),
                             until=patience)
            if not claim.tasks:
                if contended < _MAX_CONTENDED and self._db(
                        "claim", lambda: claimer.any_due(self.clock()), until=patience):
                    contended += 1  # rows of ours were locked for an instant: again
                    self._sleep(0.005 * contended)
                    continue
                if deadline is None or _past(self._deadline):  # nothing due: budget's end
                    break
                contended = 0
                self._sleep(min(cfg.poll_interval, deadline - time.monotonic()))
                continue
            contended = 0
            self._run_claim(claim.token, claim.tasks, deadline)

    def _spent(self) -> bool:
        """Is the budget spent? Past its end, a tick of our entry that fired since we last
        looked (it found us running, so it started no copy of us) hands its budget over;
        until one does, a shard with rows due keeps claiming (the loop ends at the first
        empty claim), for at most one more budget (the mission may no longer run)."""
        if not _past(self._deadline) or self._handover is None:
            return _past(self._deadline)
        newer = self._newer_tick()
        if newer is not None and newer[1] > 0:
            scheduled, left = newer
            self._deadline = time.monotonic() + left
            self._overrun_until = None
            log.info("shard=%s tick scheduled=%s passed while running: carrying on for its "
                     "budget, %.1fs more", self.label, f"{scheduled:%Y-%m-%dT%H:%M}Z", left)
            return False
        if self._stop:
            return True
        if self._overrun_until is None:
            self._overrun_until = time.monotonic() + self._handover.max_seconds
            log.info("shard=%s budget spent with rows due: claiming on until the next tick "
                     "takes over", self.label)
        return _past(self._overrun_until)

    def _newer_tick(self, *, now: bool = False) -> tuple[datetime, float] | None:
        """A tick fired since we last looked; past the budget, a look per task at most
        every ``poll_interval`` (``now``: look whatever the time)."""
        if self._handover is None or self._stop:
            return None
        if not now and time.monotonic() - self._looked_at < self.config.worker.poll_interval:
            return None
        self._looked_at = time.monotonic()
        try:
            return self._handover.newer()
        except DatabaseError as exc:  # best effort: the next tick starts the shard anyway
            log.warning("shard=%s could not look for a newer tick: %s", self.label,
                        str(exc).splitlines()[0])
            return None

    def _taken_back(self, guard: ShardGuard) -> bool:
        """After the budget: release the guard, then look once more. A tick that fired in
        between may have found the guard still held and started nobody: take it back and
        carry on with its budget (False if there was none, or a new copy got the guard)."""
        if self._handover is None or self._stop:
            return False
        guard.release()
        newer = self._newer_tick(now=True)
        if newer is None or newer[1] <= 0:
            return False
        try:
            if not guard.acquire():
                return False
        except DatabaseError:
            return False
        scheduled, left = newer
        log.info("shard=%s tick scheduled=%s came as the budget ended: carrying on for its "
                 "budget, %.1fs more", self.label, f"{scheduled:%Y-%m-%dT%H:%M}Z", left)
        self._deadline = time.monotonic() + left
        return True

    def _stop_requested_remotely(self) -> None:
        if not self._stop:
            log.info("shard=%s stop requested through the database; finishing the current "
                     "task", self.label)
            self.request_stop()

    def _db(self, what: str, call: Callable[[], T], *, until: float | None = None) -> T:
        """Run a database call, riding out an outage: while the database is unreachable, log
        once, retry with bounded backoff, log when it is back. Gives up (re-raises) after
        ``until`` (monotonic) or on a hard stop; ``until=None`` waits as long as it takes —
        for outcomes that must not be lost. A call with ``until`` holds no task's outcome
        (start-up, claim): a first stop ends the wait at once (``_StoppedWaiting``)."""
        down_since: float | None = None
        pause = 0.2
        told = False  # that a stop waits for this call
        while True:
            try:
                result = call()
            except DatabaseError as exc:
                if not is_unavailable(exc) or self._force or (
                        until is not None and time.monotonic() >= until):
                    raise
                if down_since is None:
                    down_since = time.monotonic()
                    log.error("shard=%s database unavailable during %s: %s; retrying",
                              self.label, what, str(exc).splitlines()[0])
                if until is None and self._stop and not told:
                    told = True
                    log.warning("shard=%s stopping: waiting for the database to %s first "
                                "(stop again to exit without)", self.label, what)
                if until is not None and self._stop:
                    raise _StoppedWaiting(f"during {what}") from exc
                self._sleep(pause)  # a signal wakes it
                if until is not None and self._stop:
                    raise _StoppedWaiting(f"during {what}") from exc
                pause = min(pause * 2, _MAX_OUTAGE_PAUSE)
                continue
            if down_since is not None:
                log.warning("shard=%s database back after %.1fs; %s done", self.label,
                            time.monotonic() - down_since, what)
            return result

    def _run_claim(self, token: str, tasks: list[Task], deadline: float | None) -> None:
        cfg = self.config.worker
        ledger = Ledger(token, tasks, window=cfg.flush_every, interval=cfg.flush_interval,
                        careful=self._careful, write=self._write, try_write=self._try_write,
                        clock=self.clock, lease_until=self.heartbeat.lease_until,
                        on_lost=self._on_lost,
                        held=lambda ids: self._db(
                            "check its claim", lambda: self.store.outcomes.still_held(ids, token)),
                        fresh=fence_fresh(self.policy.backoff))
        self.heartbeat.token = token
        try:
            for task in tasks:
                if self._stop or self._spent():
                    break
                if task.problem is not None:  # a row we cannot decode or use: never run
                    ledger.finish(task, self._reject(task, token))
                    continue
                if not ledger.begin(task):
                    self.report.lost += 1
                    log.warning("task=%d shard=%s outcome=lost-claim (no longer ours; not run)",
                                task.id, self.label)
                    continue
                ledger.finish(task, self._run_one(task, token, ledger.tick))
        finally:
            released = ledger.close()
            self.heartbeat.token = None
            if released:
                self.report.released += released
                log.info("shard=%s released=%d unstarted tasks", self.label, released)

    def _careful(self, task: Task) -> bool:
        """Run alone, start committed first? Tasks on a later attempt (the previous one may
        have killed its shard: ``attempts`` as claimed counts earlier claims' runs) and
        at-most-once tasks (``max_attempts = 1``)."""
        return task.attempts > 0 or self.policy.attempts_for(task.max_attempts) <= 1

    def _run_one(self, task: Task, token: str, tick: Callable[[], None]) -> Finish:
        """Run ``task`` (its start is committed) and return its outcome for the ledger."""
        cfg = self.config.worker
        timeout = task.timeout or cfg.timeout
        attempt = states.attempt_of_run(task)
        self.heartbeat.current_task = task.id
        started_at = self.clock()
        assert self.runner is not None
        try:
            loaded = self._with_secret(task)
            if loaded.problem is not None:  # a hand-written secret that is not text
                error = InvalidRow(loaded.problem)
                result = RunResult(None, 0.0, str(error), error, permanent=True)
            else:
                result = self.runner.run(loaded, attempt=attempt, timeout=timeout,
                                         abort=self._abort_task, wake_fd=self._wake_r,
                                         label=self.label, tick=tick,
                                         live=self.heartbeat.show)
        except Exception as exc:  # one task's fault, whatever it is, must not stop the shard
            result = self._crashed(task, exc)
        self.heartbeat.current_task = None
        self.heartbeat.live = None  # its outcome writes the output now
        if result.returncode is None and not result.ok and self._task_dir_missing():
            # not the task's fault: its attempt is given back (returned, due again) and the
            # shard stops, giving back the rest of its claim
            result = replace(result, interrupted=True)
            self.request_stop()
        transition, values = self._decide(task, attempt, result, started_at)
        outcome = _OUTCOME[transition]
        level = logging.INFO if outcome == "done" else logging.WARNING
        if log.isEnabledFor(level):  # its arguments cost more than the call (per task)
            log.log(level, "task=%d shard=%s outcome=%s attempt=%d/%d duration=%.3fs exit=%s "
                    "script=%s%s", task.id, self.label, outcome, attempt,
                    self.policy.attempts_for(task.max_attempts), result.duration,
                    result.returncode, visible(task.taskscript),
                    f" error={values['error']!r}" if values.get("error") else "")
        setattr(self.report, outcome, getattr(self.report, outcome) + 1)
        self.heartbeat.tasks_done = self.report.ran
        self.report.outcomes[task.id] = outcome
        return Finish(task.id, token, values, transition)

    def _task_dir_missing(self) -> bool:
        """task_dir is gone (a deploy that moved it, a mount that is not there): a fault of
        the shard, not of its tasks. Logged once, as the report's ``refused``."""
        task_dir = self.config.task_dir
        if task_dir.is_dir():
            return False
        if not self.report.refused:
            self.report.refused = (f"task_dir {task_dir} does not exist or is not a directory: "
                                   "the shard stops; its tasks stay pending, no attempt "
                                   "charged")
            log.error("shard=%s %s", self.label, self.report.refused)
        return True

    def _with_secret(self, task: Task) -> Task:
        """The task with its secret, read as it starts (a claim leaves secrets in the
        database: a batch of them would sit in memory)."""
        if task.secret != SECRET_ELSEWHERE:
            return task
        problems = decode.Problems()
        secret = decode.optional_text(
            "secret", self._db("secret", lambda: self.store.tasks.secret(task.id)), problems)
        return replace(task, secret=secret, problem="; ".join(problems) or None,
                       bad_columns=frozenset(problems.columns))

    def _crashed(self, task: Task, exc: Exception) -> RunResult:
        """Whatever preparing or running one task raised (a bug, a file system fault): the
        task records it by name, its attempt is charged, the retry policy applies."""
        log.exception("task=%d shard=%s unexpected error while running it", task.id,
                      self.label)
        message = f"{type(exc).__name__}: {exc}"[:2000]
        return RunResult(None, 0.0, message, InternalError(message))

    def _reject(self, task: Task, token: str) -> Finish:
        """Fail a row we cannot decode or use, by id, without running it or charging an
        attempt (its start is never marked: ``attempts + 1`` may not even fit)."""
        error = InvalidRow(task.problem or "invalid row").record()
        log.warning("task=%d shard=%s outcome=failed (invalid row, not run) error=%r",
                    task.id, self.label, error)
        self.report.failed += 1
        self.report.outcomes[task.id] = "failed"
        return Finish(task.id, token, states.values(Transition.REJECTED, self.clock(),
                                                    error=error), Transition.REJECTED)

    def _write(self, flush: Flush) -> Flushed:
        # Outcomes are kept until the database takes them: a task is not run again just
        # because the write failed.
        return self._db("record", lambda: self.store.outcomes.flush(flush))

    def _try_write(self, flush: Flush) -> Flushed | None:
        """While a task runs: never raises (the script is running; the next begin, finish or
        close writes the outcomes with ``_write``, which does raise on a real error)."""
        try:
            return self.store.outcomes.flush(flush)
        except DatabaseError as exc:
            if not is_unavailable(exc):
                log.error("shard=%s writing outcomes while a task runs failed: %s; kept for "
                          "the next write", self.label, str(exc).splitlines()[0])
            return None

    def _on_lost(self, finish: Finish) -> None:
        self.report.lost += 1
        log.warning("task=%d shard=%s result not recorded: claim %s was taken over",
                    finish.task_id, self.label, finish.token)

    def _decide(self, task: Task, attempt: int, result: RunResult,
                started_at: datetime) -> tuple[Transition, dict[str, object]]:
        """The edge a finished run takes, and its column values (``cronqueue.states``)."""
        now = self.clock()
        run: dict[str, object] = {"exit_code": result.returncode, "output": result.output}
        if result.ok:
            return Transition.DONE, states.values(Transition.DONE, now, started_at=started_at,
                                                  **run)
        assert result.failure is not None
        run["error"] = result.failure.record()
        if result.interrupted:  # a hard stop killed it: not its fault, the attempt given back
            # (``attempts - 1``: written by the statement, from the edge the Finish names)
            return Transition.RETURNED, states.values(Transition.RETURNED, now, **run)
        verdict = states.after_failure(self.policy, attempt=attempt,
                                       max_attempts=task.max_attempts, now=now,
                                       permanent=result.permanent)
        if verdict.transition is Transition.RETRY:
            return verdict.transition, states.values(verdict.transition, started_at=started_at,
                                                     run_at=verdict.run_at, **run)
        return verdict.transition, states.values(verdict.transition, now,
                                                 started_at=started_at, **run)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
