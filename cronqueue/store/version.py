"""The schema version check that ``work``, ``mission`` and ``check`` make before anything
else (:func:`require_current`: one small query), apart from ``migrate.py``, which applies the
migrations and re-exports these names: a shard or a tick imports this module alone.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, inspect, select
from sqlalchemy.exc import DBAPIError

from cronqueue.errors import ConfigError, DatabaseError
from cronqueue.store.engine import transaction
from cronqueue.store.migrations import newest, set_for
from cronqueue.store.schema import migrations_table as mt

__all__ = ["SchemaVersionError", "explain_failed_write", "missing", "require_current"]


class SchemaVersionError(ConfigError):
    """The database's schema is not the one this cronqueue runs on (behind, ahead, not
    versioned, changed): refused with one line that names what to do (exit 2)."""


_MISSING = object()


def require_current(engine: Engine) -> int:
    """The database's schema version, if it is the one this cronqueue needs; else
    ``SchemaVersionError`` with one line naming the command to run. One small query."""
    need = newest(set_for(engine.dialect.name))
    newest_row = select(mt.c.version, mt.c.complete).order_by(mt.c.version.desc()).limit(1)

    def read(conn: Connection) -> Any:
        try:
            return conn.execute(newest_row).first()
        except DBAPIError as exc:
            if missing(exc, "table"):
                return _MISSING
            raise

    row = transaction(engine, read, readonly=True)
    if row is _MISSING or row is None:
        has = transaction(engine, lambda c: inspect(c).has_table("queue"), readonly=True)
        if not has:
            raise SchemaVersionError("the database has no cronqueue tables: run "
                                     "`cronqueue init-db`")
        raise SchemaVersionError(f"database schema is not versioned (made by cronqueue 0.1.0?), "
                                 f"this cronqueue needs version {need}: run `cronqueue migrate`")
    version, complete = int(row[0]), bool(int(row[1]))
    if version > need:
        raise SchemaVersionError(f"database schema is at version {version}, newer than this "
                                 f"cronqueue knows (version {need}): upgrade cronqueue")
    if not complete:
        raise SchemaVersionError(f"database schema migration {version} is under way or was "
                                 f"interrupted, this cronqueue needs version {need}: run "
                                 f"`cronqueue migrate`")
    if version < need:
        raise SchemaVersionError(f"database schema is at version {version}, this cronqueue "
                                 f"needs version {need}: run `cronqueue migrate`")
    return version


def explain_failed_write(engine: Engine, exc: BaseException) -> None:
    """After a write failed on a missing column (one added by a migration the database lacks):
    raise the ``SchemaVersionError`` that says why, when the schema is not current. Returns
    otherwise (the caller re-raises); a missing table stays the database error it is."""
    cause = exc if isinstance(exc, DBAPIError) else exc.__cause__
    if not isinstance(cause, DBAPIError) or not missing(cause, "column"):
        return
    try:
        require_current(engine)
    except SchemaVersionError as behind:
        raise behind from exc
    except DatabaseError:
        return


def missing(exc: DBAPIError, what: str) -> bool:
    """A missing table (MySQL 1146) or column (1054) named by the error."""
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    if what == "table":
        return code == 1146 or "no such table" in str(orig).lower()
    return code == 1054 or any(s in str(orig).lower()
                               for s in ("no such column", "has no column named"))
