"""``cronqueue_rollup``: the counters of finished tasks per (queue, outcome) — how many, how
many a shard timed, the sum of their run times and the histogram buckets — for the metrics
(``cronqueue/metrics.py``).

They are added to by the statement that records the outcomes, in the same transaction: the
shard's group commit (``Outcomes.flush``: done, failed, and rows rejected unrun), the rescue's
``rescue_failed`` (``Outcomes.settle``) and ``cancel`` (``Tasks.cancel``). One statement per
transaction, whatever the number of tasks and queues: an ``INSERT ... SELECT ... GROUP BY`` over
the rows just written (by primary key), which adds to the existing rows (``Backend.
insert_or_add``). Nothing ever subtracts: a purge of ``queue`` leaves the counters as they are,
and a retried task that finishes again counts again.

The run time is ``finished_at - started_at`` as the shard recorded them; a row without a start
(rejected unrun), or one whose outcome no shard timed (the rescue's: its run's end was not
seen; a cancel), counts in ``finished`` but not in the histogram.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Insert,
    Select,
    case,
    cast,
    func,
    literal,
    null,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from cronqueue.model import Status
from cronqueue.store.backends import Backend
from cronqueue.store.rows import CHUNK, ids
from cronqueue.store.schema import DURATION_BUCKETS, bucket_column
from cronqueue.store.schema import queue_table as q
from cronqueue.store.schema import rollup_table as ru

OUTCOMES = {int(s): s.name.lower() for s in (Status.DONE, Status.FAILED, Status.CANCELLED)}
KEY = ("queue", "outcome")


@functools.cache
def _add(backend: Backend, timed: bool) -> Insert:
    """Add rows ``ids`` (in a finished status) to their (queue, outcome) counters."""
    outcome = case(*[(q.c.status == code, literal(name)) for code, name in OUTCOMES.items()])
    run: ColumnElement[Any]
    if timed:
        us = backend.microseconds(q.c.started_at, q.c.finished_at)
        run = case((us >= 0, us), else_=null())  # a clock stepped back: no duration
    else:
        run = cast(null(), BigInteger)
    rows = (select(q.c.queue.label("queue"), outcome.label("outcome"), run.label("us"))
            # status + 0: found by primary key (SQLite chose the status index and walked
            # every finished row's entry on each group commit)
            .where(q.c.id.in_(ids()), (q.c.status + 0).in_(list(OUTCOMES)))
            # A no-op (at most CHUNK ids) that keeps SQLite from flattening the subquery:
            # flattened, every bucket evaluated ``us`` (4 strftime) again, 3.5 ms a group
            # commit of 50; as a co-routine 0.3 ms.
            .limit(CHUNK)
            .subquery())
    columns = [
        rows.c.queue.label("queue"), rows.c.outcome.label("outcome"),
        func.count().label("finished"),
        func.count(rows.c.us).label("timed"),
        func.coalesce(func.sum(rows.c.us), 0).label("duration_us"),
        *[func.coalesce(func.sum(case((rows.c.us <= round(b * 1_000_000), 1), else_=0)), 0)
          .label(bucket_column(b)) for b in DURATION_BUCKETS],
    ]
    counted: Select[Any] = (select(*columns).group_by(rows.c.queue, rows.c.outcome))
    return backend.insert_or_add(ru, counted, KEY)


def add_finished(conn: Connection, backend: Backend, task_ids: Sequence[int], *,
                 timed: bool) -> None:
    """Count rows ``task_ids`` — just written, in this transaction, into done, failed or
    cancelled (others are left out) — in their (queue, outcome) counters. ``timed``: their
    run times go into the histogram (a shard's outcomes)."""
    for start in range(0, len(task_ids), CHUNK):
        conn.execute(_add(backend, timed), {"ids": list(task_ids[start:start + CHUNK])})


@dataclass(frozen=True)
class Counters:
    """One row of the rollup, as read (values are untrusted: see ``read``)."""

    queue: Any
    outcome: Any
    finished: int
    timed: int
    duration_seconds: float
    buckets: tuple[int, ...]  # cumulative, one per DURATION_BUCKETS bound


def read(conn: Connection) -> list[Counters]:
    """Every row (one per queue and outcome that ever finished a task), by key. A counter
    that is not a number (a row written by hand) reads as 0."""
    out = []
    for row in conn.execute(select(ru).order_by(ru.c.queue, ru.c.outcome)).mappings():
        out.append(Counters(
            row["queue"], row["outcome"], _count(row["finished"]), _count(row["timed"]),
            _count(row["duration_us"]) / 1_000_000,
            tuple(_count(row[bucket_column(b)]) for b in DURATION_BUCKETS)))
    return out


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
