"""cron_mission with real processes: concurrent missions, shards that outlive a tick, kill -9,
and a real cron daemon."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from cronqueue.config import load_config
from tests.helpers import clean_env, cronqueue_cmd, holds_for, wait_gone, wait_until, write_script

TOTAL = 3


def _config(tmp_path: Path, db_url: str, task_dir: Path, log_dir: Path,
            max_seconds: float) -> Path:
    path = tmp_path / "cronqueue.toml"
    path.write_text(f'''
db_url = "{db_url}"
task_dir = "{task_dir}"
log_dir = "{log_dir}"

[worker]
heartbeat = 0.5

[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = {{ total = {TOTAL}, max_seconds = {max_seconds} }}

[[mission]]
name = "recurring"
cron = "* * * * *"
add = {{ taskscript = "record.sh", param = {{ recurring = true }}, priority = 9 }}
''')
    return path


def _mission(config: Path, now: datetime) -> subprocess.Popen[str]:
    return subprocess.Popen(cronqueue_cmd("mission", "--config", str(config), "--now",
                                          now.isoformat()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())


def _starts(log_dir: Path) -> Counter[str]:
    log = log_dir / "shards.log"
    text = log.read_text() if log.exists() else ""
    return Counter(re.findall(r"shard=(drain:\d+)/\d+ start ", text))


def _alive_workers(q: Queue) -> list[int]:
    return sorted(w.shard for w in q.workers() if w.alive)


@pytest.mark.slow
def test_ten_concurrent_missions_start_each_shard_once(db_url: str, task_dir: Path,
                                                       log_dir: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ran.txt"
    write_script(task_dir, "record.sh", f'echo "$CRONQUEUE_TASK_ID" >> "{ledger}"\n')
    config = _config(tmp_path, db_url, task_dir, log_dir, max_seconds=4)
    q = Queue(config=load_config(config))
    q.init_db()
    ids = q.add_many(("record.sh", {"n": n}) for n in range(300))

    tick = datetime.now(UTC).replace(second=0, microsecond=0)
    missions = [_mission(config, tick) for _ in range(10)]
    for m in missions:
        _out, err = m.communicate(timeout=60)
        assert m.returncode == 0, err
    wait_until(lambda: q.stats()["pending"] == 0 and not _alive_workers(q), 60,
               lambda: f"drained, no shard alive: {q.stats()}")

    starts = _starts(log_dir)
    assert starts == {f"drain:{i}": 1 for i in range(TOTAL)}, starts
    runs = Counter(int(x) for x in ledger.read_text().split())
    assert set(runs) >= set(ids)
    assert max(runs.values()) == 1  # every task ran once
    recurring = [t for t in q.list(limit=1000) if t.param == '{"recurring":true}']
    assert len(recurring) == 1
    assert recurring[0].status is Status.DONE


@pytest.mark.slow
def test_running_shard_is_not_started_again_and_kill_9_frees_it(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    write_script(task_dir, "record.sh", "exit 0\n")
    write_script(task_dir, "long.sh", "exec sleep 60\n")
    config = _config(tmp_path, db_url, task_dir, log_dir, max_seconds=60)
    q = Queue(config=load_config(config))
    q.init_db()
    # Three successive minutes, all in the past: --now more than a minute ahead of the clock
    # is refused (it would record runs that real ticks then skip).
    tick = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)

    first = _mission(config, tick)
    assert first.wait(timeout=60) == 0
    wait_until(lambda: _alive_workers(q) == list(range(TOTAL)), 30, "every shard alive")

    second = _mission(config, tick + timedelta(minutes=1))
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 0
    assert "still running 0,1,2" in err
    # No second start of any shard: nothing may happen for a while.
    holds_for(lambda: _starts(log_dir) == {f"drain:{i}": 1 for i in range(TOTAL)}, 1.0,
              lambda: f"each shard started once: {_starts(log_dir)}")

    victim = next(w for w in q.workers() if w.shard == 1)
    os.kill(victim.pid, signal.SIGKILL)
    wait_gone(victim.pid, 30, "the killed shard gone")

    third = _mission(config, tick + timedelta(minutes=2))
    _out, err = third.communicate(timeout=60)
    assert third.returncode == 0
    assert "started shards 1; still running 0,2" in err, err
    wait_until(lambda: _starts(log_dir)["drain:1"] == 2, 30, "shard 1 started again")
    assert {w.shard for w in q.workers() if w.alive} == {0, 1, 2}
    q.stop_workers()
    wait_until(lambda: not _alive_workers(q), 30, "every shard stopped")


@pytest.mark.slow
@pytest.mark.any_backend  # what it adds is cron running the line; missions: tests above
def test_real_cron_daemon_drains_tasks(db_url: str, task_dir: Path, log_dir: Path,
                                       tmp_path: Path) -> None:
    cron = shutil.which("cron") or "/usr/sbin/cron"
    if not os.path.exists(cron):
        pytest.fail("the cron daemon is not installed (apt-get install cron; .ci/run does)")
    if subprocess.run(["pgrep", "-x", "cron"], capture_output=True, check=False).returncode:
        subprocess.run([cron], check=True)  # none runs: start one (it is never stopped)
    ledger = tmp_path / "ran.txt"
    write_script(task_dir, "record.sh", f'echo "$CRONQUEUE_TASK_ID" >> "{ledger}"\n')
    config = _config(tmp_path, db_url, task_dir, log_dir, max_seconds=20)
    q = Queue(config=load_config(config))
    q.init_db()
    ids = q.add_many(("record.sh", {"n": n}) for n in range(20))

    line = subprocess.run([sys.executable, "-m", "cronqueue", "crontab", "--config",
                           str(config)], capture_output=True, text=True, check=True).stdout
    line = next(x for x in line.splitlines() if not x.startswith("#"))
    # The line `cronqueue crontab` prints is crontab.example with this installation's paths.
    assert line.startswith("* * * * * cd ") and " mission --config " in line
    # The user's own crontab keeps its lines meanwhile (ours is added), and comes back as it was.
    saved = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    mine = saved.stdout if saved.returncode == 0 else ""
    mine += "" if mine.endswith("\n") or not mine else "\n"
    (tmp_path / "crontab.saved").write_text(mine)  # should the test be killed half-way
    try:
        subprocess.run(["crontab", "-"], input=mine + line + "\n", text=True, check=True)
        wait_until(lambda: ledger.exists() and set(map(int, ledger.read_text().split()))
                   >= set(ids), 150, lambda: (log_dir / "mission.log").read_text())
    finally:
        if saved.returncode == 0:
            subprocess.run(["crontab", "-"], input=saved.stdout, text=True, check=True)
        else:
            subprocess.run(["crontab", "-r"], check=False)
    q.stop_workers()
    wait_until(lambda: not _alive_workers(q), 30, "every shard stopped")
    assert "mission=drain" in (log_dir / "mission.log").read_text()
