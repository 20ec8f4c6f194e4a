"""``cronqueue demo``: the quickstart on SQLite, offline, in seconds.

Creates a directory with a config (two mission entries), an example task dir and a SQLite
database, enqueues a few dozen messages with mixed priorities (some fail and are retried, one
fails for good), then drives the mission one simulated minute at a time: each tick starts two
real ``cronqueue work`` shard processes and, every other minute, enqueues a recurring task.
Prints a summary when nothing is left to do.
"""

from __future__ import annotations

import importlib.resources
import logging
import random
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cronqueue.config import load_config
from cronqueue.mission.tick import Launcher, Mission, detached_launcher
from cronqueue.model import Task
from cronqueue.queue import Queue

SHARDS = 2
_CONFIG = """\
# cronqueue demo configuration (see README for every key)
db_url   = "sqlite:///{db}"
task_dir = "tasks"
log_dir  = "logs"

[worker]
max_attempts = 3
backoff = 0.5        # first retry after ~0.5 s (production default: 10 s), doubling
backoff_max = 2
timeout = 30

[[mission]]          # every minute: drain the queue with 2 shards
name = "drain"
cron = "* * * * *"
do_queue = {{ total = 2 }}

[[mission]]          # every 2 minutes: a recurring digest message
name = "digest"
cron = "*/2 * * * *"
add = {{ taskscript = "send_msg.py", priority = 8, param = {{ sender = 1, receivers = [500], \
content = "your digest" }} }}
"""


def examples_dir() -> Path:
    """The example task scripts: packaged in the wheel, or ``tasks/`` of a source checkout."""
    packaged = Path(str(importlib.resources.files("cronqueue"))) / "examples"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "tasks"


def run_demo(directory: str | None = None, *, messages: int = 30, seed: int = 7) -> int:
    base = Path(directory or tempfile.mkdtemp(prefix="cronqueue-demo-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    (base / "tasks").mkdir(exist_ok=True)
    for script in ("send_msg.py", "flaky.sh"):
        shutil.copyfile(examples_dir() / script, base / "tasks" / script)
    db = base / "demo.db"
    config_file = base / "cronqueue.toml"
    config_file.write_text(_CONFIG.format(db=db))
    print(f"cronqueue demo in {base}")
    print(f"  config {config_file}\n  tasks  {base / 'tasks'}\n  db     {db}\n")

    q = Queue(config=load_config(config_file))
    q.init_db()
    rng = random.Random(seed)
    specs: list[dict[str, object]] = []
    for n in range(messages):
        receivers = rng.sample(range(100, 999), rng.randint(1, 4))
        specs.append({"taskscript": "send_msg.py", "priority": rng.choice([-1, 0, 0, 0, 5, 10]),
                      "param": {"sender": rng.randint(1, 99), "receivers": receivers,
                                "content": f"Hello #{n + 1}"}})
    specs += [{"taskscript": "flaky.sh", "param": {"job": "sync", "n": n}} for n in (1, 2)]
    specs.append({"taskscript": "send_msg.py", "max_attempts": 2, "priority": 1,
                  "param": {"sender": 1, "receivers": [-7], "content": "to nobody"}})
    specs.append({"taskscript": "send_msg.py", "delay": 1.5,
                  "param": {"sender": 1, "receivers": [42], "content": "sent 1.5 s later"}})
    ids = q.add_many(specs)
    print(f"enqueued {len(ids)} tasks (ids {ids[0]}..{ids[-1]}): {messages} messages with "
          "priorities -1..10, 2 flaky (fail once), 1 doomed, 1 delayed\n")

    cfg = load_config(config_file)
    logging.getLogger("cronqueue.mission").setLevel(logging.WARNING)  # the demo narrates
    children: list[subprocess.Popen[bytes]] = []
    mission = Mission(cfg, launcher=_keep(children, detached_launcher(cfg.log_dir)))
    started = time.monotonic()
    tick = datetime.now(UTC).replace(second=0, microsecond=0)
    tick -= timedelta(minutes=tick.minute % 2)  # start on an even minute: the digest fires
    rounds = 0
    print("driving `cronqueue mission --now T` one simulated minute at a time:")
    while time.monotonic() - started < 60:
        rounds += 1
        report = mission.tick(tick)
        for child in children:
            child.wait()
        children.clear()
        stats = q.stats()
        did = [f"started shards {','.join(str(s) for _e, s in report.launched)}"]
        did += [f"added {name} task {task}" for name, task in report.added.items()]
        print(f"  tick {tick:%H:%M}Z: {'; '.join(did)} -> done {stats['done']}, "
              f"failed {stats['failed']}, pending {stats['pending']}")
        if stats["pending"] == 0 and stats["running"] == 0:
            break
        tick += timedelta(minutes=1)
        time.sleep(0.5)  # real time for the retries' backoff to pass
    elapsed = time.monotonic() - started

    tasks = sorted(q.list(limit=1000),
                   key=lambda t: (t.started_at is None, t.started_at, t.id))
    print("\nper task, in the order they (last) started; each shard (id % 2) takes the highest "
          "priority first, then the oldest:")
    print(_table(tasks))
    stats = q.stats()
    print(f"\n{stats['done']} done, {stats['failed']} failed, {stats['pending']} pending, "
          f"{stats['running']} running — {stats['total']} tasks, {SHARDS} shards, "
          f"{rounds} mission ticks, {elapsed:.1f}s")
    print(f"output of every run: {base / 'logs'}/*.log; shard logs: {base / 'logs'}/shards.log")
    print(f"try: cronqueue --help   |   cronqueue list --config {config_file}")
    print(f"see it in a browser: cronqueue web --config {config_file}   (needs the extra: "
          "pip install 'cronqueue[web]')")
    q.close()
    expected_failed = 1
    ok = stats["done"] == stats["total"] - expected_failed and stats["failed"] == expected_failed
    return 0 if ok else 1


def _keep(children: list[subprocess.Popen[bytes]], launch: Launcher) -> Launcher:
    """Launch as the mission does, but remember the shards so the demo can wait for them."""

    def launcher(argv: list[str], env: dict[str, str], cwd: Path) -> None:
        children.append(launch(argv, env, cwd))

    return launcher


def _table(tasks: list[Task]) -> str:
    from cronqueue.cli.display import format_columns

    rows = [("ID", "SHARD", "PRIO", "SCRIPT", "STATUS", "TRIES", "LAST OUTPUT")]
    for t in tasks:
        last = (t.output or "").strip().splitlines()[-1:] or [""]
        rows.append((str(t.id), str(t.id % SHARDS), str(t.priority), t.taskscript,
                     t.status.name.lower(), str(t.attempts), last[0][:60]))
    return "\n".join("  " + line for line in format_columns(rows).splitlines())

