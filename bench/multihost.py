#!/usr/bin/env python3
"""Many hosts, one database: namespaced "hosts" run the mission against one database, one is
killed mid-run, and every task, shard and scheduled time is accounted for (issue 12.6).

    python bench/multihost.py --db mysql+pymysql://root:@127.0.0.1/cq_multi --tasks 2000 \
        --ticks 20 --tick-seconds 6          # the database is dropped and created afresh
    python bench/multihost.py --db sqlite:////tmp/multi.db --tasks 500 --ticks 10

Runs as root. Each host is ``unshare --uts --pid --fork --mount-proc``: its own hostname (hosts
0 and 1 share one, as containers with ``network_mode: host`` do) and its own pid namespace. Its
init (this script, ``--host-loop``) runs ``cronqueue mission --now T_k`` at the same real
instants as the others (a crontab line on each host, within a few ms of each other), T_k one
minute apart in the past, so a minute of schedule passes every ``--tick-seconds``. The
mission's entries: ``drain`` (do_queue, ``--shards`` shards) and ``every`` (adds one
``rec.sh`` task per scheduled time). On MariaDB each host has its own log_dir (its shard locks
are its own, GET_LOCK is shared); SQLite is one machine's database, so its hosts share one.

A host is killed (kill -9 of its namespace's init: every process in it dies) in the middle
of tick ``--kill-at`` or later, once it holds started rows (a twin if one does). Each task script
appends ``S|E ID ATTEMPT PIDNS TIME`` to a ledger; a poller reads the workers registry and
the running rows every 0.2 s. The report (JSON on stdout; exit 1 on any violation) counts:
runs per task and re-runs not explained by
the kill; overlapping runs of a task; two live processes registered for one shard at once;
scheduled times of ``every`` without exactly one task, or whose task did not run exactly
once; tasks not done; the killed host's rows and how long after their lease they were
rescued; refused shard launches ("already running"); each shard's busy time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from common import (
    as_utc,
    fresh_database,
    past_minute,
    pids,
    run_header,
    toml_str,
    write_script,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Status

# The identity a shard writes into worker_host (hostname + machine id): no public API gives
# it, and the report needs it to tell the killed host's rows from the others'.
from cronqueue.process.identity import host_identity

HOSTNAMES = ["twin", "twin", "solo-a", "solo-b", "solo-c", "solo-d"]  # 0 and 1 share one
TASK = """#!/bin/sh
ns=$(readlink /proc/self/ns/pid)
echo "S $CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT $ns $(date +%s.%N)" >> "{ledger}"
sleep {seconds}
echo "E $CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT $ns $(date +%s.%N)" >> "{ledger}"
"""
CONFIG = """
db_url = {db}
task_dir = {task_dir}
log_dir = {log_dir}

[worker]
max_attempts = 5
backoff = 0.2
backoff_max = 1
heartbeat = {heartbeat}
lease = {lease}
poll_interval = 0.2
batch = 10

[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = {{ total = {shards}, max_seconds = {max_seconds} }}

[[mission]]
name = "every"
cron = "* * * * *"
add = {{ taskscript = "rec.sh" }}
"""


# -- one host: the init of its namespaces ----------------------------------------------------

def host_loop(args: argparse.Namespace) -> int:
    socket.sethostname(args.hostname)
    Path(args.identity).write_text(json.dumps({
        "hostname": socket.gethostname(), "identity": host_identity(),
        "pidns": os.readlink("/proc/self/ns/pid")}))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    t0 = datetime.fromisoformat(args.t0)
    log = open(args.log, "a")  # noqa: SIM115 - the host's mission log, for its life
    stop = Path(args.stop)
    k = 0
    while not stop.exists() and k < args.max_ticks:
        due = args.start + k * args.tick_seconds + random.uniform(*args.jitter)
        while time.time() < due and not stop.exists():
            _reap()
            time.sleep(min(0.05, max(0.0, due - time.time())))
        if stop.exists():
            break
        now = t0 + timedelta(minutes=k)
        subprocess.run([sys.executable, "-m", "cronqueue", "mission", "--config", args.config,
                        "--now", now.isoformat(), "--log-level", "info"],
                       stdout=log, stderr=log, check=False)
        k += 1
    # Shards are detached but live in this namespace: they die with its init. Let them finish.
    end = time.time() + args.linger
    while time.time() < end and _others():
        _reap()
        time.sleep(0.1)
    return 0


def _reap() -> None:
    """This process is pid 1 of its namespace: it inherits orphans (detached shards)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _others() -> bool:
    return any(pid != os.getpid() for pid in pids())


# -- the run ---------------------------------------------------------------------------------

class Poller(threading.Thread):
    """Snapshots of the workers registry and of the running rows, every ``interval`` s."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(url, pool_pre_ping=True)
        self.interval = interval
        self.halt = threading.Event()
        self.snapshots: list[tuple[float, list[dict[str, Any]], list[dict[str, Any]]]] = []
        self.errors = 0

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                with self.engine.connect() as conn:
                    workers = [dict(r._mapping) for r in conn.execute(text(
                        "SELECT id, host, pid, entry, shard, heartbeat_at FROM cronqueue_workers"))]
                    running = [dict(r._mapping) for r in conn.execute(text(
                        "SELECT id, worker_host, lease_until FROM queue WHERE status = 2"))]
                self.snapshots.append((time.time(), workers, running))
            except Exception:
                self.errors += 1
            self.halt.wait(self.interval)
        self.engine.dispose()


def _namespace_init(unshare_pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    header = run_header()
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ledger = root / "ledger.txt"
    ledger.unlink(missing_ok=True)
    stop = root / "stop"
    stop.unlink(missing_ok=True)
    for name, seconds in (("t.sh", args.task_seconds), ("rec.sh", 0.05)):
        write_script(root / "tasks" / name, TASK.format(ledger=ledger, seconds=seconds))
    fresh_database(args.db)
    sqlite = make_url(args.db).get_backend_name() == "sqlite"
    configs = []
    for i in range(args.hosts):
        log_dir = root / ("logs" if sqlite else f"logs-{i}")
        log_dir.mkdir(exist_ok=True)
        cfg = root / f"host-{i}.toml"
        cfg.write_text(CONFIG.format(db=toml_str(args.db), task_dir=toml_str(root / "tasks"),
                                     log_dir=toml_str(log_dir), heartbeat=args.heartbeat,
                                     lease=args.lease, shards=args.shards,
                                     max_seconds=args.shard_seconds))
        configs.append(cfg)
    q = Queue(config_file=str(configs[0]))
    q.init_db()
    q.add_many([("t.sh", {"n": n}) for n in range(args.tasks)])
    # The hosts tick on after --ticks while the backlog drains (cron never stops), at most
    # --drain-seconds more; every T_k is in the past.
    max_ticks = args.ticks + int(args.drain_seconds / args.tick_seconds) + 1
    t0 = past_minute(max_ticks + 2)
    start = time.time() + 3.0  # the hosts' python start before the first tick
    poller = Poller(args.db)
    poller.start()
    hosts = []
    for i in range(args.hosts):
        hosts.append(subprocess.Popen(
            ["unshare", "--uts", "--pid", "--fork", "--mount-proc", sys.executable,
             str(Path(__file__).resolve()), "--host-loop", "--hostname", HOSTNAMES[i],
             "--config", str(configs[i]), "--t0", t0.isoformat(), "--start", repr(start),
             "--tick-seconds", str(args.tick_seconds), "--max-ticks", str(max_ticks),
             "--stop", str(stop), "--linger", str(args.shard_seconds + 30),
             "--jitter", *(["0", "0.02"] if HOSTNAMES[i] == "twin" else ["0.05", "0.07"]),
             "--identity", str(root / f"host-{i}.json"), "--log", str(root / f"host-{i}.log")],
            stdin=subprocess.DEVNULL))
    # Kill a host holding started rows, mid-tick from tick --kill-at on: a twin if one does
    # within a tick (twins fire within 20 ms, the others 50-70 ms after them, so they tend to
    # win the launch races), else any; twin 1 two ticks before the end regardless.
    kill_time = start + (args.kill_at + 0.5) * args.tick_seconds
    last_chance = start + (args.ticks - 2) * args.tick_seconds
    victim = None
    while victim is None:
        if time.time() >= kill_time:
            late = time.time() >= kill_time + args.tick_seconds
            victim = next((i for i in range(args.hosts) if (i < 2 or late)
                           and _holds_rows(q, root / f"host-{i}.json")), None)
            if victim is None and time.time() >= last_chance:
                victim = 1
        time.sleep(0.05)
    init = _namespace_init(hosts[victim].pid)
    assert init is not None, "the host to kill has no namespace init"
    killed_at = time.time()
    os.kill(init, signal.SIGKILL)
    hosts[victim].wait(timeout=30)
    # After --ticks, the run ends once the backlog is drained (and the killed host's rows
    # rescued and run), within --drain-seconds.
    end_of_ticks = start + args.ticks * args.tick_seconds
    deadline = end_of_ticks + args.drain_seconds
    drained = False
    while time.time() < deadline and not drained:
        drained = time.time() > end_of_ticks and not _unfinished(q)
        time.sleep(0.5)
    drained_at = time.time()
    stop.touch()
    for h in hosts:
        h.wait(timeout=args.shard_seconds + 90)
    # A tick under way when the backlog was seen drained may have added its recurring task
    # after that: once the hosts are gone, a last shard here runs what they left pending.
    after_stop = _unfinished(q)
    if drained and after_stop:
        subprocess.run([sys.executable, "-m", "cronqueue", "work", "--config",
                        str(configs[0])], check=False, capture_output=True, timeout=300)
    poller.halt.set()
    poller.join()
    identities = [json.loads((root / f"host-{i}.json").read_text()) for i in range(args.hosts)]
    report = {**header, **analyse(args, q, ledger, poller, identities[victim], killed_at,
                                  (start, end_of_ticks))}
    report["hosts"] = [i["identity"] for i in identities]
    report["killed_at_tick"] = round((killed_at - start) / args.tick_seconds, 2)
    report["drain_seconds"] = round(drained_at - start, 1)
    report["pending_after_stop"] = after_stop
    report["refused_launches"] = sum(  # a shard that found its guard held
        p.read_text(errors="replace").count("already running")
        for p in root.glob("logs*/shards.log"))
    report["launches_skipped_still_running"] = sum(  # a tick that found the shards running
        p.read_text(errors="replace").count("still running")
        for p in root.glob("host-*.log"))
    q.close()
    return report


def _holds_rows(q: Queue, identity_file: Path) -> bool:
    host = json.loads(identity_file.read_text())["identity"]
    with q.engine.connect() as conn:
        return conn.execute(text("SELECT 1 FROM queue WHERE status = 2 AND worker_host = :h "
                                 "AND started_at IS NOT NULL LIMIT 1"), {"h": host}).first() \
            is not None


def _unfinished(q: Queue) -> int:
    with q.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM queue WHERE status IN (0, 2)"))
                   .scalar_one())


def analyse(args: argparse.Namespace, q: Queue, ledger: Path, poller: Poller,
            killed: dict[str, str], killed_at: float,
            window: tuple[float, float]) -> dict[str, Any]:
    starts: dict[int, list[tuple[int, str, float]]] = defaultdict(list)
    ends: dict[tuple[int, int, str], float] = {}
    for line in ledger.read_text().splitlines():
        kind, task, attempt, ns, stamp = line.split()
        if kind == "S":
            starts[int(task)].append((int(attempt), ns, float(stamp)))
        else:
            ends[(int(task), int(attempt), ns)] = float(stamp)
    reruns = unexplained = overlapping = lost_result = 0
    for tid, runs in starts.items():
        runs.sort(key=lambda r: r[2])
        for prev, nxt in itertools.pairwise(runs):
            reruns += 1
            prev_end = ends.get((tid, prev[0], prev[1]))
            if prev[1] == killed["pidns"] and nxt[2] >= killed_at:
                # Its run died with the host, or ended there but its outcome (group commit,
                # at most flush_interval late) had not reached the database: rescued, run again.
                lost_result += prev_end is not None
            else:
                unexplained += 1
            if (prev_end if prev_end is not None else killed_at) > nxt[2]:
                overlapping += 1
    with q.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(
            "SELECT id, taskscript, status FROM queue"))]
        every = [dict(r._mapping) for r in conn.execute(text(
            "SELECT scheduled_at, task_id FROM cronqueue_runs WHERE entry = 'every'"))]
    by_status: dict[int, int] = defaultdict(int)
    for r in rows:
        by_status[int(r["status"])] += 1
    rec_ids = {int(r["id"]) for r in rows if r["taskscript"] == "rec.sh"}
    per_time: dict[datetime, int] = defaultdict(int)
    for r in every:
        per_time[as_utc(r["scheduled_at"])] += 1
    rec_runs = [len(starts.get(int(r["task_id"]), [])) for r in every if r["task_id"]]
    # Shards: two live processes registered for one (entry, shard) in one snapshot. The
    # killed host's rows stay registered (dead) until the rescue forgets them: not live.
    double = 0
    busy: dict[tuple[str, int], int] = defaultdict(int)
    in_window = 0
    rescue_delay: dict[int, float] = {}
    held_at_kill: dict[int, datetime] = {}
    for when, workers, running in poller.snapshots:
        live = [w for w in workers
                if not (w["host"] == killed["identity"] and when >= killed_at)]
        seen: dict[tuple[str, int], int] = defaultdict(int)
        for w in live:
            seen[(str(w["entry"]), int(w["shard"]))] += 1
        double += sum(1 for n in seen.values() if n > 1)
        if window[0] <= when <= window[1]:  # the ticks: is each shard busy between them?
            in_window += 1
            for key in seen:
                busy[key] += 1
        mine = {int(r["id"]): as_utc(r["lease_until"]) for r in running
                if r["worker_host"] == killed["identity"] and r["lease_until"] is not None}
        if when >= killed_at:
            if not held_at_kill and mine:
                held_at_kill = dict(mine)
            for rid, lease in held_at_kill.items():
                if rid not in mine and rid not in rescue_delay:
                    rescue_delay[rid] = when - lease.timestamp()
    not_done = len(rows) - by_status[int(Status.DONE)]
    report: dict[str, Any] = {
        "backend": make_url(args.db).get_backend_name(),
        "killed_host": killed["identity"],
        "tasks": len(rows), "backlog": args.tasks, "recurring": len(rec_ids),
        "ticks": len(per_time), "tick_seconds": args.tick_seconds,
        "lease": args.lease, "shards": args.shards,
        "runs": sum(len(r) for r in starts.values()),
        "reruns": reruns, "reruns_result_lost_in_kill": lost_result,
        "unexplained_reruns": unexplained, "overlapping_runs": overlapping,
        "never_ran": len([r for r in rows if int(r["id"]) not in starts]),
        "status": dict(sorted(by_status.items())), "not_done": not_done,
        "double_shards": double,
        "scheduled_times": len(per_time),
        "times_without_one_task": sum(1 for n in per_time.values() if n != 1)
        + sum(1 for r in every if not r["task_id"]),
        "recurring_not_run_once": sum(1 for n in rec_runs if n != 1),
        "killed_rows": len(held_at_kill),
        "rescued_rows": len(rescue_delay),
        "rescue_after_lease_max": round(max(rescue_delay.values(), default=0.0), 2),
        "rescue_bound": args.tick_seconds + 5.0,
        "busy": {f"{e}.{s}": round(n / in_window, 3) for (e, s), n in sorted(busy.items())
                 if in_window},
        "poll_errors": poller.errors,
    }
    report["ok"] = (unexplained == 0 and overlapping == 0 and not_done == 0
                    and double == 0 and report["times_without_one_task"] == 0
                    and report["recurring_not_run_once"] == 0
                    and report["rescued_rows"] == report["killed_rows"]
                    and report["rescue_after_lease_max"] <= report["rescue_bound"])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--db", help="database URL (dropped and created afresh)")
    p.add_argument("--dir", default="/tmp/cq-multihost")
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--task-seconds", type=float, default=0.2)
    p.add_argument("--ticks", type=int, default=20)
    p.add_argument("--tick-seconds", type=float, default=6.0)
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--shard-seconds", type=int, default=5, help="do_queue max_seconds")
    p.add_argument("--lease", type=int, default=6)
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--kill-at", type=int, default=3, help="the tick in whose middle it dies")
    p.add_argument("--drain-seconds", type=float, default=60.0)
    # the host loop (run by the run itself, as the init of each host's namespaces)
    p.add_argument("--host-loop", action="store_true", help=argparse.SUPPRESS)
    for name in ("hostname", "config", "t0", "stop", "identity", "log"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, help=argparse.SUPPRESS)
    p.add_argument("--max-ticks", type=int, help=argparse.SUPPRESS)
    p.add_argument("--linger", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--jitter", type=float, nargs=2, default=[0.0, 0.02],
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.host_loop:
        return host_loop(args)
    if not args.db:
        p.error("--db is required")
    if not 2 <= args.hosts <= len(HOSTNAMES):
        p.error(f"--hosts: 2..{len(HOSTNAMES)}")
    report = run(args)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
