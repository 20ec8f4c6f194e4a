"""``cronqueue purge``'s reads and the deletion of unfinished tasks.

* ``purgeable`` counts, per status, what a purge would delete (``--dry-run``): each count a
  ``COUNT(*)`` over a ``LIMIT cap + 1`` subquery, so ``cap + 1`` reads "more than ``cap``".
* ``discard`` deletes pending or running tasks created before a time (the ``discarded`` edge
  of ``states.py``), in chunks of ``CHUNK`` rows, each its own short transaction; the
  statement keeps the edge's status guard, so a row that finished meanwhile is left to
  ``purge`` by its ``finished_at``.

Finished tasks are aged by ``finished_at`` (``Tasks.purge``), unfinished ones by ``ctime``
(they have no ``finished_at``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Delete, Engine, delete, select

from cronqueue.model import Status
from cronqueue.states import Transition, sources
from cronqueue.store.engine import transaction
from cronqueue.store.rows import CHUNK, capped_count, status_is
from cronqueue.store.schema import queue_table as q
from cronqueue.store.tasks import delete_in_chunks

FINISHED = frozenset(sources(Transition.PURGED))  # done, failed, cancelled
UNFINISHED = frozenset(sources(Transition.DISCARDED))  # pending, running


def older(status: int, before: datetime) -> ColumnElement[bool]:
    """A row of ``status`` aged past ``before``: finished by ``finished_at``, else ``ctime``."""
    column = q.c.finished_at if status in FINISHED else q.c.ctime
    return column < before


def purgeable(engine: Engine, before: datetime, statuses: Iterable[int],
              cap: int) -> dict[int, int]:
    """Per status, how many rows a purge of ``statuses`` older than ``before`` would delete,
    each counted up to ``cap + 1`` (more than ``cap``)."""
    wanted = sorted(set(statuses))
    stmts = {s: capped_count([q.c.status == s, older(s, before)], cap) for s in wanted}
    return transaction(engine, lambda conn: {
        s: int(conn.execute(stmt).scalar_one()) for s, stmt in stmts.items()}, readonly=True)


def discard(engine: Engine, before: datetime,
            statuses: Sequence[int] = (int(Status.PENDING), int(Status.RUNNING))) -> int:
    """Delete pending/running tasks whose ``ctime`` is older than ``before``; how many."""
    if not set(statuses) <= UNFINISHED:
        raise ValueError(f"discard takes pending or running, not {sorted(statuses)}")
    if not statuses:
        return 0
    codes = list(statuses)
    found = select(q.c.id).where(q.c.status.in_(codes), q.c.ctime < before).limit(CHUNK)

    def delete_ids(task_ids: Sequence[int]) -> Delete:
        # the edge's guard, narrowed to the statuses asked: a pending row that started
        # meanwhile is not deleted by a purge of pending ones
        return delete(q).where(q.c.id.in_(task_ids), status_is(Transition.DISCARDED),
                               q.c.status.in_(codes))

    return delete_in_chunks(engine, found, delete_ids, None)
