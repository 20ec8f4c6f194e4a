"""The sections of bench.py that run real processes against small databases: enqueue,
latency, python and resources (drain and drain_big are bench_drain.py; backlog, with its
million-row tables, is bench_backlog.py).
What each measures, and how, is in docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import signal
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
from bench_lib import (
    Backend,
    Ctx,
    SectionResult,
    drain_params,
    enqueue,
    merge_samples,
    paired_ratios,
    param_text,
    reader,
    require_done,
    run_rotated,
    run_times,
    steady_rate,
)
from common import (
    BenchError,
    HwmSampler,
    children_of,
    clean_env,
    has_exited,
    past_minute,
    percentile,
    reap_orphans,
    sql_time,
    toml_str,
    wait_until,
    write_script,
)
from driver_clock import DbapiClock, statement_listeners
from sqlalchemy import text

# -- enqueue ----------------------------------------------------------------------------------

def enqueue_section(ctx: Ctx) -> SectionResult:
    """add() and add_many() as a user's Queue() runs them (an engine without statement
    listeners: add() takes its direct path), each paired with the bare driver inserting the
    same row(s); the driver/server share of each in a pass of its own (``split``), timed
    inside the DBAPI (driver_clock.py: an engine-event clock would switch add() to its general
    path, and its wrappers would slow the rate being compared)."""
    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        b = ctx.backends[backend]
        url = b.fresh("enqueue")
        try:
            call, _, kind = variant.partition(" ")
            if kind == "raw":
                with ctx.queue(url) as q:
                    q.init_db()
                    warm = q.add("true", {"to": "user0@example.com", "n": 0})
                return raw_enqueue(b, url, template_row(url, warm),
                                   ctx.sizes.add_calls if call == "add"
                                   else ctx.sizes.add_many_rows, bulk=call == "add_many")
            clock = DbapiClock() if kind == "split" else None
            with ctx.queue(url) as q:
                if clock is not None:
                    clock.attach(q.engine)  # before its first connection
                try:
                    q.init_db()
                    q.add("true", {"to": "user0@example.com", "n": 0})  # connects; untimed
                    if call == "add":
                        return queue_add(q, ctx.sizes.add_calls, clock)
                    return queue_add_many(q, ctx.sizes.add_many_rows, clock)
                finally:
                    if clock is not None:
                        clock.detach()
        finally:
            b.drop(url)

    variants = [(b, v) for b in ctx.backends for v in ENQUEUE_VARIANTS]
    samples = run_rotated(ctx, "enqueue", variants, measure)
    samples += paired_ratios(samples, "enqueue", "add", "add raw", "calls_per_s", "add/raw")
    samples += paired_ratios(samples, "enqueue", "add_many", "add_many raw", "rows_per_s",
                             "add_many/raw")
    return SectionResult(samples, labels={
        "add": "add() (no listeners: its direct path, as a user's Queue)",
        "add raw": "add raw (bare driver, the same row: INSERT + COMMIT per call)",
        "add split": "add() driver/client split (a separate pass, DBAPI-timed)",
        "add_many": "add_many() (no listeners, as a user's Queue)",
        "add_many raw": "add_many raw (bare driver, the same rows: executemany, one COMMIT)",
        "add_many split": "add_many() driver/client split (a separate pass, DBAPI-timed)"})


ENQUEUE_VARIANTS = ("add", "add raw", "add split", "add_many", "add_many raw", "add_many split")


def _no_listeners(q: Any) -> None:
    if statement_listeners(q.engine):
        raise BenchError("the enqueue engine has statement listeners or echo: add() would "
                         "be timed on its general path, not a user's")


def queue_add(q: Any, calls: int, clock: DbapiClock | None) -> dict[str, float]:
    """``calls`` add() calls: their rate (no clock), or where their time goes (``clock``)."""
    _no_listeners(q)
    with clock or contextlib.nullcontext():
        began = time.perf_counter()
        for i in range(calls):
            q.add("true", {"to": f"user{i}@example.com", "n": i})
        seconds = time.perf_counter() - began
    if clock is None:
        return {"calls_per_s": calls / seconds}
    return {"driver_ms_per_call": clock.seconds / calls * 1e3,
            "client_ms_per_call": (seconds - clock.seconds) / calls * 1e3,
            "driver_share": clock.seconds / seconds,
            "statements_per_call": clock.count / calls, "commits_per_call": clock.commits / calls}


def queue_add_many(q: Any, rows: int, clock: DbapiClock | None) -> dict[str, float]:
    """One add_many() of ``rows`` rows (the list built before the clock starts)."""
    _no_listeners(q)
    items = [{"taskscript": "true", "param": p} for p in drain_params(rows)]
    with clock or contextlib.nullcontext():
        began = time.perf_counter()
        ids = q.add_many(items)
        seconds = time.perf_counter() - began
    if len(ids) != rows:
        raise BenchError(f"add_many returned {len(ids)} ids for {rows} rows")
    if clock is None:
        return {"rows_per_s": rows / seconds}
    return {"driver_us_per_row": clock.seconds / rows * 1e6,
            "client_us_per_row": (seconds - clock.seconds) / rows * 1e6,
            "driver_share": clock.seconds / seconds, "statements": clock.count}


_SQL_TIME = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?$")


def template_row(url: str, task_id: int) -> dict[str, Any]:
    """The row add() wrote (read back): every column but ``id`` that is not NULL, with its
    value. The bare-driver floors insert this row (its ``param`` and times per row)."""
    engine = reader(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM queue WHERE id = :id"),
                               {"id": task_id}).mappings().one()
    finally:
        engine.dispose()
    return {k: v for k, v in row.items() if k != "id" and v is not None}


def raw_rows(template: dict[str, Any], n: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    """``n`` rows like ``template``: the drain params in ``param``, the time columns now (a
    naive UTC datetime where the driver gave one, else the text SQLite stores)."""
    columns = list(template)
    times = {c for c, v in template.items()
             if isinstance(v, datetime) or (isinstance(v, str) and _SQL_TIME.match(v))}
    rows = []
    for p in drain_params(n):
        now = datetime.now(UTC)
        values = {c: (now.replace(tzinfo=None) if isinstance(v, datetime) else sql_time(now))
                  if c in times else v for c, v in template.items()}
        values["param"] = param_text(p)
        rows.append(tuple(values[c] for c in columns))
    return columns, rows


def raw_enqueue(backend: Backend, url: str, template: dict[str, Any], n: int, *,
                bulk: bool) -> dict[str, float]:
    """The bare driver's floor under add() (the same row as add() writes, a one-row INSERT +
    COMMIT per call) or add_many() (the same rows in one executemany, one COMMIT; PyMySQL
    folds it into multi-row INSERTs), into the tables init_db created, with cronqueue's
    connection settings (SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE; MariaDB: autocommit
    off, COMMIT). The rows are built (times taken) inside the timed loop for add(), before it
    for add_many() (as add_many's caller builds its list before the call)."""
    spec = backend.driver_params(url)
    if spec["backend"] == "sqlite":
        conn: Any = sqlite3.connect(spec["path"], timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        mark, begin = "?", "BEGIN IMMEDIATE"
    else:
        # Connection costs are outside the timed loop on both sides (here the connect and a
        # warm-up transaction; add()'s warm-up call opens cronqueue's pooled connection), so
        # cronqueue's shared TLS context (pymysql_tls.py: no CA bundle loaded per connection,
        # ~40 ms CPU saved per connect here) does not affect these floors: it is a cost per
        # connection, and TLS itself, when the server offers it, is negotiated alike by both
        # (PyMySQL's preferred mode, no TLS option given on either side).
        conn = pymysql.connect(host=spec["host"], port=int(spec["port"]), user=spec["user"],
                               password=spec["password"], database=spec["database"],
                               charset="utf8mb4", autocommit=False)
        mark, begin = "%s", None
    columns = list(template)
    insert = (f"INSERT INTO queue ({', '.join(columns)}) "
              f"VALUES ({', '.join([mark] * len(columns))})")
    try:
        cur = conn.cursor()

        def transaction(rows: Sequence[tuple[Any, ...]]) -> None:
            if begin:
                cur.execute(begin)
            cur.executemany(insert, rows)
            conn.commit()

        transaction(raw_rows(template, 1)[1])  # warm-up
        if bulk:
            rows = raw_rows(template, n)[1]
            began = time.perf_counter()
            transaction(rows)
        else:
            began = time.perf_counter()
            for _ in range(n):
                transaction(raw_rows(template, 1)[1])
        seconds = time.perf_counter() - began
        cur.execute("SELECT COUNT(*) FROM queue")
        count = cur.fetchone()[0]
    finally:
        conn.close()
    if count != n + 2:  # add()'s row and the warm-up
        raise BenchError(f"raw inserts on {backend.kind}: {count} rows for {n + 2}")
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
