"""Inserting tasks: one transaction for any number of rows, ids in input order, no statement
larger than the server accepts.

The forms, by what the backend offers (``store/backends``):

* a unique task (``unique_key``): the backend's insert-unique form, one row at a time;
* one plain task (``add()``), or many where the server has no ``RETURNING`` (MySQL,
  MariaDB < 10.5): one INSERT per row, its id the statement's ``lastrowid``;
* many plain tasks where the backend ``returning`` (MariaDB >= 10.5, SQLite >= 3.35): a
  multi-row ``INSERT ... VALUES (...), (...) ... RETURNING id`` per chunk. The ids come from
  the database, never from auto-increment settings. Which id is which row's: the rows of one
  ``VALUES`` list are inserted in list order and each takes the next value of the table's
  counter, which only grows (SQLite: the write lock is held, ``AUTOINCREMENT``; InnoDB: the
  counter is allocated under the AUTO-INC lock, whatever another session inserts between our
  rows, with any ``innodb_autoinc_lock_mode``); ``RETURNING`` may list them in any order, so
  the sorted ids are the rows' ids in input order (SQLAlchemy's own "implicit sentinel" for
  MySQL/MariaDB assumes the same). ``tests/contract`` checks it against concurrent inserts
  from another session and another process, reading every row back.

Plain rows are sent as driver SQL rendered once per dialect (``_Statements``) with positional
parameters: no statement compiled, no cache key computed per call. Values still go through
the column types' own bind processors (times as the column stores them).

Statements are cut to the backend's ``max_statement_bytes`` (``packet.py``); a row too large
to fit alone is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import chain
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, select

from cronqueue.errors import DatabaseError
from cronqueue.spec import TaskSpec
from cronqueue.store import packet
from cronqueue.store.backends import Backend
from cronqueue.store.engine import redact, transaction
from cronqueue.store.rows import CHUNK
from cronqueue.store.schema import queue_table as q

log = logging.getLogger("cronqueue.db")

# The columns a plain task (no unique_key) sets, in the order its parameters are sent; every
# other column takes its database default.
PLAIN_COLUMNS = ("taskscript", "param", "priority", "queue", "ctime", "run_at",
                 "max_attempts", "timeout", "secret")
_SMALL_ROW_BYTES = 256 << 10  # up to this, a row's size bound is taken from its lengths


def _has_statement_listeners(engine: Engine) -> bool:
    """Does anything listen to the engine's statements (tracing, logging, tests)?"""
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute or engine.echo)


def _discard(raw: Any, cursor: Any, exc: Exception) -> None:
    """End a failed direct attempt: its cursor closed, its transaction rolled back (the
    connection back to the pool), or, when that fails too, the connection discarded."""
    try:
        if cursor is not None:
            cursor.close()
        raw.rollback()
    except Exception:
        raw.invalidate(exc)


def _abandon(raw: Any, cursor: Any, exc: BaseException) -> None:
    """End a direct attempt that was interrupted: its connection closed, never returned to the
    pool with the transaction open (MySQL's pool does not roll back on check-in: the next
    user's commit would write this row), its cursor first (SQLite: see ``_discard``)."""
    with contextlib.suppress(Exception):
        if cursor is not None:
            cursor.close()
    raw.invalidate(exc)


def _row_bytes(spec: TaskSpec) -> int:
    """An upper bound on a row's bytes in an ``INSERT ... VALUES``: from the lengths alone
    (4 bytes a character, each escaped) when that is small, else counted."""
    quick = packet.ROW_OVERHEAD + 8 * (len(spec.taskscript) + len(spec.param) + len(spec.queue)
                                       + 2 * len(spec.unique_key or "") + len(spec.secret or ""))
    return quick if quick <= _SMALL_ROW_BYTES else packet.row_bytes(spec)


def _driver_value(value: Any) -> Any:
    """A naive time as ISO text, which every database here reads into its time columns: the
    driver formats text with one ``translate``, a ``datetime`` with a ``format`` per row."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


class _Statements:
    """The plain-task INSERT of one dialect as driver SQL, rendered once: the one-row form
    (``one``) and the multi-row ``RETURNING id`` form of any row count (``many``)."""

    def __init__(self, dialect: Dialect, placeholder: str) -> None:
        quote = dialect.identifier_preparer.quote
        columns = ", ".join(quote(name) for name in PLAIN_COLUMNS)
        # Only the schema's own names: every value is a bound parameter.
        self.head = f"INSERT INTO {quote(q.name)} ({columns}) VALUES "  # noqa: S608
        self.group = "(" + ", ".join([placeholder] * len(PLAIN_COLUMNS)) + ")"
        self.returning = f" RETURNING {quote(q.c.id.name)}"
        self.one = self.head + self.group
        self._many: dict[int, str] = {}
        # Rows per statement: a chunk, within the dialect's bound-parameter limit.
        limit = int(getattr(dialect, "insertmanyvalues_max_parameters", 999))
        self.max_rows = max(1, min(CHUNK, limit // len(PLAIN_COLUMNS)))
        processors: list[tuple[int, Callable[[Any], Any]]] = []
        for n, name in enumerate(PLAIN_COLUMNS):
            process = q.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((n, process))
        self.processors = tuple(processors)

    def many(self, rows: int) -> str:
        sql = self._many.get(rows)
        if sql is None:
            sql = self.head + ", ".join([self.group] * rows) + self.returning
            if len(self._many) < 64:  # full chunks and a few tails
                self._many[rows] = sql
        return sql

    def converter(self, now: datetime) -> Callable[[TaskSpec], tuple[Any, ...]]:
        """A spec's parameters, in ``PLAIN_COLUMNS`` order, as the driver takes them."""
        processors = self.processors
        memo: dict[tuple[int, Any], Any] = {}  # a batch shares its ctime, often its run_at

        def values(spec: TaskSpec) -> tuple[Any, ...]:
            row = [spec.taskscript, spec.param, spec.priority, spec.queue, now, spec.run_at,
                   spec.max_attempts, spec.timeout, spec.secret]
            for n, process in processors:
                key = (n, row[n])
                try:
                    row[n] = memo[key]
                except KeyError:
                    row[n] = memo[key] = _driver_value(process(row[n]))
            return tuple(row)

        return values


class Inserter:
    """Inserts task rows on one backend; reads the server's limits once."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._packet: tuple[int | None] | None = None
        self._statements: tuple[Dialect, _Statements] | None = None

    def statements(self, dialect: Dialect) -> _Statements:
        """The dialect's rendered statements (kept for the last dialect seen: one engine's)."""
        if self._statements is None or self._statements[0] is not dialect:
            self._statements = (dialect, _Statements(dialect, self.backend.placeholder))
        return self._statements[1]

    def insert(self, conn: Connection, specs: Sequence[TaskSpec], now: datetime) -> list[int]:
        """Insert all specs in ``conn``'s transaction; ids in input order."""
        ids = [0] * len(specs)
        # No statement may exceed the server's limit (it would drop the connection):
        # statements are cut to fit, a row too large to fit alone is refused, before any write.
        max_packet = self.max_statement_bytes(conn)
        budget = (1 << 62) if max_packet is None else max_packet - packet.STATEMENT_OVERHEAD
        sizes: dict[int, int] = {}
        if max_packet is not None:
            sizes = {i: _row_bytes(s) for i, s in enumerate(specs)}
            for i, size in sizes.items():
                packet.check_fits(i if len(specs) > 1 else None, size, max_packet)
        plain: list[int] = []
        for i, spec in enumerate(specs):
            if spec.unique_key is not None:
                ids[i] = self._insert_unique(conn, spec, now)
            else:
                plain.append(i)
        if not plain:
            return ids
        dialect = conn.dialect
        stmts = self.statements(dialect)
        values = stmts.converter(now)
        if len(plain) == 1 or not self.backend.returning(dialect):
            for i in plain:
                ids[i] = int(conn.exec_driver_sql(stmts.one, values(specs[i])).lastrowid)
            return ids
        chunks = (packet.split(plain, sizes, budget, stmts.max_rows) if sizes
                  else [plain[s:s + stmts.max_rows] for s in range(0, len(plain), stmts.max_rows)])
        for chunk in chunks:
            params = tuple(chain.from_iterable([values(specs[i]) for i in chunk]))
            result = conn.exec_driver_sql(stmts.many(len(chunk)), params)
            new_ids = sorted(map(int, result.scalars().all()))
            if len(new_ids) != len(chunk):
                raise DatabaseError(f"INSERT ... RETURNING gave {len(new_ids)} ids for "
                                    f"{len(chunk)} rows")
            for i, new_id in zip(chunk, new_ids, strict=True):
                ids[i] = new_id
        return ids

    def add_one(self, engine: Engine, spec: TaskSpec, now: datetime) -> int:
        """``add()`` of one task in a transaction of its own; its id.

        A plain task goes straight to a pooled driver connection (the pool's checkout, with
        its events, still runs): begin, the pre-rendered INSERT, its ``lastrowid``, commit:
        what an application would write by hand, without the ~60 us a call of a SQLAlchemy
        connection, transaction and execution context. Anything else takes ``transaction()``
        (``insert``): a unique task, the first call (it reads the server's limits), an engine
        with statement listeners (tracing sees every statement), a pool that cannot connect,
        and any error before the commit: that attempt is rolled back (its connection
        discarded) and the call is run again there, which retries what is transient and
        raises ``DatabaseError`` for the rest. An error at the commit is raised at once: the
        row may exist (never inserted twice). An interrupted call (KeyboardInterrupt) closes
        its connection: nothing half-done goes back to the pool."""
        def through_transaction() -> int:
            return transaction(engine, lambda conn: self.insert(conn, [spec], now))[0]

        if (spec.unique_key is not None or self._packet is None
                or _has_statement_listeners(engine)):
            return through_transaction()
        max_packet = self._packet[0]
        if max_packet is not None:
            packet.check_fits(None, _row_bytes(spec), max_packet)
        stmts = self.statements(engine.dialect)
        params = stmts.converter(now)(spec)
        try:
            # The driver's own error if the pool cannot connect (not wrapped, not retried
            # here): the transaction path retries what is transient and raises DatabaseError.
            raw = engine.raw_connection()
        except Exception as exc:
            log.debug("add: no pooled connection (%s: %s); through a transaction",
                      type(exc).__name__, exc)
            return through_transaction()
        new_id: int | None = None
        try:
            cursor = None
            try:
                cursor = raw.cursor()
                self.backend.begin_write(cursor)
                cursor.execute(stmts.one, params)
                new_id = int(cursor.lastrowid)
                cursor.close()
            except Exception as exc:
                log.debug("add: direct insert failed (%s: %s); through a transaction",
                          type(exc).__name__, exc)
                _discard(raw, cursor, exc)
                del cursor  # SQLite: a closed connection's lock lives on with its cursors
                new_id = None
            except BaseException as exc:  # interrupted (KeyboardInterrupt...): _abandon
                _abandon(raw, cursor, exc)
                raise
            if new_id is not None:
                try:
                    raw.commit()
                except Exception as exc:
                    raw.invalidate(exc)
                    raise DatabaseError(f"database error on {redact(str(engine.url))}: "
                                        f"{type(exc).__name__}: {exc}") from exc
                except BaseException as exc:
                    _abandon(raw, None, exc)
                    raise
        finally:
            raw.close()  # before the transaction below: it takes a connection of its own
        if new_id is None:
            return through_transaction()
        return new_id

    def max_statement_bytes(self, conn: Connection) -> int | None:
        """The backend's statement size limit, read once (None: no such limit)."""
        if self._packet is None:
            self._packet = (self.backend.max_statement_bytes(conn),)
        return self._packet[0]

    def _insert_unique(self, conn: Connection, spec: TaskSpec, now: datetime) -> int:
        assert spec.unique_key is not None
        result = conn.execute(self.backend.insert_unique(q, q.c.active_key), spec.row(now))
        existing = select(q.c.id).where(q.c.active_key == spec.unique_key)
        return self.backend.unique_id(conn, result, existing)
