"""Every statement cronqueue runs, in one place. The repository and the claim execute them.

All values are bound parameters; nothing here formats user input into SQL text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Delete,
    Executable,
    Select,
    Update,
    bindparam,
    case,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter, ColumnElement, TextClause

from cronqueue.model import Status
from cronqueue.store.schema import queue_table as q
from cronqueue.store.schema import runs_table as r
from cronqueue.store.schema import workers_table as w

FINISHED = (int(Status.DONE), int(Status.FAILED), int(Status.CANCELLED))
NEVER = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # the latest run_at there is


# -- enqueue ----------------------------------------------------------------------------------

def insert_task() -> Insert:
    return q.insert()


# The columns of a plain (no unique_key) task, in the order insert_json_rows reads them.
JSON_ROW_COLUMNS = ("taskscript", "param", "priority", "queue", "ctime", "run_at",
                    "max_attempts", "timeout", "secret")


def insert_json_rows(*, returning: bool = True) -> TextClause:
    """MariaDB >= 10.6: many plain tasks in one statement, sent as one JSON array of rows
    (``JSON_ROW_COLUMNS``, times as naive UTC text) and expanded by ``JSON_TABLE`` on the
    server; the new ids come back in input order. Parameter-bound like everything else: the
    rows are data, never SQL. (An ``INSERT ... VALUES`` of thousands of rows costs the client
    a bound parameter per value; this costs one.)"""
    return _INSERT_JSON_RETURNING if returning else _INSERT_JSON


_INSERT_JSON_SQL = (
    "INSERT INTO queue (taskscript, param, priority, queue, ctime, run_at, max_attempts,"
    " timeout, secret)"
    " SELECT j.taskscript, j.param, j.priority, j.queue, j.ctime, j.run_at,"
    " j.max_attempts, j.timeout, j.secret"
    " FROM JSON_TABLE(:rows, '$[*]' COLUMNS ("
    "  ord FOR ORDINALITY,"
    "  taskscript VARCHAR(255) PATH '$[0]',"
    "  param MEDIUMTEXT PATH '$[1]',"
    "  priority INT PATH '$[2]',"
    "  queue VARCHAR(64) PATH '$[3]',"
    "  ctime DATETIME(6) PATH '$[4]',"
    "  run_at DATETIME(6) PATH '$[5]',"
    "  max_attempts INT PATH '$[6]',"
    "  timeout INT PATH '$[7]',"
    "  secret MEDIUMTEXT PATH '$[8]'"
    " )) AS j ORDER BY j.ord"
)
_INSERT_JSON = text(_INSERT_JSON_SQL)
_INSERT_JSON_RETURNING = text(_INSERT_JSON_SQL + " RETURNING id")


def autoinc_settings() -> Executable:
    return text("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")


def max_allowed_packet() -> Executable:
    """MySQL/MariaDB: the largest statement the server accepts, in bytes."""
    return text("SELECT @@max_allowed_packet")


def insert_unique(dialect: str) -> Any:
    """Insert unless a pending/running task holds the same ``active_key`` (its unique index).

    MySQL: ``ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)`` makes ``lastrowid`` the
    existing row's id. SQLite: ``ON CONFLICT (active_key) DO NOTHING``; rowcount 0 means a
    duplicate, whose id ``select_active`` then reads inside the same (write-locked) transaction.
    """
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(q).on_conflict_do_nothing(index_elements=[q.c.active_key])
    from sqlalchemy.dialects import mysql

    stmt = mysql.insert(q)
    return stmt.on_duplicate_key_update(id=func.last_insert_id(q.c.id))


def select_active(key: str) -> Executable:
    return select(q.c.id).where(q.c.active_key == key)


# -- read -------------------------------------------------------------------------------------

# Rows read in numbers (a claim's batch, a listing, the rescue's running rows) leave the secret
# (up to 8 MiB each) in the database: their ``secret`` is ``SECRET_ELSEWHERE`` when the row has
# one, None when not. A shard reads a task's secret when the task starts (``select_secret``).
SECRET_ELSEWHERE = ""


@functools.cache
def _task_columns() -> tuple[ColumnElement[Any], ...]:
    """Every column of ``queue``, the secret replaced by ``SECRET_ELSEWHERE`` or NULL."""
    marker = case((q.c.secret.is_(None), null()), else_=literal(SECRET_ELSEWHERE))
    return (*[c for c in q.c if c.name != "secret"], marker.label("secret"))


def select_task(task_id: int) -> Select[Any]:
    """One task, with its secret."""
    return select(q).where(q.c.id == task_id)


def select_secret(task_id: int) -> Select[Any]:
    return select(q.c.secret).where(q.c.id == task_id)


def select_tasks(*, status: Status | None, queue: str | None, limit: int,
                 newest_first: bool = True) -> Select[Any]:
    stmt = select(*_task_columns())
    if status is not None:
        stmt = stmt.where(q.c.status == int(status))
    if queue is not None:
        stmt = stmt.where(q.c.queue == queue)
    order = q.c.id.desc() if newest_first else q.c.id
    return stmt.order_by(order).limit(limit)


def count_by_queue_status() -> Select[Any]:
    return select(q.c.queue, q.c.status, func.count()).group_by(q.c.queue, q.c.status)


def pending_summary(now: datetime) -> Executable:
    """Due pending count and the oldest due run_at (how far behind the shards are)."""
    return select(func.count(), func.min(q.c.run_at)).where(
        q.c.status == int(Status.PENDING), q.c.run_at <= now
    )


# -- claim ------------------------------------------------------------------------------------

def claim_candidates(*, shard: int, total: int, queue: str | None, now: datetime,
                     limit: int) -> Select[Any]:
    """The claim query of SQLite and of servers without SKIP LOCKED (row-lock servers read
    ``claim_top`` and lock ``lock_claimable``): due pending rows of this shard, highest
    priority first, then oldest.

    Served by ``ix_queue_claim (status, queue, priority DESC, id)`` for one queue and by
    ``ix_queue_claim_any (status, priority DESC, id)`` across queues: the index is read in
    order, ``run_at`` and ``id % total`` filter as it goes, LIMIT stops it early.
    """
    stmt = _due(select(*_task_columns()), shard=shard, total=total, queue=queue, now=now)
    return stmt.order_by(q.c.priority.desc(), q.c.id).limit(limit)


def any_due(*, shard: int, total: int, queue: str | None, now: datetime) -> Executable:
    """Is anything of this shard due? A plain consistent read: no locks taken, none skipped."""
    return _due(select(q.c.id), shard=shard, total=total, queue=queue, now=now).limit(1)


def claim_top(*, shard: int, total: int, queue: str | None, now: datetime, limit: int,
              passed: Sequence[int]) -> Select[Any]:
    """Row-lock servers, step 1 of the claim: the ids (and priorities) of the ``limit`` first
    due rows of this shard, in claim order, by a plain consistent read of the claim index — no
    locks taken, so no other shard's rows are locked (and skipped by their claimer) while we
    scan past them, and none of ours skipped (issue 11 #7). ``passed``: ids to leave out
    (rows we already took, rows another transaction holds)."""
    stmt = _due(select(q.c.id, q.c.priority), shard=shard, total=total, queue=queue, now=now)
    if passed:
        stmt = stmt.where(q.c.id.not_in(passed))
    return stmt.order_by(q.c.priority.desc(), q.c.id).limit(limit)


def lock_claimable(ids: Sequence[int], now: datetime) -> tuple[Select[Any], dict[str, Any]]:
    """Step 2: lock exactly these rows, by primary key, if they are still due and pending (the
    latest committed version is checked), skipping a row another transaction holds (a
    duplicate of this shard claiming it, a cancel). ``status + 0`` and the PRIMARY hint keep
    the server off the status indexes: only these rows are ever locked."""
    return _lock_claimable(), {"ids": list(ids), "now": now}


@functools.cache
def _lock_claimable() -> Select[Any]:
    return (select(*_task_columns())
            .with_hint(q, "FORCE INDEX (PRIMARY)", "mysql")
            .with_hint(q, "FORCE INDEX (PRIMARY)", "mariadb")
            .where(q.c.id.in_(_ids()), (q.c.status + 0) == int(Status.PENDING),
                   q.c.run_at <= _bind("now", "run_at"))
            .with_for_update(skip_locked=True))


def _due(stmt: Select[Any], *, shard: int, total: int, queue: str | None,
         now: datetime) -> Select[Any]:
    """The rows shard ``shard`` of ``total`` may take now: pending, due, its ``id % total``."""
    stmt = stmt.where(q.c.status == int(Status.PENDING))
    if queue is not None:
        stmt = stmt.where(q.c.queue == queue)
    # A run_at that no clock reaches (SQLite text sorting after every time: 'zzz', a BLOB) is
    # due at once, so that the claim fails the row with its reason (InvalidRow) instead of
    # leaving it pending forever. No DATETIME can be later than NEVER: on MariaDB it is a no-op.
    stmt = stmt.where(or_(q.c.run_at <= now, q.c.run_at > NEVER))
    if total > 1:
        stmt = stmt.where(q.c.id % total == shard)
    return stmt


def claim_rows(ids: Sequence[int], *, token: str, host: str, pid: int, pid_start: int | None,
               lease_until: datetime) -> tuple[Update, dict[str, Any]]:
    """Guarded: only rows still pending change, so two claimers can never both win a row.
    (``status + 0``: the rows are found by primary key; SQLite would otherwise walk the status
    index through every pending row — 120 ms per claim with a million of them.)
    Returns the statement (built once; the ids are one expanding parameter) and its
    parameters."""
    return _claim_rows(), {"ids": list(ids), "token": token, "host": host, "pid": pid,
                           "pid_start": pid_start, "lease_until": lease_until}


@functools.cache
def _claim_rows() -> Update:
    return (
        update(q)
        .where(q.c.id.in_(_ids()), (q.c.status + 0) == int(Status.PENDING))
        .values(status=int(Status.RUNNING), claim_token=_bind("token", "claim_token"),
                worker_host=_bind("host", "worker_host"), worker_pid=_bind("pid", "worker_pid"),
                worker_pid_start=_bind("pid_start", "worker_pid_start"),
                lease_until=_bind("lease_until"), started_at=None)
    )


def _ids() -> BindParameter[Any]:
    """``ids``: a list bound as one parameter, expanded into ``IN (...)`` when executed."""
    return bindparam("ids", expanding=True, type_=q.c.id.type)


def _bind(name: str, column: str | None = None) -> BindParameter[Any]:
    return bindparam(name, type_=q.c[column or name].type)


def _fence() -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The fence of a shard's group-commit writes: the row is still running under claim
    ``token`` (a bound parameter), so a shard that lost its claim changes nothing."""
    return q.c.claim_token == _bind("token", "claim_token"), q.c.status == int(Status.RUNNING)


def select_claimed(token: str) -> Select[Any]:
    return (select(*_task_columns())
            .where(q.c.claim_token == token, q.c.status == int(Status.RUNNING))
            .order_by(q.c.priority.desc(), q.c.id))


def mark_window(task_ids: Sequence[int], token: str, *, now: datetime,
                lease_until: datetime) -> tuple[Update, dict[str, Any]]:
    """Count the attempt of every task in a shard's next window before any of them runs: if
    the shard dies, the rescue charges each one whose outcome was not recorded yet."""
    return _mark_window(), {"ids": list(task_ids), "token": token, "now": now,
                            "lease_until": lease_until}


@functools.cache
def _mark_window() -> Update:
    return (
        update(q)
        .where(q.c.id.in_(_ids()), *_fence(), q.c.started_at.is_(None))
        .values(attempts=q.c.attempts + 1, started_at=_bind("now", "started_at"),
                lease_until=_bind("lease_until"))
    )


def unmark_window(task_ids: Sequence[int], token: str) -> tuple[Update, dict[str, Any]]:
    """Marked for a window but never run (the shard stopped first): back to pending, the
    attempt given back."""
    return _unmark_window(), {"ids": list(task_ids), "token": token}


@functools.cache
def _unmark_window() -> Update:
    return (
        update(q)
        .where(q.c.id.in_(_ids()), *_fence(), q.c.started_at.is_not(None))
        .values(status=int(Status.PENDING), attempts=q.c.attempts - 1, started_at=None,
                claim_token=None, lease_until=None)
    )


def held(task_ids: Sequence[int], token: str, *,
         lock: bool) -> tuple[Select[Any], dict[str, Any]]:
    """Which of these rows does claim ``token`` still hold? (Locked until commit on servers
    with row locks, so that the writes that follow match exactly these rows.)"""
    return _held(lock), {"ids": list(task_ids), "token": token}


@functools.cache
def _held(lock: bool) -> Select[Any]:
    stmt = select(q.c.id).where(q.c.id.in_(_ids()), *_fence())
    return stmt.with_for_update() if lock else stmt


def finish_many(rows: Sequence[tuple[int, dict[str, Any]]],
                token: str) -> tuple[Update, dict[str, Any]]:
    """Record several outcomes with the same columns in one statement: a column whose value is
    the same for every row is set plainly, the others by ``CASE id``. Fenced like ``finish``.
    Returns the statement (built once per shape and reused) and its parameters."""
    names = tuple(rows[0][1])
    varying = tuple(n for n in names if any(v[n] != rows[0][1][n] for _, v in rows))
    params: dict[str, Any] = {"token": token}
    for i, (task_id, values) in enumerate(rows):
        params[f"id{i}"] = task_id
        for name in varying:
            params[f"{name}{i}"] = values[name]
    for name in names:
        if name not in varying:
            params[name] = rows[0][1][name]
    return _finish_many(len(rows), names, varying), params


@functools.lru_cache(maxsize=128)
def _finish_many(count: int, names: tuple[str, ...], varying: tuple[str, ...]) -> Update:
    ids = [bindparam(f"id{i}", type_=q.c.id.type) for i in range(count)]
    values: dict[str, Any] = {}
    for name in names:
        column_type = q.c[name].type
        if name in varying:
            values[name] = case(*[(q.c.id == ids[i], bindparam(f"{name}{i}", type_=column_type))
                                  for i in range(count)])
        else:
            values[name] = bindparam(name, type_=column_type)
    return (
        update(q)
        .where(q.c.id.in_(ids), *_fence())
        .values(**values)
    )


def finish(task_id: int, token: str, values: dict[str, Any]) -> Update:
    """Record an outcome; fenced by the claim token so a process that lost its claim changes
    nothing (rowcount 0)."""
    return (
        update(q)
        .where(q.c.id == task_id, q.c.claim_token == token, q.c.status == int(Status.RUNNING))
        .values(**values)
    )


def finish_unclaimed(task_id: int, attempts: int | None, values: dict[str, Any]) -> Update:
    """The rescue's outcome for a running row without a claim token (hand-inserted, or left
    so): no shard can write it, so it is fenced on the state it was seen in instead (its
    attempts too, unless they could not be read as a number)."""
    fence = [q.c.id == task_id, q.c.claim_token.is_(None), q.c.status == int(Status.RUNNING)]
    if attempts is not None:
        fence.append(q.c.attempts == attempts)
    return update(q).where(*fence).values(**values)


def release_unstarted(token: str) -> Update:
    """Claimed but never started: straight back to pending, no attempt counted."""
    return (
        update(q)
        .where(q.c.claim_token == token, q.c.status == int(Status.RUNNING),
               q.c.started_at.is_(None))
        .values(status=int(Status.PENDING), claim_token=None, lease_until=None)
    )


# -- operator actions -------------------------------------------------------------------------

def cancel(task_id: int, now: datetime) -> Update:
    return (
        update(q)
        .where(q.c.id == task_id, q.c.status == int(Status.PENDING))
        .values(status=int(Status.CANCELLED), active_key=None, finished_at=now, secret=None)
    )


def retry(task_ids: Sequence[int], now: datetime) -> Update:
    """Failed or cancelled → pending now, with a fresh set of attempts."""
    return (
        update(q)
        .where(q.c.id.in_(task_ids),
               q.c.status.in_([int(Status.FAILED), int(Status.CANCELLED)]))
        .values(status=int(Status.PENDING), run_at=now, attempts=0, active_key=q.c.unique_key,
                claim_token=None, lease_until=None, finished_at=None)
    )


def failed_ids(after_id: int, limit: int) -> Select[Any]:
    return (select(q.c.id).where(q.c.status == int(Status.FAILED), q.c.id > after_id)
            .order_by(q.c.id).limit(limit))


def delete_ids(ids: Sequence[int]) -> Delete:
    return delete(q).where(q.c.id.in_(ids), q.c.status.in_(FINISHED))


def purgeable_ids(statuses: Sequence[int], before: datetime, limit: int) -> Select[Any]:
    return (select(q.c.id).where(q.c.status.in_(statuses), q.c.finished_at < before)
            .limit(limit))


def select_running() -> Select[Any]:
    """Every claimed row, for the rescue of tasks whose shard died."""
    return select(*_task_columns()).where(q.c.status == int(Status.RUNNING))


# -- mission runs -----------------------------------------------------------------------------

def last_scheduled(entry: str, until: datetime | None = None) -> Executable:
    stmt = select(func.max(r.c.scheduled_at)).where(r.c.entry == entry)
    return stmt if until is None else stmt.where(r.c.scheduled_at <= until)


def insert_run() -> Insert:
    """Fails with a unique violation if (entry, scheduled_at) already fired: the arbiter."""
    return r.insert()


def update_run(run_id: int, **values: Any) -> Update:
    return update(r).where(r.c.id == run_id).values(**values)


def latest_runs() -> Select[Any]:
    newest = (select(r.c.entry, func.max(r.c.scheduled_at).label("at"))
              .group_by(r.c.entry).subquery())
    return select(r).join(newest, (r.c.entry == newest.c.entry)
                          & (r.c.scheduled_at == newest.c.at))


def old_run_ids(before: datetime, limit: int) -> Select[Any]:
    """Runs older than ``before`` except each entry's newest: an entry that fires less often
    than runs are kept must still know its last run (for catch-up and `schedule`)."""
    newest = select(func.max(r.c.id)).group_by(r.c.entry)
    return (select(r.c.id).where(r.c.scheduled_at < before, r.c.id.not_in(newest))
            .limit(limit))


def delete_runs(ids: Sequence[int]) -> Delete:
    return delete(r).where(r.c.id.in_(ids))


# -- worker registry --------------------------------------------------------------------------

def insert_worker() -> Insert:
    return w.insert()


def heartbeat(worker_id: int, now: datetime, current_task: int | None,
              tasks_done: int) -> Update:
    return (update(w).where(w.c.id == worker_id)
            .values(heartbeat_at=now, current_task=current_task, tasks_done=tasks_done))


def extend_lease(token: str, lease_until: datetime) -> Update:
    return (update(q).where(q.c.claim_token == token, q.c.status == int(Status.RUNNING))
            .values(lease_until=lease_until))


def auto_increment_step() -> Executable:
    return text("SELECT @@auto_increment_increment")


def server_uptime() -> Executable:
    return text("SHOW GLOBAL STATUS LIKE 'Uptime'")


def stop_requested(worker_id: int) -> Executable:
    return select(w.c.stop_requested).where(w.c.id == worker_id)


def delete_workers(ids: Sequence[int]) -> Delete:
    return delete(w).where(w.c.id.in_(ids))


def select_workers() -> Select[Any]:
    return select(w).order_by(w.c.entry, w.c.shard, w.c.id)


def request_stop(ids: Sequence[int]) -> Update:
    return update(w).where(w.c.id.in_(ids)).values(stop_requested=1)
