"""Claiming: hand each due pending row to exactly one process, in one short transaction.

Two strategies, chosen by what the backend offers (see README, "The claim"):

* Row locks by primary key (``skip_locked``: MySQL >= 8.0.1, MariaDB >= 10.6): a plain
  consistent read of the claim index finds this shard's first due rows, then ``SELECT ... WHERE
  id IN (...) FOR UPDATE SKIP LOCKED`` locks exactly those (still pending and due) and the
  UPDATE takes them. The scan takes no locks: a locking scan of the shared index locked every
  row it passed, other shards' included, until commit, so their claimers skipped them and took
  lower-priority rows instead (issue 11 #7). Only a row another transaction is writing at that
  instant (a duplicate of this shard claiming it, a cancel) is skipped; the claim then tops up
  past it, at most ``_ROUNDS`` reads.
* Guarded update (SQLite, older servers): read candidates, then
  ``UPDATE ... SET status=running, claim_token=T WHERE id IN (...) AND status=pending`` and read
  back the rows carrying ``T``. The status guard makes the UPDATE the arbiter: a row that
  another process claimed first no longer matches. With ``serialized_writers`` (SQLite's
  ``BEGIN IMMEDIATE``) claimers are serialized by the write lock.

Paused queues (``pauses.py``): the claim's first statement reads the names of the paused
queues, once per claim, and its candidate read leaves them out — a shard over named queues reads
only those not paused; one over every queue reads the queues that have pending rows one by one
(at most ``pauses.MAX_SPLIT`` of them; beyond, one read with ``queue NOT IN (...)``). Nothing
paused: the same statements as without pauses. Tasks running when a pause lands finish.

Either way the claim commits before any script starts: no transaction stays open while a task
runs. Each claimed row carries the owner (host, pid, pid start time), the claim token and a
lease; every later write is fenced by the token (``outcomes.py``).
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Executable, Select, Update, or_, select, update

from cronqueue.decode import priority_key
from cronqueue.model import Status, Task
from cronqueue.process.identity import Owner
from cronqueue.states import Transition, sql_values, values
from cronqueue.store.backends import Backend, backend_for
from cronqueue.store.engine import transaction
from cronqueue.store.pauses import paused_names, unpaused
from cronqueue.store.rows import bind, ids, status_is, task_columns
from cronqueue.store.schema import queue_table as q

# Lock-free reads per claim, at most, on a row-lock server: a row another transaction holds is
# passed over and the rows after it read in its place (a duplicate of this shard racing us).
_ROUNDS = 3
NEVER = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # the latest run_at there is
log = logging.getLogger("cronqueue.shard")


# -- statements -------------------------------------------------------------------------------

def _due(stmt: Select[Any], *, shard: int, total: int, queue: str | None,
         now: datetime, paused: Sequence[str] = ()) -> Select[Any]:
    """The rows shard ``shard`` of ``total`` may take now: pending, due, its ``id % total``,
    not of a ``paused`` queue (with ``queue`` None: every other queue)."""
    stmt = stmt.where(status_is(Transition.CLAIMED))
    if queue is not None:
        stmt = stmt.where(q.c.queue == queue)
    elif paused:
        stmt = stmt.where(q.c.queue.not_in(sorted(paused)))
    # A run_at that no clock reaches (SQLite text sorting after every time: 'zzz', a BLOB) is
    # due at once, so that the claim fails the row with its reason (InvalidRow) instead of
    # leaving it pending forever. No DATETIME can be later than NEVER: on MariaDB it is a no-op.
    stmt = stmt.where(or_(q.c.run_at <= now, q.c.run_at > NEVER))
    if total > 1:
        stmt = stmt.where(q.c.id % total == shard)
    return stmt


def claim_candidates(*, shard: int, total: int, queue: str | None, now: datetime,
                     limit: int, paused: Sequence[str] = ()) -> Select[Any]:
    """The claim query without ``skip_locked``: due pending rows of this shard, highest
    priority first, then oldest.

    Served by ``ix_queue_claim (status, queue, priority DESC, id)`` for one queue and by
    ``ix_queue_claim_any (status, priority DESC, id)`` across queues (``claim_index``): the
    index is read in order, ``run_at`` and ``id % total`` filter as it goes, LIMIT stops it
    early.
    """
    stmt = _due(select(*task_columns()), shard=shard, total=total, queue=queue, now=now,
                paused=paused)
    return stmt.order_by(q.c.priority.desc(), q.c.id).limit(limit)


def claim_index(queue: str | None) -> str:
    """The index the claim of ``queue`` (None: every queue) walks, named to the planner
    (``Backend.by_index``): with ``ix_queue_due (status, queue, run_at)`` beside it, MariaDB
    took ``ix_queue_claim_any`` for one queue's claim and read the other queues' rows in
    priority order (0.3 ms -> 220-430 ms a claim on 100,000 pending; bench/web_pages.py)."""
    return "ix_queue_claim" if queue is not None else "ix_queue_claim_any"


def claim_top(*, shard: int, total: int, queue: str | None, now: datetime, limit: int,
              passed: Sequence[int], paused: Sequence[str] = ()) -> Select[Any]:
    """Row-lock servers, step 1 of the claim: the ids (and priorities) of the ``limit`` first
    due rows of this shard, in claim order, by a plain consistent read of the claim index — no
    locks taken, so no other shard's rows are locked (and skipped by their claimer) while we
    scan past them, and none of ours skipped (issue 11 #7). ``passed``: ids to leave out
    (rows we already took, rows another transaction holds)."""
    stmt = _due(select(q.c.id, q.c.priority), shard=shard, total=total, queue=queue, now=now,
                paused=paused)
    if passed:
        stmt = stmt.where(q.c.id.not_in(passed))
    return stmt.order_by(q.c.priority.desc(), q.c.id).limit(limit)


@functools.cache
def _lock_claimable(backend: Backend) -> Select[Any]:
    """Step 2: lock exactly rows ``ids``, by primary key, if they are still due and pending
    (the latest committed version is checked), skipping a row another transaction holds (a
    duplicate of this shard claiming it, a cancel). ``status + 0`` and the PRIMARY hint keep
    the server off the status indexes: only these rows are ever locked."""
    return (backend.by_primary_key(select(*task_columns()), q)
            .where(q.c.id.in_(ids()), status_is(Transition.CLAIMED, by_key=True),
                   q.c.run_at <= bind("now", "run_at"))
            .with_for_update(skip_locked=True))


def claim_rows(task_ids: Sequence[int], *, token: str, host: str, pid: int,
               pid_start: int | None,
               lease_until: datetime) -> tuple[Update, dict[str, Any]]:
    """Guarded: only rows still pending change, so two claimers can never both win a row
    (found by primary key: ``status + 0``). Returns the statement (built once; the ids are one
    expanding parameter) and its parameters."""
    return _claim_rows(), {"ids": list(task_ids), "token": token, "host": host, "pid": pid,
                           "pid_start": pid_start, "lease_until": lease_until}


@functools.cache
def _claim_rows() -> Update:
    return (
        update(q)
        .where(q.c.id.in_(ids()), status_is(Transition.CLAIMED, by_key=True))
        .values(**sql_values(
            Transition.CLAIMED, q, claim_token=bind("token", "claim_token"),
            worker_host=bind("host", "worker_host"), worker_pid=bind("pid", "worker_pid"),
            worker_pid_start=bind("pid_start", "worker_pid_start"),
            lease_until=bind("lease_until")))
    )


def _select_claimed(token: str) -> Select[Any]:
    return (select(*task_columns())
            .where(q.c.claim_token == token, q.c.status == int(Status.RUNNING))
            .order_by(q.c.priority.desc(), q.c.id))


def _any_due(*, shard: int, total: int, queue: str | None, now: datetime,
             paused: Sequence[str] = ()) -> Executable:
    """Is anything of this shard due? A plain consistent read: no locks taken, none skipped."""
    return _due(select(q.c.id), shard=shard, total=total, queue=queue, now=now,
                paused=paused).limit(1)


# -- the claimer ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Claim:
    token: str
    tasks: list[Task]


@dataclass(frozen=True, slots=True)
class _Reads:
    """What one claim reads: these queues one by one (None: every queue but ``paused``)."""
    queues: list[str | None]
    paused: tuple[str, ...] = ()


class Claimer:
    def __init__(self, engine: Engine, owner: Owner, *, shard: int, total: int,
                 queues: Sequence[str] | None, lease: timedelta) -> None:
        if total < 1 or not 0 <= shard < total:
            raise ValueError(f"shard must be in 0..{total - 1}, got {shard}")
        self.engine = engine
        self.owner = owner
        self.shard = shard
        self.total = total
        # None = every queue. Several queues are read one by one (each walks its index in
        # order) and merged, instead of an IN list that would force a filesort.
        self.queues: list[str | None] = list(dict.fromkeys(queues)) if queues else [None]
        self.lease = lease
        self.backend = backend = backend_for(engine)
        if engine.dialect.server_version_info is None:
            with engine.connect():  # the dialect learns the server's version
                pass
        self.skip_locked = backend.skip_locked(engine.dialect)
        self.serialized = backend.serialized_writers
        self._paused: frozenset[str] = frozenset()  # the paused queues last logged

    def claim(self, limit: int, now: datetime) -> Claim:
        token = secrets.token_hex(16)
        tasks = transaction(self.engine, lambda conn: self._claim(conn, token, limit, now))
        return Claim(token, tasks)

    def any_due(self, now: datetime) -> bool:
        """After an empty claim: was it really empty? ``SKIP LOCKED`` also skips rows of ours
        that another transaction holds for an instant (a copy of this shard claiming them, a
        cancel), so an empty claim does not prove that nothing of ours is due."""

        def work(conn: Connection) -> bool:
            reads = self._reads(conn, now)
            return any(conn.execute(_any_due(shard=self.shard, total=self.total, queue=queue,
                                             now=now, paused=reads.paused)).first()
                       for queue in reads.queues)

        return transaction(self.engine, work, readonly=True)

    def _reads(self, conn: Connection, now: datetime) -> _Reads:
        """The queues this claim reads, the paused ones left out: one read of the pause set
        per claim (none paused: the statements of a claim without pauses)."""
        paused = paused_names(conn, now)
        mine = paused if self.queues == [None] else paused.intersection(self.queues)
        if mine != self._paused:
            self._paused = mine
            if mine:
                log.info("queue(s) paused, claiming nothing from them: %s",
                         ",".join(sorted(mine)))
            else:
                log.info("no queue of this shard is paused any more")
        queues, excluded = unpaused(self.queues, mine, conn)
        return _Reads(queues, tuple(sorted(excluded)))

    def _claim(self, conn: Connection, token: str, limit: int, now: datetime) -> list[Task]:
        reads = self._reads(conn, now)
        if not reads.queues:  # every queue of this shard is paused
            return []
        if self.skip_locked:
            chosen = self._lock_top(conn, limit, now, reads)
        else:
            chosen = self._read_top(conn, limit, now, reads)
        if not chosen:
            return []
        lease_until = now + self.lease
        won = conn.execute(*claim_rows(
            [row["id"] for row in chosen], token=token, host=self.owner.host,
            pid=self.owner.pid, pid_start=self.owner.pid_start,
            lease_until=lease_until)).rowcount
        if (self.skip_locked or self.serialized) and won == len(chosen):
            # We hold row locks on every candidate (or the write lock since before we read
            # them): all of them are ours, as read, with what the UPDATE wrote.
            claimed = values(Transition.CLAIMED, claim_token=token,
                             worker_host=self.owner.host, worker_pid=self.owner.pid,
                             worker_pid_start=self.owner.pid_start, lease_until=lease_until)
            return [Task.from_row(row | claimed) for row in chosen]
        if won == 0:
            return []
        return [Task.from_row(r) for r in conn.execute(_select_claimed(token)).mappings()]

    def _read_top(self, conn: Connection, limit: int, now: datetime,
                  reads: _Reads) -> list[dict[str, Any]]:
        """Without ``skip_locked``: the first due rows, read without locks (the guarded UPDATE
        arbitrates)."""
        candidates: list[dict[str, Any]] = []
        for queue in reads.queues:
            stmt = self.backend.by_index(claim_candidates(
                shard=self.shard, total=self.total, queue=queue, now=now, limit=limit,
                paused=reads.paused), q, claim_index(queue))
            result = conn.execute(stmt)
            keys = list(result.keys())
            candidates.extend(dict(zip(keys, row, strict=True)) for row in result.all())
        if len(reads.queues) > 1:
            candidates.sort(key=priority_key)  # never raises on a hand-written priority
        return candidates[:limit]

    def _lock_top(self, conn: Connection, limit: int, now: datetime,
                  reads: _Reads) -> list[dict[str, Any]]:
        """Row-lock servers: find the first due rows of this shard without locking anything,
        then lock exactly those by primary key. A row another transaction holds is passed
        over and the next ones read in its place (bounded); rows that stopped being due or
        pending in between are simply not taken."""
        taken: list[dict[str, Any]] = []
        passed: list[int] = []
        for _ in range(_ROUNDS):
            top = self._top_ids(conn, limit - len(taken), now, passed, reads)
            if not top:
                break
            result = conn.execute(_lock_claimable(self.backend), {"ids": top, "now": now})
            keys = list(result.keys())
            rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
            taken.extend(rows)
            got = {row["id"] for row in rows}
            held = [i for i in top if i not in got]
            if not held or len(taken) >= limit:
                break
            passed.extend(got)
            passed.extend(held)
        taken.sort(key=priority_key)
        return taken

    def _top_ids(self, conn: Connection, limit: int, now: datetime,
                 passed: list[int], reads: _Reads) -> list[int]:
        tops: list[dict[str, Any]] = []
        for queue in reads.queues:
            tops.extend({"id": row.id, "priority": row.priority} for row in conn.execute(
                self.backend.by_index(claim_top(shard=self.shard, total=self.total,
                                                queue=queue, now=now, limit=limit,
                                                passed=passed, paused=reads.paused),
                                      q, claim_index(queue))).all())
        if len(reads.queues) > 1:
            tops.sort(key=priority_key)
        return [row["id"] for row in tops[:limit]]
