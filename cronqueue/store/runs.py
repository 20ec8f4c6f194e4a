"""``cronqueue_runs``: one row per (mission entry, scheduled time) that fired. Its unique key
is what makes a recurring task or a shard launch happen once per scheduled time, however many
missions run; the newest row of an entry is its last run (for catch-up, ``schedule``, and the
shards' hand-over between ticks, ``shard/handover.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Delete, Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from cronqueue.spec import TaskSpec
from cronqueue.store.engine import transaction
from cronqueue.store.rows import CHUNK
from cronqueue.store.schema import runs_table as r
from cronqueue.store.tasks import Tasks, delete_in_chunks

Run = tuple[datetime, datetime]  # (scheduled_at, fired_at) of an entry's newest run


class Runs:
    def __init__(self, engine: Engine, tasks: Tasks | None = None) -> None:
        self.engine = engine
        self.tasks = tasks or Tasks(engine)  # a recurring task is added with its run

    def last_scheduled(self, entry: str, until: datetime | None = None) -> datetime | None:
        """The newest scheduled time recorded for ``entry`` (at or before ``until``)."""
        stmt = select(func.max(r.c.scheduled_at)).where(r.c.entry == entry)
        if until is not None:
            stmt = stmt.where(r.c.scheduled_at <= until)
        return transaction(self.engine, lambda conn: conn.execute(stmt).scalar(),
                           readonly=True)

    def newest(self, entry: str) -> Run | None:
        """(scheduled_at, fired_at) of the entry's newest run by scheduled time (index
        ``ux_runs_entry_time``)."""
        stmt = (select(r.c.scheduled_at, r.c.fired_at).where(r.c.entry == entry)
                .order_by(r.c.scheduled_at.desc()).limit(1))
        row = transaction(self.engine, lambda conn: conn.execute(stmt).first(), readonly=True)
        return None if row is None else (row[0], row[1])

    def taker(self, entry: str, scheduled_at: datetime) -> dict[str, Any] | None:
        """Who took (entry, scheduled_at): host, pid and outcome of its run, if it exists."""
        stmt = select(r.c.host, r.c.pid, r.c.outcome).where(
            r.c.entry == entry, r.c.scheduled_at == scheduled_at)
        row = transaction(self.engine, lambda conn: conn.execute(stmt).mappings().first(),
                          readonly=True)
        return None if row is None else dict(row)

    def record(self, entry: str, scheduled_at: datetime, *, host: str, pid: int,
               outcome: str, spec: TaskSpec | None = None,
               now: datetime | None = None) -> tuple[int, int | None] | None:
        """Claim (entry, scheduled_at) for this mission: None if another mission already did
        (the unique key is the arbiter). With ``spec``, the recurring task is inserted in the
        same transaction: once or never. Returns (run id, task id)."""

        def work(conn: Connection) -> tuple[int, int | None] | None:
            try:
                res = conn.execute(r.insert(), {
                    "entry": entry, "scheduled_at": scheduled_at, "host": host, "pid": pid,
                    "outcome": outcome, "fired_at": now or scheduled_at})
            except IntegrityError:
                return None
            key = res.inserted_primary_key
            assert key is not None
            run_id = int(key[0])
            task_id = None
            if spec is not None:
                task_id = self.tasks.inserter.insert(conn, [spec], now or scheduled_at)[0]
                conn.execute(update(r).where(r.c.id == run_id).values(task_id=task_id))
            return run_id, task_id

        return transaction(self.engine, work)

    def set_outcome(self, run_id: int, outcome: str) -> None:
        stmt = update(r).where(r.c.id == run_id).values(outcome=outcome[:1000])
        transaction(self.engine, lambda conn: conn.execute(stmt))

    def latest(self) -> dict[str, dict[str, Any]]:
        """Each entry's newest run, by entry name."""
        newest = (select(r.c.entry, func.max(r.c.scheduled_at).label("at"))
                  .group_by(r.c.entry).subquery())
        stmt = select(r).join(newest, (r.c.entry == newest.c.entry)
                              & (r.c.scheduled_at == newest.c.at))
        return transaction(
            self.engine,
            lambda conn: {row["entry"]: dict(row) for row in conn.execute(stmt).mappings()},
            readonly=True)

    def purge(self, before: datetime, max_chunks: int = 5) -> int:
        """Runs older than ``before`` except each entry's newest: an entry that fires less
        often than runs are kept must still know its last run (for catch-up and `schedule`)."""
        newest = select(func.max(r.c.id)).group_by(r.c.entry)
        old = (select(r.c.id).where(r.c.scheduled_at < before, r.c.id.not_in(newest))
               .limit(CHUNK))
        return delete_in_chunks(self.engine, old, _delete_runs, max_chunks)


def _delete_runs(run_ids: Sequence[int]) -> Delete:
    return delete(r).where(r.c.id.in_(run_ids))
