"""Inserting tasks: one transaction for any number of rows, ids in input order, no statement
larger than the server accepts.

The forms, by what the backend offers (``store/backends``):

* a unique task (``unique_key``): the backend's insert-unique form, one row at a time;
* many plain tasks on a server with ``json_bulk_insert`` (MariaDB >= 10.6): one JSON array per
  statement, expanded by ``JSON_TABLE`` on the server (one bound parameter instead of one per
  value), the ids from the first id when the server gives one statement consecutive ids, else
  by ``RETURNING``;
* else a multi-row ``INSERT ... RETURNING id`` where the backend ``returning``, or one INSERT
  per row (its lastrowid).

Statements are cut to the backend's ``max_statement_bytes`` (``packet.py``); a row too large
to fit alone is refused before anything is written.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, CursorResult, select, text

from cronqueue.spec import TaskSpec
from cronqueue.store import packet
from cronqueue.store.backends import Backend
from cronqueue.store.rows import CHUNK
from cronqueue.store.schema import queue_table as q

_JSON_CHUNK_BYTES = 4 << 20  # per statement: well under max_allowed_packet (16 MiB default)
_JSON_CHUNK_ROWS = 20000
_JSON_MAX_ROW_BYTES = 256 << 10  # bigger rows (large params, secrets) go one by one

# The columns of a plain (no unique_key) task, in the order the JSON rows carry them.
JSON_ROW_COLUMNS = ("taskscript", "param", "priority", "queue", "ctime", "run_at",
                    "max_attempts", "timeout", "secret")
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
# Parameter-bound like everything else: the rows are data, never SQL.
_INSERT_JSON = text(_INSERT_JSON_SQL)
_INSERT_JSON_RETURNING = text(_INSERT_JSON_SQL + " RETURNING id")


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
    """A plain task as one JSON array, in ``JSON_ROW_COLUMNS`` order (times as naive UTC
    text; ``ctime`` already is)."""
    return [spec.taskscript, spec.param, spec.priority, spec.queue, ctime,
            _naive_utc_text(spec.run_at), spec.max_attempts, spec.timeout, spec.secret]


@functools.lru_cache(maxsize=16)  # a batch shares its ctime (and usually its run_at)
def _naive_utc_text(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


class Inserter:
    """Inserts task rows on one backend; reads the server's limits once."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._id_step: int | None = None
        self._packet: tuple[int | None] | None = None

    def insert(self, conn: Connection, specs: Sequence[TaskSpec], now: datetime) -> list[int]:
        """Insert all specs in ``conn``'s transaction; ids in input order."""
        ids: list[int | None] = [None] * len(specs)
        plain = [i for i, s in enumerate(specs) if s.unique_key is None]
        for i, spec in enumerate(specs):
            if spec.unique_key is not None:
                ids[i] = self._insert_unique(conn, spec, now)
        dialect = conn.dialect
        # No statement may exceed the server's limit (it would drop the connection):
        # statements are cut to fit, a row too large to fit alone is refused.
        max_packet = self.max_statement_bytes(conn)
        budget = (1 << 62) if max_packet is None else max_packet - packet.STATEMENT_OVERHEAD
        sizes: dict[int, int] = {}
        if max_packet is not None:
            sizes = {i: _row_bytes(s) for i, s in enumerate(specs)}
            for i, size in sizes.items():
                packet.check_fits(i if len(specs) > 1 else None, size, max_packet)
        if len(plain) > 1 and self.backend.json_bulk_insert(dialect):
            json_budget = min(_JSON_CHUNK_BYTES, budget)
            costs = {i: _json_cost(specs[i]) for i in plain}
            small = [i for i in plain if costs[i] <= min(_JSON_MAX_ROW_BYTES, json_budget)]
            plain = [i for i in plain if costs[i] > min(_JSON_MAX_ROW_BYTES, json_budget)]
            for chunk in packet.split(small, costs, json_budget, _JSON_CHUNK_ROWS):
                for i, new_id in zip(chunk, self._insert_json(conn, specs, chunk, now),
                                     strict=True):
                    ids[i] = new_id
        returning = self.backend.returning(dialect)
        chunks = (packet.split(plain, sizes, budget, CHUNK) if sizes
                  else [plain[start:start + CHUNK] for start in range(0, len(plain), CHUNK)])
        for chunk in chunks:
            rows = [specs[i].row(now) for i in chunk]
            if returning and len(rows) > 1:
                # Rows of a multi-row INSERT get increasing ids in VALUES order, and later
                # statements of this connection larger ones: sorted ids are in input order.
                # (sort_by_parameter_order would fall back to one statement per row here.)
                stmt = q.insert().returning(q.c.id)
                new_ids = sorted(r[0] for r in conn.execute(stmt, rows))
            else:
                new_ids = [_inserted_id(conn.execute(q.insert(), row)) for row in rows]
            for i, new_id in zip(chunk, new_ids, strict=True):
                ids[i] = int(new_id)
        return [int(i) for i in ids if i is not None]

    def _insert_json(self, conn: Connection, specs: Sequence[TaskSpec], chunk: list[int],
                     now: datetime) -> list[int]:
        ctime = _naive_utc_text(now)
        encoded = json.dumps([_json_row(specs[i], ctime) for i in chunk], ensure_ascii=False)
        step = self.insert_select_id_step(conn)
        if step:
            # The statement's rows got consecutive ids (AUTO-INC lock held for the whole
            # INSERT ... SELECT): the first id is enough, no id per row to read.
            result = conn.execute(_INSERT_JSON, {"rows": encoded})
            assert result.rowcount == len(chunk)
            first = int(result.lastrowid)
            return [first + k * step for k in range(len(chunk))]
        result = conn.execute(_INSERT_JSON_RETURNING, {"rows": encoded})
        return sorted(int(r[0]) for r in result)

    def insert_select_id_step(self, conn: Connection) -> int:
        if self._id_step is None:
            self._id_step = self.backend.insert_select_id_step(conn)
        return self._id_step

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
