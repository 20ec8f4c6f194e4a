"""``bench/web_pages.py`` with small sizes: it fills its own database, every page answers (the
overview, the task lists, a task, failed, delayed, schedule, workers, /metrics, /healthz), each
page's slowest SELECT is explained, and the database is dropped. Nothing is asserted about
speed (the 1M-row run is in docs/benchmarks.md)."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import BACKENDS, MYSQL_ADMIN_URL
from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif("mariadb" not in BACKENDS, reason="the script fills a MariaDB database")
def test_web_pages_runs_on_a_small_table(tmp_path: Path) -> None:
    name = "cq_bench_t_" + secrets.token_hex(4)
    out = tmp_path / "pages.md"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web_pages.py"), "--admin-url", MYSQL_ADMIN_URL,
         "--database", name, "--done", "3000", "--pending", "500", "--failed", "20",
         "--delayed", "50", "--reps", "2", "--markdown", str(out), "--drop"],
        capture_output=True, text=True, timeout=600, check=False, env=clean_env(),
        cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    report = out.read_text()
    timings = report.split("\n#### ")[0]  # the table of pages, before the plans
    rows = [line for line in timings.splitlines() if line.startswith("| ")][1:]
    pages = {r.split("|")[1].strip(): r.split("|")[3].strip() for r in rows}
    assert {"overview", "tasks", "task (done)", "failed", "delayed", "schedule", "workers",
            "/metrics", "/healthz"} <= set(pages)
    assert set(pages.values()) == {"200"}, pages
    assert len(re.findall(r"^#### .*: its slowest SELECT", report, re.M)) == len(pages)
    assert "| id | select_type | table" in report  # MariaDB's EXPLAIN
    admin = create_engine(MYSQL_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(text("SHOW DATABASES LIKE :n"), {"n": name}).all()
    finally:
        admin.dispose()
    assert left == []


def test_web_pages_uses_only_its_own_databases() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web_pages.py"), "--database", "test"],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env())
    assert res.returncode != 0
    assert "only cq_bench_* databases are used" in res.stderr
