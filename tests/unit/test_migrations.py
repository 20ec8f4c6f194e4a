"""The migration files: version 1 is 0.1.0's schema, all of them build schema.py's tables, the
versions can be told apart by their names, and ``sql/migrations/`` is their export."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect

from cronqueue.store.migrate import Record, SchemaVersionError, State
from cronqueue.store.migrations import SETS, load, newest, split_statements
from cronqueue.store.migrations.export import export
from cronqueue.store.migrations.shape import Placement, differences, version_shapes
from cronqueue.store.schema import ddl_metadata
from tests.conftest import run_main

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "schema_0_1_0"


def reflect(engine: Engine) -> dict[str, Any]:
    """Every table: columns in order (type, nullability, default), indexes, primary key."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), bool(c["nullable"]),
                         None if c.get("default") is None else str(c["default"]))
                        for c in insp.get_columns(table)],
            "indexes": sorted((str(ix["name"]), tuple(ix["column_names"]), bool(ix["unique"]))
                              for ix in insp.get_indexes(table)),
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
        }
    return out


def sqlite_db(path: Path, statements: list[str]) -> Engine:
    with contextlib.closing(sqlite3.connect(path)) as raw:
        for statement in statements:
            raw.execute(statement)
        raw.commit()
    return create_engine(f"sqlite:///{path}")


@pytest.mark.parametrize("set_name", SETS)
def test_version_1_is_the_0_1_0_schema(set_name: str) -> None:
    fixture = split_statements((FIXTURE / f"{set_name}.sql").read_text(encoding="utf-8"))
    assert load(set_name)[0].statements == tuple(fixture)
    assert len(fixture) == 9  # 3 tables, 6 indexes
    assert not any("secret" in s for s in fixture)


def test_both_sets_have_the_same_versions() -> None:
    assert [m.name for m in load("sqlite")] == [m.name for m in load("mysql")]
    assert newest("sqlite") == newest("mysql") == len(load("sqlite")) >= 2


def test_replayed_migrations_build_schema_py(tmp_path: Path) -> None:
    """Every SQLite migration in order == schema.py's create_all (the MariaDB twin of this is
    tests/integration/test_migrations.py)."""
    migrated = sqlite_db(tmp_path / "migrated.db",
                         [s for m in load("sqlite") for s in m.statements])
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        ddl_metadata().create_all(fresh)
        want = reflect(fresh)
        want.pop("cronqueue_migrations")  # created by migrate itself, before migration 1
        assert reflect(migrated) == want
    finally:
        migrated.dispose()
        fresh.dispose()


def test_each_version_has_its_own_names() -> None:
    shapes = version_shapes()
    assert len(shapes) == newest("sqlite")
    assert len(set(shapes)) == len(shapes), "two versions cannot be told apart by names"
    assert ("column", "queue", "secret") in shapes[1]
    assert ("column", "queue", "secret") not in shapes[0]


def test_differences_name_what_is_missing_and_extra() -> None:
    v1, v2 = version_shapes()[:2]
    no_workers = frozenset(n for n in v1 if n[1] != "cronqueue_workers")
    assert differences(no_workers, v1) == "missing table cronqueue_workers"
    assert differences(v2 - {("index", "queue", "ix_queue_finished")} | {("table", "x")},
                       v2) == "missing index queue.ix_queue_finished, unexpected table x"


def test_split_statements() -> None:
    sql = "-- a comment;\nCREATE TABLE a (\n  x INT\n);\n\n-- b\nALTER TABLE a ADD y INT;\n"
    assert split_statements(sql) == ["CREATE TABLE a (\n  x INT\n)", "ALTER TABLE a ADD y INT"]
    with pytest.raises(ValueError, match="does not end"):
        split_statements("CREATE TABLE a (x INT)")


@pytest.mark.parametrize("set_name", SETS)
def test_sql_migrations_are_the_export(set_name: str) -> None:
    on_disk = sorted(p.name for p in (ROOT / "sql" / "migrations" / set_name).iterdir())
    exported = export(set_name)
    assert on_disk == [name for name, _ in exported]
    for name, text in exported:
        assert (ROOT / "sql" / "migrations" / set_name / name).read_text(encoding="utf-8") \
            == text, (f"sql/migrations/{set_name}/{name} is out of date: `cronqueue migrate "
                      f"--export sql/migrations/{set_name} --dialect {set_name}`")


def test_an_export_applied_by_another_tool_is_recorded(tmp_path: Path) -> None:
    """The exported files, run in order as Flyway would, give the migrated schema and the
    records cronqueue reads."""
    statements = [s for _, text in export("sqlite") for s in split_statements(text)]
    engine = sqlite_db(tmp_path / "flyway.db", statements)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT version, name, checksum, complete FROM cronqueue_migrations").all()
        assert [tuple(r) for r in rows] == [(m.version, m.name, m.checksum, 1)
                                            for m in load("sqlite")]
    finally:
        engine.dispose()


def test_cli_export_needs_no_database(clean_env: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    assert run_main(["migrate", "--export", "out", "--dialect", "mysql", "--flyway",
                     "--to", "1"]) == 0
    assert [p.name for p in (clean_env / "out").iterdir()] == ["V1__initial.sql"]
    assert not (clean_env / "cronqueue.db").exists()
    capsys.readouterr()
    assert run_main(["migrate", "--export", "-", "--dialect", "sqlite"]) == 0
    out = capsys.readouterr().out
    assert out == "\n".join(text for _, text in export("sqlite"))
    assert run_main(["migrate", "--export", "-", "--to", "9"]) == 2
    assert "no migration 9" in capsys.readouterr().err


def _state(versions: list[int]) -> State:
    """A database whose cronqueue_migrations records ``versions`` (complete)."""
    migrations = load("sqlite")
    records = {}
    for v in versions:
        m = migrations[v - 1] if v <= len(migrations) else None
        records[v] = Record(v, m.name if m else f"{v:04d}_later", m.checksum if m else "f" * 64,
                            None, "h", 1, True)
    return State(migrations, records)


def test_target_is_forward_only() -> None:
    at_1 = _state([1])
    assert at_1.target(None) == newest("sqlite")
    assert [m.version for m in at_1.pending(None)] == list(range(2, newest("sqlite") + 1))
    with pytest.raises(SchemaVersionError, match="only go forward"):
        _state([1, 2]).target(1)
    with pytest.raises(SchemaVersionError, match="there is no migration 99"):
        at_1.target(99)


def test_a_database_ahead_or_changed_is_refused() -> None:
    ahead = _state([1, 2, 99])
    assert "newer than this cronqueue" in str(ahead.problem())
    changed = _state([1])
    assert changed.records is not None
    first = changed.records[1]
    changed.records[1] = Record(1, first.name, "0" * 64, None, "h", 9, True)
    assert "must never change" in str(changed.problem())
    with pytest.raises(SchemaVersionError, match="must never change"):
        changed.target(None)


def test_unplaceable_tables_are_refused() -> None:
    state = State(load("sqlite"), None, Placement(None, "closest is version 1: missing x"))
    with pytest.raises(SchemaVersionError, match="closest is version 1: missing x"):
        state.target(None)
