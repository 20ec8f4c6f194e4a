"""Shared fixtures: every integration/acceptance test runs on SQLite and on MariaDB, each on a
fresh database of its own.

MariaDB: ``CRONQUEUE_TEST_MYSQL_URL`` (default ``mysql+pymysql://root:@127.0.0.1:3306/test``) is
an account that may CREATE/DROP DATABASE; each test gets ``cq_t_<random>`` and drops it. Nothing
else on that server is touched: no test stops, restarts or reconfigures it (the chaos test
restarts a private mariadbd of its own). If the server does not answer, those tests FAIL (never
skip). ``CRONQUEUE_TEST_BACKENDS=sqlite`` narrows the run explicitly, for a laptop without
MariaDB.

A test whose behaviour does not depend on the database (the runner, the CLI's parsing, a
refusal before any statement) is marked ``any_backend``: it runs once, on the first backend of
``CRONQUEUE_TEST_BACKENDS``, not once per backend.

Plain helpers (waits, processes, environment, scripts) live in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Task
from cronqueue.store.engine import make_engine
from tests import helpers
from tests.helpers import Procs, cronqueue_cmd

MYSQL_ADMIN_URL = os.environ.get("CRONQUEUE_TEST_MYSQL_URL",
                                 "mysql+pymysql://root:@127.0.0.1:3306/test")
BACKENDS = [b for b in os.environ.get("CRONQUEUE_TEST_BACKENDS", "sqlite,mariadb").split(",")
            if b]


@pytest.hookimpl(tryfirst=True)  # before the fixture's own params apply
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``any_backend``: the first backend only (the database plays no part in what it tests)."""
    if metafunc.definition.get_closest_marker("any_backend") is not None \
            and "backend" in metafunc.fixturenames:
        # As a parametrize mark, which the fixture's own params then give way to.
        metafunc.definition.add_marker(
            pytest.mark.parametrize("backend", BACKENDS[:1], indirect=True))


def _mariadb_database() -> Iterator[str]:
    # pool_pre_ping: a test may restart the server (the chaos test); drop the database anyway.
    admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = "cq_t_" + secrets.token_hex(6)
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"MariaDB at {make_url(MYSQL_ADMIN_URL)!s} is unreachable: {exc}",
                    pytrace=False)
    try:
        yield make_url(MYSQL_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database on the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        yield from _mariadb_database()


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    path = tmp_path / "tasks"
    path.mkdir()
    return path


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def queue(db_url: str, task_dir: Path, log_dir: Path) -> Iterator[Queue]:
    """A Queue on a fresh database with its tables created."""
    q = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir))
    q.init_db()
    yield q
    q.close()


class Clock:
    """A settable clock, injected into Queue, Shard and Mission (no patching of time)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def set(self, when: datetime) -> datetime:
        self.now = when
        return when


class AsText:
    """Bytes stored as TEXT (SQLite ``CAST(? AS TEXT)``): how invalid UTF-8 gets into a
    text column; plain bytes are bound as a BLOB."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"AsText({self.data!r})"


def insert_raw(q: Queue, row: dict[str, Any]) -> int:
    """A hand-written ``queue`` row by raw SQL, as another language would insert it: every
    value bound (``AsText`` cast to TEXT); no column at all is ``DEFAULT VALUES``."""
    names = list(row)
    values = ", ".join(f"CAST(:{n} AS TEXT)" if isinstance(row[n], AsText) else f":{n}"
                       for n in names)
    params = {n: v.data if isinstance(v, AsText) else v for n, v in row.items()}
    sql = (f"INSERT INTO queue ({', '.join(names)}) VALUES ({values})" if names
           else "INSERT INTO queue DEFAULT VALUES")
    with q.engine.begin() as conn:
        return int(conn.execute(text(sql), params).lastrowid)


def get_task(q: Queue, task_id: int) -> Task:
    """``q.get()`` of a task that must exist."""
    task = q.get(task_id)
    assert task is not None, f"task {task_id} is missing"
    return task


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite engine on a file of the test's own, no tables (the guard, lock files)."""
    eng = make_engine("sqlite:///" + str(tmp_path / "g.db"))
    yield eng
    eng.dispose()


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Start the test's processes with ``procs.start``; those still running at its end are
    killed."""
    started = Procs()
    yield started
    started.kill_leftovers()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This process without the caller's CRONQUEUE_* (``helpers.clean_env`` is the same for a
    child's environment); cwd in tmp_path (the default SQLite file lands there)."""
    for var in [v for v in os.environ if v.startswith("CRONQUEUE_")]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    return tmp_path


def run_main(argv: list[str]) -> int:
    """``cronqueue.cli.main``'s exit code, whether it returns or argparse exits."""
    from cronqueue.cli.main import main

    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def run_cli(*args: str, db_url: str, task_dir: Path, log_dir: Path, timeout: float = 120,
            env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``cronqueue ARGS --db … --task-dir … --log-dir …`` in a clean environment (plus ``env``)."""
    return subprocess.run(
        cronqueue_cmd(*args, "--db", db_url, "--task-dir", str(task_dir), "--log-dir",
                      str(log_dir)),
        capture_output=True, text=True, timeout=timeout, env=helpers.clean_env(**(env or {})),
        check=False, **kw)
