"""What the dashboard reads (``cronqueue web``), beside the methods that run it: the overview's
counts, the per-minute outcomes, the task list and one task — every read bounded, whatever the
size of the table.

* No ``OFFSET`` and no unbounded ``COUNT(*)``: a count stops at a cap (``COUNT(*)`` over a
  ``LIMIT cap + 1`` subquery, shown as "cap+"), and lists page by the primary key (keyset,
  ``id < :after``, newest first, ``LIMIT n + 1`` to know whether there is more).
* A list reads at most ``SCAN`` rows per page: the rows of a status that has few (its index
  range), else the next ``SCAN`` ids below the cursor, and the filters that no index serves
  (script, unique key, a substring of the param, a time range, a future run_at) are applied
  within that window. A page that found fewer than it shows but scanned a full window offers to
  go on from where the window ended: every row is seen exactly once across pages.
* The (status, queue) pairs come from a skip scan of the claim index (``ix_queue_claim``:
  status, queue, ...): one index seek per pair, never a ``DISTINCT`` or ``GROUP BY`` over the
  rows (MariaDB walked the whole index for one: 260 ms on 1.1M rows).

Secrets never leave the database here: a row's ``secret`` is read as "set" or NULL. Every
value is a bound parameter.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    case,
    func,
    literal,
    null,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from cronqueue.model import Status, Task
from cronqueue.store.engine import transaction
from cronqueue.store.rows import capped_count
from cronqueue.store.schema import queue_table as q
from cronqueue.store.schema import ticks_table as t

SCAN = 20_000  # rows one page of a list reads at most
COUNT_CAP = 100_000  # a count of pending or running tasks stops here ("100000+")
FINISHED_CAP = 10_000  # a count of done, failed or cancelled tasks stops here
MAX_PAIRS = 500  # (status, queue) pairs the overview counts
SECRET_SET = ""  # a row's secret as read here: "" when it has one, None when not


@functools.cache
def _columns() -> tuple[ColumnElement[Any], ...]:
    marker = case((q.c.secret.is_(None), null()), else_=literal(SECRET_SET))
    return (*[c for c in q.c if c.name != "secret"], marker.label("secret"))


@dataclass(frozen=True)
class TaskFilter:
    """What a task list is filtered by; None = any. ``param`` is a substring of the param,
    ``since``/``until`` bound ``ctime``, ``delayed``: pending with a run_at after ``now``."""

    status: int | None = None
    queue: str | None = None
    script: str | None = None
    unique_key: str | None = None
    param: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    delayed: bool = False

    def predicates(self, now: datetime) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.status is not None:
            out.append(q.c.status == self.status)
        if self.queue is not None:
            out.append(q.c.queue == self.queue)
        if self.script is not None:
            out.append(q.c.taskscript == self.script)
        if self.unique_key is not None:
            out.append(q.c.unique_key == self.unique_key)
        if self.param:
            out.append(q.c.param.contains(self.param, autoescape=True))
        if self.since is not None:
            out.append(q.c.ctime >= self.since)
        if self.until is not None:
            out.append(q.c.ctime < self.until)
        if self.delayed:
            out.append(q.c.run_at > now)
        return out


@dataclass(frozen=True)
class Page:
    tasks: list[Task]
    after: int | None  # the cursor of the next page (``id < after``), None at the end
    scanned_to: int | None  # the window ended at this id with fewer matches than a page


@dataclass(frozen=True)
class Count:
    value: int
    capped: bool  # at least ``value``

    def __str__(self) -> str:
        return f"{self.value}+" if self.capped else str(self.value)


@dataclass(frozen=True)
class Overview:
    counts: dict[str, dict[int, Count]]  # queue -> status code -> count
    oldest_due: dict[str, datetime]  # queue -> run_at of its oldest due pending task
    ticks: dict[str, datetime]  # host -> when its last mission tick ended (cronqueue_ticks)
    pairs_cut: bool  # more (status, queue) pairs than MAX_PAIRS: the rest not counted


def _capped(conn: Connection, where: Sequence[ColumnElement[bool]], cap: int) -> Count:
    n = int(conn.execute(capped_count(where, cap)).scalar_one())
    return Count(min(n, cap), n > cap)


def _pairs(conn: Connection, most: int) -> list[tuple[int, str]]:
    """The distinct (status, queue) pairs, in order, by seeks on ``ix_queue_claim``: the next
    queue within a status, else the first queue of the next status."""
    first = (select(q.c.status, q.c.queue).order_by(q.c.status, q.c.queue).limit(1))
    out: list[tuple[int, str]] = []
    found = conn.execute(first).first()
    row: tuple[Any, Any] | None = None if found is None else (found[0], found[1])
    while row is not None and len(out) < most:
        status, queue = row
        if not isinstance(status, int) or not isinstance(queue, str):
            break  # a hand-written value (not a code, a name that is no text): the CLI's stats
        out.append((status, queue))
        same = conn.execute(select(q.c.queue).where(q.c.status == status, q.c.queue > queue)
                            .order_by(q.c.queue).limit(1)).first()
        if same is not None:
            row = (status, same[0])
            continue
        found = conn.execute(first.where(q.c.status > status)).first()
        row = None if found is None else (found[0], found[1])
    return out


class Browse:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the overview -------------------------------------------------------------------------

    def overview(self, now: datetime, cap: int | None = None) -> Overview:
        """Counts per queue and status (each stopping at its cap: ``cap``, else
        ``COUNT_CAP`` for pending and running, ``FINISHED_CAP`` for the rest), the oldest due
        task per queue, when each host's last mission tick ended."""
        # Grouped by (status, queue), a prefix of ix_queue_due (status, queue, run_at): one
        # seek per queue (MariaDB: "Using index for group-by", 0.5 ms); by queue alone it read
        # the index entry of every pending row (25-35 ms on 100,000).
        due = (select(q.c.queue, func.min(q.c.run_at))
               .where(q.c.status == int(Status.PENDING), q.c.run_at <= now)
               .group_by(q.c.status, q.c.queue))
        ticks = select(t.c.host, t.c.finished_at).order_by(t.c.finished_at.desc()).limit(100)

        def work(conn: Connection) -> Overview:
            found = _pairs(conn, MAX_PAIRS + 1)
            counts: dict[str, dict[int, Count]] = {}
            for status, queue in found[:MAX_PAIRS]:
                limit = cap if cap is not None else (
                    COUNT_CAP if status in (Status.PENDING, Status.RUNNING) else FINISHED_CAP)
                counts.setdefault(queue, {})[status] = _capped(
                    conn, [q.c.status == status, q.c.queue == queue], limit)
            oldest = {str(qn): at for qn, at in conn.execute(due)
                      if isinstance(at, datetime)}
            hosts = {str(h): at for h, at in conn.execute(ticks) if isinstance(at, datetime)}
            return Overview(counts, oldest, hosts, len(found) > MAX_PAIRS)

        return transaction(self.engine, work, readonly=True)

    def finished_per_minute(self, since: datetime,
                            until: datetime | None = None) -> dict[tuple[str, int], int]:
        """(minute as ``YYYY-MM-DD HH:MM`` UTC, status) -> tasks done or failed in it, from
        ``finished_at`` from ``since`` (to ``until``). The minute is the first 16 characters
        of the stored time: ISO text on SQLite, a DATETIME as text on MySQL/MariaDB. Three
        reads, each served by an index: the finished tasks per minute from
        ``ix_queue_finished`` alone (no row is read: 1M rows in 0.5 s on MariaDB, where
        grouping by status too read every row, 2.4 s), the failed and the cancelled per minute
        by the status index (few, next to the done); done is the rest."""
        minute = func.substr(q.c.finished_at, 1, 16, type_=String()).label("minute")
        total = (select(minute, func.count()).where(q.c.finished_at >= since)
                 .group_by(minute))

        of = {status: select(minute, func.count())
              .where(q.c.status == int(status), q.c.finished_at >= since).group_by(minute)
              for status in (Status.FAILED, Status.CANCELLED)}

        def work(conn: Connection) -> dict[tuple[str, int], int]:
            failed = {str(m): int(n) for m, n in conn.execute(of[Status.FAILED])}
            cancelled = {str(m): int(n) for m, n in conn.execute(of[Status.CANCELLED])}
            out: dict[tuple[str, int], int] = {}
            for m, n in conn.execute(total):
                key = str(m)
                done = int(n) - failed.get(key, 0) - cancelled.get(key, 0)
                if done > 0:
                    out[(key, int(Status.DONE))] = done
            for key, n in failed.items():
                out[(key, int(Status.FAILED))] = n
            return out

        return transaction(self.engine, work, readonly=True)

    def finished_count(self, since: datetime, until: datetime, cap: int) -> Count:
        """Tasks finished in [since, until), counted up to ``cap`` (``ix_queue_finished``)."""
        return transaction(self.engine, lambda conn: _capped(
            conn, [q.c.finished_at >= since, q.c.finished_at < until], cap), readonly=True)

    # -- lists --------------------------------------------------------------------------------

    def _window(self, conn: Connection, f: TaskFilter, after: int | None) -> Select[Any]:
        """The ids one page may look at: at most SCAN, newest first, below ``after``. By the
        status index when the status has few rows (all of them then fit), else by the key."""
        stmt = select(q.c.id)
        if after is not None:
            stmt = stmt.where(q.c.id < after)
        if f.status is not None:
            indexed = [q.c.status == f.status]
            if f.queue is not None:
                indexed.append(q.c.queue == f.queue)
            if not _capped(conn, indexed, SCAN).capped:
                stmt = stmt.where(*indexed)
        return stmt.order_by(q.c.id.desc()).limit(SCAN)

    def tasks(self, f: TaskFilter, now: datetime, *, after: int | None = None,
              limit: int = 50) -> Page:
        """One page of tasks matching ``f``, newest first, below ``after``."""
        def work(conn: Connection) -> Page:
            window = self._window(conn, f, after).subquery()
            stmt = (select(*_columns()).join(window, q.c.id == window.c.id)
                    .where(*f.predicates(now)).order_by(q.c.id.desc()).limit(limit + 1))
            rows = [Task.from_row(row) for row in conn.execute(stmt).mappings()]
            if len(rows) > limit:
                return Page(rows[:limit], rows[limit - 1].id, None)
            low, seen = conn.execute(select(func.min(window.c.id), func.count())
                                     .select_from(window)).one()
            if seen < SCAN or low is None:
                return Page(rows, None, None)
            return Page(rows, int(low), int(low))

        return transaction(self.engine, work, readonly=True)

    def matching_ids(self, f: TaskFilter, now: datetime, cap: int,
                     max_windows: int = 10) -> tuple[list[int], bool]:
        """Up to ``cap`` ids matching ``f``, newest first, from at most ``max_windows`` windows;
        and whether the search stopped before the end of the table (more may match)."""
        found: list[int] = []
        after: int | None = None
        for _ in range(max_windows):
            page = self.tasks(f, now, after=after, limit=cap - len(found))
            found += [t.id for t in page.tasks]
            after = page.after
            if after is None or len(found) >= cap:
                return found, after is not None
        return found, True

    # -- one task -----------------------------------------------------------------------------

    def task(self, task_id: int) -> Task | None:
        """One task, its secret only marked as set (``SECRET_SET``) or not."""
        stmt = select(*_columns()).where(q.c.id == task_id)

        def work(conn: Connection) -> Task | None:
            row = conn.execute(stmt).mappings().first()
            return Task.from_row(row) if row is not None else None

        return transaction(self.engine, work, readonly=True)


def ping(engine: Engine) -> None:
    """One trivial statement: raises ``DatabaseError`` when the database does not answer."""
    transaction(engine, lambda conn: conn.execute(select(literal(1))).scalar(),
                readonly=True, attempts=1)


__all__ = ["COUNT_CAP", "SCAN", "Browse", "Count", "Overview", "Page", "TaskFilter", "ping"]
