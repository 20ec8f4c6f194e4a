"""``cronqueue_pauses``: paused queues and mission entries.

One row per (kind, name), kind ``queue`` or ``entry``. A pause is on while its
``paused_until`` is NULL or later than the reader's clock: an expired ``--until`` counts as
resumed without anyone writing, and ``resume`` writes the time of the resume there. The row is
kept when the pause ends: the mission reads when an entry's last pause ended so that it does
not catch up the times it skipped (``Pause.ended``), and a new pause of the name writes over it.

Who reads it:

* the claim (``claims.py``) reads the names of the paused queues once per claim, as the first
  statement of its transaction (``paused_names``), and its candidate read leaves them out
  (``NOT IN`` a bound list, or the queues that have pending rows read one by one:
  ``pending_queues``);
* the mission tick reads every entry's row once per tick (``Pauses.rows``);
* ``stats``, ``list``, ``schedule`` and the dashboard show the pauses in force.

Rows are untrusted: a name that is not text or a time that is not one (written by hand) is
skipped by the readers (a row without a readable ``paused_until`` is taken as a pause with no
end, the safe side for a row that says "paused").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError

from cronqueue.model import Status
from cronqueue.store.engine import transaction
from cronqueue.store.schema import UTCDateTime
from cronqueue.store.schema import pauses_table as p
from cronqueue.store.schema import queue_table as q

KINDS = ("queue", "entry")
MAX_BY = 255
MAX_REASON = 1000
# A claim over every queue while some are paused reads the queues that have pending rows one by
# one when there are at most this many (each walks its own index in claim order, and a paused
# queue's backlog is never scanned); with more, one read over every queue leaves the paused ones
# out with NOT IN (it passes over their due rows as it walks the index).
MAX_SPLIT = 32


@dataclass(frozen=True, slots=True)
class Pause:
    kind: str
    name: str
    paused_at: datetime | None
    until: datetime | None  # None: until resumed
    by: str
    reason: str

    def active(self, now: datetime) -> bool:
        return self.until is None or self.until > now

    def ended(self, now: datetime) -> datetime | None:
        """When this pause ended (a resume, or its ``until`` passed); None while it is on."""
        return None if self.active(now) else self.until

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name,
                "since": self.paused_at.isoformat() if self.paused_at else None,
                "until": self.until.isoformat() if self.until else None,
                "by": self.by, "reason": self.reason}

    def details(self) -> dict[str, Any]:
        """``as_dict`` without kind and name (since, until, by, reason): a pause shown beside
        what it pauses (``list --json``'s ``queue_paused``, ``schedule()``'s ``paused``)."""
        return {k: v for k, v in self.as_dict().items() if k not in ("kind", "name")}

    @classmethod
    def from_row(cls, row: Any) -> Pause | None:
        """A row as a Pause; None for one that cannot be one (hand-written)."""
        kind, name = row["kind"], row["name"]
        if kind not in KINDS or not isinstance(name, str):
            return None
        at, until = row["paused_at"], row["paused_until"]
        return cls(kind, name, at if isinstance(at, datetime) else None,
                   until if isinstance(until, datetime) else None,
                   _text(row["paused_by"]), _text(row["reason"]))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# -- what the claim reads ---------------------------------------------------------------------

@functools.cache
def _paused_names(kind: str) -> Select[Any]:
    """The names of kind ``kind`` paused at ``:now`` (index ``ux_pauses_kind_name``)."""
    now = bindparam("now", type_=UTCDateTime())
    return select(p.c.name).where(p.c.kind == kind,
                                  or_(p.c.paused_until.is_(None), p.c.paused_until > now))


def paused_names(conn: Connection, now: datetime, kind: str = "queue") -> frozenset[str]:
    """The queues (or entries) paused at ``now``: one small read."""
    return frozenset(name for name in conn.execute(_paused_names(kind), {"now": now}).scalars()
                     if isinstance(name, str))


@functools.cache
def _first_pending_queue() -> Select[Any]:
    """The first queue (in name order) that has pending rows: one seek, as below."""
    return (select(q.c.queue).where(q.c.status == int(Status.PENDING))
            .order_by(q.c.queue).limit(1))


@functools.cache
def _next_pending_queue() -> Select[Any]:
    """The first queue after ``:after`` (in name order) that has pending rows: one seek in an
    index on ``(status, queue, ...)`` (``ix_queue_claim``, ``ix_queue_due``: the planner
    picks, both read in order). Asked once per queue, it is a loose index scan;
    ``SELECT DISTINCT queue`` reads every pending row on SQLite, and a recursive CTE's
    correlated ``MIN`` read the whole status range on MariaDB (115-165 ms with 200,000
    pending rows, against 0.2 ms a seek)."""
    return (select(q.c.queue)
            .where(q.c.status == int(Status.PENDING),
                   q.c.queue > bindparam("after", type_=q.c.queue.type))
            .order_by(q.c.queue).limit(1))


def pending_queue_names(conn: Connection, most: int) -> list[str]:
    """The first ``most`` queues with pending rows (due or not, any shard's), in name order:
    at most ``most`` seeks (the claim's split read; the alerts' backlog rule)."""
    names: list[str] = []
    while len(names) < most:
        found = (conn.execute(_next_pending_queue(), {"after": names[-1]}) if names
                 else conn.execute(_first_pending_queue())).scalar()
        if not isinstance(found, str):  # none left (a hand-written name that is no text: end)
            break
        names.append(found)
    return names


def pending_queues(conn: Connection, cap: int) -> list[str] | None:
    """The queues with pending rows (due or not, any shard's), in name order; None if there
    are more than ``cap``: at most ``cap + 1`` seeks."""
    names = pending_queue_names(conn, cap + 1)
    return None if len(names) > cap else names


def unpaused(queues: Iterable[str | None], paused: frozenset[str],
             conn: Connection) -> tuple[list[str | None], frozenset[str]]:
    """What a claim over ``queues`` (``[None]``: every queue) reads while ``paused`` are
    paused: the queues to read one by one, and the names the read of every queue (``None``)
    must leave out."""
    wanted = list(queues)
    if not paused:
        return wanted, frozenset()
    if wanted != [None]:
        return [name for name in wanted if name not in paused], frozenset()
    names = pending_queues(conn, MAX_SPLIT)
    if names is None:  # too many queues to read one by one
        return [None], paused
    return [name for name in names if name not in paused], frozenset()


# -- the table --------------------------------------------------------------------------------

class Pauses:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pause(self, kind: str, name: str, *, now: datetime, until: datetime | None, by: str,
              reason: str) -> Pause:
        """Pause ``name`` from ``now`` until ``until`` (None: until resumed). A pause in force
        keeps its start and takes the new end, author and reason; one that ended starts anew.
        Returns the pause as written."""
        values = {"paused_until": until, "paused_by": by[:MAX_BY], "reason": reason[:MAX_REASON]}
        key = (p.c.kind == kind, p.c.name == name)
        on = or_(p.c.paused_until.is_(None), p.c.paused_until > now)
        # still on: the same pause goes on; ended: a new one starts now
        going_on = update(p).where(*key, on).values(**values)
        again = update(p).where(*key).values(paused_at=now, **values)

        def work(conn: Connection) -> None:
            if conn.execute(going_on).rowcount or conn.execute(again).rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(p.insert().values(kind=kind, name=name, paused_at=now,
                                                   **values))
            except IntegrityError:  # paused by another process meanwhile: ours is the newer
                conn.execute(going_on)

        transaction(self.engine, work)
        found = self.get(kind, name)
        assert found is not None
        return found

    def resume(self, kind: str, name: str, *, now: datetime) -> Pause | None:
        """End the pause of ``name`` now; the pause that was in force, None if none was."""
        key = (p.c.kind == kind, p.c.name == name,
               or_(p.c.paused_until.is_(None), p.c.paused_until > now))
        read = select(p).where(*key)
        end = update(p).where(*key).values(paused_until=now)

        def work(conn: Connection) -> Pause | None:
            row = conn.execute(read).mappings().first()
            if row is None or not conn.execute(end).rowcount:
                return None
            return Pause.from_row(row)

        return transaction(self.engine, work)

    def get(self, kind: str, name: str) -> Pause | None:
        stmt = select(p).where(p.c.kind == kind, p.c.name == name)
        row = transaction(self.engine, lambda conn: conn.execute(stmt).mappings().first(),
                          readonly=True)
        return None if row is None else Pause.from_row(row)

    def rows(self, kind: str) -> dict[str, Pause]:
        """Every row of ``kind``, in force or ended, by name."""
        stmt = select(p).where(p.c.kind == kind).order_by(p.c.name)
        rows = transaction(self.engine, lambda conn: list(conn.execute(stmt).mappings()),
                           readonly=True)
        return {pause.name: pause for pause in map(Pause.from_row, rows) if pause is not None}

    def active(self, kind: str, now: datetime) -> dict[str, Pause]:
        """The pauses of ``kind`` in force at ``now``, by name."""
        return {name: pause for name, pause in self.rows(kind).items() if pause.active(now)}
