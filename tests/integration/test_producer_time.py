"""Time zones of hand-written rows (issue 12 #5): run_at is UTC. A producer that leaves run_at to
its default or writes UTC_TIMESTAMP() is due at once whatever its session time zone; `list` and
`status` flag a pending task whose run_at is more than a day ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from cronqueue import Queue
from tests.conftest import get_task, insert_raw, run_cli


def test_list_and_status_flag_a_pending_task_far_ahead(queue: Queue, db_url: str,
                                                       task_dir: Path, log_dir: Path) -> None:
    now = datetime.now(UTC)
    far = insert_raw(queue, {"taskscript": "t.sh", "param": "1",
                             "run_at": (now + timedelta(days=2)).replace(tzinfo=None)})
    soon = insert_raw(queue, {"taskscript": "t.sh", "param": "2",
                              "run_at": (now + timedelta(hours=5)).replace(tzinfo=None)})
    due = insert_raw(queue, {"taskscript": "t.sh", "param": "3"})
    listed = run_cli("list", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert lines[str(far)].rstrip().endswith("(!)")
    assert "(!)" not in lines[str(soon)] and "(!)" not in lines[str(due)]
    assert "(!) 1 pending task(s) to run more than a day ahead; run_at is UTC" in listed.stdout
    shown = run_cli("status", str(far), db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert shown.returncode == 0, shown.stderr
    assert "WARNING   pending, run at 2.0 days ahead; run_at is UTC" in shown.stdout
    assert "UTC_TIMESTAMP()" in shown.stdout
    plain = run_cli("status", str(soon), db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert plain.returncode == 0 and "WARNING" not in plain.stdout


def test_php_style_producer_in_a_local_session_time_zone(backend: str, queue: Queue) -> None:
    """The README's producer SQL, run in a session with time_zone '+05:00' (as a PHP app may
    set it): the default and UTC_TIMESTAMP() give a due task; NOW() gives local time, 5 hours
    ahead (the pitfall the README warns about)."""
    if backend != "mariadb":
        pytest.skip("SQLite has no session time zone: its 'now' is UTC")
    with queue.engine.begin() as conn:
        conn.execute(text("SET time_zone = '+05:00'"))
        ids = []
        for run_at in ("", ", UTC_TIMESTAMP()", ", NOW()"):
            column = ", run_at" if run_at else ""
            conn.execute(text(f"INSERT INTO queue (taskscript, param{column}) "
                              f"VALUES ('t.sh', '{{}}'{run_at})"))
            ids.append(int(conn.execute(text("SELECT LAST_INSERT_ID()")).scalar_one()))
    now = datetime.now(UTC)
    default, utc, local = (get_task(queue, i) for i in ids)
    for task in (default, utc):
        assert task.run_at is not None and abs(task.run_at - now) < timedelta(minutes=1)
    assert local.run_at is not None
    assert abs(local.run_at - now - timedelta(hours=5)) < timedelta(minutes=1)
    assert queue.stats()["due"] == 2
