"""Smoke test of the benchmark harness: ``bench/bench.py --quick`` runs every section on the
backend under test (the same selection as every other test: CRONQUEUE_TEST_BACKENDS) and writes
a report that has them all. It asserts nothing about speed: that is what the full run reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MYSQL_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("drain", "enqueue", "backlog", "latency", "python", "resources", "floors")


@pytest.mark.slow
def test_bench_quick_runs_every_section(backend: str, tmp_path: Path) -> None:
    report, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONQUEUE_")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--backends", backend,
         "--mysql-url", MYSQL_ADMIN_URL, "--write", str(report), "--json", str(raw)],
        capture_output=True, text=True, timeout=900, check=False, env=env, cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    data = json.loads(raw.read_text())
    assert data["errors"] == {}
    assert data["backends"] == [backend]
    assert set(data["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        assert data["sections"][name]["rows"], name
    text = report.read_text()
    for heading in ("## Machine", "## Targets", *(f"\n## {name} " for name in SECTIONS)):
        assert heading in text, heading
    for name in SECTIONS:
        assert f"== {name} " in res.stdout, name
    # The floors section ran, so every missed target gets its gap and what blocks it.
    assert "## What blocks the missed targets" in text
    assert "== what blocks the missed targets" in res.stdout
    missed = {(t["target"], t["backend"]) for t in data["targets"] if t["status"] == "MISSED"}
    explained = {(b["target"], b["backend"]) for b in data["blockers"]}
    assert explained == missed
    for item in data["blockers"]:
        assert item["gap"] and item["lines"], item
        assert f"**{item['target']}** ({item['backend']})" in text, item
