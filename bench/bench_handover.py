#!/usr/bin/env python3
"""Shard busy time across ticks (issue 12 #3): is a shard number ever idle while its rows are due?

One ``do_queue`` entry of ``--total`` shards with ``max_seconds = --budget``; a backlog of tasks
of ``--task-seconds`` each (longer than the gap, interval - budget) that outlasts the run;
``cronqueue mission --now T`` runs ``--ticks`` times, every ``--interval`` real seconds, each
tick one simulated minute. Then the backlog is cancelled and the shards let finish. For each
shard number, from its tasks' ``started_at`` and ``finished_at``: busy = 1 - (gaps between one
task's end and the next's start) / (first start to last start). Real processes throughout.

    python bench/bench_handover.py --db sqlite:////tmp/h.db [--interval 6 --budget 5 ...]

Prints the run's date, command and machine, and a table a row per shard (``--json``: the same
as JSON); exits 1 if a shard ran fewer than two tasks, was busy less than 95 % of its window or ran
two tasks at once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    clean_env,
    fresh_database,
    past_minute,
    run_header,
    table,
    toml_str,
    wait_until,
    write_script,
)
from sqlalchemy import text

from cronqueue import Queue, Status


@dataclass
class ShardBusy:
    shard: int
    tasks: int
    window: float  # seconds from its first task's start to its last task's start
    idle: float  # seconds of that window between tasks
    overlaps: int  # a task that started before the previous one ended (never, by the guard)

    @property
    def busy(self) -> float:
        return 1.0 if self.window <= 0 else 1.0 - self.idle / self.window


def run(db_url: str, work: Path, *, interval: float, budget: float, task_seconds: float,
        ticks: int, total: int = 2) -> list[ShardBusy]:
    write_script(work / "tasks" / "nap.sh", f"#!/bin/sh\nsleep {task_seconds}\n")
    config = work / "cronqueue.toml"
    config.write_text(
        f"db_url = {toml_str(db_url)}\ntask_dir = {toml_str(work / 'tasks')}\n"
        f"log_dir = {toml_str(work / 'logs')}\n\n[[mission]]\nname = \"drain\"\n"
        f"cron = \"* * * * *\"\ndo_queue = {{ total = {total}, max_seconds = {budget}, "
        "batch = 2 }\n")
    fresh_database(db_url)
    with Queue(config_file=str(config)) as q:
        q.init_db()
        backlog = int(ticks * interval / task_seconds + 4) * total
        q.add_many([{"taskscript": "nap.sh", "param": i} for i in range(backlog)])
        first = past_minute(60)
        start = time.monotonic()
        for k in range(ticks):
            subprocess.run([sys.executable, "-m", "cronqueue", "mission", "--config",
                            str(config), "--now", (first + timedelta(minutes=k)).isoformat(),
                            "--log-level", "warning"],
                           env=clean_env(), check=True)
            time.sleep(max(0.0, start + (k + 1) * interval - time.monotonic()))
        with q.engine.begin() as conn:  # the backlog ends: the shards finish their task, exit
            conn.execute(text("UPDATE queue SET status = 4 WHERE status = 0"))
        wait_until(lambda: not any(w.alive for w in q.workers()),
                   budget + task_seconds + 60, "the shards to exit", interval=0.1)
        return busy([(t.id, t.started_at, t.finished_at)
                     for t in q.list(status=Status.DONE, limit=10**6)
                     if t.started_at is not None and t.finished_at is not None], total)


def busy(rows: list[tuple[int, datetime, datetime]], total: int) -> list[ShardBusy]:
    out = []
    for shard in range(total):
        mine = sorted((s, f) for i, s, f in rows if i % total == shard)
        idle, overlaps = 0.0, 0
        for (_, prev_end), (nxt, _) in itertools.pairwise(mine):
            gap = (nxt - prev_end).total_seconds()
            idle += max(gap, 0.0)
            overlaps += gap < -0.05
        window = (mine[-1][0] - mine[0][0]).total_seconds() if mine else 0.0
        out.append(ShardBusy(shard, len(mine), window, idle, overlaps))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", required=True, help="database URL (dropped and created afresh)")
    ap.add_argument("--interval", type=float, default=6.0, help="real seconds between ticks")
    ap.add_argument("--budget", type=float, default=5.0, help="do_queue.max_seconds")
    ap.add_argument("--task-seconds", type=float, default=2.0)
    ap.add_argument("--ticks", type=int, default=6)
    ap.add_argument("--total", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    header = run_header()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.db, Path(tmp), interval=args.interval, budget=args.budget,
                     task_seconds=args.task_seconds, ticks=args.ticks, total=args.total)
    ok = all(s.tasks > 1 and s.busy >= 0.95 and not s.overlaps for s in result)
    if args.json:
        print(json.dumps({**header, "shards": [asdict(s) | {"busy": s.busy} for s in result],
                          "ok": ok}))
    else:
        print(f"{header['date']}, `{header['command']}`\n\n"
              + table(["", ""], list(header["machine"].items())) + "\n\n"
              + table(["shard", "tasks", "window s", "idle s", "busy", "overlaps"],
                      [[str(s.shard), str(s.tasks), f"{s.window:.1f}", f"{s.idle:.2f}",
                        f"{s.busy:.1%}", str(s.overlaps)] for s in result]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
