"""``cronqueue migrate`` on real databases: a database of cronqueue 0.1.0 (its DDL kept in
tests/fixtures/schema_0_1_0) with tasks in every status upgrades and its tasks run; the upgraded
schema equals a fresh one; status, dry run, ``--to``, re-runs, two at once, an interrupted
migration, a changed one; ``work``, ``mission`` and ``check`` refuse a database that is behind."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from cronqueue import Queue, Status
from cronqueue.store.migrate import SchemaVersionError
from cronqueue.store.migrate_lock import lock_name
from cronqueue.store.migrations import load, newest, split_statements
from cronqueue.store.schema import ddl_metadata
from tests import helpers
from tests.conftest import _mariadb_database, get_task, run_cli
from tests.helpers import Procs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "schema_0_1_0"
NEWEST = newest("sqlite")
BEHIND_0_1_0 = (f"database schema is not versioned (made by cronqueue 0.1.0?), this cronqueue "
                f"needs version {NEWEST}: run `cronqueue migrate`")
MIGRATION_2 = load("sqlite")[1]  # its name (the statements are the sqlite set's)


# -- set-up -------------------------------------------------------------------------------------

def run_sql(url: str, statements: list[str]) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
    finally:
        engine.dispose()


def create_0_1_0(url: str, backend: str) -> None:
    """The tables exactly as cronqueue 0.1.0's ``init-db`` made them."""
    name = "sqlite" if backend == "sqlite" else "mysql"
    run_sql(url, split_statements((FIXTURE / f"{name}.sql").read_text(encoding="utf-8")))


OLD = "2031-05-06 07:08:09.000000"
ROWS: dict[str, dict[str, Any]] = {  # 0.1.0's columns only (no secret)
    "pending": {"taskscript": "ok.sh", "param": '{"n": 1}'},
    "pending_unique": {"taskscript": "ok.sh", "param": "[2]", "unique_key": "k1",
                       "active_key": "k1", "priority": 5},
    "running": {"taskscript": "ok.sh", "param": "3", "status": 2, "attempts": 1,
                "worker_host": "gone-host#0", "worker_pid": 999999, "claim_token": "t" * 32,
                "lease_until": OLD, "started_at": OLD},
    "done": {"taskscript": "ok.sh", "param": "4", "status": 1, "attempts": 1,
             "started_at": OLD, "finished_at": OLD, "exit_code": 0, "output": "old output"},
    "failed": {"taskscript": "ok.sh", "param": "5", "status": 3, "attempts": 3,
               "max_attempts": 3, "started_at": OLD, "finished_at": OLD, "exit_code": 1,
               "error": "ProcessExitError: exit status 1"},
    "cancelled": {"taskscript": "ok.sh", "param": "6", "status": 4, "finished_at": OLD},
}


def insert_0_1_0_tasks(url: str) -> dict[str, int]:
    """One task in every status, written with plain SQL the way 0.1.0 left them."""
    engine = create_engine(url)
    ids = {}
    try:
        with engine.begin() as conn:
            for name, row in ROWS.items():
                sql = (f"INSERT INTO queue ({', '.join(row)}) "
                       f"VALUES ({', '.join(':' + c for c in row)})")
                ids[name] = int(conn.execute(text(sql), row).lastrowid)
    finally:
        engine.dispose()
    return ids


def reflect(url: str) -> dict[str, Any]:
    """Every table: columns in order (type, nullability, default), indexes (columns, unique,
    order), primary key, table options."""
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        out: dict[str, Any] = {}
        for table in sorted(insp.get_table_names()):
            out[table] = {
                "columns": [(c["name"], str(c["type"]), bool(c["nullable"]),
                             None if c.get("default") is None else str(c["default"]))
                            for c in insp.get_columns(table)],
                "indexes": sorted(
                    (str(ix["name"]), tuple(ix["column_names"]), bool(ix["unique"]),
                     tuple(sorted((ix.get("column_sorting") or {}).items())))
                    for ix in insp.get_indexes(table)),
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "options": insp.get_table_options(table),
            }
        return out
    finally:
        engine.dispose()


def records(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT version, name, checksum, applied_at, statements_done, complete "
                "FROM cronqueue_migrations ORDER BY version"))]
    finally:
        engine.dispose()


@pytest.fixture
def more_dbs(backend: str, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``make(name)``: the URL of another fresh, empty database on the backend under test."""
    with contextlib.ExitStack() as stack:
        def make(name: str) -> str:
            if backend == "sqlite":
                return f"sqlite:///{tmp_path / name}.db"
            return stack.enter_context(contextlib.contextmanager(_mariadb_database)())

        yield make


@pytest.fixture
def cli(db_url: str, task_dir: Path, log_dir: Path
        ) -> Callable[..., subprocess.CompletedProcess[str]]:
    (task_dir / "ok.sh").write_text("echo ran \"$1\"\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)

    return run


def refused(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 2, and the reason on one line of stderr, once."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count(line) == 1, result.stderr
    assert f"cronqueue: error: {line}\n" in result.stderr


# -- the upgrade ----------------------------------------------------------------------------------

def test_a_0_1_0_database_upgrades_and_its_tasks_run(
        backend: str, db_url: str, task_dir: Path, log_dir: Path,
        cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    create_0_1_0(db_url, backend)
    ids = insert_0_1_0_tasks(db_url)
    refused(cli("work"), BEHIND_0_1_0)

    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    assert "recorded versions 1..1 as applied" in result.stdout
    assert f"applied {MIGRATION_2.name} (version 2)" in result.stdout
    assert f"is at version {NEWEST} (the newest)" in result.stdout

    result = cli("work")
    assert result.returncode == 0, result.stderr
    q = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir))
    try:
        for name in ("pending", "pending_unique"):
            task = get_task(q, ids[name])
            assert task.status is Status.DONE, (name, task)
            assert task.attempts == 1
        assert get_task(q, ids["pending"]).args == {"n": 1}
        running = get_task(q, ids["running"])
        assert running.status is Status.RUNNING and running.claim_token == "t" * 32
        assert get_task(q, ids["done"]).output == "old output"
        assert get_task(q, ids["failed"]).status is Status.FAILED
        assert get_task(q, ids["cancelled"]).status is Status.CANCELLED

        assert cli("retry", str(ids["failed"])).returncode == 0
        secret = q.add("ok.sh", {"n": 7}, secret={"token": "s"})  # the column 0.1.0 lacked
        assert cli("work").returncode == 0
        assert get_task(q, ids["failed"]).status is Status.DONE
        assert get_task(q, secret).status is Status.DONE
    finally:
        q.close()


def test_the_migrated_schema_equals_a_fresh_one(
        backend: str, db_url: str, more_dbs: Callable[[str], str], task_dir: Path,
        cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """0.1.0 + migrate == init-db on an empty database == schema.py's create_all."""
    create_0_1_0(db_url, backend)
    assert cli("migrate").returncode == 0
    fresh = more_dbs("fresh")
    Queue(fresh, task_dir=str(task_dir)).init_db()
    from_schema_py = more_dbs("schema_py")
    engine: Engine = create_engine(from_schema_py)
    try:
        ddl_metadata().create_all(engine)
    finally:
        engine.dispose()

    migrated = reflect(db_url)
    # the tables of versions 1 and 2 and the record; later versions add their own
    assert {"queue", "cronqueue_runs", "cronqueue_workers", "cronqueue_migrations"} \
        <= set(migrated)
    assert ("secret", "MEDIUMTEXT" if backend != "sqlite" else "TEXT", True, None) \
        in migrated["queue"]["columns"]
    assert migrated["cronqueue_rollup"]["pk"] == ["queue", "outcome"]  # version 3
    assert [c[0] for c in migrated["cronqueue_rollup"]["columns"]][:5] == [
        "queue", "outcome", "finished", "timed", "duration_us"]
    assert migrated == reflect(fresh)
    assert migrated == reflect(from_schema_py)
    assert [r[:2] for r in records(db_url)] == [r[:2] for r in records(fresh)] \
        == [(m.version, m.name) for m in load("sqlite")]


def test_init_db_migrates_a_0_1_0_database(
        backend: str, db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    create_0_1_0(db_url, backend)
    assert cli("init-db").returncode == 0
    assert [r[0] for r in records(db_url)] == list(range(1, NEWEST + 1))
    assert cli("check").returncode == 0


def test_status_dry_run_to_and_rerun(
        backend: str, db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    create_0_1_0(db_url, backend)
    before = reflect(db_url)

    status = cli("migrate", "--status")
    assert status.returncode == 0, status.stderr
    assert f"not versioned; its tables are version 1 of {NEWEST}: run `cronqueue migrate`" \
        in status.stdout
    assert "0001_initial             matched by its tables, not recorded yet" in status.stdout
    assert f"{MIGRATION_2.name:<24} pending" in status.stdout

    dry = cli("migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    alter = load("sqlite" if backend == "sqlite" else "mysql")[1].statements[0]
    assert alter + ";" in dry.stdout.splitlines()
    assert reflect(db_url) == before  # changed nothing, not even cronqueue_migrations

    to_1 = cli("migrate", "--to", "1")
    assert to_1.returncode == 0 and "is at version 1 of" in to_1.stdout
    assert [r[0] for r in records(db_url)] == [1]
    refused(cli("work"), f"database schema is at version 1, this cronqueue needs version "
                         f"{NEWEST}: run `cronqueue migrate`")
    assert "nothing to do" in cli("migrate", "--to", "1").stdout

    assert cli("migrate").returncode == 0
    applied = records(db_url)
    assert [(r[0], r[5]) for r in applied] == [(v, 1) for v in range(1, NEWEST + 1)]
    again = cli("migrate")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert records(db_url) == applied  # a no-op: not even applied_at changed
    refused(cli("migrate", "--to", "1"), f"--to 1: the database is at version {NEWEST} "
                                         f"already; migrations only go forward")
    status = cli("migrate", "--status")
    assert f"at version {NEWEST} of {NEWEST}: up to date" in status.stdout
    assert "(baseline)" in status.stdout


def test_an_unversioned_database_of_today_is_recorded_not_migrated(
        db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Made by an unreleased init-db after 0.1.0 (create_all of today's tables)."""
    engine = create_engine(db_url)
    try:
        ddl_metadata().create_all(engine)
    finally:
        engine.dispose()
    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    assert f"recorded versions 1..{NEWEST} as applied" in result.stdout
    assert "applied 0" not in result.stdout


def test_tables_that_match_no_version_are_refused(
        backend: str, db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    create_0_1_0(db_url, backend)
    run_sql(db_url, ["DROP TABLE cronqueue_workers"])
    before = reflect(db_url)
    refused(cli("migrate"), "the cronqueue tables match no schema version; closest is "
                            "version 1: missing table cronqueue_workers: cannot tell which "
                            "migrations to run")
    assert reflect(db_url) == before


def test_two_migrations_at_once_run_each_migration_once(
        backend: str, db_url: str, task_dir: Path, log_dir: Path, procs: Procs) -> None:
    create_0_1_0(db_url, backend)
    holder = create_engine(db_url)
    with holder.connect() as conn:
        # Hold the migration lock, so that both are started and waiting before either runs.
        if backend == "sqlite":
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.connection.dbapi_connection.isolation_level = None  # type: ignore[union-attr]
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            name = lock_name(conn)
            assert conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
        logs = [log_dir.parent / f"migrate{i}.log" for i in (1, 2)]
        started = [procs.start(helpers.cronqueue_cmd(
            "migrate", "--log-level", "info", "--db", db_url, "--task-dir", str(task_dir),
            "--log-dir", str(log_dir)), log=log) for log in logs]
        for log in logs:
            helpers.wait_until(lambda f=log: "waiting for the migration lock" in f.read_text(),
                               what=lambda f=log: f"{f}: {f.read_text()}")
        if backend == "sqlite":
            conn.exec_driver_sql("ROLLBACK")
        else:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
    holder.dispose()
    for proc, log in zip(started, logs, strict=True):
        assert proc.wait(timeout=60) == 0, log.read_text()
    outputs = [log.read_text() for log in logs]
    assert sum(f"applied {MIGRATION_2.name} (version 2)" in o for o in outputs) == 1, outputs
    assert sum("nothing to do" in o for o in outputs) == 1, outputs
    assert "".join(outputs).count(f"applied migration 2 ({MIGRATION_2.name})") == 1
    assert [r[0] for r in records(db_url)] == list(range(1, NEWEST + 1))


@pytest.mark.parametrize("statement_ran", [True, False], ids=["ddl-ran", "ddl-not-run"])
def test_an_interrupted_migration_resumes(
        backend: str, db_url: str, more_dbs: Callable[[str], str], task_dir: Path,
        statement_ran: bool, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """As MySQL leaves it when the process dies after a DDL statement committed but before it
    was recorded (or before it ran): the record says 0 statements done, not complete."""
    create_0_1_0(db_url, backend)
    assert cli("migrate", "--to", "1").returncode == 0
    m = load("sqlite" if backend == "sqlite" else "mysql")[1]
    record = (f"INSERT INTO cronqueue_migrations (version, name, checksum, applied_by, "
              f"statements_done, complete) VALUES (2, '{m.name}', '{m.checksum}', "
              f"'a host that died', 0, 0)")
    run_sql(db_url, [record, *(m.statements if statement_ran else ())])
    refused(cli("work"), f"database schema migration 2 is under way or was interrupted, this "
                         f"cronqueue needs version {NEWEST}: run `cronqueue migrate`")
    assert "interrupted after statement 0 of 1" in cli("migrate", "--status").stdout

    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    assert f"applied {m.name} (version 2)" in result.stdout
    fresh = more_dbs("fresh")
    Queue(fresh, task_dir=str(task_dir)).init_db()
    assert reflect(db_url) == reflect(fresh)
    assert [(r[0], r[4], r[5]) for r in records(db_url)][:2] == [(1, 9, 1), (2, 1, 1)]


def test_a_changed_migration_is_refused(
        db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The record of an applied migration no longer matches its file (edited after release)."""
    assert cli("init-db").returncode == 0
    run_sql(db_url, ["UPDATE cronqueue_migrations SET checksum = 'edited' WHERE version = 1"])
    line = ("migration 1 (0001_initial) is not the one applied to this database (recorded "
            "0001_initial sha256 edited, the file has ")
    result = cli("migrate")
    assert result.returncode == 2 and line in result.stderr, result.stderr
    status = cli("migrate", "--status")
    assert status.returncode == 2 and "CHANGED since (checksum)" in status.stdout


# -- the refusals ------------------------------------------------------------------------------

def test_work_mission_and_check_refuse_a_database_behind(
        backend: str, db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    create_0_1_0(db_url, backend)
    ids = insert_0_1_0_tasks(db_url)
    refused(cli("work"), BEHIND_0_1_0)
    refused(cli("mission"), BEHIND_0_1_0)
    check = cli("check")
    assert check.returncode == 2, check.stdout
    assert f"FAIL schema    {BEHIND_0_1_0}\n" in check.stdout
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM queue WHERE id = :i"),
                                  {"i": ids["pending"]}).scalar_one()
    finally:
        engine.dispose()
    assert status == 0  # nothing ran


def test_a_database_ahead_is_refused(
        db_url: str, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    assert cli("init-db").returncode == 0
    run_sql(db_url, [f"INSERT INTO cronqueue_migrations (version, name, checksum, complete) "
                     f"VALUES ({NEWEST + 1}, 'later', 'x', 1)"])
    line = (f"database schema is at version {NEWEST + 1}, newer than this cronqueue knows "
            f"(version {NEWEST}): upgrade cronqueue")
    refused(cli("work"), line)
    refused(cli("mission"), line)
    refused(cli("migrate"), line + " on this host")


def test_add_on_a_database_behind_names_the_command(
        backend: str, db_url: str, task_dir: Path) -> None:
    """Queue.add() writes the secret column, which 0.1.0 lacks: the clear error, not SQL's."""
    create_0_1_0(db_url, backend)
    (task_dir / "ok.sh").write_text("true\n")
    q = Queue(db_url, task_dir=str(task_dir))
    try:
        with pytest.raises(SchemaVersionError, match="run `cronqueue migrate`"):
            q.add("ok.sh")
        with pytest.raises(SchemaVersionError, match="run `cronqueue migrate`"):
            q.add_many([("ok.sh", 1), ("ok.sh", 2)])
        q.init_db()
        assert get_task(q, q.add("ok.sh")).status is Status.PENDING
    finally:
        q.close()
