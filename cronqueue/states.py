"""Every change of a task's status, in one table: who takes each edge and what it writes.

The shard, the rescue, the operator commands and the statements that run them all take their
column values from here (``values`` for the plain ones, ``sql_values`` for a statement that
also writes the relative ones), and the retry-or-fail decision is taken once, in
``after_failure``. ``docs/state_machine.md`` draws the same table; a test keeps the two equal.

Attempt accounting — ``attempts`` counts the runs started so far, and changes on four edges:

* **counted** (``attempts + 1``) by ``STARTED`` only: the commit that marks a task started,
  before its script runs (a window of them at once, see ``shard/ledger.py``). Nothing else
  adds an attempt: a run that fails, a run whose shard was lost (the rescue) and a run past
  its timeout were all counted when they started.
* **given back** (``attempts - 1``) by ``RETURNED`` (a hard stop killed the run: not the
  task's fault) and ``GIVEN_BACK`` (marked started, never run: the shard stopped first).
  Both are relative writes, fenced by the claim, so they undo exactly their own mark.
* **reset** (``0``) by ``ADDED`` (a new row) and ``REQUEUED`` (``cronqueue retry``: a fresh
  set of attempts; due now, or at its own ``run_at`` if that is still ahead: ``later``).
* **kept** on every other edge. ``CLAIMED`` and ``RELEASED`` in particular: a claim that
  never started its task costs nothing.

``Task.attempts`` is the column as read. A shard reads it when it claims, before the start
mark: there it is the attempts of *earlier* claims, and the run this claim makes is attempt
``attempt_of_run(task)`` (``attempts + 1``: the mark only ever counts rows it finds unstarted,
and a claim always leaves them so). The rescue reads a running row after its mark: there the
column already counts the lost run. No write takes an absolute attempts value from memory.

The unique key (``active_key``) is held while a task is pending or running: released (NULL)
by every edge into done, failed or cancelled, restored (``= unique_key``) by ``ADDED`` and
``REQUEUED``. Every edge into a finished status clears the secret too.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cronqueue.model import Status, Task
from cronqueue.retry import RetryPolicy

if TYPE_CHECKING:
    from sqlalchemy import Table


class Attempts(enum.Enum):
    """How an edge changes ``attempts``."""

    KEPT = "="
    COUNTED = "+1"
    GIVEN_BACK = "-1"
    RESET = "0"


class Write(enum.Enum):
    """What an edge writes into a column."""

    NOW = "now"  # the time of the transition
    NULL = "null"
    GIVEN = "given"  # a value the taker supplies: the run's result, the claim, an error
    BACKOFF = "backoff"  # now + the retry policy's delay (``after_failure`` computes it)
    LATER = "later"  # the later of the column's own value and now (a future time is kept)
    UNIQUE_KEY = "unique_key"  # the row's own unique_key column (the key held again)


@dataclass(frozen=True, slots=True)
class Edge:
    sources: tuple[Status, ...]  # the statuses the statement requires; () = a new row
    target: Status | None  # None: the row is deleted
    by: str  # who takes it
    attempts: Attempts
    writes: Mapping[str, Write]  # every column besides status and attempts it writes

    @property
    def status_changes(self) -> bool:
        return self.target is not None and self.target not in self.sources


class Transition(enum.StrEnum):
    ADDED = "added"
    CLAIMED = "claimed"
    STARTED = "started"
    DONE = "done"
    RETRY = "retry"
    FAILED = "failed"
    REJECTED = "rejected"
    RETURNED = "returned"
    GIVEN_BACK = "given_back"
    RELEASED = "released"
    RESCUED = "rescued"
    RESCUE_FAILED = "rescue_failed"
    CANCELLED = "cancelled"
    HASTENED = "hastened"
    REQUEUED = "requeued"
    PURGED = "purged"
    DISCARDED = "discarded"

    @property
    def edge(self) -> Edge:
        return EDGES[self]


P, R = Status.PENDING, Status.RUNNING
D, F, C = Status.DONE, Status.FAILED, Status.CANCELLED
NOW, NULL, GIVEN = Write.NOW, Write.NULL, Write.GIVEN
_RUN = {"started_at": GIVEN, "exit_code": GIVEN, "output": GIVEN}  # a run's result
_FINISH = {"finished_at": NOW}
_UNCLAIM = {"claim_token": NULL, "lease_until": NULL}
_RELEASE_KEY = {"active_key": NULL, "secret": NULL}

EDGES: dict[Transition, Edge] = {
    Transition.ADDED: Edge((), P, "producer", Attempts.RESET,
                           {"run_at": GIVEN, "active_key": Write.UNIQUE_KEY}),
    Transition.CLAIMED: Edge((P,), R, "shard", Attempts.KEPT, {
        "claim_token": GIVEN, "worker_host": GIVEN, "worker_pid": GIVEN,
        "worker_pid_start": GIVEN, "lease_until": GIVEN, "started_at": NULL}),
    Transition.STARTED: Edge((R,), R, "shard", Attempts.COUNTED,
                             {"started_at": NOW, "lease_until": GIVEN}),
    Transition.DONE: Edge((R,), D, "shard", Attempts.KEPT, {
        **_FINISH, **_RUN, "error": NULL, "lease_until": NULL, **_RELEASE_KEY}),
    Transition.RETRY: Edge((R,), P, "shard", Attempts.KEPT, {
        "run_at": Write.BACKOFF, **_RUN, "error": GIVEN, **_UNCLAIM}),
    Transition.FAILED: Edge((R,), F, "shard", Attempts.KEPT, {
        **_FINISH, **_RUN, "error": GIVEN, "lease_until": NULL, **_RELEASE_KEY}),
    Transition.REJECTED: Edge((R,), F, "shard", Attempts.KEPT, {
        **_FINISH, "exit_code": NULL, "output": NULL, "error": GIVEN, "lease_until": NULL,
        **_RELEASE_KEY}),
    Transition.RETURNED: Edge((R,), P, "shard", Attempts.GIVEN_BACK, {
        "run_at": NOW, "exit_code": GIVEN, "output": GIVEN, "error": GIVEN, **_UNCLAIM}),
    Transition.GIVEN_BACK: Edge((R,), P, "shard", Attempts.GIVEN_BACK,
                                {"started_at": NULL, **_UNCLAIM}),
    Transition.RELEASED: Edge((R,), P, "shard, rescue", Attempts.KEPT, dict(_UNCLAIM)),
    Transition.RESCUED: Edge((R,), P, "rescue", Attempts.KEPT, {
        "run_at": Write.BACKOFF, "exit_code": NULL, "error": GIVEN, **_UNCLAIM}),
    Transition.RESCUE_FAILED: Edge((R,), F, "rescue", Attempts.KEPT, {
        **_FINISH, "exit_code": NULL, "error": GIVEN, **_UNCLAIM, **_RELEASE_KEY}),
    Transition.CANCELLED: Edge((P,), C, "operator", Attempts.KEPT,
                               {**_FINISH, **_RELEASE_KEY}),
    Transition.HASTENED: Edge((P,), P, "operator", Attempts.KEPT, {"run_at": NOW}),
    Transition.REQUEUED: Edge((F, C), P, "operator", Attempts.RESET, {
        "run_at": Write.LATER, "active_key": Write.UNIQUE_KEY, **_UNCLAIM, "finished_at": NULL}),
    Transition.PURGED: Edge((D, F, C), None, "mission, operator", Attempts.KEPT, {}),
    Transition.DISCARDED: Edge((P, R), None, "operator", Attempts.KEPT, {}),
}

FINISHED = (D, F, C)  # the statuses no edge but REQUEUED and PURGED leaves


# -- what a statement writes ---------------------------------------------------------------


def values(transition: Transition, now: object = None, **given: object) -> dict[str, object]:
    """The plain column values of ``transition``: its status (when it changes), NULLs, ``now``
    and the ``given`` ones (every GIVEN and BACKOFF column, nothing else: a taker cannot
    write a column its edge does not). Attempts are left out unless reset to 0 (a relative
    change is the statement's, see ``sql_values``), as are an ``active_key`` restored from
    ``unique_key`` and a ``later`` write (the row's own ``run_at`` if ahead). Values may be
    anything a statement binds (a time, a bind parameter)."""
    edge = transition.edge
    needed = {c for c, w in edge.writes.items() if w in (Write.GIVEN, Write.BACKOFF)}
    if missing := needed - given.keys():
        raise ValueError(f"{transition}: needs {', '.join(sorted(missing))}")
    if extra := given.keys() - needed:
        raise ValueError(f"{transition}: does not write {', '.join(sorted(extra))}")
    out: dict[str, object] = {}
    if edge.status_changes:
        assert edge.target is not None
        out["status"] = int(edge.target)
    if edge.attempts is Attempts.RESET:
        out["attempts"] = 0
    for column, write in edge.writes.items():
        if write is Write.NOW:
            if now is None:
                raise ValueError(f"{transition}: needs now")
            out[column] = now
        elif write is Write.NULL:
            out[column] = None
        elif write not in (Write.UNIQUE_KEY, Write.LATER):
            out[column] = given[column]
    return out


def sql_values(transition: Transition, table: Table, now: object = None,
               **given: object) -> dict[str, Any]:
    """``values`` plus the column expressions: ``attempts + 1`` / ``attempts - 1``,
    ``active_key = unique_key`` and ``CASE WHEN col > :now THEN col ELSE :now END`` (``later``)
    — what an UPDATE of ``table`` (the ``queue`` table) sets."""
    from sqlalchemy import case, type_coerce

    out: dict[str, Any] = values(transition, now, **given)
    change = attempts_change(transition)
    if change:
        out["attempts"] = table.c.attempts + 1 if change > 0 else table.c.attempts - 1
    for column, write in transition.edge.writes.items():
        if write is Write.UNIQUE_KEY:
            out[column] = table.c.unique_key
        elif write is Write.LATER:
            if now is None:
                raise ValueError(f"{transition}: needs now")
            own = table.c[column]
            at = type_coerce(now, own.type)
            out[column] = case((own > at, own), else_=at)
    return out


@functools.cache
def attempts_change(transition: Transition) -> int:
    """+1, -1 or 0: the relative change of ``attempts`` (a reset is 0 here: see ``values``).
    Cached: asked twice per outcome of every group commit."""
    return {Attempts.COUNTED: 1, Attempts.GIVEN_BACK: -1}.get(transition.edge.attempts, 0)


def sources(transition: Transition) -> list[int]:
    """The status codes a statement taking ``transition`` requires of the row."""
    return [int(s) for s in transition.edge.sources]


def describe(transition: Transition) -> str:
    """What the edge writes, as ``docs/state_machine.md`` spells it (tested equal)."""
    return ", ".join(f"{c}={w.value}" for c, w in transition.edge.writes.items()) or "-"


# -- the decisions --------------------------------------------------------------------------


def attempt_of_run(task: Task) -> int:
    """The number of the attempt a shard's claimed ``task`` runs (1 = its first run).
    ``task`` as claimed: its ``attempts`` were read before the start mark added this one."""
    return task.attempts + 1


@dataclass(frozen=True, slots=True)
class Verdict:
    transition: Transition
    run_at: datetime | None  # when it runs again (a retry), else None


def after_failure(policy: RetryPolicy, *, attempt: int, max_attempts: int | None,
                  now: datetime, permanent: bool = False, rescue: bool = False) -> Verdict:
    """The one retry-or-fail decision, after attempt number ``attempt`` did not succeed: a
    run that failed (the shard: ``RETRY`` or ``FAILED``) or a run whose shard was lost (the
    rescue: ``RESCUED`` or ``RESCUE_FAILED``). Retried, after the policy's backoff, while the
    task has attempts left and the failure is not permanent; else failed."""
    if policy.retries(attempt, max_attempts, permanent=permanent):
        run_at = now + timedelta(seconds=policy.delay(attempt))
        return Verdict(Transition.RESCUED if rescue else Transition.RETRY, run_at)
    return Verdict(Transition.RESCUE_FAILED if rescue else Transition.FAILED, None)
