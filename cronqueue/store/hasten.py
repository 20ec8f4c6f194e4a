"""``hastened``: "run now" of a delayed task — a pending row whose run_at is ahead becomes due
at once (``states.Transition.HASTENED``: run_at = now, nothing else). The dashboard's Delayed
page takes it; a failed or cancelled task is run now by ``retry`` instead (``requeued``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, select, update

from cronqueue.errors import InvalidTransition, TaskNotFound
from cronqueue.model import status_name
from cronqueue.states import Transition, sources, sql_values
from cronqueue.store.engine import transaction
from cronqueue.store.schema import queue_table as q


def hasten(engine: Engine, task_id: int, now: datetime) -> None:
    """Pending with a run_at after ``now`` -> due now. Raises ``TaskNotFound`` or
    ``InvalidTransition`` (not pending, or due already)."""
    stmt = (update(q).where(q.c.id == task_id, q.c.status.in_(sources(Transition.HASTENED)),
                            q.c.run_at > now)
            .values(**sql_values(Transition.HASTENED, q, now=now)))

    def work(conn: Connection) -> None:
        if conn.execute(stmt).rowcount == 1:
            return
        row = conn.execute(select(q.c.status).where(q.c.id == task_id)).first()
        if row is None:
            raise TaskNotFound(f"no task with id {task_id}")
        if row[0] in sources(Transition.HASTENED):
            raise InvalidTransition(f"task {task_id} is due already")
        raise InvalidTransition(f"task {task_id} is {status_name(row[0])}; only a pending task "
                                "can be run now (retry a failed or cancelled one)")

    transaction(engine, work)
