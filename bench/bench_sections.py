"""The sections of bench.py that run real processes against small databases: drain, enqueue,
latency, python and resources (backlog, with its million-row tables, is bench_backlog.py).
What each measures, and how, is in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pymysql
from bench_lib import (
    HERE,
    Backend,
    Ctx,
    SectionResult,
    drain_params,
    enqueue,
    merge_samples,
    paired_ratios,
    param_text,
    require_done,
    run_rotated,
    run_times,
    steady_rate,
)
from common import (
    BenchError,
    Finished,
    HwmSampler,
    children_of,
    clean_env,
    has_exited,
    machine_cpu_s,
    past_minute,
    percentile,
    reap_orphans,
    toml_str,
    wait_until,
    write_script,
)
from driver_clock import DriverClock
from sqlalchemy import create_engine, text

# -- drain ------------------------------------------------------------------------------------

NAIVE_DDL = {
    "sqlite": "CREATE TABLE naive (id INTEGER PRIMARY KEY AUTOINCREMENT, taskscript TEXT NOT "
              "NULL, param TEXT NOT NULL, status INTEGER NOT NULL DEFAULT 0, priority INTEGER "
              "NOT NULL DEFAULT 0)",
    "mariadb": "CREATE TABLE naive (id BIGINT AUTO_INCREMENT PRIMARY KEY, taskscript "
               "VARCHAR(255) NOT NULL, param TEXT NOT NULL, status SMALLINT NOT NULL DEFAULT 0, "
               "priority INT NOT NULL DEFAULT 0) ENGINE=InnoDB",
}


def drain(ctx: Ctx) -> SectionResult:
    n = ctx.sizes.drain
    params = drain_params(n)
    args_file = write_drain_args(ctx, params)

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        b = ctx.backends[backend]
        if variant == "cronqueue":
            finished, cpu, extra = drain_cronqueue(ctx, b, params)
        elif variant == "limit":
            finished, cpu, extra = drain_limit(ctx, args_file)
        else:
            finished, cpu, extra = drain_naive(ctx, b, params)
        seconds = max(f.seconds for f in finished)
        return {"tasks_per_s": n / seconds, "seconds": seconds, **extra,
                "cpu_ms_per_task": sum(f.cpu_s for f in finished) / n * 1e3,
                "machine_cpu_ms_per_task": cpu / n * 1e3}

    variants = [(b, v) for b in ctx.backends for v in ("cronqueue", "limit", "naive")]
    samples = run_rotated(ctx, "drain", variants, measure)
    samples += paired_ratios(samples, "drain", "cronqueue", "limit", "tasks_per_s",
                             "cronqueue/limit")
    samples += paired_ratios(samples, "drain", "naive", "limit", "tasks_per_s", "naive/limit")
    return SectionResult(samples, labels={"limit": "limit (xargs -P 2)",
                                          "naive": "naive table queue"})


def write_drain_args(ctx: Ctx, params: list[dict[str, Any]]) -> Path:
    """The params, one JSON text a line: what xargs (and the floors' spawn loop) read."""
    args_file = ctx.root / "drain-args.txt"
    args_file.write_text("".join(param_text(p) + "\n" for p in params))
    return args_file


Drained = tuple[list[Finished], float, dict[str, float]]  # processes, machine CPU s, extra


def drain_cronqueue(ctx: Ctx, backend: Backend, params: list[dict[str, Any]]) -> Drained:
    """Two burst shards; also the steady rate and the first task's start after the launch."""
    url = backend.fresh("drain")
    try:
        enqueue(ctx, url, [{"taskscript": "true", "param": p} for p in params])
        cpu, launched = machine_cpu_s(), time.time()
        _, finished = ctx.run_shards(url, total=2)
        cpu = machine_cpu_s() - cpu
        require_done(url, len(params), f"drain on {backend.kind}")
        n, started, first, last = run_times(url)
    finally:
        backend.drop(url)
    return finished, cpu, {"steady_per_s": steady_rate(n, first, last),
                           "first_task_s": started.timestamp() - launched}


def drain_limit(ctx: Ctx, args_file: Path) -> Drained:
    argv = ["xargs", "-P", "2", "-n", "1", "-d", "\n", str(ctx.task_dir / "true")]
    with open(args_file, "rb") as stdin:
        cpu = machine_cpu_s()
        finished = ctx.procs.wait(ctx.procs.start(argv, name="xargs", stdin=stdin, cwd=ctx.root))
        return [finished], machine_cpu_s() - cpu, {}


def drain_naive(ctx: Ctx, backend: Backend, params: list[dict[str, Any]]) -> Drained:
    """The naive table queue (naive_worker.py): two workers, one row at a time."""
    url = backend.fresh("naive")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if backend.kind == "sqlite":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.execute(text(NAIVE_DDL[backend.kind]))
            conn.execute(text("INSERT INTO naive (taskscript, param) VALUES ('true', :param)"),
                         [{"param": param_text(p)} for p in params])
        env = clean_env(NAIVE_DB=json.dumps(backend.driver_params(url)),
                        NAIVE_TASK_DIR=str(ctx.task_dir))
        cpu = machine_cpu_s()
        procs = [ctx.procs.start([sys.executable, str(HERE / "naive_worker.py"), str(i), "2"],
                                 name=f"naive{i}", env=env, cwd=ctx.root) for i in range(2)]
        finished = [ctx.procs.wait(proc) for proc in procs]
        cpu = machine_cpu_s() - cpu
        with engine.connect() as conn:
            done = conn.execute(text("SELECT COUNT(*) FROM naive WHERE status = 1")).scalar()
        if done != len(params):
            raise BenchError(f"naive queue on {backend.kind}: {done} of {len(params)} done")
    finally:
        engine.dispose()
        backend.drop(url)
    return finished, cpu, {}


# -- enqueue ----------------------------------------------------------------------------------

RAW_INSERT = "INSERT INTO queue (taskscript, param) VALUES ({mark}, {mark})"


def enqueue_section(ctx: Ctx) -> SectionResult:
    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        b = ctx.backends[backend]
        url = b.fresh("enqueue")
        try:
            with ctx.queue(url) as q:
                q.init_db()
                if variant in ("add", "add_many"):
                    q.add("true", {"warm-up": True})  # connects; not timed
                    return (queue_add(q, ctx.sizes.add_calls) if variant == "add"
                            else queue_add_many(q, ctx.sizes.add_many_rows))
            return raw_enqueue(b, url, ctx.sizes.add_calls if variant == "add raw"
                               else ctx.sizes.add_many_rows, bulk=variant == "add_many raw")
        finally:
            b.drop(url)

    variants = [(b, v) for b in ctx.backends
                for v in ("add", "add raw", "add_many", "add_many raw")]
    samples = run_rotated(ctx, "enqueue", variants, measure)
    samples += paired_ratios(samples, "enqueue", "add", "add raw", "calls_per_s", "add/raw")
    samples += paired_ratios(samples, "enqueue", "add_many", "add_many raw", "rows_per_s",
                             "add_many/raw")
    return SectionResult(samples, labels={
        "add raw": "add raw (bare driver: INSERT + COMMIT per call)",
        "add_many raw": "add_many raw (bare driver: executemany + one COMMIT)"})


def queue_add(q: Any, calls: int) -> dict[str, float]:
    with DriverClock(q.engine) as clock:
        began = time.perf_counter()
        for i in range(calls):
            q.add("true", {"to": f"user{i}@example.com", "n": i})
        seconds = time.perf_counter() - began
    return {"calls_per_s": calls / seconds, "driver_ms_per_call": clock.seconds / calls * 1e3,
            "client_ms_per_call": (seconds - clock.seconds) / calls * 1e3,
            "statements_per_call": clock.count / calls}


def queue_add_many(q: Any, rows: int) -> dict[str, float]:
    items = [{"taskscript": "true", "param": p} for p in drain_params(rows)]
    with DriverClock(q.engine) as clock:
        began = time.perf_counter()
        ids = q.add_many(items)
        seconds = time.perf_counter() - began
    if len(ids) != rows:
        raise BenchError(f"add_many returned {len(ids)} ids for {rows} rows")
    return {"rows_per_s": rows / seconds, "driver_us_per_row": clock.seconds / rows * 1e6,
            "client_us_per_row": (seconds - clock.seconds) / rows * 1e6,
            "statements": clock.count}


def raw_enqueue(backend: Backend, url: str, n: int, *, bulk: bool) -> dict[str, float]:
    """The bare driver's floor under add() (one-row INSERT + COMMIT per call) or add_many()
    (every row in one executemany, one COMMIT), into the tables init_db created."""
    params = [("true", param_text(p)) for p in drain_params(n)]
    spec = backend.driver_params(url)
    if spec["backend"] == "sqlite":  # cronqueue's connection set-up: WAL, synchronous=FULL
        conn: Any = sqlite3.connect(spec["path"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        insert, begin = RAW_INSERT.format(mark="?"), "BEGIN IMMEDIATE"
    else:
        conn = pymysql.connect(host=spec["host"], port=int(spec["port"]), user=spec["user"],
                               password=spec["password"], database=spec["database"],
                               charset="utf8mb4", autocommit=False)
        insert, begin = RAW_INSERT.format(mark="%s"), None
    try:
        cur = conn.cursor()

        def transaction(rows: Sequence[tuple[str, str]]) -> None:
            if begin:
                cur.execute(begin)
            cur.executemany(insert, rows)
            conn.commit()

        transaction([("true", '{"warm-up":true}')])
        began = time.perf_counter()
        if bulk:
            transaction(params)
        else:
            for row in params:
                transaction([row])
        seconds = time.perf_counter() - began
        cur.execute("SELECT COUNT(*) FROM queue")
        count = cur.fetchone()[0]
    finally:
        conn.close()
    if count != n + 1:
        raise BenchError(f"raw inserts on {backend.kind}: {count} rows for {n + 1}")
    return {"rows_per_s": n / seconds} if bulk else {"calls_per_s": n / seconds}


# -- latency ----------------------------------------------------------------------------------

def latency(ctx: Ctx) -> SectionResult:
    starts = ctx.root / "latency-starts.txt"
    write_script(ctx.task_dir / "latency.sh", "#!/bin/sh\necho \"$CRONQUEUE_TASK_ID "
                 f"$(date +%s.%N)\" >> {shlex.quote(str(starts))}\n")

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        return latency_run(ctx, ctx.backends[backend], starts, random.Random(rep))

    return SectionResult(run_rotated(ctx, "latency", [(b, "one shard") for b in ctx.backends],
                                     measure))


def latency_run(ctx: Ctx, backend: Backend, starts: Path,
                rng: random.Random) -> dict[str, float]:
    """One polling shard; tasks added 20-150 ms apart; enqueue-to-start of each."""
    n = ctx.sizes.latency_tasks
    url = backend.fresh("latency")
    starts.write_text("")
    try:
        with ctx.queue(url) as q:
            q.init_db()
            shard = ctx.start_shards(url, 1, "--max-seconds", str(n * 0.2 + 120))[0]
            wait_until(lambda: bool(q.workers()) or has_exited(shard), 60,
                       "the latency shard to register")
            if has_exited(shard):
                ctx.procs.wait(shard)
                raise BenchError("the latency shard exited before the first task")
            enqueued: dict[int, float] = {}
            for i in range(n):
                time.sleep(rng.uniform(0.02, 0.15))
                at = time.time()
                enqueued[q.add("latency.sh", {"n": i})] = at
            wait_until(lambda: len(starts.read_text().splitlines()) >= n, 120,
                       "every latency task to start")
            ctx.procs.signal(shard, signal.SIGTERM)
            ctx.procs.wait(shard)
        require_done(url, n, f"latency on {backend.kind}")
    finally:
        backend.drop(url)
    started = {int(tid): float(t) for tid, t in
               (line.split() for line in starts.read_text().splitlines())}
    lat = [started[tid] - at for tid, at in enqueued.items()]
    return {"p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99), "max_s": max(lat)}


# -- python -----------------------------------------------------------------------------------

def python_section(ctx: Ctx) -> SectionResult:
    n = ctx.sizes.python_tasks
    seen: dict[str, str] = {}

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        b = ctx.backends[backend]
        probe = ctx.root / f"probe-{backend}-{variant}.txt"
        probe.unlink(missing_ok=True)
        items = [{"taskscript": "pytask.py", "param": {"n": i, "probe": str(probe)} if i == 0
                  else {"n": i}} for i in range(n)]
        url = b.fresh("python")
        try:
            enqueue(ctx, url, items)
            seconds, finished = ctx.run_shards(
                url, total=2, env={"CRONQUEUE_PYTHON_FORK": "1"} if variant == "fork" else {})
            require_done(url, n, f"python ({variant}) on {backend}")
            _, _, first, last = run_times(url)
        finally:
            b.drop(url)
        seen[f"{backend} {variant}"] = probe.read_text() if probe.exists() else "?"
        # The shards' rusage includes what they reaped: the tasks, or the fork server (which
        # reaped the tasks it forked).
        return {"tasks_per_s": n / seconds, "steady_per_s": steady_rate(n, first, last),
                "cpu_ms_per_task": sum(f.cpu_s for f in finished) / n * 1e3,
                "faults_per_task": sum(int(f.rusage.ru_minflt) for f in finished) / n}

    variants = [(b, v) for b in ctx.backends for v in ("exec", "fork")]
    samples = run_rotated(ctx, "python", variants, measure)
    samples += merge_samples(
        paired_ratios(samples, "python", "fork", "exec", "tasks_per_s", "fork/exec")
        + paired_ratios(samples, "python", "fork", "exec", "steady_per_s", "fork/exec",
                        key="steady_ratio"))
    active = all(seen.get(f"{b} fork") == "fork" for b in ctx.backends)
    return SectionResult(samples, labels={"fork": "fork (CRONQUEUE_PYTHON_FORK=1)"},
                         extras={"probe (how the first task ran)": ", ".join(
                             f"{k}: {v}" for k, v in sorted(seen.items()))},
                         flags={"fork_active": active})


# -- resources --------------------------------------------------------------------------------

MISSION_CONFIG = """\
db_url = {db}
task_dir = {tasks}
log_dir = {logs}

[[mission]]
name = "ping"
cron = "* * * * *"
add = {{ taskscript = "true", param = {{ n = 1 }} }}

[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = {{ total = 2 }}
"""


def resources(ctx: Ctx) -> SectionResult:
    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        b = ctx.backends[backend]
        return shard_usage(ctx, b) if variant == "shard" else mission_usage(ctx, b)

    variants = [(b, v) for b in ctx.backends for v in ("shard", "mission")]
    return SectionResult(run_rotated(ctx, "resources", variants, measure))


def shard_usage(ctx: Ctx, backend: Backend) -> dict[str, float]:
    """The drain workload; the shards' own peak RSS (sampled) and wait4's ru_maxrss."""
    n = ctx.sizes.drain
    url = backend.fresh("rss")
    try:
        enqueue(ctx, url, [{"taskscript": "true", "param": p} for p in drain_params(n)])
        shards = ctx.start_shards(url, 2)
        sampler = HwmSampler([s.pid for s in shards])
        try:
            finished = [ctx.procs.wait(s) for s in shards]
        finally:
            own = sampler.stop()
        require_done(url, n, f"resources drain on {backend.kind}")
    finally:
        backend.drop(url)
    return {"rss_mb": max(int(f.rusage.ru_maxrss) for f in finished) / 1024,
            "own_hwm_mb": max(own.values()) / 1024}


def mission_usage(ctx: Ctx, backend: Backend) -> dict[str, float]:
    """``cronqueue mission --now T`` ticks, T one simulated minute apart (each fires both
    entries); CPU of the mission process alone. Its detached shards are reaped here."""
    url = backend.fresh("mission")
    config = ctx.root / "mission.toml"
    config.write_text(MISSION_CONFIG.format(db=toml_str(url), tasks=toml_str(ctx.task_dir),
                                            logs=toml_str(ctx.log_dir)))
    base = past_minute(ctx.sizes.mission_ticks + 2)
    cpu, wall = [], []
    try:
        with ctx.queue(url) as q:
            q.init_db()
        for tick in range(ctx.sizes.mission_ticks):
            argv = [sys.executable, "-m", "cronqueue", "mission", "--config", str(config),
                    "--now", (base + timedelta(minutes=tick)).isoformat(),
                    "--log-level", "warning"]
            done = ctx.procs.wait(ctx.procs.start(argv, name="mission", env=clean_env(),
                                                  cwd=ctx.root))
            cpu.append(done.cpu_s)
            wall.append(done.seconds)
            if tick == 0 and not children_of_ours(ctx):
                ctx.log("resources: the first mission tick left no shard to reap")
            reap_orphans(set(ctx.procs.live), timeout=ctx.sizes.process_timeout)
        require_done(url, ctx.sizes.mission_ticks, f"mission ticks on {backend.kind}")
    finally:
        backend.drop(url)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}


def children_of_ours(ctx: Ctx) -> list[int]:
    return [p for p in children_of(os.getpid()) if p not in ctx.procs.live]
