"""What the alert step adds to a mission tick on a big table: fill a MariaDB database of its own
(``cq_bench_alerts``) with 1,000,000 done tasks finished over the last day, 10,000 failed and
100,000 due pending ones in 10 queues, then time the tick's alert step (``run_alerts``, every
rule on: failed_queues = ["*"], backlog "*" = 10m, three entries; no sink, the sending is not
timed) in its three situations — the first tick of an installation (it looks back 2 minutes), a
tick a minute after the previous one, and the first tick after a day without one (it looks
back a day, its bound) — the median of several runs each.

    python bench/alerts_tick.py            # fill cq_bench_alerts, time
    python bench/alerts_tick.py --reuse    # time again on the rows already there

Only the database ``cq_bench_alerts`` is created and dropped. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cronqueue import Queue  # noqa: E402
from cronqueue.alerts.record import run_alerts  # noqa: E402
from cronqueue.config import load_config  # noqa: E402
from cronqueue.store.schema import alerts_table, ticks_table  # noqa: E402

ADMIN = "mysql+pymysql://root:@127.0.0.1:3306/test"
NAME = "cq_bench_alerts"
CHUNK = 50_000
CONFIG = """
[alerts]
failed_queues = ["*"]
backlog = { "*" = "10m" }

[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = { total = 4 }
max_runtime = "10m"

[[mission]]
name = "nightly"
cron = "0 3 * * *"
add = { taskscript = "report.py" }
max_runtime = "1h"
min_runtime = 5
"""


def fill(url: str, now: datetime) -> None:
    engine = create_engine(url)
    day_us = 86_400 * 1_000_000
    kinds = [
        ("done", 1_000_000, "1", "0", "''"),
        ("failed", 10_000, "3", "1", "'ProcessExitError: exit status 1'"),
    ]
    try:
        for name, count, status, code, error in kinds:
            began = time.perf_counter()
            for lo in range(1, count + 1, CHUNK):
                hi = min(count, lo + CHUNK - 1)
                with engine.begin() as conn:
                    conn.execute(text(
                        "INSERT INTO queue (queue, taskscript, param, status, ctime, run_at, "
                        "attempts, started_at, finished_at, exit_code, output, error) "
                        "SELECT CONCAT('q', seq % 10), CONCAT('s', seq % 20, '.py'), '{}', "
                        f"{status}, :start, :start, 1, "
                        f"DATE_SUB(:now, INTERVAL FLOOR(seq * {day_us} / {count}) MICROSECOND),"
                        f" DATE_SUB(:now, INTERVAL FLOOR(seq * {day_us} / {count}) - 500000 "
                        f"MICROSECOND), {code}, CONCAT('line ', seq), {error} "
                        f"FROM seq_{lo}_to_{hi}"),
                        {"now": now.replace(tzinfo=None), "start": (now - timedelta(days=1))
                         .replace(tzinfo=None)})
            print(f"  {count:>9,} {name} in {time.perf_counter() - began:.1f}s", file=sys.stderr)
        began = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO queue (queue, taskscript, param, status, run_at) "
                "SELECT CONCAT('q', seq % 10), 's.py', '{}', 0, "
                "DATE_SUB(:now, INTERVAL (seq % 3600) SECOND) FROM seq_1_to_100000"),
                {"now": now.replace(tzinfo=None)})
        print(f"    100,000 pending in {time.perf_counter() - began:.1f}s", file=sys.stderr)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="time the rows already there")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    url = make_url(ADMIN).set(database=NAME).render_as_string(hide_password=False)
    now = datetime.now(UTC)
    if not args.reuse:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {NAME}"))
            conn.execute(text(f"CREATE DATABASE {NAME} CHARACTER SET utf8mb4"))
        Queue(url).init_db()
        fill(url, now)
    admin.dispose()
    path = Path("/tmp") / f"{NAME}.toml"
    path.write_text(f'db_url = "{url}"\n' + CONFIG)
    cfg = load_config(path)
    queue = Queue(config=cfg)
    engine = queue.engine
    situations = [("first tick (no tick recorded)", None),
                  ("a minute after the previous tick", timedelta(minutes=1)),
                  ("after a day without a tick", timedelta(days=2))]
    print("| situation | median | min | max |\n|---|---|---|---|")
    for label, since in situations:
        took = []
        for _ in range(args.runs):
            with engine.begin() as conn:  # every run from the same state
                conn.execute(delete(alerts_table))
                conn.execute(delete(ticks_table))
                if since is not None:
                    conn.execute(ticks_table.insert().values(
                        host="bench", pid=1, started_at=now - since, finished_at=now - since))
            began = time.perf_counter()
            run_alerts(cfg, engine, now=now, host="bench", fired={}, missed={})
            took.append(time.perf_counter() - began)
        print(f"| {label} | {statistics.median(took) * 1000:.0f} ms | "
              f"{min(took) * 1000:.0f} ms | {max(took) * 1000:.0f} ms |")
    queue.close()


if __name__ == "__main__":
    main()
