"""Many hosts, one database, short (issue 12.6): four namespaced hosts (two sharing a hostname)
each run the mission every few seconds against one database; one of the twins is killed
mid-run. No task ran twice but those the kill explains, no two live processes held one shard,
each recurring task once per scheduled time, nothing lost, the killed host's rows rescued
within lease + one tick. The long run is `python bench/multihost.py` (docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_four_hosts_one_killed(db_url: str, backend: str, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "multihost.py"), "--db", db_url,
         "--dir", str(tmp_path / "multihost"), "--hosts", "4", "--tasks", "240",
         "--task-seconds", "0.15", "--ticks", "7", "--tick-seconds", "4", "--shards", "2",
         "--shard-seconds", "3", "--lease", "6", "--heartbeat", "2",
         "--kill-at", "2", "--drain-seconds", "40"],
        capture_output=True, text=True, timeout=300, check=False)
    assert res.stdout, res.stderr[-3000:]
    report = json.loads(res.stdout)
    print(json.dumps(report))
    assert report["hosts"][0].split("#")[0] == report["hosts"][1].split("#")[0]  # twins
    assert len(set(report["hosts"])) == 4, report  # ... yet four identities
    assert report["unexplained_reruns"] == 0, report
    assert report["overlapping_runs"] == 0, report
    assert report["double_shards"] == 0, report
    assert report["never_ran"] == 0 and report["not_done"] == 0, report
    assert report["scheduled_times"] >= 7, report
    assert report["times_without_one_task"] == 0, report
    assert report["recurring_not_run_once"] == 0, report
    assert report["killed_rows"] > 0, report  # the kill hit a host holding rows
    assert report["rescued_rows"] == report["killed_rows"], report
    assert report["rescue_after_lease_max"] <= report["rescue_bound"], report
    assert report["ok"] and res.returncode == 0, report
