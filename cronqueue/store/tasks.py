"""The ``queue`` table as the application and the operator see it: add, read, list, count,
cancel, retry, purge. (A shard's claim and writes: ``claims.py``, ``outcomes.py``.)"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Delete,
    Engine,
    Executable,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

if TYPE_CHECKING:  # sqlalchemy.orm is a heavy import the queue does not need at run time
    from sqlalchemy.orm import Session

from cronqueue import decode
from cronqueue.errors import InvalidTransition, TaskNotFound
from cronqueue.model import Status, Task, status_name
from cronqueue.spec import TaskSpec
from cronqueue.states import Transition, sources, sql_values
from cronqueue.store import rollup
from cronqueue.store.backends import backend_for
from cronqueue.store.engine import transaction
from cronqueue.store.enqueue import Inserter
from cronqueue.store.rows import CHUNK, capped_count, status_is, task_columns
from cronqueue.store.schema import queue_table as q

log = logging.getLogger("cronqueue.tasks")
FINISHED = tuple(sources(Transition.PURGED))  # done, failed, cancelled: what purge deletes


def delete_in_chunks(engine: Engine, select_ids: Executable,
                     delete_ids: Callable[[Sequence[int]], Executable],
                     max_chunks: int | None) -> int:
    """Delete what ``select_ids`` finds (at most ``CHUNK`` ids), one short transaction per
    chunk, until fewer than a chunk remain (or ``max_chunks`` were done)."""

    def work(conn: Connection) -> int:
        found = list(conn.execute(select_ids).scalars())
        return int(conn.execute(delete_ids(found)).rowcount) if found else 0

    total, chunks = 0, 0
    while max_chunks is None or chunks < max_chunks:
        deleted = transaction(engine, work)
        total += deleted
        chunks += 1
        if deleted < CHUNK:
            break
    return total


class Tasks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = backend_for(engine)
        self.inserter = Inserter(self.backend)

    # -- add ----------------------------------------------------------------------------------

    def add(self, specs: Sequence[TaskSpec], now: datetime,
            connection: Connection | Session | None = None) -> list[int]:
        """Insert all specs in one transaction (the caller's, if given); ids in input order."""
        if connection is None:
            return transaction(self.engine, lambda conn: self.inserter.insert(conn, specs, now))
        conn = connection if isinstance(connection, Connection) else connection.connection()
        return self.inserter.insert(conn, specs, now)

    # -- read ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task | None:
        """One task, with its secret."""
        def work(conn: Connection) -> Task | None:
            row = conn.execute(select(q).where(q.c.id == task_id)).mappings().first()
            return Task.from_row(row) if row is not None else None

        return transaction(self.engine, work, readonly=True)

    def secret(self, task_id: int) -> str | None:
        """A task's secret, read when it starts (claims leave it in the database)."""
        stmt = select(q.c.secret).where(q.c.id == task_id)
        return transaction(self.engine, lambda conn: conn.execute(stmt).scalar(),
                           readonly=True)

    def list_tasks(self, *, status: Status | None = None, queue: str | None = None,
             limit: int = 50) -> list[Task]:
        """Newest first; secrets stay in the database (``SECRET_ELSEWHERE``)."""
        stmt = select(*task_columns())
        if status is not None:
            stmt = stmt.where(q.c.status == int(status))
        if queue is not None:
            stmt = stmt.where(q.c.queue == queue)
        stmt = stmt.order_by(q.c.id.desc()).limit(limit)
        return transaction(
            self.engine,
            lambda conn: [Task.from_row(r) for r in conn.execute(stmt).mappings()],
            readonly=True,
        )

    def count_tasks(self, *, status: Status | None = None, queue: str | None = None,
                    cap: int) -> int:
        """How many tasks ``list_tasks`` would find without a limit, counting at most
        ``cap + 1`` rows (``cap + 1``: more than ``cap``): a ``COUNT(*)`` over a ``LIMIT``
        subquery, never over the whole table."""
        where = [q.c.status == int(status)] if status is not None else []
        if queue is not None:
            where.append(q.c.queue == queue)
        stmt = capped_count(where, cap)
        return transaction(self.engine, lambda conn: int(conn.execute(stmt).scalar_one()),
                           readonly=True)

    def stats(self, now: datetime) -> dict[str, Any]:
        by_queue = select(q.c.queue, q.c.status, func.count()).group_by(q.c.queue, q.c.status)
        # Due pending count and the oldest due run_at (how far behind the shards are).
        due_now = select(func.count(), func.min(q.c.run_at)).where(
            q.c.status == int(Status.PENDING), q.c.run_at <= now)

        def work(conn: Connection) -> dict[str, Any]:
            totals = {s.name.lower(): 0 for s in Status}
            per_queue: dict[str, dict[str, int]] = {}
            for queue, status, count in conn.execute(by_queue):
                # Hand-written rows: a status outside 0..4 counts as ``unknown(7)``; a queue
                # name that is not text is shown decoded (see decode.py).
                name = status_name(status)
                totals[name] = totals.get(name, 0) + count
                name_of_queue = decode.optional_text("queue", queue, decode.Problems()) or ""
                counts = per_queue.setdefault(name_of_queue, {s.name.lower(): 0 for s in Status})
                counts[name] = counts.get(name, 0) + count
            due, oldest = conn.execute(due_now).one()
            # (a hand-written run_at that is not a time is no age: failed when claimed)
            lag = (now - oldest).total_seconds() if isinstance(oldest, datetime) else 0.0
            return {"total": sum(totals.values()), **totals, "due": int(due),
                    "oldest_due_seconds": round(max(lag, 0.0), 3), "queues": per_queue}

        return transaction(self.engine, work, readonly=True)

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, task_id: int, now: datetime) -> None:
        """Pending → cancelled (counted in the rollup, same transaction). Raises
        ``TaskNotFound`` or ``InvalidTransition``."""
        stmt = (update(q).where(q.c.id == task_id, status_is(Transition.CANCELLED))
                .values(**sql_values(Transition.CANCELLED, q, now=now)))

        def work(conn: Connection) -> None:
            if conn.execute(stmt).rowcount == 1:
                rollup.add_finished(conn, self.backend, [task_id], timed=False)
                return
            row = conn.execute(select(q.c.status).where(q.c.id == task_id)).first()
            if row is None:
                raise TaskNotFound(f"no task with id {task_id}")
            raise InvalidTransition(f"task {task_id} is {status_name(row[0])}; only pending "
                                    "tasks can be cancelled")

        transaction(self.engine, work)

    def retry(self, task_id: int, now: datetime) -> None:
        """Failed or cancelled → pending now, with a fresh set of attempts."""
        def work(conn: Connection) -> None:
            row = conn.execute(select(q.c.status, q.c.unique_key)
                               .where(q.c.id == task_id)).mappings().first()
            if row is None:
                raise TaskNotFound(f"no task with id {task_id}")
            if row["status"] not in sources(Transition.REQUEUED):
                status = status_name(row["status"])
                raise InvalidTransition(
                    f"task {task_id} is {status}; only failed or cancelled tasks can be retried")
            if not self._retry_one(conn, task_id, now):
                raise InvalidTransition(f"task {task_id}: another pending or running task holds "
                                        f"unique_key {row['unique_key']!r}")

        transaction(self.engine, work)

    def retry_failed(self, now: datetime) -> int:
        """Every failed task → pending; returns how many."""
        def work(conn: Connection) -> int:
            count, after = 0, 0
            while found := list(conn.execute(
                    select(q.c.id).where(q.c.status == int(Status.FAILED), q.c.id > after)
                    .order_by(q.c.id).limit(CHUNK)).scalars()):
                after = found[-1]
                count += sum(self._retry_one(conn, i, now) for i in found)
            return count

        return transaction(self.engine, work)

    @staticmethod
    def _retry_one(conn: Connection, task_id: int, now: datetime) -> bool:
        stmt = (update(q).where(q.c.id == task_id, status_is(Transition.REQUEUED))
                .values(**sql_values(Transition.REQUEUED, q, now=now)))
        try:
            return bool(conn.execute(stmt).rowcount == 1)
        except IntegrityError:
            log.warning("task=%d retry refused: its unique_key is held by an active task",
                        task_id)
            return False

    def purge(self, before: datetime, statuses: Sequence[int] = FINISHED,
              max_chunks: int | None = None) -> int:
        """Delete finished tasks whose finished_at is older than ``before``, in chunks of
        1,000 rows (each its own short transaction); at most ``max_chunks`` if given."""
        found = (select(q.c.id).where(q.c.status.in_(statuses), q.c.finished_at < before)
                 .limit(CHUNK))
        return delete_in_chunks(self.engine, found, _delete_finished, max_chunks)


def _delete_finished(task_ids: Sequence[int]) -> Delete:
    return delete(q).where(q.c.id.in_(task_ids), status_is(Transition.PURGED))
