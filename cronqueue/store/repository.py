"""The one place that talks to the database: every read and write of the ``queue`` table."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, CursorResult, Engine, Executable, inspect
from sqlalchemy.exc import IntegrityError

if TYPE_CHECKING:  # sqlalchemy.orm is a heavy import the queue does not need at run time
    from sqlalchemy.orm import Session

from cronqueue import decode
from cronqueue.errors import InvalidTransition, TaskNotFound
from cronqueue.model import Status, Task, status_name
from cronqueue.spec import TaskSpec
from cronqueue.store import packet, queries
from cronqueue.store.engine import supports_json_insert, transaction
from cronqueue.store.schema import ddl_metadata, queue_table

log = logging.getLogger("cronqueue.repository")
_CHUNK = 1000
_FINISH_CHUNK = 200  # outcomes per UPDATE (each varying column is a CASE over them)


@dataclass(frozen=True, slots=True)
class Finish:
    """An outcome to record for a task this process claimed (fenced by ``token``)."""

    task_id: int
    token: str
    values: dict[str, Any]


@dataclass(frozen=True)
class Flush:
    """One group commit for claim ``token``."""

    token: str
    finishes: Sequence[Finish] = ()
    mark: Sequence[int] = ()  # tasks to mark started (the next window)
    now: datetime | None = None
    lease_until: datetime | None = None
    unmark: Sequence[int] = ()  # marked but never run: back to pending, attempt given back
    release: bool = False  # also release the claim's never-marked rows


@dataclass
class Flushed:
    recorded: set[int] = field(default_factory=set)  # finishes the claim still held
    marked: set[int] = field(default_factory=set)  # window rows the claim still held
    released: int = 0


_JSON_CHUNK_BYTES = 4 << 20  # per statement: well under max_allowed_packet (16 MiB default)
_JSON_CHUNK_ROWS = 20000
_JSON_MAX_ROW_BYTES = 256 << 10  # bigger rows (large params, secrets) go one by one


def _json_cost(spec: TaskSpec) -> int:
    """Bytes a row may take in the JSON array (escaping can grow text up to 6x: \\u0001)."""
    return 200 + 6 * (len(spec.param) + len(spec.secret or ""))


def _row_bytes(spec: TaskSpec) -> int:
    """An upper bound on a row's bytes in an ``INSERT ... VALUES``: from the lengths alone
    (4 bytes a character, each escaped) when that is small, else counted."""
    quick = packet.ROW_OVERHEAD + 8 * (len(spec.taskscript) + len(spec.param) + len(spec.queue)
                                       + 2 * len(spec.unique_key or "") + len(spec.secret or ""))
    return quick if quick <= _JSON_MAX_ROW_BYTES else packet.row_bytes(spec)


def _json_row(spec: TaskSpec, ctime: str) -> list[Any]:
    """A plain task as one JSON array, in ``queries.JSON_ROW_COLUMNS`` order (times as naive
    UTC text; ``ctime`` already is)."""
    return [spec.taskscript, spec.param, spec.priority, spec.queue, ctime,
            _naive_utc_text(spec.run_at), spec.max_attempts, spec.timeout, spec.secret]


@functools.lru_cache(maxsize=16)  # a batch shares its ctime (and usually its run_at)
def _naive_utc_text(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _clearing_secret(values: dict[str, Any]) -> dict[str, Any]:
    """An outcome that finishes the task (done, failed) also clears its secret: no row keeps
    one longer than its task needs it."""
    if values.get("status") in queries.FINISHED and "secret" not in values:
        return {**values, "secret": None}
    return values


class _NotHeld(Exception):
    """A fenced write matched fewer rows than expected: some were taken over."""


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._id_step: int | None = None
        self._packet: tuple[int] | None = None

    # -- schema -------------------------------------------------------------------------------

    def init_db(self) -> None:
        transaction(self.engine, lambda conn: ddl_metadata().create_all(conn, checkfirst=True))

    def has_schema(self) -> bool:
        return transaction(self.engine, lambda conn: inspect(conn).has_table("queue"),
                           readonly=True)

    # -- enqueue ------------------------------------------------------------------------------

    def insert(self, specs: Sequence[TaskSpec], now: datetime,
               connection: Connection | Session | None = None) -> list[int]:
        """Insert all specs in one transaction (the caller's, if given); ids in input order."""
        if connection is None:
            return transaction(self.engine, lambda conn: self._insert(conn, specs, now))
        conn = connection if isinstance(connection, Connection) else connection.connection()
        return self._insert(conn, specs, now)

    def _insert(self, conn: Connection, specs: Sequence[TaskSpec], now: datetime) -> list[int]:
        ids: list[int | None] = [None] * len(specs)
        plain = [i for i, s in enumerate(specs) if s.unique_key is None]
        for i, spec in enumerate(specs):
            if spec.unique_key is not None:
                ids[i] = self._insert_unique(conn, spec, now)
        dialect = conn.dialect
        # No statement may exceed the server's max_allowed_packet (it would drop the
        # connection): statements are cut to fit, a row too large to fit alone is refused.
        max_packet = self._max_packet(conn)
        budget = (1 << 62) if max_packet is None else max_packet - packet.STATEMENT_OVERHEAD
        sizes: dict[int, int] = {}
        if max_packet is not None:
            sizes = {i: _row_bytes(s) for i, s in enumerate(specs)}
            for i, size in sizes.items():
                packet.check_fits(i if len(specs) > 1 else None, size, max_packet)
        if len(plain) > 1 and supports_json_insert(dialect):
            json_budget = min(_JSON_CHUNK_BYTES, budget)
            costs = {i: _json_cost(specs[i]) for i in plain}
            small = [i for i in plain if costs[i] <= min(_JSON_MAX_ROW_BYTES, json_budget)]
            plain = [i for i in plain if costs[i] > min(_JSON_MAX_ROW_BYTES, json_budget)]
            step = self._consecutive_ids(conn)
            for chunk in packet.split(small, costs, json_budget, _JSON_CHUNK_ROWS):
                ctime = _naive_utc_text(now)
                encoded = json.dumps([_json_row(specs[i], ctime) for i in chunk],
                                     ensure_ascii=False)
                if step:
                    # The statement's rows got consecutive ids (AUTO-INC lock held for the
                    # whole INSERT ... SELECT): the first id is enough, no id per row to read.
                    result = conn.execute(queries.insert_json_rows(returning=False),
                                          {"rows": encoded})
                    assert result.rowcount == len(chunk)
                    first = int(result.lastrowid)
                    new_ids = [first + k * step for k in range(len(chunk))]
                else:
                    result = conn.execute(queries.insert_json_rows(), {"rows": encoded})
                    new_ids = sorted(int(r[0]) for r in result)
                for i, new_id in zip(chunk, new_ids, strict=True):
                    ids[i] = new_id
        bulk = getattr(dialect, "insert_executemany_returning", False)
        chunks = (packet.split(plain, sizes, budget, _CHUNK) if sizes
                  else [plain[start:start + _CHUNK] for start in range(0, len(plain), _CHUNK)])
        for chunk in chunks:
            rows = [specs[i].row(now) for i in chunk]
            if bulk and len(rows) > 1:
                # Rows of a multi-row INSERT get increasing ids in VALUES order, and later
                # statements of this connection larger ones: sorted ids are in input order.
                # (sort_by_parameter_order would fall back to one statement per row here.)
                stmt = queries.insert_task().returning(queue_table.c.id)
                new_ids = sorted(r[0] for r in conn.execute(stmt, rows))
            else:
                new_ids = [_inserted_id(conn.execute(queries.insert_task(), row))
                           for row in rows]
            for i, new_id in zip(chunk, new_ids, strict=True):
                ids[i] = int(new_id)
        return [int(i) for i in ids if i is not None]

    def _consecutive_ids(self, conn: Connection) -> int:
        """``auto_increment_increment`` if one INSERT ... SELECT gets consecutive ids on this
        server (``innodb_autoinc_lock_mode`` 0 or 1, MariaDB's default), else 0 (mode 2,
        e.g. Galera: ids may interleave with other sessions' — read them back instead)."""
        if self._id_step is None:
            mode, step = conn.execute(queries.autoinc_settings()).one()
            self._id_step = int(step) if int(mode) in (0, 1) else 0
        return self._id_step

    def _max_packet(self, conn: Connection) -> int | None:
        """The server's max_allowed_packet, read once (None: SQLite, no such limit)."""
        if self._packet is None:
            mysql = conn.dialect.name in ("mysql", "mariadb")
            self._packet = (int(conn.execute(queries.max_allowed_packet()).scalar_one())
                            if mysql else 0,)
        return self._packet[0] or None

    def _insert_unique(self, conn: Connection, spec: TaskSpec, now: datetime) -> int:
        assert spec.unique_key is not None
        result = conn.execute(queries.insert_unique(conn.dialect.name), spec.row(now))
        if conn.dialect.name != "sqlite":
            return int(result.lastrowid)
        if result.rowcount == 1:
            return int(result.lastrowid)
        existing = conn.execute(queries.select_active(spec.unique_key)).scalar_one()
        return int(existing)

    # -- read ---------------------------------------------------------------------------------

    def get(self, task_id: int) -> Task | None:
        def work(conn: Connection) -> Task | None:
            row = conn.execute(queries.select_task(task_id)).mappings().first()
            return Task.from_row(row) if row is not None else None

        return transaction(self.engine, work, readonly=True)

    def list_tasks(self, *, status: Status | None = None, queue: str | None = None,
             limit: int = 50) -> list[Task]:
        stmt = queries.select_tasks(status=status, queue=queue, limit=limit)
        return transaction(
            self.engine,
            lambda conn: [Task.from_row(r) for r in conn.execute(stmt).mappings()],
            readonly=True,
        )

    def stats(self, now: datetime) -> dict[str, Any]:
        def work(conn: Connection) -> dict[str, Any]:
            totals = {s.name.lower(): 0 for s in Status}
            per_queue: dict[str, dict[str, int]] = {}
            for queue, status, count in conn.execute(queries.count_by_queue_status()):
                # Hand-written rows: a status outside 0..4 counts as ``unknown(7)``; a queue
                # name that is not text is shown decoded (see decode.py).
                name = status_name(status)
                totals[name] = totals.get(name, 0) + count
                name_of_queue = decode.optional_text("queue", queue, decode.Problems()) or ""
                counts = per_queue.setdefault(name_of_queue, {s.name.lower(): 0 for s in Status})
                counts[name] = counts.get(name, 0) + count
            due, oldest = conn.execute(queries.pending_summary(now)).one()
            # (a hand-written run_at that is not a time is no age: failed when claimed)
            lag = (now - oldest).total_seconds() if isinstance(oldest, datetime) else 0.0
            return {"total": sum(totals.values()), **totals, "due": int(due),
                    "oldest_due_seconds": round(max(lag, 0.0), 3), "queues": per_queue}

        return transaction(self.engine, work, readonly=True)

    # -- worker side --------------------------------------------------------------------------

    def flush(self, flush: Flush) -> Flushed:
        """A shard's group commit for one claim: buffered outcomes, the next window's start
        marks, and on the way out the give-back of rows it did not run — one transaction. Every
        write is fenced by the claim token: rows the claim no longer holds (rescued) are left
        alone and missing from the result. The common case (the claim holds every row) costs
        one statement per kind of write; if a row count says otherwise, the transaction is
        rolled back and redone after reading which rows are still held."""
        try:
            return transaction(self.engine, lambda conn: self._flush(conn, flush, None))
        except _NotHeld:
            return transaction(self.engine, lambda conn: self._flush(conn, flush,
                                                                     self._held(conn, flush)))

    def _held(self, conn: Connection, flush: Flush) -> set[int]:
        ids = [f.task_id for f in flush.finishes] + [*flush.mark, *flush.unmark]
        held: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            held.update(conn.execute(*queries.held(ids[start:start + _CHUNK], flush.token,
                                                   lock=self.dialect != "sqlite")).scalars())
        return held

    @staticmethod
    def _flush(conn: Connection, flush: Flush, held: set[int] | None) -> Flushed:
        def ours(task_id: int) -> bool:
            return held is None or task_id in held

        def write(stmt: Executable, params: dict[str, Any] | None, expected: int) -> int:
            count = int(conn.execute(stmt, params).rowcount)
            if held is None and count != expected:
                raise _NotHeld
            return count

        done = Flushed()
        groups: dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]] = {}
        for f in flush.finishes:
            if ours(f.task_id):
                values = _clearing_secret(f.values)
                groups.setdefault(tuple(values), []).append((f.task_id, values))
        for rows in groups.values():
            for start in range(0, len(rows), _FINISH_CHUNK):
                chunk = rows[start:start + _FINISH_CHUNK]
                write(*queries.finish_many(chunk, flush.token), len(chunk))
                done.recorded.update(task_id for task_id, _ in chunk)
        mark = [i for i in flush.mark if ours(i)]
        if mark:
            assert flush.now is not None and flush.lease_until is not None
            write(*queries.mark_window(mark, flush.token, now=flush.now,
                                       lease_until=flush.lease_until), len(mark))
            done.marked.update(mark)
        unmark = [i for i in flush.unmark if ours(i)]
        if unmark:
            done.released += write(*queries.unmark_window(unmark, flush.token), len(unmark))
        if flush.release:
            done.released += conn.execute(queries.release_unstarted(flush.token)).rowcount
        return done

    def record(self, finish: Finish) -> bool:
        """Write one outcome (the rescue's); whether the claim still held the row."""
        return transaction(self.engine, lambda conn: conn.execute(queries.finish(
            finish.task_id, finish.token, _clearing_secret(finish.values))).rowcount == 1)

    def still_held(self, task_ids: Sequence[int], token: str) -> set[int]:
        """Which of these rows claim ``token`` still holds (running under that token): the
        fence read before a marked task starts (``Ledger.begin``)."""
        return transaction(self.engine, lambda conn: self._held_ids(conn, task_ids, token),
                           readonly=True)

    def _held_ids(self, conn: Connection, task_ids: Sequence[int], token: str) -> set[int]:
        held: set[int] = set()
        for start in range(0, len(task_ids), _CHUNK):
            held.update(conn.execute(*queries.held(task_ids[start:start + _CHUNK], token,
                                                   lock=False)).scalars())
        return held

    def secret(self, task_id: int) -> str | None:
        """A task's secret, read when it starts (claims leave it in the database)."""
        return transaction(self.engine, lambda conn: conn.execute(
            queries.select_secret(task_id)).scalar(), readonly=True)

    def release_unstarted(self, token: str) -> int:
        return transaction(
            self.engine, lambda conn: conn.execute(queries.release_unstarted(token)).rowcount)

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, task_id: int, now: datetime) -> None:
        def work(conn: Connection) -> None:
            if conn.execute(queries.cancel(task_id, now)).rowcount == 1:
                return
            row = conn.execute(queries.select_task(task_id)).mappings().first()
            if row is None:
                raise TaskNotFound(f"no task with id {task_id}")
            status = status_name(row["status"])
            raise InvalidTransition(f"task {task_id} is {status}; only pending tasks can be "
                                    "cancelled")

        transaction(self.engine, work)

    def retry(self, task_id: int, now: datetime) -> None:
        def work(conn: Connection) -> None:
            row = conn.execute(queries.select_task(task_id)).mappings().first()
            if row is None:
                raise TaskNotFound(f"no task with id {task_id}")
            if row["status"] not in (Status.FAILED, Status.CANCELLED):
                status = status_name(row["status"])
                raise InvalidTransition(
                    f"task {task_id} is {status}; only failed or cancelled tasks can be retried")
            if not self._retry_one(conn, task_id, now):
                raise InvalidTransition(f"task {task_id}: another pending or running task holds "
                                        f"unique_key {row['unique_key']!r}")

        transaction(self.engine, work)

    def retry_failed(self, now: datetime) -> int:
        def work(conn: Connection) -> int:
            count, after = 0, 0
            while ids := list(conn.execute(queries.failed_ids(after, _CHUNK)).scalars()):
                after = ids[-1]
                count += sum(self._retry_one(conn, i, now) for i in ids)
            return count

        return transaction(self.engine, work)

    @staticmethod
    def _retry_one(conn: Connection, task_id: int, now: datetime) -> bool:
        try:
            return bool(conn.execute(queries.retry([task_id], now)).rowcount == 1)
        except IntegrityError:
            log.warning("task=%d retry refused: its unique_key is held by an active task",
                        task_id)
            return False

    def purge(self, before: datetime, statuses: Sequence[int] = queries.FINISHED,
              max_chunks: int | None = None) -> int:
        """Delete finished tasks whose finished_at is older than ``before``, in chunks of
        1,000 rows (each its own short transaction); at most ``max_chunks`` if given."""
        return self._delete_in_chunks(queries.purgeable_ids(statuses, before, _CHUNK),
                                      queries.delete_ids, max_chunks)

    # -- rescue -------------------------------------------------------------------------------

    def running(self) -> list[Task]:
        return transaction(
            self.engine,
            lambda conn: [Task.from_row(r) for r in
                          conn.execute(queries.select_running()).mappings()],
            readonly=True)

    def settle(self, task: Task, values: dict[str, Any]) -> bool:
        """Write an outcome for a task claimed by someone else (the rescue), fenced by the
        claim token it was seen with: a shard that finishes meanwhile wins. A running row
        without a token (no shard can own it) is fenced on its status and attempts (unless
        its attempts column was bad: not a number, or out of range)."""
        if task.claim_token is None:
            attempts = None if "attempts" in task.bad_columns else task.attempts
            return transaction(self.engine, lambda conn: conn.execute(queries.finish_unclaimed(
                task.id, attempts, _clearing_secret(values))).rowcount == 1)
        return self.record(Finish(task.id, task.claim_token, values))

    # -- mission runs -------------------------------------------------------------------------

    def last_scheduled(self, entry: str, until: datetime | None = None) -> datetime | None:
        """The newest scheduled time recorded for ``entry`` (at or before ``until``)."""
        return transaction(
            self.engine, lambda conn: conn.execute(queries.last_scheduled(entry, until)).scalar(),
            readonly=True)

    def record_run(self, entry: str, scheduled_at: datetime, *, host: str, pid: int,
                   outcome: str, spec: TaskSpec | None = None,
                   now: datetime | None = None) -> tuple[int, int | None] | None:
        """Claim (entry, scheduled_at) for this mission. None if another mission already did.
        With ``spec``, the recurring task is inserted in the same transaction: once or never.
        Returns (run id, task id)."""

        def work(conn: Connection) -> tuple[int, int | None] | None:
            try:
                res = conn.execute(queries.insert_run(), {
                    "entry": entry, "scheduled_at": scheduled_at, "host": host, "pid": pid,
                    "outcome": outcome, "fired_at": now or scheduled_at})
            except IntegrityError:
                return None
            run_id = _inserted_id(res)
            task_id = None
            if spec is not None:
                task_id = self._insert(conn, [spec], now or scheduled_at)[0]
                conn.execute(queries.update_run(run_id, task_id=task_id))
            return run_id, task_id

        return transaction(self.engine, work)

    def set_run_outcome(self, run_id: int, outcome: str) -> None:
        transaction(self.engine,
                    lambda conn: conn.execute(queries.update_run(run_id, outcome=outcome[:1000])))

    def latest_runs(self) -> dict[str, dict[str, Any]]:
        return transaction(
            self.engine,
            lambda conn: {r["entry"]: dict(r) for r in
                          conn.execute(queries.latest_runs()).mappings()},
            readonly=True)

    def purge_runs(self, before: datetime, max_chunks: int = 5) -> int:
        return self._delete_in_chunks(queries.old_run_ids(before, _CHUNK), queries.delete_runs,
                                      max_chunks)

    def _delete_in_chunks(self, select_ids: Executable,
                          delete: Callable[[Sequence[int]], Executable],
                          max_chunks: int | None) -> int:
        """Delete what ``select_ids`` finds, one short transaction per chunk of ``_CHUNK``
        rows, until fewer than a chunk remain (or ``max_chunks`` were done)."""

        def work(conn: Connection) -> int:
            ids = list(conn.execute(select_ids).scalars())
            return int(conn.execute(delete(ids)).rowcount) if ids else 0

        total, chunks = 0, 0
        while max_chunks is None or chunks < max_chunks:
            deleted = transaction(self.engine, work)
            total += deleted
            chunks += 1
            if deleted < _CHUNK:
                break
        return total

    # -- worker registry ----------------------------------------------------------------------

    def register_worker(self, **values: Any) -> int:
        return transaction(
            self.engine,
            lambda conn: _inserted_id(conn.execute(queries.insert_worker(), values)))

    def heartbeat(self, worker_id: int, now: datetime, current_task: int | None,
                  tasks_done: int, *, token: str | None = None,
                  lease_until: datetime | None = None) -> bool:
        """Record that the shard lives and extend the lease of the rows it holds (``token``);
        returns whether it has been asked to stop."""

        def work(conn: Connection) -> bool:
            conn.execute(queries.heartbeat(worker_id, now, current_task, tasks_done))
            if token is not None and lease_until is not None:
                conn.execute(queries.extend_lease(token, lease_until))
            return bool(conn.execute(queries.stop_requested(worker_id)).scalar())

        return transaction(self.engine, work)

    def auto_increment_step(self) -> int:
        """``auto_increment_increment`` (Galera and multi-primary set it > 1); 1 on SQLite."""
        if self.dialect == "sqlite":
            return 1
        return transaction(
            self.engine,
            lambda conn: int(conn.execute(queries.auto_increment_step()).scalar_one()),
            readonly=True)

    def server_uptime(self) -> float | None:
        """Seconds since the database server started (MySQL/MariaDB); None for SQLite."""
        if self.dialect == "sqlite":
            return None
        return transaction(self.engine,
                           lambda conn: float(conn.execute(queries.server_uptime()).one()[1]),
                           readonly=True)

    def forget_workers(self, ids: Sequence[int]) -> None:
        if ids:
            transaction(self.engine, lambda conn: conn.execute(queries.delete_workers(ids)))

    def worker_rows(self) -> list[dict[str, Any]]:
        return transaction(
            self.engine,
            lambda conn: [dict(r) for r in conn.execute(queries.select_workers()).mappings()],
            readonly=True)

    def request_stop(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return transaction(self.engine,
                           lambda conn: conn.execute(queries.request_stop(ids)).rowcount)
