#!/usr/bin/env python3
"""Chaos run: drain a backlog through overlapping mission ticks while killing shards
(kill -9), killing task scripts (kill -9) and restarting the database, then account for every
task in a ledger.

    python bench/chaos.py --private-server --tasks 20000 --shards 6 --db-restarts 1
    python bench/chaos.py --db mysql+pymysql://root:@127.0.0.1/cq_chaos --tasks 20000 \
        --shards 6                          # the database is dropped and created afresh
    python bench/chaos.py --db sqlite:////tmp/chaos.db --tasks 20000 --shards 6

Each task script appends ``start ID ATTEMPT PID SHARD_PID`` and ``end ID PID`` to a ledger
file. At the end every task must be done, failed or pending (none lost, none left running),
and every second start of a task must be explained by a kill of its previous run (its script
or its shard); no two runs of a task may overlap. Prints a JSON report; exits 1 on any
violation. Only loopback databases. ``--private-server`` starts a throwaway MariaDB of its
own (bench/private_mariadb.py: temp datadir, free port); database restarts
(``--db-restarts``) are only done to that server, never to one this run did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from cronqueue import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    children_of,
    clean_env,
    fresh_database,
    past_minute,
    pids,
    proc_cmdline,
    proc_stat,
    run_header,
    toml_str,
    write_script,
)
from private_mariadb import PrivateMariaDB, PrivateMariaDBError

TASK = """#!/bin/sh
echo "start $CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT $$ $PPID" >> "{ledger}"
sleep 0.0$(( CRONQUEUE_TASK_ID % 4 ))
echo "end $CRONQUEUE_TASK_ID $$" >> "{ledger}"
"""
CONFIG = """
db_url = {db}
task_dir = {tasks}
log_dir = {logs}

[worker]
max_attempts = 6       # a task may be killed several times and still finish
backoff = 0.2
backoff_max = 1
heartbeat = 1
lease = 20             # a database restart of a few seconds does not put leases at risk
outage_wait = 120
batch = 20

[[mission]]
name = "chaos"
cron = "* * * * *"
do_queue = {{ total = {shards}, max_seconds = {max_seconds} }}
"""


def restart_mariadb(server: PrivateMariaDB, events: list[dict[str, Any]], t0: float) -> None:
    """Stop (SIGTERM: a clean shutdown) and start again the private MariaDB server this run
    started (same datadir and port), waiting until it answers. Never any other server."""
    began = time.monotonic()
    server.stop()
    down = time.monotonic()
    time.sleep(1.0)
    server.start()
    events.append({"t": round(began - t0, 2), "kind": "db-restart",
                   "down_seconds": round(time.monotonic() - down, 2)})


# Task scripts are executed as /proc/self/fd/N (the file checked is the file run), so their
# command line does not name chaos.sh: each param carries this key, and only the script's own
# process (not the `sleep` it starts) has the param in its argv.
TASK_MARKER = b'"chaos_n"'


def children_running(marker: bytes) -> list[int]:
    return [pid for pid in pids() if marker in proc_cmdline(pid)]


def shard_pids() -> list[int]:
    out = []
    for pid in pids():
        cmd = proc_cmdline(pid).split(b"\0")
        stat = proc_stat(pid)
        if stat and stat[0] != "Z" and b"work" in cmd and b"--entry" in cmd and b"chaos" in cmd:
            out.append(pid)
    return out


def kill_exactly(pid: int, marker: bytes) -> bool:
    """SIGKILL ``pid`` only if it is still the process we chose (its command line holds
    ``marker``): pids are reused quickly here (pid_max 32768, thousands of short tasks), and a
    kill that hits a newcomer would be a fault the ledger cannot explain. A pidfd pins the
    process between the check and the signal."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if marker not in proc_cmdline(pid):
            return False
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def kill_shard(pid: int) -> list[int] | None:
    """SIGKILL shard ``pid`` (if it still is one) and return the children it had when it died,
    None if it was not killed. The shard is stopped first, so that it cannot start another
    task between the listing and the kill: a task it had just started may find its shard gone
    before it can note its parent's pid (``$PPID`` is then 1), and only this list ties such a
    run to the kill that explains its re-run."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        if b"--entry\0chaos" not in proc_cmdline(pid):
            return None
        signal.pidfd_send_signal(fd, signal.SIGSTOP)
        deadline = time.monotonic() + 1.0
        while (stat := proc_stat(pid)) and stat[0] not in "Tt" and time.monotonic() < deadline:
            time.sleep(0.001)
        children = children_of(pid)
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return children
    except OSError:
        return None
    finally:
        os.close(fd)


def chaos_loop(stop: threading.Event, events: list[dict[str, Any]], t0: float,
               shard_every: float, task_every: float, restarts: list[float],
               server: PrivateMariaDB | None) -> None:
    rng = random.Random(1)
    next_shard = time.monotonic() + shard_every
    next_task = time.monotonic() + task_every
    pending_restarts = sorted(restarts)
    while not stop.wait(0.05):
        now = time.monotonic()
        if pending_restarts and server is not None and now - t0 >= pending_restarts[0]:
            pending_restarts.pop(0)
            restart_mariadb(server, events, t0)
        if now >= next_shard:
            next_shard = now + shard_every
            pids = shard_pids()
            if pids:
                pid = rng.choice(pids)
                children = kill_shard(pid)
                if children is not None:
                    events.append({"t": round(now - t0, 2), "kind": "kill-shard", "pid": pid,
                                   "children": children})
        if now >= next_task:
            next_task = now + task_every
            pids = children_running(TASK_MARKER)
            if pids:
                pid = rng.choice(pids)
                if kill_exactly(pid, TASK_MARKER):
                    events.append({"t": round(now - t0, 2), "kind": "kill-task", "pid": pid})


def analyse(ledger: Path, q: Queue, ids: list[int],
            events: list[dict[str, Any]]) -> dict[str, Any]:
    killed_tasks = {e["pid"] for e in events if e["kind"] == "kill-task"}
    killed_shards = {e["pid"] for e in events if e["kind"] == "kill-shard"}
    # Runs whose shard was killed under them (found by pid: such a run may have noted $PPID 1).
    orphaned = {c for e in events if e["kind"] == "kill-shard" for c in e.get("children", ())}
    runs: dict[int, list[dict[str, Any]]] = defaultdict(list)
    overlaps = []
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if parts[0] == "start" and len(parts) == 5:
            runs[int(parts[1])].append({"pid": int(parts[3]), "shard": int(parts[4]),
                                        "ended": False})
        elif parts[0] == "end" and len(parts) == 3:
            tid, pid = int(parts[1]), int(parts[2])
            mine = [i for i, r in enumerate(runs[tid]) if r["pid"] == pid]
            if mine:
                runs[tid][mine[-1]]["ended"] = True
                if mine[-1] < len(runs[tid]) - 1:
                    overlaps.append(tid)  # a later run started before this one ended
    stats = q.stats()
    statuses = {t.id: t.status.name.lower() for t in _all_tasks(q)}
    reruns = unexplained = 0
    unexplained_ids = []
    for tid, rs in runs.items():
        for prev in rs[:-1]:
            reruns += 1
            if (prev["pid"] in killed_tasks or prev["shard"] in killed_shards
                    or (prev["shard"] == 1 and prev["pid"] in orphaned)):
                continue
            unexplained += 1
            unexplained_ids.append(tid)
    missing = [i for i in ids if i not in statuses]
    done_never_ran = [i for i in ids if statuses.get(i) == "done"
                      and not any(r["ended"] for r in runs.get(i, []))]
    return {
        "enqueued": len(ids), "done": stats["done"], "failed": stats["failed"],
        "pending": stats["pending"], "running": stats["running"],
        "accounted": stats["done"] + stats["failed"] + stats["pending"] == len(ids),
        "lost": len(missing) + len(done_never_ran), "runs": sum(len(r) for r in runs.values()),
        "reruns": reruns, "unexplained_reruns": unexplained,
        "unexplained_ids": unexplained_ids[:20], "overlapping_runs": len(overlaps),
        "kills_shard": len(killed_shards), "kills_task": len(killed_tasks),
        "db_restarts": sum(1 for e in events if e["kind"] == "db-restart"),
    }


def _all_tasks(q: Queue) -> list[Any]:
    return q.list(limit=10**7)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="database URL (recreated!)")
    p.add_argument("--private-server", action="store_true",
                   help="start a throwaway MariaDB server of our own (temp datadir, free port) "
                        "and run on it; required for --db-restarts")
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--tick", type=float, default=2.0, help="seconds between mission ticks")
    p.add_argument("--kill-shard-every", type=float, default=3.0)
    p.add_argument("--kill-task-every", type=float, default=0.7)
    p.add_argument("--db-restarts", type=int, default=0,
                   help="restarts of the private MariaDB server (needs --private-server)")
    p.add_argument("--chaos-seconds", type=float, default=0,
                   help="how long to inflict chaos (default: until 80%% of tasks are done)")
    p.add_argument("--max-seconds", type=float, default=1800)
    p.add_argument("--dir", help="work directory (default: a temporary one)")
    args = p.parse_args(argv)
    if args.private_server == bool(args.db):
        p.error("give exactly one of --db URL and --private-server")
    if args.db_restarts > 0 and not args.private_server:
        p.error("--db-restarts restarts only a MariaDB server this run started itself: "
                "use --private-server (not --db), or --db-restarts 0")
    if not args.private_server:
        return run(args, args.db, None)
    # SIGTERM ends the run through the with-block: the private server is shut down, its
    # directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with PrivateMariaDB() as server:
            return run(args, server.url("cq_chaos"), server)
    except PrivateMariaDBError as exc:
        print(f"chaos.py: cannot start a private MariaDB server: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, db: str, server: PrivateMariaDB | None) -> int:
    header = run_header()
    root = Path(args.dir or tempfile.mkdtemp(prefix="cronqueue-chaos-")).resolve()
    shutil.rmtree(root, ignore_errors=True)
    ledger = root / "ledger.txt"
    write_script(root / "tasks" / "chaos.sh", TASK.format(ledger=ledger))
    config = root / "cronqueue.toml"
    config.write_text(CONFIG.format(db=toml_str(db), tasks=toml_str(root / "tasks"),
                                    logs=toml_str(root / "logs"), shards=args.shards,
                                    max_seconds=args.tick * 2.5))
    fresh_database(db)
    q = Queue(config_file=str(config))
    q.init_db()
    ids: list[int] = []
    for start in range(0, args.tasks, 5000):
        ids += q.add_many(("chaos.sh", {"chaos_n": n})
                          for n in range(start, min(args.tasks, start + 5000)))

    events: list[dict[str, Any]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    restarts = [5.0 + i * 12.0 for i in range(args.db_restarts)]
    chaos = threading.Thread(target=chaos_loop, args=(stop, events, t0,
                                                      args.kill_shard_every,
                                                      args.kill_task_every, restarts,
                                                      server), daemon=True)
    chaos.start()
    # One simulated minute per tick, all in the past: `mission --now` more than a minute
    # ahead of the clock is refused (it would record runs that real ticks then skip).
    tick = past_minute(int(args.max_seconds / args.tick) + 2)
    env = clean_env()
    missions = 0
    chaos_over = False
    while time.monotonic() - t0 < args.max_seconds:
        # Two missions per tick, racing: overlapping ticks on purpose.
        procs = [subprocess.Popen([sys.executable, "-m", "cronqueue", "mission", "--config",
                                   str(config), "--now", tick.isoformat()], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(2)]
        for proc in procs:
            proc.wait()
        missions += len(procs)
        tick += timedelta(minutes=1)
        time.sleep(args.tick)
        try:
            stats = q.stats()
        except Exception:  # the database may be restarting
            continue
        progress = stats["done"] + stats["failed"]
        if not chaos_over and ((args.chaos_seconds and time.monotonic() - t0
                                >= args.chaos_seconds and len(events) >= len(restarts))
                               or (not args.chaos_seconds and progress >= 0.8 * len(ids)
                                   and (not restarts or any(e["kind"] == "db-restart"
                                                            for e in events)))):
            stop.set()
            chaos.join()
            chaos_over = True
        if chaos_over and stats["pending"] == 0 and stats["running"] == 0:
            break
    stop.set()
    elapsed = time.monotonic() - t0
    time.sleep(1)
    (root / "events.json").write_text(json.dumps(events, indent=1))
    report = {**header, **analyse(ledger, q, ids, events)}
    report.update({"backend": make_url(db).get_backend_name(), "shards": args.shards,
                   "private_server": server is not None,
                   "missions": missions, "seconds": round(elapsed, 1),
                   "dir": str(root)})
    ok = (report["accounted"] and report["lost"] == 0 and report["running"] == 0
          and report["unexplained_reruns"] == 0 and report["overlapping_runs"] == 0)
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    q.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
