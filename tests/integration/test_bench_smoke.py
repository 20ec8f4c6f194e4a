"""Smoke tests of the benchmark scripts, short sizes, on the backend under test
(CRONQUEUE_TEST_BACKENDS): ``bench/bench.py --quick`` runs every section and
``bench/bench_handover.py`` a few ticks. Each must exit cleanly and produce its numbers: a
script that crashes, or a section or shard without figures, fails. Nothing is asserted about
speed; the full runs are in docs/benchmarks.md. (``bench/chaos.py`` and ``bench/multihost.py``
run in tests/acceptance/test_chaos.py and test_multihost.py.)
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MYSQL_ADMIN_URL
from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("drain", "drain_big", "enqueue", "backlog", "latency", "python", "resources",
            "floors")
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?%?( \(.*\))?$")


@pytest.mark.slow
def test_bench_quick_runs_every_section(backend: str, tmp_path: Path) -> None:
    tables, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--backends", backend,
         "--mysql-url", MYSQL_ADMIN_URL, "--out", str(tables), "--json", str(raw)],
        capture_output=True, text=True, timeout=900, check=False, env=clean_env(), cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    data = json.loads(raw.read_text())
    assert data["errors"] == {}
    assert data["backends"] == [backend]
    assert data["date"] and data["command"].startswith("python bench/bench.py --quick")
    assert data["machine"]["cores"] and data["machine"][backend]
    assert set(data["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        section = data["sections"][name]
        samples = section["samples"]
        assert samples, name
        for sample in samples:  # every measurement gave finite numbers
            assert sample["metrics"], (name, sample)
            assert all(math.isfinite(v) for v in sample["metrics"].values()), (name, sample)
        assert section["rows"], name
        for row in section["rows"]:  # a table row: backend, variant, then figures
            assert any(NUMBER.match(cell) for cell in row[2:]), (name, row)
    # what the sections promise, each with a figure
    metrics = {(s["variant"], m) for name in SECTIONS
               for s in data["sections"][name]["samples"] for m in s["metrics"]}
    for wanted in [("cronqueue", "tasks_per_s"), ("cronqueue", "steady_per_s"),
                   ("cronqueue", "first_task_s"), ("cronqueue", "first_done_s"),
                   ("cronqueue", "machine_cpu_ms_per_task"),
                   ("cronqueue", "queue_cpu_ms_per_task"), ("mission", "tasks_per_s"),
                   ("mission", "first_done_s"), ("limit", "tasks_per_s"),
                   ("naive", "tasks_per_s"), ("naive", "steady_per_s"),
                   ("naive", "queue_cpu_ms_per_task"), ("huey", "tasks_per_s"),
                   ("huey", "first_done_s"), ("huey", "queue_cpu_ms_per_task"),
                   ("best peer", "tasks_per_s"), ("cronqueue/best peer", "ratio"),
                   ("mission/best peer", "ratio"), ("cronqueue/limit", "steady_ratio"),
                   ("mission/limit", "steady_ratio"),
                   ("cronqueue/limit", "ratio"), ("naive/limit", "ratio"),
                   ("add", "calls_per_s"), ("add split", "driver_ms_per_call"),
                   ("add split", "client_ms_per_call"), ("add split", "statements_per_call"),
                   ("add_many split", "driver_us_per_row"),
                   ("add_many split", "client_us_per_row"),
                   ("add raw", "calls_per_s"), ("add_many", "rows_per_s"),
                   ("add_many raw", "rows_per_s"), ("big/small", "claim_ratio"),
                   ("one shard", "p99_s"), ("fork/exec", "steady_ratio"),
                   ("shard", "own_hwm_mb"), ("mission", "cpu_s"),
                   ("cli", "startup_cpu_s"), ("exec/fork", "ratio")]:
        assert wanted in metrics, wanted
    # add()/add_many() are timed without a clock (an engine-event clock switches add() off
    # its direct path): the split is a pass of its own
    for sample in data["sections"]["enqueue"]["samples"]:
        if sample["variant"] in ("add", "add_many"):
            assert set(sample["metrics"]) <= {"calls_per_s", "rows_per_s"}, sample
    # every target judged, each reference beside it measured in the same run
    assert data["targets"], data
    for target in data["targets"]:
        assert target[-1] in ("met", "MISSED", "n/a (not available)"), target
        assert NUMBER.match(target[2]), target
        assert "—" not in target[3] and "—" not in target[4], target
    assert {t[0].split(" (")[0] for t in data["targets"]} >= {
        "drain ≥ 1.25x best peer", "steady ≥ 0.80x xargs -P 2",
        "queue CPU/task ≤ naive queue's", "first task done ≤ 0.25 s after the shards start",
        "add() ≥ 0.8x bare driver INSERT + COMMIT, same row",
        "add_many() ≥ 0.8x bare driver executemany, same rows",
        "Python fast path ≥ 10x exec path", "mission tick ≤ 0.3 s CPU"}
    text = tables.read_text()
    assert text == res.stdout
    for heading in ("## Machine", "## Targets", *(f"\n## {name}: " for name in SECTIONS)):
        assert heading in text, heading
    assert text.index("## Targets") < text.index("## Machine") < text.index("\n## drain: ")
    assert "Load average (1, 5, 15 min) before: " in text
    plans = data["sections"]["backlog"]["extras"]  # the claim's statements, explained
    assert len(plans) == 2, plans
    for body in plans.values():
        assert "-- SELECT" in body and ("possible_keys" in body or "SEARCH" in body), body


@pytest.mark.slow
def test_bench_handover_reports_each_shard(db_url: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_handover.py"), "--db", db_url,
         "--interval", "3", "--budget", "2", "--task-seconds", "1", "--ticks", "3", "--json"],
        capture_output=True, text=True, timeout=300, check=False, env=clean_env(), cwd=tmp_path)
    assert res.stdout, f"exit {res.returncode}: {res.stderr[-3000:]}"
    report = json.loads(res.stdout)
    assert report["date"] and report["machine"]
    assert [s["shard"] for s in report["shards"]] == [0, 1]
    for shard in report["shards"]:
        assert shard["tasks"] > 1 and shard["window"] > 0, shard
        assert shard["overlaps"] == 0, shard
    assert res.returncode == (0 if report["ok"] else 1)
