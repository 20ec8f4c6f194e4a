"""What a claim's rows go through after the claim: the window's start marks, the group commit
of outcomes, lease extension, the give-back of rows not run — and the rescue's writes to rows
whose shard is gone.

Every write of a shard is fenced by its claim token (``rows.fence``): rows the claim no longer
holds (rescued) are left alone. The rescue's writes are fenced by the token it saw. The outcomes
that finish a task (done, failed) are counted in ``cronqueue_rollup`` by the same transaction
(``rollup.py``: one statement).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Select,
    Update,
    bindparam,
    case,
    select,
    update,
)

from cronqueue.model import Task
from cronqueue.states import FINISHED, Transition, attempts_change, sql_values
from cronqueue.store import rollup
from cronqueue.store.backends import Backend, backend_for
from cronqueue.store.engine import transaction
from cronqueue.store.rows import CHUNK, bind, fence, ids, status_is, task_columns
from cronqueue.store.schema import queue_table as q

_FINISH_CHUNK = 200  # outcomes per UPDATE (each varying column is a CASE over them)


@dataclass(frozen=True, slots=True)
class Finish:
    """An outcome to record for a task this process claimed (fenced by ``token``)."""

    task_id: int
    token: str
    values: dict[str, Any]
    # The edge it takes (``cronqueue.states``): its relative ``attempts`` change (``returned``:
    # ``attempts - 1``) is written by the statement, never an absolute count from memory.
    transition: Transition | None = None

    @property
    def attempts_change(self) -> int:
        return 0 if self.transition is None else attempts_change(self.transition)


@dataclass(frozen=True)
class Flush:
    """One group commit for claim ``token``."""

    token: str
    finishes: Sequence[Finish] = ()
    mark: Sequence[int] = ()  # tasks to mark started (the next window)
    now: datetime | None = None
    lease_until: datetime | None = None
    unmark: Sequence[int] = ()  # marked but never run: back to pending, attempt given back
    release: bool = False  # also release the claim's never-marked rows


@dataclass
class Flushed:
    recorded: set[int] = field(default_factory=set)  # finishes the claim still held
    marked: set[int] = field(default_factory=set)  # window rows the claim still held
    released: int = 0


class _NotHeld(Exception):
    """A fenced write matched fewer rows than expected: some were taken over."""


# -- statements -------------------------------------------------------------------------------

@functools.cache
def _mark_window() -> Update:
    """Count the attempt of every task in a shard's next window before any of them runs
    (``started``, the only edge that counts one): if the shard dies, each one whose outcome
    was not recorded yet has had its attempt counted when the rescue finds it."""
    return (update(q).where(q.c.id.in_(ids()), *fence(), q.c.started_at.is_(None))
            .values(**sql_values(Transition.STARTED, q, now=bind("now", "started_at"),
                                 lease_until=bind("lease_until"))))


@functools.cache
def _unmark_window() -> Update:
    """Marked for a window but never run (the shard stopped first): back to pending, the
    attempt given back."""
    return (update(q).where(q.c.id.in_(ids()), *fence(), q.c.started_at.is_not(None))
            .values(**sql_values(Transition.GIVEN_BACK, q)))


@functools.cache
def _release_unstarted() -> Update:
    """Claimed but never started: straight back to pending, no attempt counted."""
    return (update(q).where(*fence(), q.c.started_at.is_(None))
            .values(**sql_values(Transition.RELEASED, q)))


@functools.cache
def _held(lock: bool) -> Select[Any]:
    """Which of rows ``ids`` does claim ``token`` still hold? (Locked until commit on servers
    with row locks, so that the writes that follow match exactly these rows.)"""
    stmt = select(q.c.id).where(q.c.id.in_(ids()), *fence())
    return stmt.with_for_update() if lock else stmt


@functools.cache
def _extend_lease() -> Update:
    return update(q).where(*fence()).values(lease_until=bind("lease_until"))


def extend_lease(conn: Connection, token: str, lease_until: datetime) -> None:
    """The heartbeat's: every row claim ``token`` holds stays leased until ``lease_until``."""
    conn.execute(_extend_lease(), {"token": token, "lease_until": lease_until})


def _finish_many(rows: Sequence[tuple[int, dict[str, Any]]], token: str,
                 change: int) -> tuple[Update, dict[str, Any]]:
    """Record several outcomes with the same columns (and the same ``attempts`` change, +1, -1
    or none) in one statement: a column whose value is the same for every row is set plainly,
    the others by ``CASE id``. Fenced by the claim. Returns the statement (built once per
    shape and reused) and its parameters."""
    names = tuple(rows[0][1])
    varying = tuple(n for n in names if any(v[n] != rows[0][1][n] for _, v in rows))
    params: dict[str, Any] = {"token": token}
    for i, (task_id, values) in enumerate(rows):
        params[f"id{i}"] = task_id
        for name in varying:
            params[f"{name}{i}"] = values[name]
    for name in names:
        if name not in varying:
            params[name] = rows[0][1][name]
    return _finish_many_stmt(len(rows), names, varying, change), params


@functools.lru_cache(maxsize=128)
def _finish_many_stmt(count: int, names: tuple[str, ...], varying: tuple[str, ...],
                      change: int) -> Update:
    row_ids = [bindparam(f"id{i}", type_=q.c.id.type) for i in range(count)]
    values: dict[str, Any] = {}
    for name in names:
        column_type = q.c[name].type
        if name in varying:
            values[name] = case(*[(q.c.id == row_ids[i],
                                   bindparam(f"{name}{i}", type_=column_type))
                                  for i in range(count)])
        else:
            values[name] = bindparam(name, type_=column_type)
    values.update(_attempts(change))
    return update(q).where(q.c.id.in_(row_ids), *fence()).values(**values)


def _attempts(change: int) -> dict[str, Any]:
    """The relative ``attempts`` write of an edge that counts or gives back an attempt."""
    if change == 0:
        return {}
    return {"attempts": q.c.attempts + 1 if change > 0 else q.c.attempts - 1}


def _clearing_secret(values: dict[str, Any]) -> dict[str, Any]:
    """An outcome that finishes the task (done, failed) also clears its secret: no row keeps
    one longer than its task needs it."""
    if values.get("status") in FINISHED and "secret" not in values:
        return {**values, "secret": None}
    return values


# -- the writer -------------------------------------------------------------------------------

class Outcomes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = backend_for(engine)
        self.row_locks = self.backend.row_locks

    def flush(self, flush: Flush) -> Flushed:
        """A shard's group commit for one claim: buffered outcomes, the next window's start
        marks, and on the way out the give-back of rows it did not run — one transaction. Every
        write is fenced by the claim token: rows the claim no longer holds (rescued) are left
        alone and missing from the result. The common case (the claim holds every row) costs
        one statement per kind of write; if a row count says otherwise, the transaction is
        rolled back and redone after reading which rows are still held."""
        try:
            return transaction(self.engine,
                               lambda conn: self._flush(conn, self.backend, flush, None))
        except _NotHeld:
            return transaction(self.engine, lambda conn: self._flush(
                conn, self.backend, flush, self._held(
                    conn, [f.task_id for f in flush.finishes] + [*flush.mark, *flush.unmark],
                    flush.token, lock=self.row_locks)))

    @staticmethod
    def _held(conn: Connection, task_ids: Sequence[int], token: str, *, lock: bool) -> set[int]:
        held: set[int] = set()
        for start in range(0, len(task_ids), CHUNK):
            held.update(conn.execute(_held(lock), {"ids": list(task_ids[start:start + CHUNK]),
                                                   "token": token}).scalars().all())
        return held

    @staticmethod
    def _flush(conn: Connection, backend: Backend, flush: Flush,
               held: set[int] | None) -> Flushed:
        def ours(task_id: int) -> bool:
            return held is None or task_id in held

        def write(stmt: Executable, params: dict[str, Any], expected: int) -> int:
            count = int(conn.execute(stmt, params).rowcount)
            if held is None and count != expected:
                raise _NotHeld
            return count

        done = Flushed()
        token = flush.token
        groups: dict[tuple[int, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = {}
        finished: list[int] = []  # done or failed: counted in the rollup
        for f in flush.finishes:
            if ours(f.task_id):
                values = _clearing_secret(f.values)
                change = f.attempts_change
                assert not (change and "attempts" in values), f
                groups.setdefault((change, tuple(values)), []).append(
                    (f.task_id, values))
                if values.get("status") in FINISHED:
                    finished.append(f.task_id)
        for (change, _), rows in groups.items():
            for start in range(0, len(rows), _FINISH_CHUNK):
                chunk = rows[start:start + _FINISH_CHUNK]
                write(*_finish_many(chunk, token, change), len(chunk))
                done.recorded.update(task_id for task_id, _ in chunk)
        mark = [i for i in flush.mark if ours(i)]
        if mark:
            assert flush.now is not None and flush.lease_until is not None
            write(_mark_window(), {"ids": mark, "token": token, "now": flush.now,
                                   "lease_until": flush.lease_until}, len(mark))
            done.marked.update(mark)
        unmark = [i for i in flush.unmark if ours(i)]
        if unmark:
            done.released += write(_unmark_window(), {"ids": unmark, "token": token},
                                   len(unmark))
        if flush.release:
            done.released += conn.execute(_release_unstarted(), {"token": token}).rowcount
        if finished:  # last: the counters' rows stay locked the shortest time
            rollup.add_finished(conn, backend, finished, timed=True)
        return done

    def still_held(self, task_ids: Sequence[int], token: str) -> set[int]:
        """Which of these rows claim ``token`` still holds (running under that token): the
        fence read before a marked task starts (``Ledger.begin``)."""
        return transaction(self.engine,
                           lambda conn: self._held(conn, task_ids, token, lock=False),
                           readonly=True)

    def release_unstarted(self, token: str) -> int:
        return transaction(self.engine, lambda conn: conn.execute(
            _release_unstarted(), {"token": token}).rowcount)

    def record(self, finish: Finish, *, timed: bool = True) -> bool:
        """Write one outcome; whether the claim still held the row. One that finishes the
        task is counted in the rollup (its run time too if ``timed``)."""
        stmt = (update(q).where(q.c.id == finish.task_id, *fence())
                .values(**_clearing_secret(finish.values), **_attempts(finish.attempts_change)))
        return transaction(self.engine, lambda conn: self._write_one(
            conn, stmt, {"token": finish.token}, finish, timed=timed))

    def _write_one(self, conn: Connection, stmt: Update, params: dict[str, Any],
                   finish: Finish, *, timed: bool) -> bool:
        if conn.execute(stmt, params).rowcount != 1:
            return False
        if finish.values.get("status") in FINISHED:
            rollup.add_finished(conn, self.backend, [finish.task_id], timed=timed)
        return True

    # -- the rescue ---------------------------------------------------------------------------

    def running(self) -> list[Task]:
        """Every claimed row, for the rescue of tasks whose shard died."""
        stmt = select(*task_columns()).where(status_is(Transition.STARTED))
        return transaction(
            self.engine,
            lambda conn: [Task.from_row(r) for r in conn.execute(stmt).mappings()],
            readonly=True)

    def settle(self, task: Task, values: dict[str, Any]) -> bool:
        """Write an outcome for a task claimed by someone else (the rescue), fenced by the
        claim token it was seen with: a shard that finishes meanwhile wins. A running row
        without a token (no shard can own it) is fenced on its status and attempts (unless
        its attempts column was bad: not a number, or out of range). A task it fails is
        counted in the rollup, without a run time (the run's end was not seen)."""
        if task.claim_token is not None:
            return self.record(Finish(task.id, task.claim_token, values), timed=False)
        fenced = [q.c.id == task.id, q.c.claim_token.is_(None), status_is(Transition.STARTED)]
        if "attempts" not in task.bad_columns:
            fenced.append(q.c.attempts == task.attempts)
        stmt = update(q).where(*fenced).values(**_clearing_secret(values))
        return transaction(self.engine, lambda conn: self._write_one(
            conn, stmt, {}, Finish(task.id, "", values), timed=False))
