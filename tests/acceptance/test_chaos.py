"""The chaos run, short: a backlog drained through racing mission ticks while shards and task
scripts are killed with -9 and (on MariaDB) the server restarts. Every task is accounted for,
every re-run is explained by a kill, no two runs of a task overlap. The long run is
`python bench/chaos.py` (see docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_chaos_ledger_balances(db_url: str, backend: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--db", db_url, "--tasks", "1500",
         "--shards", "4", "--db-restarts", "1" if backend == "mariadb" else "0",
         "--dir", str(tmp_path / "chaos"), "--max-seconds", "300"],
        capture_output=True, text=True, timeout=600, check=False)
    assert res.stdout, res.stderr[-3000:]
    report = json.loads(res.stdout)
    print(json.dumps(report))
    assert report["accounted"], report
    assert report["lost"] == 0, report
    assert report["running"] == 0, report
    assert report["pending"] == 0, report
    assert report["unexplained_reruns"] == 0, report
    assert report["overlapping_runs"] == 0, report
    assert report["kills_shard"] > 0 and report["kills_task"] > 0, report
    if backend == "mariadb":
        assert report["db_restarts"] == 1, report
    assert res.returncode == 0
