"""The sections of bench.py that run real processes against small databases: drain, enqueue,
latency, python and resources. (backlog, with its million-row tables, is bench_backlog.py.)"""

from __future__ import annotations

import json
import random
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_lib import (
    HERE,
    Backend,
    BenchError,
    Ctx,
    HwmSampler,
    SectionResult,
    drain_params,
    enqueue,
    has_exited,
    merge_samples,
    orphan_children,
    paired_ratios,
    param_text,
    percentile,
    reap_orphans,
    require_done,
    run_rotated,
    steady_rate,
)
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
            seconds, steady = drain_cronqueue(ctx, b, params)
            return {"tasks_per_s": n / seconds, "seconds": seconds, "steady_per_s": steady}
        limit = variant == "limit"
        seconds = drain_limit(ctx, args_file) if limit else drain_naive(ctx, b, params)
        return {"tasks_per_s": n / seconds, "seconds": seconds}

    variants = [(b, v) for b in ctx.backends for v in ("cronqueue", "limit", "naive")]
    samples = run_rotated(ctx, "drain", variants, measure)
    samples += paired_ratios(samples, "drain", "cronqueue", "limit", "tasks_per_s",
                             "cronqueue/limit")
    samples += paired_ratios(samples, "drain", "naive", "limit", "tasks_per_s", "naive/limit")
    true = ctx.task_dir / "true"
    return SectionResult(samples, notes=[
        f"{n:,} tasks, each a copy of /bin/true with a JSON param like "
        f"`{param_text(params[min(17, n - 1)])}`; backlog enqueued first (add_many).",
        "cronqueue: two `cronqueue work --total 2 --shard 0/1` burst processes launched at "
        "once, timed until both have exited (interpreter start-up included); afterwards "
        "every task must be done.",
        f"limit: `xargs -P 2 -n 1 -d '\\n' {shlex.quote(str(true))} < args` with the same "
        "params: the cost of the processes alone.",
        "naive: the PHP design ported literally (bench/naive_worker.py): a plain table, two "
        "autocommit workers, `SELECT ... WHERE status=0 AND id % 2 = i ORDER BY priority DESC, "
        "id LIMIT 1` → run → `UPDATE ... SET status=1`, one row at a time. SQLite with WAL and "
        "synchronous=FULL like cronqueue's own connections.",
        "Ratios are paired: computed per repetition (same backend, same round), then "
        "min/median/max. The target is judged on tasks/s from launch to exit (start-up "
        "included); 'steady' (cronqueue only, for information) = (tasks - 1) / (last - first "
        "finished_at): the rate once the shards are up.",
    ])


def write_drain_args(ctx: Ctx, params: list[dict[str, Any]]) -> Path:
    """The params, one JSON text a line: what the limit's xargs (and the floors section's
    spawn loop) read."""
    args_file = ctx.root / "drain-args.txt"
    args_file.write_text("".join(param_text(p) + "\n" for p in params))
    return args_file


def drain_cronqueue(ctx: Ctx, backend: Backend,
                    params: list[dict[str, object]]) -> tuple[float, float]:
    """Seconds from launch to both shards' exit, and the steady rate (for information)."""
    url = backend.fresh("drain")
    try:
        enqueue(ctx, url, [{"taskscript": "true", "param": p} for p in params])
        seconds, _ = ctx.run_shards(url, total=2)
        require_done(url, len(params), f"drain on {backend.kind}")
        steady = steady_rate(url)
    finally:
        backend.drop(url)
    return seconds, steady


def drain_limit(ctx: Ctx, args_file: Path) -> float:
    argv = ["xargs", "-P", "2", "-n", "1", "-d", "\n", str(ctx.task_dir / "true")]
    with open(args_file, "rb") as stdin:
        began = time.perf_counter()
        proc = ctx.procs.start(argv, name="xargs", stdin=stdin, cwd=ctx.root)
        ctx.procs.wait(proc)
    return time.perf_counter() - began


def drain_naive(ctx: Ctx, backend: Backend, params: list[dict[str, object]]) -> float:
    url = backend.fresh("naive")
    try:
        engine = create_engine(url)
        with engine.begin() as conn:
            if backend.kind == "sqlite":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.execute(text(NAIVE_DDL[backend.kind]))
            conn.execute(text("INSERT INTO naive (taskscript, param, status, priority) "
                              "VALUES ('true', :param, 0, 0)"),
                         [{"param": param_text(p)} for p in params])
        env = ctx.env(NAIVE_DB=json.dumps(backend.naive_target(url)),
                      NAIVE_TASK_DIR=str(ctx.task_dir))
        began = time.perf_counter()
        procs = [ctx.procs.start([sys.executable, str(HERE / "naive_worker.py"), str(i), "2"],
                                 name=f"naive{i}", env=env, cwd=ctx.root) for i in range(2)]
        for proc in procs:
            ctx.procs.wait(proc)
        seconds = time.perf_counter() - began
        with engine.connect() as conn:
            done = conn.execute(text("SELECT COUNT(*) FROM naive WHERE status = 1")).scalar()
        engine.dispose()
        if done != len(params):
            raise BenchError(f"naive queue on {backend.kind}: {done} of {len(params)} done")
    finally:
        backend.drop(url)
    return seconds


# -- enqueue ----------------------------------------------------------------------------------

def enqueue_section(ctx: Ctx) -> SectionResult:
    calls, rows = ctx.sizes.add_calls, ctx.sizes.add_many_rows

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        b = ctx.backends[backend]
        url = b.fresh("enqueue")
        try:
            with ctx.queue(url) as q:
                q.init_db()
                q.add("true", {"warm-up": True})  # connects; not timed
                if variant == "add":
                    began = time.perf_counter()
                    for i in range(calls):
                        q.add("true", {"to": f"user{i}@example.com", "n": i})
                    return {"calls_per_s": calls / (time.perf_counter() - began)}
                items = [{"taskscript": "true", "param": p} for p in drain_params(rows)]
                began = time.perf_counter()
                ids = q.add_many(items)
                seconds = time.perf_counter() - began
                if len(ids) != rows:
                    raise BenchError(f"add_many returned {len(ids)} ids for {rows} rows")
                return {"rows_per_s": rows / seconds}
        finally:
            b.drop(url)

    variants = [(b, v) for b in ctx.backends for v in ("add", "add_many")]
    samples = run_rotated(ctx, "enqueue", variants, measure)
    return SectionResult(samples, notes=[
        f"add: {calls:,} `Queue.add()` calls in this process on one Queue, each its own "
        "transaction (one warm-up call first, not timed).",
        f"add_many: {rows:,} rows in ONE call (one transaction); building the list of dicts "
        "is not timed, validation inside add_many is.",
        "A fresh database (tables created by init_db) for every variant and repetition.",
    ])


# -- latency ----------------------------------------------------------------------------------

def latency(ctx: Ctx) -> SectionResult:
    n = ctx.sizes.latency_tasks
    starts = ctx.root / "latency-starts.txt"
    script = ctx.task_dir / "latency.sh"
    script.write_text("#!/bin/sh\n"
                      f'echo "$CRONQUEUE_TASK_ID $(date +%s.%N)" >> {shlex.quote(str(starts))}\n')
    script.chmod(0o755)

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        return latency_run(ctx, ctx.backends[backend], starts, random.Random(rep))

    samples = run_rotated(ctx, "latency", [(b, "one shard") for b in ctx.backends], measure)
    return SectionResult(samples, notes=[
        f"One shard `cronqueue work --max-seconds ...` polls an empty queue (default "
        f"worker.poll_interval); once it has registered, a producer in this process adds {n} "
        "tasks with `Queue.add()`, 20-150 ms apart (uniform random, seeded per repetition).",
        "Latency = the time the task script recorded at its start (`date +%s.%N`, keyed by "
        "CRONQUEUE_TASK_ID) - the producer's clock just before add(). p50/p99 (nearest rank) "
        "per repetition; the shard is stopped with SIGTERM once every task has started.",
    ])


def latency_run(ctx: Ctx, backend: Backend, starts: Path,
                rng: random.Random) -> dict[str, float]:
    n = ctx.sizes.latency_tasks
    url = backend.fresh("latency")
    starts.write_text("")
    try:
        with ctx.queue(url) as q:
            q.init_db()
            budget = n * 0.2 + 120
            shard = ctx.start_shards(url, 1, "--max-seconds", str(budget))[0]
            _wait_until(lambda: bool(q.workers()) or has_exited(shard), 60,
                        "the latency shard to register")
            if has_exited(shard):
                ctx.procs.wait(shard)
                raise BenchError("the latency shard exited before the first task")
            enqueued: dict[int, float] = {}
            for i in range(n):
                time.sleep(rng.uniform(0.02, 0.15))
                at = time.time()
                enqueued[q.add("latency.sh", {"n": i})] = at
            _wait_until(lambda: len(starts.read_text().splitlines()) >= n, 120,
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


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


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
        env = {"CRONQUEUE_PYTHON_FORK": "1"} if variant == "fork" else {}
        url = b.fresh("python")
        try:
            enqueue(ctx, url, items)
            seconds, finished = ctx.run_shards(url, total=2, env=env)
            require_done(url, n, f"python ({variant}) on {backend}")
            steady = steady_rate(url)
        finally:
            b.drop(url)
        seen[f"{backend} {variant}"] = probe.read_text() if probe.exists() else "?"
        # The shards' rusage includes what they reaped: the tasks, or the fork server (which
        # reaped the tasks it forked).
        cpu = sum(f.cpu_s for f in finished)
        faults = sum(int(f.rusage.ru_minflt) for f in finished)
        return {"tasks_per_s": n / seconds, "steady_per_s": steady,
                "cpu_ms_per_task": cpu / n * 1e3, "faults_per_task": faults / n}

    variants = [(b, v) for b in ctx.backends for v in ("exec", "fork")]
    samples = run_rotated(ctx, "python", variants, measure)
    samples += merge_samples(
        paired_ratios(samples, "python", "fork", "exec", "tasks_per_s", "fork/exec")
        + paired_ratios(samples, "python", "fork", "exec", "steady_per_s", "fork/exec",
                        key="steady_ratio"))
    active = all(seen.get(f"{b} fork") == "fork" for b in ctx.backends)
    probes = ", ".join(f"{k}: ran as {v}" for k, v in sorted(seen.items()))
    notes = [
        f"{n} tasks of a trivial non-executable `pytask.py` (`json.loads(sys.argv[1])`), "
        "drained by two shards: exec path (a fresh interpreter per task) vs "
        "CRONQUEUE_PYTHON_FORK=1 in the shards' environment.",
        f"Probe (the first task reports how it ran): {probes}.",
        "CPU ms/task and minor page faults/task: user+sys and ru_minflt of the two shards "
        "with everything they reaped (the tasks; on the fork path the fork server and, through "
        "it, the tasks), divided by the tasks; the shards' start-up is included.",
        "tasks/s: launch to exit of both shards. steady: (tasks - 1) / (last - first "
        "finished_at), the rate once the shards (and a fork server) are up. The target is "
        "judged on the steady ratio: the shards' interpreter start-up (~1 s, the same for "
        "both variants) would otherwise cap the ratio measurable with this many tasks far "
        "below 10x, whatever the fast path does.",
    ]
    if not active:
        notes.append("**The fast path is not available in this cronqueue**: with "
                     "CRONQUEUE_PYTHON_FORK=1 the tasks still ran in fresh interpreters, so "
                     "'fork' measures the exec path twice.")
    return SectionResult(samples, notes=notes, labels={"fork": "fork (CRONQUEUE_PYTHON_FORK=1)"},
                         flags={"fork_active": active, "tasks": n})


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
        return shard_usage(ctx, b) if variant == "shard" else mission_usage(ctx, b, rep)

    variants = [(b, v) for b in ctx.backends for v in ("shard", "mission")]
    samples = run_rotated(ctx, "resources", variants, measure)
    return SectionResult(samples, notes=[
        f"shard: the drain workload ({ctx.sizes.drain:,} /bin/true tasks, two shards); each "
        "shard reaped with os.wait4: peak RSS = the larger ru_maxrss of the two (KiB / 1024, "
        "so the 60 MB target is read as MiB). ru_maxrss is the largest of the shard and every "
        "descendant it reaped, and — a kernel detail — a process started by vfork/posix_spawn "
        "inherits its parent's high-water mark until exec: the shards, spawned from this "
        "(large) benchmark process, report its RSS there. The target is therefore judged on "
        "'own VmHWM', the shards' own peak read from /proc every 20 ms. CPU = "
        "user+sys of both shards *including their task processes* (wait4 counts reaped "
        "children), per task.",
        f"mission: `cronqueue mission --config F --now T` ticks on an empty queue, T one "
        f"simulated minute apart, so that each tick fires both entries (add: enqueues one "
        f"task; do_queue total=2: launches two detached shards), rescues and purges. CPU = "
        f"user+sys of the mission process alone (it never waits for the shards it launches, "
        f"so their time is not in its rusage); median of {ctx.sizes.mission_ticks} ticks per "
        f"repetition. This process is a child subreaper: the detached shards are reaped "
        f"before the next tick.",
    ])


def shard_usage(ctx: Ctx, backend: Backend) -> dict[str, float]:
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
    return {"rss_mb": max(f.maxrss_kib for f in finished) / 1024,
            "own_hwm_mb": max(own.values()) / 1024,
            "cpu_ms_per_task": sum(f.cpu_s for f in finished) / n * 1000}


def mission_usage(ctx: Ctx, backend: Backend, rep: int) -> dict[str, float]:
    url = backend.fresh("mission")
    config = ctx.root / "mission.toml"
    config.write_text(MISSION_CONFIG.format(db=json.dumps(url),
                                            tasks=json.dumps(str(ctx.task_dir)),
                                            logs=json.dumps(str(ctx.log_dir))))
    # Simulated minutes in the past: `mission --now` more than a minute ahead of the clock is
    # refused (it would record runs that real ticks then skip).
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(
        minutes=ctx.sizes.mission_ticks + 2)
    cpu, wall = [], []
    try:
        with ctx.queue(url) as q:
            q.init_db()
        for tick in range(ctx.sizes.mission_ticks):
            now = base + timedelta(minutes=tick)
            argv = [sys.executable, "-m", "cronqueue", "mission", "--config", str(config),
                    "--now", now.isoformat(), "--log-level", "warning"]
            proc = ctx.procs.start(argv, name="mission", env=ctx.env(), cwd=ctx.root)
            done = ctx.procs.wait(proc)
            cpu.append(done.cpu_s)
            wall.append(done.seconds)
            launched = len(orphan_children(set(ctx.procs.live)))
            reap_orphans(set(ctx.procs.live), timeout=ctx.sizes.process_timeout)
            if tick == 0 and launched == 0:
                ctx.log("resources: the first mission tick left no shard to reap "
                        "(already exited, or not launched)")
        require_done(url, ctx.sizes.mission_ticks, f"mission ticks on {backend.kind}")
    finally:
        backend.drop(url)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}
