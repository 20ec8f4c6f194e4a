"""The SQL of the migrations for tools that run their own (Flyway, Alembic, Django, by hand):
``cronqueue migrate --export DIR|-``, and the ``sql/migrations/`` files of the repository.

Each exported file is one migration: the ``cronqueue_migrations`` table (``IF NOT EXISTS``),
the migration's statements, and the row that records it, so that ``cronqueue work``,
``mission`` and ``check`` (which read that table) accept a database migrated by another tool.
"""

from __future__ import annotations

from sqlalchemy import Dialect
from sqlalchemy.schema import CreateTable

from cronqueue.store.migrations import Migration, load
from cronqueue.store.schema import ddl_metadata, dialect_for, migrations_table, record_sql


def bootstrap_ddl(dialect: Dialect) -> str:
    """``CREATE TABLE IF NOT EXISTS cronqueue_migrations``, from store/schema.py."""
    ddl_metadata()  # the table options (InnoDB, utf8mb4_bin)
    return str(CreateTable(migrations_table, if_not_exists=True).compile(dialect=dialect)).strip()


def file_name(m: Migration, *, flyway: bool = False) -> str:
    """``0002_queue_secret.sql``, or Flyway's ``V2__queue_secret.sql``."""
    return f"V{m.version}__{m.name.split('_', 1)[1]}.sql" if flyway else f"{m.name}.sql"


def export_text(m: Migration, set_name: str) -> str:
    dialect = dialect_for(set_name)
    body = "".join(f"\n{s};\n" for s in m.statements)
    return (f"-- cronqueue migration {m.version} ({m.name}) for {set_name}; exported by "
            f"`cronqueue migrate --export`.\n"
            f"-- Run on {_after(m)}. The last statement records it in cronqueue_migrations,\n"
            f"-- which cronqueue reads before it runs anything.\n"
            f"\n{bootstrap_ddl(dialect)};\n{body}\n{record_sql(m, dialect, 'export')};\n")


def _after(m: Migration) -> str:
    if m.version == 1:
        return "an empty database (or record it by hand on one of cronqueue 0.1.0)"
    return f"a database at version {m.version - 1}"


def export(set_name: str, to: int | None = None, *, flyway: bool = False
           ) -> list[tuple[str, str]]:
    """(file name, text) of migrations 1..``to`` (default: all)."""
    migrations = load(set_name)
    return [(file_name(m, flyway=flyway), export_text(m, set_name))
            for m in migrations[:to if to is not None else len(migrations)]]
