"""``init-db`` and ``sql/<dialect>.sql`` build the same table, on each backend."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Status

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
CONTRACT_COLUMNS = {"id", "taskscript", "param", "status", "priority", "ctime"}


@pytest.fixture
def second_db_url(backend: str, db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another fresh, empty database on the same backend (dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'from_sql_file.db'}"
        return
    url = make_url(db_url)
    admin = create_engine(url.set(database=""), isolation_level="AUTOCOMMIT")
    name = "cq_t_" + secrets.token_hex(6)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def sql_statements(backend: str) -> list[str]:
    name = "sqlite.sql" if backend == "sqlite" else "mysql.sql"
    statements = []
    for chunk in (SQL_DIR / name).read_text().split(";\n"):
        lines = [ln for ln in chunk.splitlines() if not ln.strip().startswith("--")]
        stmt = "\n".join(lines).strip()
        if stmt:
            statements.append(stmt)
    return statements


def describe(engine: Engine) -> dict[str, Any]:
    insp = inspect(engine)
    assert insp.has_table("queue")
    columns = {
        c["name"]: (bool(c["nullable"]), type(c["type"]).__name__,
                    None if c.get("default") is None else str(c["default"]))
        for c in insp.get_columns("queue")
    }
    indexes = {
        ix["name"]: (tuple(ix["column_names"]), bool(ix["unique"]),
                     tuple(sorted((ix.get("column_sorting") or {}).items())))
        for ix in insp.get_indexes("queue")
    }
    return {"columns": columns, "indexes": indexes, "pk": insp.get_pk_constraint("queue"),
            "options": insp.get_table_options("queue"), "tables": sorted(insp.get_table_names())}


def test_init_db_matches_sql_file(backend: str, db_url: str, second_db_url: str,
                                  task_dir: Path) -> None:
    q = Queue(db_url, task_dir=str(task_dir))
    q.init_db()
    q.init_db()  # idempotent
    from_init = describe(q.engine)
    q.close()

    engine = create_engine(second_db_url)
    try:
        with engine.begin() as conn:
            for stmt in sql_statements(backend):
                conn.exec_driver_sql(stmt)
        from_file = describe(engine)
    finally:
        engine.dispose()

    assert set(from_init["columns"]) >= CONTRACT_COLUMNS
    assert "ux_queue_active_key" in from_init["indexes"]
    assert from_init["indexes"]["ux_queue_active_key"][1] is True
    assert from_init["pk"]["constrained_columns"] == ["id"]
    assert from_file["columns"] == from_init["columns"]
    assert list(from_file["columns"]) == list(from_init["columns"])  # same column order
    assert from_file["indexes"] == from_init["indexes"]
    assert from_file["pk"]["constrained_columns"] == from_init["pk"]["constrained_columns"]
    assert from_file["options"] == from_init["options"]
    assert from_file["tables"] == from_init["tables"]


def test_init_db_applies_the_table_options(backend: str, db_url: str, task_dir: Path) -> None:
    """Ids never reused (SQLite AUTOINCREMENT); InnoDB with exact binary text (MariaDB)."""
    q = Queue(db_url, task_dir=str(task_dir))
    q.init_db()
    try:
        with q.engine.connect() as conn:
            for table in ("queue", "cronqueue_runs", "cronqueue_workers"):
                if backend == "sqlite":
                    ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = :t"),
                                       {"t": table}).scalar_one()
                    assert "AUTOINCREMENT" in ddl, table
                else:
                    engine, collation = conn.execute(text(
                        "SELECT ENGINE, TABLE_COLLATION FROM information_schema.TABLES"
                        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"),
                        {"t": table}).one()
                    assert (engine, collation) == ("InnoDB", "utf8mb4_bin"), table
    finally:
        q.close()


def test_init_db_twice_keeps_data(queue: Queue) -> None:
    task_id = queue.add("job.sh", {"keep": True})
    queue.init_db()
    task = queue.get(task_id)
    assert task is not None and task.args == {"keep": True}


def test_sql_file_database_is_usable(backend: str, second_db_url: str, task_dir: Path) -> None:
    """A database built from sql/ by an operator works with the API, plain SQL and init-db."""
    engine = create_engine(second_db_url)
    try:
        with engine.begin() as conn:
            for stmt in sql_statements(backend):
                conn.exec_driver_sql(stmt)
            conn.execute(text("INSERT INTO queue (taskscript, param) VALUES (:t, :p)"),
                         {"t": "php.sh", "p": '{"a":1}'})
    finally:
        engine.dispose()
    q = Queue(second_db_url, task_dir=str(task_dir))
    try:
        q.init_db()  # no-op on a database made from the file
        [raw] = q.list()
        assert raw.status is Status.PENDING and raw.args == {"a": 1}
        first = q.add("job.sh", unique_key="k")
        assert q.add("job.sh", unique_key="k") == first
        assert q.stats()["pending"] == 2
    finally:
        q.close()
