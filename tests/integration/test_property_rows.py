"""Issue 11, item 1: a property test of "no row, whatever its values, stops a shard or the
mission".

Hypothesis draws rows of arbitrary values for every column of ``queue`` (text, bytes as BLOB
and as TEXT, integers at and past the INT bounds, REALs, times that are not times, NULL),
inserts by raw SQL those the database accepts, queues a normal task behind them (the same
shard: shard 0 of 1), then runs a real shard and a mission tick, and asserts: nothing raised,
the tick recorded no failed step, every hostile row reads back (get, list, stats, the CLI)
and is in a defined state with a reason, and the normal task is done.

Bounded for CI: ``CRONQUEUE_PROPERTY_EXAMPLES`` examples per backend (default 30).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, StatementError

from cronqueue import Queue, Status, Task
from cronqueue.config import load_config
from cronqueue.mission.tick import Mission
from cronqueue.process.identity import host_identity
from cronqueue.shard.loop import Shard
from tests.conftest import AsText, insert_raw, run_main
from tests.helpers import write_script

EXAMPLES = int(os.environ.get("CRONQUEUE_PROPERTY_EXAMPLES", "30"))
INT_MAX = 2**31 - 1


TIMES = st.sampled_from([
    "2020-01-01 00:00:00", "2020-01-01 00:00:00.123456", "2999-01-01 00:00:00",
    "0000-00-00 00:00:00", "2020-00-15 00:00:00", "2020-13-45 00:00:00", "1", "zzz", "",
    "2020-01-01T00:00:00+05:00", "9999-12-31 23:59:59.999999", "0001-01-01 00:00:00",
])
INTS = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 7, INT_MAX, INT_MAX - 1, -(2**31), 2**31, 2**40,
                     -(2**40)]),
    st.integers(-1000, 1000))
WEIRD = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.binary(max_size=8),  # a BLOB
    st.binary(min_size=1, max_size=8).map(AsText),  # TEXT that may not be UTF-8
    st.floats(allow_nan=False, allow_infinity=False),
    INTS,
)


TYPICAL: dict[str, st.SearchStrategy[Any]] = {
    "queue": st.sampled_from(["default", "other", "bad queue", "x" * 64, ""]),
    "taskscript": st.sampled_from(["ok.sh", "fail.sh", "missing.sh", "ok.sh/x", "../ok.sh",
                                   "/bin/sh", "loop.sh", "", "-rf"]),
    "param": st.sampled_from(["{}", "[1,2]", "null", '"x"', "{bad", "[" * 3000,
                              "[" * 5000 + "]" * 5000, "\x00", "é" * 10]),
    "status": st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, -1, 99]),
    "priority": INTS,
    "ctime": TIMES,
    "run_at": TIMES,
    "attempts": INTS,
    "max_attempts": INTS,
    "timeout": st.sampled_from([1, 5, 0, -1, INT_MAX]),
    "unique_key": st.text(max_size=5),
    "active_key": st.text(max_size=5),
    "worker_host": st.sampled_from([host_identity(), socket.gethostname(), "elsewhere", ""]),
    "worker_pid": st.sampled_from([1, os.getpid(), 4_000_000, 0, -1]),
    "worker_pid_start": INTS,
    "claim_token": st.sampled_from(["t" * 32, "tok", ""]),
    "lease_until": TIMES,
    "started_at": TIMES,
    "finished_at": TIMES,
    "exit_code": INTS,
    "error": st.text(max_size=20),
    "output": st.text(max_size=20),
    "secret": st.sampled_from(['{"k":1}', "{bad"]),
}


@st.composite
def hostile_row(draw: st.DrawFn) -> dict[str, Any]:
    """What an application writes (taskscript, param), plus up to six columns set by hand,
    each to a plausible value of the column or to anything at all; the rest default."""
    row = {"taskscript": draw(TYPICAL["taskscript"]), "param": draw(TYPICAL["param"])}
    for name in draw(st.lists(st.sampled_from(list(TYPICAL)), max_size=6, unique=True)):
        row[name] = draw(st.one_of(TYPICAL[name], WEIRD))
    return row


ROWS = st.lists(hostile_row(), min_size=1, max_size=5)


def insert(q: Queue, row: dict[str, Any]) -> int | None:
    """Raw SQL, every value bound. None if the database refuses the row."""
    try:
        return insert_raw(q, row)
    except (DBAPIError, StatementError):
        return None


def defined(before: Task, after: Task | None, shard_time: datetime) -> str | None:
    """Why the state of a hostile row after the shard and the tick is not a defined one, or
    None. ``before``: the row as read back right after its insert.

    A pending row ends done, failed with a reason, retried (pending, an attempt charged,
    the reason recorded), or is not due: its run_at is later than the shard's clock (a
    run_at that is not a time at all is due at once, and so failed with its reason). A
    running row stays running (its owner may be alive: the rescue's rules) or is rescued
    (pending, or failed with the reason). Any other row keeps its status, or, finished long
    ago, was deleted by the retention."""
    if after is None:
        return None if before.status.finished else "vanished"
    if before.status is Status.PENDING:
        if after.status is Status.DONE:
            return None
        if after.status is Status.FAILED:
            return None if after.error else "failed without a reason"
        if after.status is Status.PENDING:
            if after.error and after.attempts > before.attempts:
                return None  # retried
            if before.run_at is not None and before.run_at > shard_time:
                return None  # not due
            return "pending and due, but untouched"
        return f"pending became {after.status!r}"
    if before.status is Status.RUNNING:
        if after.status in (Status.RUNNING, Status.PENDING):
            return None
        if after.status is Status.FAILED:
            return None if after.error else "rescued to failed without a reason"
        return f"running became {after.status!r}"
    if int(after.status) == int(before.status) and after.status.name == before.status.name:
        return None
    return f"{before.status!r} became {after.status!r}"


@pytest.fixture
def setup(queue: Queue, db_url: str, task_dir: Path, log_dir: Path,
          tmp_path: Path) -> dict[str, Any]:
    write_script(task_dir, "ok.sh", "#!/bin/sh\necho ok\n", 0o755)
    write_script(task_dir, "fail.sh", "#!/bin/sh\necho no >&2\nexit 3\n", 0o755)
    (task_dir / "loop.sh").symlink_to("loop2.sh")
    (task_dir / "loop2.sh").symlink_to("loop.sh")
    config = tmp_path / "cronqueue.toml"
    config.write_text(
        f'task_dir = "{task_dir}"\nlog_dir = "{log_dir}"\n'
        "[worker]\nmax_attempts = 2\nbackoff = 1\n"
        '[[mission]]\nname = "recurring"\ncron = "* * * * *"\n'
        'add = { taskscript = "ok.sh", param = { from = "mission" } }\n')
    return {"queue": queue, "db_url": db_url, "cfg": load_config(config, db_url=db_url),
            "argv": ["--db", db_url, "--task-dir", str(task_dir), "--log-dir", str(log_dir)]}


def clear(q: Queue) -> None:
    with q.engine.begin() as conn:
        for table in ("queue", "cronqueue_runs", "cronqueue_workers"):
            conn.execute(text(f"DELETE FROM {table}"))


class NoLaunch:
    def __call__(self, argv: list[str], env: dict[str, str], cwd: Path) -> Any:
        raise AssertionError("the test config has no do_queue entry")


def cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(list(args))
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue()


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(rows=ROWS)
def test_hostile_rows_never_stop_the_shard_or_the_mission(setup: dict[str, Any],
                                                          rows: list[dict[str, Any]]) -> None:
    q: Queue = setup["queue"]
    clear(q)
    ids = [task_id for row in rows if (task_id := insert(q, row)) is not None]
    event(f"rows the database stored: {len(ids)}")
    before = {t.id: t for t in q.list(limit=1000)}  # reads back whatever was stored
    for t in before.values():
        event(f"stored row: {t.status.name.lower()}, {'invalid' if t.problem else 'valid'}")
    assert set(before) == set(ids)
    behind = q.add("ok.sh", {"behind": True})

    shard_time = datetime.now(UTC)
    report = Shard(setup["cfg"]).run()  # must not raise
    tick = Mission(setup["cfg"], launcher=NoLaunch()).tick()  # must not raise
    assert tick.errors == [], tick.errors

    normal = q.get(behind)
    assert normal is not None and normal.status is Status.DONE, (normal, report)
    after = {t.id: t for t in q.list(limit=1000)}
    stats = q.stats()
    assert stats["total"] == len(after)
    for task_id in ids:
        if task_id > 0 and task_id in after:  # (list() does not load secrets)
            got = q.get(task_id)
            assert got is not None
            assert (replace(got, secret=None, problem=None)
                    == replace(after[task_id], secret=None, problem=None))
        why = defined(before[task_id], after.get(task_id), shard_time)
        assert why is None, (why, before[task_id], after.get(task_id))
    code, out = cli("list", "--json", "--limit", "1000", *setup["argv"])
    assert code == 0 and len(json.loads(out)) == len(after)
    assert cli("list", "--limit", "1000", *setup["argv"])[0] == 0
    assert cli("stats", *setup["argv"])[0] == 0
    for task_id in ids[:2]:
        if task_id in after and task_id > 0:
            assert cli("status", str(task_id), *setup["argv"])[0] in (0, 1)
