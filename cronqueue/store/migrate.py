"""Versioned schema migrations: what ``cronqueue migrate`` and ``init-db`` run, and the version
check ``work``, ``mission`` and ``check`` make before anything else.

The migrations are the SQL files of ``store/migrations/`` (see its docstring); the table
``cronqueue_migrations`` records each one applied (version, name, checksum, when, by whom).

* Forward only, in order, up to the newest or ``to``. A migration whose file changed after it
  was applied here (checksum) is refused, and so is a database ahead of this cronqueue.
* One at a time: SQLite runs the whole upgrade in one ``BEGIN IMMEDIATE`` transaction (all or
  nothing); MySQL/MariaDB hold ``GET_LOCK`` for the database while they run. A second
  ``migrate`` waits, then finds nothing left to do.
* MySQL/MariaDB DDL is not transactional: each statement is recorded as it completes
  (``statements_done``), and an interrupted migration resumes at the next statement (the one
  that was running counts as done if its re-run finds its work there).
* A database with cronqueue's tables and no record of its version (made by 0.1.0's
  ``init-db``, an unreleased later one, or ``sql/``) is placed by the names of its tables,
  columns and indexes (``migrations/shape.py``), recorded at that version ("baseline") and
  migrated from there; one that matches no version is refused, naming what differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, inspect, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

from cronqueue.errors import DatabaseError
from cronqueue.store.engine import redact, transaction
from cronqueue.store.migrations import Migration, load, set_for
from cronqueue.store.schema import UtcNow, ddl_metadata, migrations_table, record_sql

# The check before work, mission and check lives in store/version.py (a shard imports it
# alone); its names stay importable from here.
from cronqueue.store.version import SchemaVersionError as SchemaVersionError
from cronqueue.store.version import explain_failed_write as explain_failed_write
from cronqueue.store.version import require_current as require_current

if TYPE_CHECKING:  # migrate and --status only: not on the way of require_current (a shard)
    from cronqueue.store.migrate_lock import Session
    from cronqueue.store.migrations.shape import Placement

log = logging.getLogger("cronqueue.migrate")
mt = migrations_table
T = TypeVar("T")
# An interrupted statement's re-run that finds its work done. MySQL: table exists, unknown
# table, duplicate column, duplicate key name, can't drop (no such column or key).
_DONE_CODES = frozenset({1050, 1051, 1060, 1061, 1091})
_DONE_TEXTS = ("already exists", "duplicate column name", "no such column", "no such index",
               "no such table")
_NO_PARAMS = {"no_parameters": True}  # a '%' in a statement is SQL, not a placeholder


@dataclass(frozen=True)
class Record:
    """A row of ``cronqueue_migrations``."""

    version: int
    name: str
    checksum: str
    applied_at: datetime | None
    applied_by: str
    statements_done: int
    complete: bool


@dataclass
class State:
    """Where a database stands: what ``migrate --status`` shows and ``migrate`` starts from."""

    migrations: tuple[Migration, ...]
    records: dict[int, Record] | None  # None: no cronqueue_migrations table
    placement: Placement | None = None  # nothing recorded: the version its tables match

    @property
    def newest(self) -> int:
        return len(self.migrations)

    @property
    def current(self) -> int | None:
        """The highest version completely applied (or matched); None: no version matches."""
        done = [r.version for r in (self.records or {}).values() if r.complete]
        if done:
            return max(done)
        return self.placement.version if self.placement is not None else 0

    @property
    def interrupted(self) -> Record | None:
        return next((r for r in (self.records or {}).values() if not r.complete), None)

    def problem(self) -> str | None:
        """Why ``migrate`` must refuse this database, if it must."""
        records = self.records or {}
        ahead = [v for v in records if v > self.newest]
        if ahead:
            return (f"database schema is at version {max(ahead)}, newer than this cronqueue "
                    f"knows (version {self.newest}): upgrade cronqueue on this host")
        for v, r in sorted(records.items()):
            m = self.migrations[v - 1]
            if (r.name, r.checksum) != (m.name, m.checksum):
                return (f"migration {v} ({m.name}) is not the one applied to this database "
                        f"(recorded {r.name} sha256 {r.checksum[:12]}, the file has "
                        f"{m.checksum[:12]}): a released migration must never change; put "
                        f"the file back as it was")
        gap = self.interrupted
        if gap is not None and gap.version != (self.current or 0) + 1:
            return (f"cronqueue_migrations: migration {gap.version} is unfinished but "
                    f"{self.current} is the newest finished: fix the table by hand")
        if self.current is None and self.placement is not None:
            return f"{self.placement.problem}: cannot tell which migrations to run"
        return None

    def pending(self, to: int | None = None) -> tuple[Migration, ...]:
        return self.migrations[self.current or 0:self.target(to)]

    def target(self, to: int | None) -> int:
        """The version to migrate to; refuses a target behind the database or unknown."""
        problem = self.problem()
        if problem is not None:
            raise SchemaVersionError(problem)
        current = self.current or 0
        if to is None:
            return max(self.newest, current)
        if to > self.newest:
            raise SchemaVersionError(f"--to {to}: there is no migration {to}; this cronqueue's "
                                     f"newest is {self.newest}")
        if to < current:
            raise SchemaVersionError(f"--to {to}: the database is at version {current} already; "
                                     f"migrations only go forward")
        return to


@dataclass
class Outcome:
    before: int
    after: int
    baseline: int = 0  # versions recorded without running (the tables already had them)
    applied: list[Migration] = field(default_factory=list)


# -- reading ----------------------------------------------------------------------------------

def read_state(conn: Connection) -> State:
    from cronqueue.store.migrations.shape import place

    migrations = load(set_for(conn.dialect.name))
    if not inspect(conn).has_table(mt.name):
        return State(migrations, None, place(conn))
    records = {}
    for row in conn.execute(select(mt).order_by(mt.c.version)).mappings():
        try:  # rows are untrusted: one that is not a record is named, not a traceback
            r = Record(int(row["version"]), str(row["name"]), str(row["checksum"]),
                       row["applied_at"] if isinstance(row["applied_at"], datetime) else None,
                       str(row["applied_by"]), int(row["statements_done"]),
                       bool(int(row["complete"])))
        except (TypeError, ValueError):
            r = None
        if r is None or r.version < 1:
            raise SchemaVersionError(f"cronqueue_migrations: a row that is not a migration "
                                     f"record (version {row['version']!r})")
        records[r.version] = r
    return State(migrations, records, None if records else place(conn))


def status(engine: Engine) -> State:
    return _wrap(engine, lambda: transaction(engine, read_state, readonly=True))


def plan(engine: Engine, to: int | None = None) -> list[str]:
    """The SQL ``upgrade(engine, to)`` would run, with comment lines; runs nothing."""
    from cronqueue.store.migrations.export import bootstrap_ddl

    state = status(engine)
    target = state.target(to)
    dialect = engine.dialect
    out = [f"-- {redact(str(engine.url))}: {describe(state)}"]
    if state.records is None:
        out.append(bootstrap_ddl(dialect) + ";")
    if not state.records and state.current:
        out.append(f"-- not versioned; its tables match version {state.current}: recorded "
                   f"as applied, not run")
        out += [record_sql(m, dialect, "baseline") + ";"
                for m in state.migrations[:state.current]]
    resume = state.interrupted
    for m in state.pending(target):
        skip = resume.statements_done if resume is not None and resume.version == m.version \
            else 0
        out.append(f"-- migration {m.version}: {m.name}" + (
            f" (interrupted: resumes after statement {skip})" if skip else ""))
        out += [s + ";" for s in m.statements[skip:]]
    if len(out) == 1:
        out.append(f"-- nothing to do: the schema is at version {state.current}")
    return out


def describe(state: State) -> str:
    current = state.current
    if current is None:
        return "tables that match no schema version"
    where = f"version {current} of {state.newest}"
    if not state.records:
        return "no cronqueue tables" if current == 0 else f"not versioned; its tables are {where}"
    return f"at {where}"


# -- applying ---------------------------------------------------------------------------------

def upgrade(engine: Engine, to: int | None = None) -> Outcome:
    """Bring the database to version ``to`` (default: the newest); see the module docstring."""
    from cronqueue.store.migrate_lock import locked

    def run() -> Outcome:
        with locked(engine) as s:
            state = read_state(s.conn)
            target = state.target(to)  # refused before anything is written
            if state.records is None:
                s.conn.execute(CreateTable(_bootstrapped(), if_not_exists=True))
                s.checkpoint()
            before = state.current or 0
            outcome = Outcome(before, before)
            if not state.records and before:
                for m in state.migrations[:before]:
                    _record(s, m, len(m.statements), complete=True, by=f"{s.who} (baseline)")
                s.checkpoint()
                outcome.baseline = before
                log.info("not versioned: its tables match version %d; recorded as applied",
                         before)
            for m in state.pending(target):
                _apply(s, m, state.interrupted)
                outcome.applied.append(m)
                outcome.after = m.version
            return outcome

    return _wrap(engine, run)


def _bootstrapped() -> Any:
    ddl_metadata()  # the table's options
    return mt


def _record(s: Session, m: Migration, done: int, *, complete: bool, by: str) -> None:
    s.conn.execute(mt.insert().values(version=m.version, name=m.name, checksum=m.checksum,
                                      applied_by=by[:255], statements_done=done,
                                      complete=int(complete)))


def _apply(s: Session, m: Migration, interrupted: Record | None) -> None:
    began = time.monotonic()
    resume = interrupted if interrupted is not None and interrupted.version == m.version else None
    start = resume.statements_done if resume is not None else 0
    if resume is None:
        _record(s, m, 0, complete=False, by=s.who)
        s.checkpoint()
    else:
        log.warning("migration %d (%s) was interrupted after statement %d of %d; resuming",
                    m.version, m.name, start, len(m.statements))
    mine = mt.c.version == m.version
    for i in range(start, len(m.statements)):
        try:
            s.conn.exec_driver_sql(m.statements[i], execution_options=_NO_PARAMS)
        except DBAPIError as exc:
            if not (resume is not None and i == start and _already_done(exc)):
                raise DatabaseError(
                    f"migration {m.version} ({m.name}) failed at statement {i + 1} of "
                    f"{len(m.statements)}: {_short(exc)}" + (
                        "" if s.atomic else f"; statements 1..{i} are applied and recorded, "
                        f"the next `cronqueue migrate` resumes at {i + 1}")) from exc
            log.warning("migration %d statement %d had completed before the interruption (%s)",
                        m.version, i + 1, _short(exc))
        s.conn.execute(update(mt).where(mine).values(statements_done=i + 1))
        s.checkpoint()
    s.conn.execute(update(mt).where(mine).values(complete=1, applied_at=UtcNow(),
                                                  applied_by=s.who))
    s.checkpoint()
    log.info("applied migration %d (%s): %d statement(s) in %.3fs", m.version, m.name,
             len(m.statements) - start, time.monotonic() - began)


def _already_done(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    return code in _DONE_CODES or any(t in str(orig).lower() for t in _DONE_TEXTS)


def _wrap(engine: Engine, call: Callable[[], T]) -> T:
    """Database errors as ``DatabaseError`` with the URL's password redacted."""
    try:
        return call()
    except DBAPIError as exc:
        raise DatabaseError(f"database error on {redact(str(engine.url))}: {_short(exc)}"
                            ) from exc


def _short(exc: DBAPIError) -> str:
    orig = exc.orig
    return f"{type(orig).__name__}: {orig}" if orig is not None else str(exc).splitlines()[0]
