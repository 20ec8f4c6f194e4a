"""What the alerts read from ``queue`` each tick (``cronqueue/alerts/rules.py``): the finished
tasks since a time grouped by queue and script, the newest failures of one group, the tasks of
the mission entries' last runs, and the oldest due task per queue. Every read is bounded, and
every value read is untrusted (a row written by hand is left out, never a crash)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, func, literal, or_, select

from cronqueue.model import Status
from cronqueue.store.engine import transaction
from cronqueue.store.pauses import pending_queue_names
from cronqueue.store.rows import bind
from cronqueue.store.schema import queue_table as q

MAX_GROUPS = 1000  # (queue, script) groups read per tick
DUE_CAP = 10_000  # a backlog's due tasks are counted up to this


@dataclass(frozen=True)
class Group:
    """The tasks of one (queue, script) that finished since a time, by outcome."""

    queue: str
    script: str
    failed: int = 0
    done: int = 0
    last_failed: datetime | None = None
    last_done: datetime | None = None


@dataclass(frozen=True)
class TaskSeen:
    id: int
    status: int
    attempts: int | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str
    output: str


def _time(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@functools.cache
def _oldest_due() -> Select[Any]:
    return (select(q.c.run_at)
            .where(q.c.status == int(Status.PENDING), q.c.queue == bind("queue"),
                   q.c.run_at <= bind("now", "run_at"))
            .order_by(q.c.run_at).limit(1))


def oldest_due_at(conn: Connection, queue: Any, now: datetime) -> datetime | None:
    """The ``run_at`` of ``queue``'s oldest due pending task (None: none, or no time): one
    seek on ``ix_queue_due`` (status, queue, run_at). The alerts' backlog rule and the
    metrics."""
    at = conn.execute(_oldest_due(), {"queue": queue, "now": now}).scalar()
    return at if isinstance(at, datetime) else None


def _task(m: Any) -> TaskSeen | None:
    status, task_id = _int(m["status"]), _int(m["id"])
    if status is None or task_id is None:
        return None
    return TaskSeen(task_id, status, _int(m["attempts"]), _time(m["started_at"]),
                    _time(m["finished_at"]), _int(m["exit_code"]),
                    m["error"] if isinstance(m["error"], str) else "",
                    m["output"] if isinstance(m["output"], str) else "")


_TASK_COLUMNS = (q.c.id, q.c.status, q.c.attempts, q.c.started_at, q.c.finished_at,
                 q.c.exit_code, q.c.error, q.c.output)


class Watch:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def finished_since(self, since: datetime, *, queues: Sequence[str] | None,
                       scripts: Sequence[str]) -> list[Group]:
        """Done and failed tasks finished after ``since`` (index ``ix_queue_finished``), per
        (queue, script), of the ``queues`` (None: every queue) or the ``scripts``."""
        stmt = (select(q.c.queue, q.c.taskscript, q.c.status, func.count(),
                       func.max(q.c.finished_at))
                .where(q.c.finished_at > since,
                       q.c.status.in_([int(Status.DONE), int(Status.FAILED)]))
                .group_by(q.c.queue, q.c.taskscript, q.c.status)
                .limit(2 * MAX_GROUPS))
        if queues is not None:
            stmt = stmt.where(or_(q.c.queue.in_(list(queues)),
                                  q.c.taskscript.in_(list(scripts))))
        rows = transaction(self.engine, lambda c: list(c.execute(stmt)), readonly=True)
        groups: dict[tuple[str, str], Group] = {}
        for queue, script, status, count, newest in rows:
            if not isinstance(queue, str) or not isinstance(script, str) \
                    or _time(newest) is None:
                continue
            g = groups.get((queue, script), Group(queue, script))
            if status == Status.FAILED:
                g = Group(queue, script, int(count), g.done, newest, g.last_done)
            else:
                g = Group(queue, script, g.failed, int(count), g.last_failed, newest)
            groups[(queue, script)] = g
        return list(groups.values())[:MAX_GROUPS]

    def failures(self, queue: str, script: str, since: datetime,
                 limit: int = 3) -> list[TaskSeen]:
        """The newest failed tasks of (queue, script) finished after ``since``."""
        stmt = (select(*_TASK_COLUMNS)
                .where(q.c.finished_at > since, q.c.status == int(Status.FAILED),
                       q.c.queue == queue, q.c.taskscript == script)
                .order_by(q.c.finished_at.desc()).limit(limit))
        return self._tasks(stmt)

    def tasks(self, task_ids: Sequence[int]) -> dict[int, TaskSeen]:
        """The tasks of these ids that exist, by id."""
        if not task_ids:
            return {}
        stmt = select(*_TASK_COLUMNS).where(q.c.id.in_(list(task_ids)))
        return {t.id: t for t in self._tasks(stmt)}

    def _tasks(self, stmt: Select[Any]) -> list[TaskSeen]:
        rows = transaction(self.engine, lambda c: list(c.execute(stmt).mappings()),
                           readonly=True)
        return [t for t in map(_task, rows) if t is not None]

    def oldest_due(self, now: datetime, queues: Sequence[str] | None) -> dict[str, datetime]:
        """The ``run_at`` of each queue's oldest due pending task (``queues``: those only;
        None: every queue with a pending task, at most MAX_GROUPS). One seek per queue on
        ``ix_queue_due`` (status, queue, run_at), and one per queue to find them: a
        ``GROUP BY`` read every pending row (100,000: 45 ms on MariaDB, each tick)."""

        def work(conn: Connection) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for name in queues if queues is not None else pending_queue_names(conn, MAX_GROUPS):
                at = oldest_due_at(conn, name, now)
                if at is not None:
                    out[name] = at
            return out

        return transaction(self.engine, work, readonly=True)

    def due_count(self, queue: str, now: datetime) -> int:
        """How many tasks of ``queue`` are due (counted up to DUE_CAP)."""
        inner = (select(literal(1)).where(q.c.status == int(Status.PENDING),
                                          q.c.queue == queue, q.c.run_at <= now)
                 .limit(DUE_CAP).subquery())
        stmt = select(func.count()).select_from(inner)
        return int(transaction(self.engine, lambda c: c.execute(stmt).scalar_one(),
                               readonly=True))
