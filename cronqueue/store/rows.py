"""What the statements on ``queue`` share: the columns a read of many rows returns, typed bind
parameters, the claim fence, and a status guard taken from ``states.py``.

Every value is a bound parameter; nothing here formats user input into SQL text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, bindparam, case, func, literal, null, select
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from cronqueue.states import Transition, sources
from cronqueue.store.schema import queue_table as q

CHUNK = 1000  # ids per statement / rows per transaction of the chunked operations

# Rows read in numbers (a claim's batch, a listing, the rescue's running rows) leave the secret
# (up to 8 MiB each) in the database: their ``secret`` is ``SECRET_ELSEWHERE`` when the row has
# one, None when not. A shard reads a task's secret when the task starts (``Tasks.secret``).
SECRET_ELSEWHERE = ""


@functools.cache
def task_columns() -> tuple[ColumnElement[Any], ...]:
    """Every column of ``queue``, the secret replaced by ``SECRET_ELSEWHERE`` or NULL."""
    marker = case((q.c.secret.is_(None), null()), else_=literal(SECRET_ELSEWHERE))
    return (*[c for c in q.c if c.name != "secret"], marker.label("secret"))


def ids() -> BindParameter[Any]:
    """``ids``: a list bound as one parameter, expanded into ``IN (...)`` when executed."""
    return bindparam("ids", expanding=True, type_=q.c.id.type)


def bind(name: str, column: str | None = None) -> BindParameter[Any]:
    """Parameter ``name``, typed as column ``column`` (default: the column of that name)."""
    return bindparam(name, type_=q.c[column or name].type)


def status_is(transition: Transition, *, by_key: bool = False) -> ColumnElement[bool]:
    """The row is in a status ``transition`` leaves. ``by_key``: the rows are found by primary
    key, and ``status + 0`` keeps the server off the status indexes (SQLite would otherwise
    walk the status index through every pending row: 120 ms per claim with a million)."""
    column: ColumnElement[int] = q.c.status + 0 if by_key else q.c.status
    codes = sources(transition)
    return column == codes[0] if len(codes) == 1 else column.in_(codes)


def fence() -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The fence of a shard's writes: the row is still running under claim ``token`` (a bound
    parameter), so a shard that lost its claim changes nothing."""
    return q.c.claim_token == bind("token", "claim_token"), status_is(Transition.STARTED)


def capped_count(where: Sequence[ColumnElement[bool]], cap: int) -> Select[Any]:
    """How many rows of ``queue`` match ``where``, counted up to ``cap + 1`` (``cap + 1``: more
    than ``cap``): a ``COUNT(*)`` over a ``LIMIT`` subquery, never over the whole table."""
    inner = select(literal(1)).select_from(q).where(*where).limit(cap + 1).subquery()
    return select(func.count()).select_from(inner)
