"""What the metrics read (``cronqueue/metrics.py``), in one read-only transaction: the tasks
per status and queue, each queue's oldest due task, the rollup's counters, each host's last
mission tick, each schedule entry's last run, the shards registered per host.

Every read is served by an index or reads a small table, and is bounded (``MAX_GROUPS``
(status, queue) pairs, ``MAX_HOSTS`` hosts). Every value read is untrusted: a queue name that
is not text is decoded (``decode.optional_text``), a time that is not a time is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from cronqueue import decode
from cronqueue.model import Status, status_name
from cronqueue.process.identity import HOST_ID_SEP
from cronqueue.store import rollup
from cronqueue.store.engine import transaction
from cronqueue.store.schema import queue_table as q
from cronqueue.store.schema import runs_table as r
from cronqueue.store.schema import ticks_table as t
from cronqueue.store.schema import workers_table as w
from cronqueue.store.watch import oldest_due_at

MAX_GROUPS = 1000  # (status, queue) pairs counted: queues beyond are left out (and logged)
MAX_HOSTS = 100


@dataclass(frozen=True)
class Scrape:
    tasks: dict[tuple[str, str], int]  # (queue, status name) -> rows
    oldest_due: dict[str, datetime]  # queue -> run_at of its oldest due pending task
    counters: list[rollup.Counters]  # the rollup's rows, queue names decoded
    ticks: dict[str, datetime]  # host -> end of its mission's last tick
    last_runs: dict[str, datetime]  # schedule entry -> when its newest run fired
    workers: dict[str, int]  # host -> shards registered
    groups_cut: bool  # more than MAX_GROUPS (status, queue) pairs: the rest not counted


def host_name(identity: Any) -> str:
    """The host of a recorded identity (``hostname#id``, see ``process/identity.py``): the
    id changes with each boot, a label must not."""
    return _text("host", identity).split(HOST_ID_SEP, 1)[0]


def _text(name: str, value: Any) -> str:
    return decode.optional_text(name, value, decode.Problems()) or ""


def read(engine: Engine, now: datetime, entries: Sequence[str]) -> Scrape:
    """Everything the metrics show, as of ``now``; ``entries``: the schedule entries whose
    last run is read (the configuration's)."""
    return transaction(engine, lambda conn: _read(conn, now, entries), readonly=True)


def _read(conn: Connection, now: datetime, entries: Sequence[str]) -> Scrape:
    # (status, queue) pairs and their rows: the claim index, read in its order.
    counted = (select(q.c.status, q.c.queue, func.count())
               .group_by(q.c.status, q.c.queue).order_by(q.c.status, q.c.queue)
               .limit(MAX_GROUPS + 1))
    rows = list(conn.execute(counted))
    tasks: dict[tuple[str, str], int] = {}
    pending: list[Any] = []  # the queue values as stored, for the oldest-due reads
    for status, queue, n in rows[:MAX_GROUPS]:
        key = (_text("queue", queue), status_name(status))
        tasks[key] = tasks.get(key, 0) + int(n)
        if status == int(Status.PENDING):
            pending.append(queue)
    # Each queue's oldest due task: one seek on ix_queue_due (status, queue, run_at).
    oldest: dict[str, datetime] = {}
    for queue in pending:
        at = oldest_due_at(conn, queue, now)
        if at is not None:
            oldest[_text("queue", queue)] = at
    ticks: dict[str, datetime] = {}
    for host, finished in conn.execute(select(t.c.host, t.c.finished_at)
                                       .order_by(t.c.finished_at.desc()).limit(MAX_HOSTS)):
        name = host_name(host)
        if isinstance(finished, datetime) and (name not in ticks or finished > ticks[name]):
            ticks[name] = finished
    last_runs: dict[str, datetime] = {}
    for entry in entries:  # its newest run (not a skipped one): ux_runs_entry_time, backwards
        fired = conn.execute(select(r.c.fired_at)
                             .where(r.c.entry == entry, r.c.outcome.not_like("skipped%"))
                             .order_by(r.c.scheduled_at.desc()).limit(1)).scalar()
        if isinstance(fired, datetime):
            last_runs[entry] = fired
    workers: dict[str, int] = {}
    for host, n in conn.execute(select(w.c.host, func.count()).group_by(w.c.host)
                                .limit(MAX_HOSTS)):
        name = host_name(host)
        workers[name] = workers.get(name, 0) + int(n)
    counters = [c if isinstance(c.queue, str) and isinstance(c.outcome, str)
                else rollup.Counters(_text("queue", c.queue), _text("outcome", c.outcome),
                                     c.finished, c.timed, c.duration_seconds, c.buckets)
                for c in rollup.read(conn)]
    return Scrape(tasks, oldest, counters, ticks, last_runs, workers,
                  len(rows) > MAX_GROUPS)


def last_tick(engine: Engine) -> datetime | None:
    """When the newest mission tick (of any host) ended: ``/healthz``."""
    stmt = select(func.max(t.c.finished_at))
    value = transaction(engine, lambda conn: conn.execute(stmt).scalar(), readonly=True,
                        attempts=1)
    return value if isinstance(value, datetime) else None
