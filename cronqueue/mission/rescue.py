"""The rescue: tasks whose shard died are noticed and returned to pending (or failed).

A running row names its owner (host identity, pid, pid start time) and a lease. The owner is
gone when
- it ran in this pid space (its recorded identity, ``hostname#id``, equals ours: same boot and
  pid namespace, see proc.py) and its pid is dead or now belongs to another process (start
  time differs) — noticed at once, at the next mission tick;
- it ran anywhere else and its lease has expired (leases are extended by the shard's
  heartbeat; expiry is trusted once the database server has been up for a lease + 30 s).
  "Anywhere else" includes a container sharing our hostname but not our pids, and a row whose
  host is a bare hostname (written before the id, or by hand): not provably ours, so its pid
  proves nothing here.
A task that had started counts the attempt: pending again (after the usual backoff) while
attempts remain, else failed, with ``ProcessMissingError`` recorded. A task that was claimed
but never started goes straight back to pending. Each write is fenced by the claim token the
row was seen with, so a shard that finishes in the meantime keeps its own result.

A running row without a claim token (inserted by hand, or left so) is owned by no shard: every
shard writes only rows carrying its token. It is rescued at once, fenced on the state it was
seen in. So is a row of another host (or without a pid) that has a token but no lease: a claim
always sets both, so no shard left it so, and without a lease it would never expire.
Each row is handled on its own: one that cannot be written is logged and counted in
``errors``, and the rows after it are still rescued.

The workers registry is cleaned the same way: rows of dead shards are forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cronqueue import states
from cronqueue.config import WorkerConfig
from cronqueue.errors import ProcessMissingError, one_line
from cronqueue.model import Task
from cronqueue.process.identity import Owner, owner_gone, pid_alive
from cronqueue.retry import RetryPolicy
from cronqueue.states import Transition
from cronqueue.store.database import Store
from cronqueue.store.outcomes import Outcomes
from cronqueue.store.workers import worker_gone
from cronqueue.text import visible

log = logging.getLogger("cronqueue.rescue")
RESTART_GRACE = 30.0  # seconds after lease expiry a shard gets to reconnect and write


@dataclass
class RescueReport:
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    forgotten_workers: int = 0
    errors: list[str] = field(default_factory=list)  # "task=<id>: <reason>"


def rescue(store: Store, cfg: WorkerConfig, now: datetime, *, me: Owner | None = None,
           alive: Callable[[int, int | None], bool] = pid_alive,
           server_uptime: Callable[[], float | None] | None = None) -> RescueReport:
    me = me or Owner.me()
    report = RescueReport()
    # A lease can only be renewed while the server is up: right after a database restart
    # every lease looks expired, though the shards are alive and about to write. Trust lease
    # expiry only once the server has been up for a lease plus a grace period.
    uptime = (server_uptime or store.server_uptime)()
    trust_leases = uptime is None or uptime >= cfg.lease + RESTART_GRACE
    for task in store.outcomes.running():
        try:
            _rescue_one(store.outcomes, task, cfg, now, me=me, alive=alive,
                        trust_leases=trust_leases, report=report)
        except Exception as exc:  # one row must not stop the rescue of the others
            reason = one_line(exc)
            log.error("task=%s rescue failed: %s", task.id, visible(reason))
            report.errors.append(f"task={task.id}: {reason}")
    lease = timedelta(seconds=cfg.lease) if trust_leases else None
    dead = [w["id"] for w in store.workers.rows()
            if worker_gone(w, lease, me=me, now=now, alive=alive)]
    store.workers.forget(dead)
    report.forgotten_workers = len(dead)
    return report


def _rescue_one(outcomes: Outcomes, task: Task, cfg: WorkerConfig, now: datetime, *, me: Owner,
                alive: Callable[[int, int | None], bool], trust_leases: bool,
                report: RescueReport) -> None:
    unclaimed = task.claim_token is None  # no shard can own it
    if task.lease_until is None and not (me.same_host(task.worker_host) and task.worker_pid):
        unclaimed = True  # a claim sets token and lease together; this would never expire
    lease = task.lease_until if trust_leases else None
    if not unclaimed and not owner_gone(task.worker_host, task.worker_pid,
                                        task.worker_pid_start, lease, me=me, now=now,
                                        alive=alive):
        return
    outcome, values = _outcome(task, cfg.retry, now)
    if not outcomes.settle(task, values):
        return  # its shard finished it after all, or another rescuer was first
    getattr(report, outcome).append(task.id)
    # worker_host comes from the row: a hand-written newline or escape must not forge or
    # drive the log (the mission's log, often mailed by cron or read on a terminal).
    log.warning("task=%d shard=%s:%s outcome=%s reason=%s attempt=%d", task.id,
                visible(task.worker_host), task.worker_pid, outcome,
                "no-claim-or-lease" if unclaimed else "worker-lost", task.attempts)


# The report's name of each edge the rescue takes (RescueReport fields, log lines).
_OUTCOME = {Transition.RELEASED: "released", Transition.RESCUED: "retried",
            Transition.RESCUE_FAILED: "failed"}


def _outcome(task: Task, policy: RetryPolicy, now: datetime) -> tuple[str, dict[str, object]]:
    """The edge a lost row takes (``cronqueue.states``): never started, it is released as
    it is; started, its run (already counted by its start) is retried or failed by the one
    decision the shard uses too."""
    if task.started_at is None:
        return _OUTCOME[Transition.RELEASED], states.values(Transition.RELEASED)
    owner = f"{task.worker_host}:{task.worker_pid}"
    if task.claim_token is None:
        error = ProcessMissingError(f"running row without a claim token (owned by no shard; "
                                    f"worker {owner}) at attempt {task.attempts}").record()
    else:
        error = ProcessMissingError(f"worker {owner} was lost while running attempt "
                                    f"{task.attempts}").record()
    # The row was read after its start mark: its attempts already count the lost run.
    verdict = states.after_failure(policy, attempt=task.attempts, max_attempts=task.max_attempts,
                                   now=now, rescue=True)
    if verdict.transition is Transition.RESCUED:
        values = states.values(verdict.transition, error=error, run_at=verdict.run_at)
    else:
        values = states.values(verdict.transition, now, error=error)
    return _OUTCOME[verdict.transition], values
