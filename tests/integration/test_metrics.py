"""``cronqueue metrics``: each metric's value after real runs (a shard that runs tasks which
succeed, fail and take time; a mission tick; a shard registered while it runs), the counters
unchanged by a purge, label values from rows escaped, and ``--output`` for node_exporter's
textfile collector (atomic, 0644, never through a planted link)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cronqueue import Queue
from cronqueue.config import load_config
from cronqueue.metrics import exposition
from cronqueue.shard.loop import Shard
from cronqueue.store.ticks import Ticks
from tests.conftest import insert_raw, run_cli
from tests.helpers import Procs, cronqueue_cmd, wait_until, write_script

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
HOST = socket.gethostname()


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def setup(queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path
          ) -> dict[str, Any]:
    write_script(task_dir, "ok.sh", "exit 0\n")
    write_script(task_dir, "fail.sh", "exit 3\n")
    write_script(task_dir, "slow.sh", "sleep 0.3\n")
    config = tmp_path / "cronqueue.toml"
    config.write_text(f'db_url = "{db_url}"\ntask_dir = "{task_dir}"\nlog_dir = "{log_dir}"\n'
                      '[[mission]]\nname = "nightly"\ncron = "* * * * *"\n'
                      'add = { taskscript = "ok.sh", queue = "reports" }\n')
    return {"config": config}


def scrape(db_url: str, task_dir: Path, log_dir: Path, *args: str) -> str:
    result = run_cli("metrics", *args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_metric_after_real_runs(queue: Queue, db_url: str, task_dir: Path,
                                     log_dir: Path, setup: dict[str, Any],
                                     procs: Procs) -> None:
    queue.add_many([{"taskscript": "ok.sh", "queue": "mail"} for _ in range(4)]
                   + [{"taskscript": "fail.sh", "queue": "mail", "max_attempts": 1}
                      for _ in range(2)]
                   + [{"taskscript": "slow.sh", "queue": "reports"}])
    queue.add("ok.sh", queue="reports", delay=3600)
    queue.cancel(queue.add("ok.sh", queue="reports"))
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir))
    report = Shard(cfg).run()
    assert (report.done, report.failed) == (5, 2)
    tick = subprocess.run(cronqueue_cmd("mission", "--config", str(setup["config"])),
                          capture_output=True, text=True, timeout=60, check=False)
    assert tick.returncode == 0, tick.stderr  # it adds the nightly task (due) to reports
    ended = datetime.now(UTC)  # each tick records its host's row: two boots of this host
    Ticks(queue.engine).record(f"{HOST}#0123456789ab", 1, ended, ended, [])
    Ticks(queue.engine).record(f"{HOST}#ba9876543210", 2, ended - timedelta(hours=1),
                               ended - timedelta(hours=1), [])

    got = parse(scrape(db_url, task_dir, log_dir, "--config", str(setup["config"])))
    assert value(got, "cronqueue_tasks", queue="mail", status="done") == 4
    assert value(got, "cronqueue_tasks", queue="mail", status="failed") == 2
    assert value(got, "cronqueue_tasks", queue="mail", status="pending") == 0
    assert value(got, "cronqueue_tasks", queue="reports", status="pending") == 2
    assert value(got, "cronqueue_tasks", queue="reports", status="cancelled") == 1
    assert value(got, "cronqueue_oldest_due_age_seconds", queue="mail") == 0
    assert 0 <= value(got, "cronqueue_oldest_due_age_seconds", queue="reports") < 120
    finished = {(o, qn): value(got, "cronqueue_tasks_finished_total", queue=qn, outcome=o)
                for qn in ("mail", "reports") for o in ("done", "failed", "cancelled")}
    assert finished == {("done", "mail"): 4, ("failed", "mail"): 2, ("cancelled", "mail"): 0,
                        ("done", "reports"): 1, ("failed", "reports"): 0,
                        ("cancelled", "reports"): 1}
    slow = {"queue": "reports", "outcome": "done"}
    assert value(got, "cronqueue_task_duration_seconds_bucket", le="0.25", **slow) == 0
    assert value(got, "cronqueue_task_duration_seconds_bucket", le="60", **slow) == 1
    assert value(got, "cronqueue_task_duration_seconds_count", **slow) == 1
    assert value(got, "cronqueue_task_duration_seconds_sum", **slow) >= 0.3
    assert value(got, "cronqueue_task_duration_seconds_count", queue="mail",
                 outcome="failed") == 2
    now = datetime.now(UTC).timestamp()
    assert ended.timestamp() - 1e-3 <= value(  # the host without its boot's id, the newest
        got, "cronqueue_mission_last_tick_timestamp_seconds", host=HOST) <= now
    assert [k for k in got if k[0] == "cronqueue_mission_last_tick_timestamp_seconds"] == [
        ("cronqueue_mission_last_tick_timestamp_seconds", (("host", HOST),))]
    assert now - 120 < value(got, "cronqueue_schedule_last_run_timestamp_seconds",
                             entry="nightly") <= now
    assert ("cronqueue_workers", (("host", HOST),)) not in got  # no shard runs now
    assert value(got, "cronqueue_build_info", version="0.1.0") == 1

    # A shard is registered while it runs.
    write_script(task_dir, "hold.sh", "sleep 3\n")
    queue.add("hold.sh", queue="hold")
    shard = procs.start(cronqueue_cmd("work", "--db", db_url, "--task-dir", str(task_dir),
                                      "--log-dir", str(log_dir), "--queue", "hold"))
    seen = (("cronqueue_workers", (("host", HOST),)),
            ("cronqueue_tasks", (("queue", "hold"), ("status", "running"))))
    wait_until(lambda: [parse(exposition(queue.engine).decode()).get(k) for k in seen]
               == [1, 1], what="the shard registered, its task running")
    os.kill(shard.pid, signal.SIGTERM)  # it finishes its task and exits
    assert shard.wait(timeout=60) == 0


def test_a_purge_leaves_the_counters(queue: Queue, db_url: str, task_dir: Path,
                                     log_dir: Path, setup: dict[str, Any]) -> None:
    queue.add_many([{"taskscript": "ok.sh"} for _ in range(3)]
                   + [{"taskscript": "fail.sh", "max_attempts": 1}])
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir))
    Shard(cfg).run()
    before = parse(scrape(db_url, task_dir, log_dir))
    purged = run_cli("purge", "--older-than", "0", db_url=db_url, task_dir=task_dir,
                     log_dir=log_dir)
    assert purged.returncode == 0, purged.stderr
    after = parse(scrape(db_url, task_dir, log_dir))
    assert value(after, "cronqueue_tasks", queue="default", status="done") == 0
    counters = [k for k in before if k[0].startswith(("cronqueue_tasks_finished",
                                                      "cronqueue_task_duration"))]
    assert len(counters) > 20
    assert {k: after[k] for k in counters} == {k: before[k] for k in counters}
    assert value(after, "cronqueue_tasks_finished_total", queue="default", outcome="done") == 3


def test_label_values_from_rows_are_escaped(queue: Queue) -> None:
    """A queue name written by hand with a quote, a backslash and a newline: the exposition
    stays parseable and gives the name back as it is."""
    name = 'we"ird\\q\nx'
    insert_raw(queue, {"taskscript": "ok.sh", "param": "1", "queue": name})
    text = exposition(queue.engine).decode()
    assert 'queue="we\\"ird\\\\q\\nx"' in text
    assert "\nx\"" not in text  # no raw newline inside a label
    got = parse(text)
    assert value(got, "cronqueue_tasks", queue=name, status="pending") == 1


def test_output_file_for_the_textfile_collector(queue: Queue, db_url: str, task_dir: Path,
                                                log_dir: Path, tmp_path: Path) -> None:
    collector = tmp_path / "textfile"
    collector.mkdir()
    target = collector / "cronqueue.prom"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    target.symlink_to(victim)  # planted: the write must replace the link, not follow it
    os.umask(old := os.umask(0o077))
    try:
        assert scrape(db_url, task_dir, log_dir, "--output", str(target)) == ""
    finally:
        os.umask(old)
    assert victim.read_text() == "keep me\n"
    assert not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert "cronqueue_build_info" in {f.name for f in
                                      text_string_to_metric_families(target.read_text())}
    inode = target.stat().st_ino
    scrape(db_url, task_dir, log_dir, "--output", str(target))
    assert target.stat().st_ino != inode  # replaced whole, by a rename
    assert sorted(p.name for p in collector.iterdir()) == ["cronqueue.prom"]  # no temp left

    missing = run_cli("metrics", "--output", str(tmp_path / "no" / "such.prom"),
                      db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert missing.returncode == 2
    assert "is not a directory" in missing.stderr
