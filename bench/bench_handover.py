"""Shard busy time across ticks (issue 12 #3): is a shard number ever idle while its rows are due?

One ``do_queue`` entry of ``--total`` shards with ``max_seconds = --budget``; a backlog of tasks
of ``--task-seconds`` each (longer than the gap, interval - budget) that outlasts the run; the
mission ticks ``--ticks`` times, every ``--interval`` real seconds, each tick one simulated
minute (``now`` in the past, as ``cronqueue mission --now`` would). Then the backlog is
cancelled and the shards let finish. For each shard number, from its tasks' ``started_at`` and
``finished_at``: busy = 1 - (gaps between one task's end and the next's start) / (first start to
last start). Real processes throughout (the detached launcher, ``cronqueue work``).

    python bench/bench_handover.py --db sqlite:////tmp/h.db [--interval 6 --budget 5 ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from cronqueue import Queue
from cronqueue.config import load_config
from cronqueue.mission.schedule import minute_floor
from cronqueue.mission.tick import Mission
from cronqueue.shard.guard import is_locked_here, is_locked_in_db
from cronqueue.store.engine import make_engine
from cronqueue.store.schema import queue_table


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
        ticks: int, total: int = 2, entry: str = "drain") -> list[ShardBusy]:
    tasks, logs = work / "tasks", work / "logs"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "nap.sh").write_text(f"sleep {task_seconds}\n")
    config = work / "cronqueue.toml"
    config.write_text(
        f"db_url = {json.dumps(db_url)}\ntask_dir = {json.dumps(str(tasks))}\n"
        f"log_dir = {json.dumps(str(logs))}\n\n[[mission]]\nname = \"{entry}\"\n"
        f"cron = \"* * * * *\"\ndo_queue = {{ total = {total}, max_seconds = {budget}, "
        "batch = 2 }\n")
    cfg = load_config(config)
    q = Queue(config=cfg)
    engine = make_engine(db_url)
    try:
        q.init_db()
        backlog = int(ticks * interval / task_seconds + 4) * total
        q.add_many([{"taskscript": "nap.sh", "param": i} for i in range(backlog)])
        mission = Mission(cfg)
        first = minute_floor(datetime.now(UTC)) - timedelta(hours=1)
        start = time.monotonic()
        for k in range(ticks):
            mission.tick(first + timedelta(minutes=k))
            time.sleep(max(0.0, start + (k + 1) * interval - time.monotonic()))
        with engine.begin() as conn:  # the backlog ends: the shards finish their task, exit
            conn.execute(queue_table.update().where(queue_table.c.status == 0)
                         .values(status=4))
        end = time.monotonic() + budget + task_seconds + 60
        while time.monotonic() < end and any(
                is_locked_here(logs, entry, i, engine.url) or is_locked_in_db(engine, entry, i)
                for i in range(total)):
            time.sleep(0.1)
        return _busy(engine_rows(engine), total)
    finally:
        engine.dispose()
        q.close()


def engine_rows(engine: Engine) -> list[tuple[int, datetime, datetime]]:
    c = queue_table.c
    with engine.connect() as conn:
        return [(int(r[0]), r[1], r[2]) for r in conn.execute(
            select(c.id, c.started_at, c.finished_at).where(c.started_at.is_not(None),
                                                             c.finished_at.is_not(None)))]


def _busy(rows: list[tuple[int, datetime, datetime]], total: int) -> list[ShardBusy]:
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
    ap.add_argument("--db", required=True, help="an empty database (its tables are created)")
    ap.add_argument("--interval", type=float, default=6.0, help="real seconds between ticks")
    ap.add_argument("--budget", type=float, default=5.0, help="do_queue.max_seconds")
    ap.add_argument("--task-seconds", type=float, default=2.0)
    ap.add_argument("--ticks", type=int, default=6)
    ap.add_argument("--total", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.db, Path(tmp), interval=args.interval, budget=args.budget,
                     task_seconds=args.task_seconds, ticks=args.ticks, total=args.total)
    print(f"interval={args.interval:g}s budget={args.budget:g}s gap="
          f"{args.interval - args.budget:g}s task={args.task_seconds:g}s ticks={args.ticks}")
    for s in result:
        print(f"shard {s.shard}: {s.tasks} tasks, busy {s.busy:.1%} of {s.window:.1f}s "
              f"(idle {s.idle:.2f}s), overlaps {s.overlaps}")
    return 0 if all(s.busy >= 0.95 and not s.overlaps for s in result) else 1


if __name__ == "__main__":
    sys.exit(main())
