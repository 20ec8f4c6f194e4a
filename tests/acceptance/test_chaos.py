"""The chaos run, short: a backlog drained through racing mission ticks while shards and task
scripts are killed with -9 and (on MariaDB) the server restarts. Every task is accounted for,
every re-run is explained by a kill, no two runs of a task overlap. The long run is
`python bench/chaos.py` (see docs/reliability.md).

The MariaDB case restarts only a server of its own: chaos.py ``--private-server`` starts a
throwaway mariadbd (temp datadir, free port; bench/private_mariadb.py), never the shared one on
CRONQUEUE_TEST_MYSQL_URL. If that server cannot be started, the test FAILS (never skips)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_chaos_ledger_balances(backend: str, tmp_path: Path) -> None:
    where = (["--private-server", "--db-restarts", "1"] if backend == "mariadb"
             else ["--db", f"sqlite:///{tmp_path / 'queue.db'}"])
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *where, "--tasks", "1500",
         "--shards", "4", "--dir", str(tmp_path / "chaos"), "--max-seconds", "300"],
        capture_output=True, text=True, timeout=600, check=False)
    assert res.stdout, f"chaos.py exited {res.returncode}: {res.stderr[-3000:]}"
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
        assert report["private_server"], report
    assert res.returncode == 0
