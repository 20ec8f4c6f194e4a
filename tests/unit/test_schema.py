"""The ``queue`` table: ``sql/*.sql`` match ``render_ddl``; defaults; ``UTCDateTime``."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import mysql, sqlite

from cronqueue.store import schema
from cronqueue.store.schema import UTCDateTime, queue_table, render_ddl

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_sql_files_match_render_ddl(dialect: str) -> None:
    on_disk = (SQL_DIR / f"{dialect}.sql").read_text(encoding="utf-8")
    assert on_disk == render_ddl(dialect), (
        f"sql/{dialect}.sql is out of date; regenerate with "
        f"`cronqueue init-db --print-ddl --dialect {dialect} > sql/{dialect}.sql`"
    )


def test_mariadb_renders_as_mysql() -> None:
    assert render_ddl("mariadb").split("\n", 1)[1] == render_ddl("mysql").split("\n", 1)[1]


def test_render_ddl_refuses_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="postgresql"):
        render_ddl("postgresql")


def test_every_other_column_has_a_default_or_is_nullable() -> None:
    # The contract: a plain INSERT INTO queue (taskscript, param) is a valid pending task.
    required = {"id", "taskscript", "param"}
    for column in queue_table.columns:
        if column.name in required:
            continue
        assert column.nullable or column.server_default is not None, (
            f"column {column.name!r} is NOT NULL without a database-side default"
        )
    assert not queue_table.c.taskscript.nullable
    assert not queue_table.c.param.nullable


def test_contract_minimum_columns_exist() -> None:
    names = {c.name for c in queue_table.columns}
    assert {"id", "taskscript", "param", "status", "priority", "ctime"} <= names
    assert queue_table.c.id.primary_key
    assert queue_table.c.id.autoincrement is True


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_ddl_has_the_claim_and_dedupe_indexes(dialect: str) -> None:
    ddl = render_ddl(dialect)
    assert "CREATE INDEX" in ddl
    assert "ix_queue_claim ON queue (status, queue, priority DESC, id)" in ddl
    assert "ix_queue_claim_any ON queue (status, priority DESC, id)" in ddl
    assert "CREATE UNIQUE INDEX" in ddl
    assert "ux_queue_active_key ON queue (active_key)" in ddl


def test_plain_insert_of_taskscript_and_param_is_a_pending_task(tmp_path: Path) -> None:
    """Run the rendered SQLite DDL, then insert the way a PHP application would."""
    db = tmp_path / "q.db"
    with contextlib.closing(sqlite3.connect(db)) as raw:
        raw.executescript(render_ddl("sqlite"))
        raw.execute("INSERT INTO queue (taskscript, param) VALUES ('job.php', '[1]')")
        raw.commit()
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            row = conn.execute(queue_table.select()).mappings().one()
    finally:
        engine.dispose()
    assert row["status"] == 0
    assert row["priority"] == 0
    assert row["attempts"] == 0
    assert row["queue"] == "default"
    for col in ("ctime", "run_at"):
        value = row[col]
        assert isinstance(value, datetime)
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - value) < timedelta(hours=1)


# -- UTCDateTime ---------------------------------------------------------------------------------

SQLITE = sqlite.dialect()
MYSQL = mysql.dialect()


@pytest.mark.parametrize("dialect", [SQLITE, MYSQL], ids=["sqlite", "mysql"])
def test_bind_of_naive_datetime_raises(dialect: object) -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1, 12, 0), dialect)  # type: ignore[arg-type]


def test_bind_of_none_is_none() -> None:
    assert UTCDateTime().process_bind_param(None, SQLITE) is None
    assert UTCDateTime().process_result_value(None, SQLITE) is None


def test_bind_converts_aware_non_utc_to_utc_text_on_sqlite() -> None:
    plus5 = timezone(timedelta(hours=5, minutes=30))
    value = datetime(2026, 11, 23, 17, 45, 1, 250, tzinfo=plus5)
    bound = UTCDateTime().process_bind_param(value, SQLITE)
    assert bound == "2026-11-23 12:15:01.000250"


def test_bind_sqlite_text_sorts_like_time() -> None:
    a = datetime(2026, 1, 1, 9, 59, 59, 999999, tzinfo=UTC)
    b = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    bind = UTCDateTime().process_bind_param
    assert bind(a, SQLITE) < bind(b, SQLITE)


def test_bind_converts_aware_non_utc_to_naive_utc_on_mysql() -> None:
    minus3 = timezone(timedelta(hours=-3))
    bound = UTCDateTime().process_bind_param(datetime(2026, 11, 23, 9, 0, tzinfo=minus3), MYSQL)
    assert bound == datetime(2026, 11, 23, 12, 0)
    assert bound.tzinfo is None


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("2026-11-23 12:15:01.123", datetime(2026, 11, 23, 12, 15, 1, 123000, tzinfo=UTC)),
        ("2026-11-23 12:15:01.000250", datetime(2026, 11, 23, 12, 15, 1, 250, tzinfo=UTC)),
        ("2026-11-23 12:15:01", datetime(2026, 11, 23, 12, 15, 1, tzinfo=UTC)),
    ],
    ids=["3-digit", "6-digit", "no-fraction"],
)
def test_result_strings_parse_to_aware_utc(stored: str, expected: datetime) -> None:
    value = UTCDateTime().process_result_value(stored, SQLITE)
    assert value == expected
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


def test_result_naive_datetime_from_mysql_is_made_utc() -> None:
    value = UTCDateTime().process_result_value(datetime(2026, 1, 1, 3, 4, 5), MYSQL)
    assert value == datetime(2026, 1, 1, 3, 4, 5, tzinfo=UTC)


def test_round_trip_through_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    plus5 = timezone(timedelta(hours=5))
    when = datetime(2026, 11, 23, 17, 0, 0, 123456, tzinfo=plus5)
    try:
        schema.ddl_metadata().create_all(engine)
        with engine.begin() as conn:
            conn.execute(queue_table.insert().values(taskscript="a.py", param="1", run_at=when))
            got = conn.execute(queue_table.select()).mappings().one()["run_at"]
            raw = conn.execute(text("SELECT run_at FROM queue")).scalar_one()
    finally:
        engine.dispose()
    assert got == when
    assert got.utcoffset() == timedelta(0)
    assert raw == "2026-11-23 12:00:00.123456"
