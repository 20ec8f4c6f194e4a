"""Claiming: hand each due pending row to exactly one process, in one short transaction.

Two strategies, chosen by what the server can do (see README, "The claim"):

* Row locks by primary key (MySQL >= 8.0.1, MariaDB >= 10.6): a plain consistent read of the
  claim index finds this shard's first due rows, then ``SELECT ... WHERE id IN (...) FOR
  UPDATE SKIP LOCKED`` locks exactly those (still pending and due) and the UPDATE takes them.
  The scan takes no locks: a locking scan of the shared index locked every row it passed,
  other shards' included, until commit, so their claimers skipped them and took
  lower-priority rows instead (issue 11 #7). Only a row another transaction is writing at
  that instant (a duplicate of this shard claiming it, a cancel) is skipped; the claim then
  tops up past it, at most ``_ROUNDS`` reads.
* Guarded update (SQLite, older servers): read candidates, then
  ``UPDATE ... SET status=running, claim_token=T WHERE id IN (...) AND status=pending`` and read
  back the rows carrying ``T``. The status guard makes the UPDATE the arbiter: a row that
  another process claimed first no longer matches. On SQLite the transaction starts with
  ``BEGIN IMMEDIATE``, so claimers are serialized by the write lock.

Either way the claim commits before any script starts: no transaction stays open while a task
runs. Each claimed row carries the owner (host, pid, pid start time), the claim token and a
lease; completion updates are fenced by the token.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from cronqueue.decode import priority_key
from cronqueue.model import Status, Task
from cronqueue.process.identity import Owner
from cronqueue.store import queries
from cronqueue.store.engine import supports_skip_locked, transaction

# Lock-free reads per claim, at most, on a row-lock server: a row another transaction holds is
# passed over and the rows after it read in its place (a duplicate of this shard racing us).
_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Claim:
    token: str
    tasks: list[Task]


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
        self.skip_locked = supports_skip_locked(engine)
        self.serialized = engine.dialect.name == "sqlite"  # BEGIN IMMEDIATE: one writer

    def claim(self, limit: int, now: datetime) -> Claim:
        token = secrets.token_hex(16)
        tasks = transaction(self.engine, lambda conn: self._claim(conn, token, limit, now))
        return Claim(token, tasks)

    def any_due(self, now: datetime) -> bool:
        """After an empty claim: was it really empty? ``SKIP LOCKED`` also skips rows of ours
        that another transaction holds for an instant (a copy of this shard claiming them, a
        cancel), so an empty claim does not prove that nothing of ours is due."""

        def work(conn: Connection) -> bool:
            return any(conn.execute(queries.any_due(shard=self.shard, total=self.total,
                                                    queue=queue, now=now)).first()
                       for queue in self.queues)

        return transaction(self.engine, work, readonly=True)

    def _claim(self, conn: Connection, token: str, limit: int, now: datetime) -> list[Task]:
        if self.skip_locked:
            chosen = self._lock_top(conn, limit, now)
        else:
            chosen = self._read_top(conn, limit, now)
        if not chosen:
            return []
        lease_until = now + self.lease
        won = conn.execute(*queries.claim_rows(
            [row["id"] for row in chosen], token=token, host=self.owner.host,
            pid=self.owner.pid, pid_start=self.owner.pid_start,
            lease_until=lease_until)).rowcount
        if (self.skip_locked or self.serialized) and won == len(chosen):
            # We hold row locks on every candidate (or, on SQLite, the write lock since before
            # we read them): all of them are ours, as read, with what the UPDATE wrote.
            claimed = {"status": Status.RUNNING, "claim_token": token,
                       "worker_host": self.owner.host, "worker_pid": self.owner.pid,
                       "worker_pid_start": self.owner.pid_start, "lease_until": lease_until,
                       "started_at": None}
            return [Task.from_row(row | claimed) for row in chosen]
        if won == 0:
            return []
        return [Task.from_row(r) for r in conn.execute(queries.select_claimed(token)).mappings()]

    def _read_top(self, conn: Connection, limit: int, now: datetime) -> list[dict[str, Any]]:
        """SQLite and servers without SKIP LOCKED: the first due rows, read without locks (the
        guarded UPDATE arbitrates)."""
        candidates: list[dict[str, Any]] = []
        for queue in self.queues:
            stmt = queries.claim_candidates(shard=self.shard, total=self.total, queue=queue,
                                            now=now, limit=limit)
            result = conn.execute(stmt)
            keys = list(result.keys())
            candidates.extend(dict(zip(keys, row, strict=True)) for row in result)
        if len(self.queues) > 1:
            candidates.sort(key=priority_key)  # never raises on a hand-written priority
        return candidates[:limit]

    def _lock_top(self, conn: Connection, limit: int, now: datetime) -> list[dict[str, Any]]:
        """Row-lock servers: find the first due rows of this shard without locking anything,
        then lock exactly those by primary key. A row another transaction holds is passed
        over and the next ones read in its place (bounded); rows that stopped being due or
        pending in between are simply not taken."""
        taken: list[dict[str, Any]] = []
        passed: list[int] = []
        for _ in range(_ROUNDS):
            ids = self._top_ids(conn, limit - len(taken), now, passed)
            if not ids:
                break
            stmt, params = queries.lock_claimable(ids, now)
            result = conn.execute(stmt, params)
            keys = list(result.keys())
            rows = [dict(zip(keys, row, strict=True)) for row in result]
            taken.extend(rows)
            got = {row["id"] for row in rows}
            held = [i for i in ids if i not in got]
            if not held or len(taken) >= limit:
                break
            passed.extend(got)
            passed.extend(held)
        taken.sort(key=priority_key)
        return taken

    def _top_ids(self, conn: Connection, limit: int, now: datetime,
                 passed: list[int]) -> list[int]:
        tops: list[dict[str, Any]] = []
        for queue in self.queues:
            tops.extend({"id": row.id, "priority": row.priority} for row in conn.execute(
                queries.claim_top(shard=self.shard, total=self.total, queue=queue, now=now,
                                  limit=limit, passed=passed)))
        if len(self.queues) > 1:
            tops.sort(key=priority_key)
        return [row["id"] for row in tops[:limit]]
