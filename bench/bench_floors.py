"""The floors section of bench.py: what the missed targets are up against, measured in the same
run (interleaved with the same rotation as every section), and the "what blocks it" lines the
report prints for each missed target, derived from those floors.

Floors, and the target each one bounds:

* interpreter start-up CPU (``python -c pass``, ``import sqlalchemy``, ``import cronqueue.cli``):
  drain (every shard starts an interpreter) and the mission tick (it cannot cost less than its
  imports);
* a spawn loop: two Python processes running ``subprocess.run([task, param])`` over the drain
  params, no queue, against xargs -P 2 in the same repetition: drain;
* one-row INSERT + COMMIT with the bare driver (PyMySQL; sqlite3 for information): add();
* add_many split in two: the server (+ driver) executing the very JSON_TABLE statements
  add_many sends, and the client (validation + JSON encoding: add_many with the database calls
  stubbed out): add_many;
* a fork whose child runs the trivial task's code and _exits, vs
  ``subprocess.run([python, "-c", "pass"])``: the Python fast path.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pymysql
from bench_lib import (
    HERE,
    NO_DB,
    Backend,
    BenchError,
    Ctx,
    SectionResult,
    drain_params,
    paired_ratios,
    run_rotated,
)
from bench_report import TARGETS, Target, fmt
from bench_sections import drain_limit, write_drain_args
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

INTERPRETERS = {
    "pass": "pass",
    "sqlalchemy": "import sqlalchemy",
    "cli": "import cronqueue.cli.main",
}
MACHINE_VARIANTS = (*INTERPRETERS, "spawn", "limit", "fork", "exec")
LABELS = {
    "pass": "interpreter: python -c pass",
    "sqlalchemy": "interpreter: import sqlalchemy",
    "cli": "interpreter: import cronqueue.cli.main",
    "spawn": "spawn loop (2 Python processes, subprocess.run, no queue)",
    "limit": "limit (xargs -P 2, same params)",
    "spawn/limit": "spawn loop/limit",
    "fork": "fork + the trivial task's code + _exit + wait4",
    "exec": "subprocess.run([python, -c, pass])",
    "exec/fork": "exec/fork (ceiling of the fast path)",
    "add raw": "raw INSERT + COMMIT per call (bare driver)",
    "add_many": "add_many split: server+driver / client",
}
SQLITE_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
Results = dict[str, SectionResult]  # section name -> its result
RAW_INSERT = "INSERT INTO queue (taskscript, param) VALUES ({mark}, {mark})"


def floors(ctx: Ctx) -> SectionResult:
    s = ctx.sizes
    n = s.drain
    args_file = write_drain_args(ctx, drain_params(n))
    facts: dict[str, Any] = {}

    interpreter_runs: dict[int, dict[str, dict[str, float]]] = {}  # by repetition

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        if variant in INTERPRETERS:
            if rep not in interpreter_runs:  # all three at once, interleaved: comparable
                interpreter_runs[rep] = interpreters(ctx)
            return interpreter_runs[rep][variant]
        if variant in ("spawn", "limit"):
            seconds = spawn_loop(ctx, args_file) if variant == "spawn" else drain_limit(
                ctx, args_file)
            return {"tasks_per_s": n / seconds, "seconds": seconds}
        if variant in ("fork", "exec"):
            return process_floor(ctx, variant,
                                 s.fork_loops if variant == "fork" else s.exec_loops)
        b = ctx.backends[backend]
        if variant == "add raw":
            return raw_add(ctx, b, facts)
        if variant == "add_many":
            return add_many_split(ctx, b, facts)
        raise AssertionError(variant)

    variants = [(NO_DB, v) for v in MACHINE_VARIANTS]
    variants += [(b, "add raw") for b in ctx.backends]
    if "mariadb" in ctx.backends:
        variants.append(("mariadb", "add_many"))
    samples = run_rotated(ctx, "floors", variants, measure)
    samples += paired_ratios(samples, "floors", "spawn", "limit", "tasks_per_s", "spawn/limit")
    samples += paired_ratios(samples, "floors", "exec", "fork", "ms_per_task", "exec/fork")
    facts["drain_tasks"] = n
    return SectionResult(samples, notes=notes(ctx, facts), labels=LABELS, flags=facts)


def notes(ctx: Ctx, facts: dict[str, Any]) -> list[str]:
    s = ctx.sizes
    out = [
        f"Backend '{NO_DB}': measured without a database; the same for every backend.",
        f"interpreter: `{sys.executable} -c CODE`, {s.floor_runs} runs of each CODE per "
        "repetition, the three taking turns, median; "
        "CPU = user+sys of the process from os.wait4's rusage; wall = launch to reap.",
        f"spawn loop: two `bench/spawn_loop.py loop` processes launched at once, each running "
        f"`subprocess.run([true, line])` for every 2nd line of the drain section's args file "
        f"({s.drain:,} params), timed launch to exit of both (interpreter start-up included); "
        "limit: the drain section's xargs -P 2 on the same file in the same repetition; the "
        "ratio is paired per repetition.",
        f"fork: {s.fork_loops:,} x (os.fork(); the child runs the python section's trivial "
        f"task code, compiled once, then os._exit(0); the parent os.wait4()) in a fresh "
        f"stdlib-only Python process (`bench/spawn_loop.py fork`); exec: "
        f"{s.exec_loops:,} x `subprocess.run([sys.executable, '-c', 'pass'])` there "
        "(the exec path's floor per task); 3 untimed rounds first; ms per task, wall.",
        f"raw INSERT + COMMIT: {s.add_calls:,} calls (one untimed first) of "
        "`INSERT INTO queue (taskscript, param) VALUES (...)` each followed by COMMIT, on a "
        "fresh database whose tables Queue.init_db() created; params pre-encoded (not timed). "
        "MariaDB: PyMySQL, autocommit off. SQLite: stdlib sqlite3 with cronqueue's connection "
        "set-up (isolation_level None, journal_mode=WAL, synchronous=FULL, busy_timeout=30000, "
        "BEGIN IMMEDIATE per transaction).",
    ]
    server = facts.get("mariadb_server")
    if server:
        out.append("MariaDB server: " + ", ".join(f"{k}={v}" for k, v in server.items()) + ".")
    pragmas = facts.get("sqlite_pragmas")
    if pragmas:
        out.append("SQLite connection: " + ", ".join(f"{k}={v}" for k, v in pragmas.items())
                   + ".")
    if "mariadb" in ctx.backends:
        statements = facts.get("add_many_statements", "?")
        returning = " (with RETURNING)" if facts.get("add_many_returning") else \
            " (without RETURNING: ids from LAST_INSERT_ID)"
        out.append(
            f"add_many split ({s.add_many_rows:,} rows built as the enqueue section builds "
            f"them): client = `Queue.add_many(items, connection=stub)`, where the stub "
            f"records each JSON_TABLE statement and its JSON payload instead of sending it "
            f"(time inside the stub is taken out): spec validation, chunking and JSON "
            f"encoding, cronqueue's own code. server+driver = those {statements} recorded "
            f"statement(s){returning}, executed with raw PyMySQL on a fresh database and "
            f"committed, execute + commit timed (PyMySQL escapes the payload client-side: "
            f"that is in this figure). ceiling = 1e6 / (server µs/row + client µs/row): "
            f"add_many does the two one after the other.")
    return out


# -- measurements -----------------------------------------------------------------------------

def interpreters(ctx: Ctx) -> dict[str, dict[str, float]]:
    """Each of INTERPRETERS ``floor_runs`` times, in turn (pass, sqlalchemy, cli, pass, ...),
    so that drift of the machine hits them alike; the median CPU and wall time of each."""
    cpu: dict[str, list[float]] = {name: [] for name in INTERPRETERS}
    wall: dict[str, list[float]] = {name: [] for name in INTERPRETERS}
    for _ in range(ctx.sizes.floor_runs):
        for name, code in INTERPRETERS.items():
            proc = ctx.procs.start([sys.executable, "-c", code], name="interpreter",
                                   env=ctx.env(), cwd=ctx.root)
            done = ctx.procs.wait(proc)
            cpu[name].append(done.cpu_s)
            wall[name].append(done.seconds)
    return {name: {"startup_cpu_s": statistics.median(cpu[name]),
                   "startup_wall_s": statistics.median(wall[name])} for name in INTERPRETERS}


def spawn_loop(ctx: Ctx, args_file: Path) -> float:
    """Seconds from launch to exit of two spawn-loop processes (every 2nd line each)."""
    task = str(ctx.task_dir / "true")
    began = time.perf_counter()
    procs = [ctx.procs.start([sys.executable, str(HERE / "spawn_loop.py"), "loop",
                              str(args_file), task, str(i), "2"],
                             name=f"spawnloop{i}", env=ctx.env(), cwd=ctx.root)
             for i in range(2)]
    for proc in procs:
        ctx.procs.wait(proc)
    return time.perf_counter() - began


def process_floor(ctx: Ctx, step: str, rounds: int) -> dict[str, float]:
    """ms per task of ``spawn_loop.py fork|exec`` (in a fresh, small Python process), and the
    forked child's minor page faults."""
    out = ctx.root / f"floor-{step}.json"
    out.unlink(missing_ok=True)
    proc = ctx.procs.start([sys.executable, str(HERE / "spawn_loop.py"), step, str(rounds),
                            str(out)], name=f"floor-{step}", env=ctx.env(), cwd=ctx.root)
    ctx.procs.wait(proc)
    result = json.loads(out.read_text())
    floor = {"ms_per_task": float(result["ms_per_task"])}
    if step == "fork":
        floor["faults_per_task"] = float(result["faults_per_task"])
    return floor


def _mysql(backend: Backend, url: str) -> Any:
    t = backend.naive_target(url)
    return pymysql.connect(host=t["host"], port=int(t["port"]), user=t["user"],
                           password=t["password"], database=t["database"], charset="utf8mb4",
                           autocommit=False)


def raw_add(ctx: Ctx, backend: Backend, facts: dict[str, Any]) -> dict[str, float]:
    calls = ctx.sizes.add_calls
    params = [json.dumps({"to": f"user{i}@example.com", "n": i}, separators=(",", ":"))
              for i in range(calls)]
    url = backend.fresh("addraw")
    try:
        with ctx.queue(url) as q:
            q.init_db()
        if backend.kind == "sqlite":
            seconds = _raw_add_sqlite(str(make_url(url).database), params, facts)
        else:
            seconds = _raw_add_mysql(backend, url, params, facts)
    finally:
        backend.drop(url)
    return {"calls_per_s": calls / seconds}


def _raw_add_sqlite(path: str, params: Sequence[str], facts: dict[str, Any]) -> float:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # as cronqueue.db sets up
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        facts["sqlite_pragmas"] = {
            "journal_mode": mode,
            "synchronous": SQLITE_SYNCHRONOUS.get(sync, str(sync)),
            "busy_timeout": conn.execute("PRAGMA busy_timeout").fetchone()[0],
        }
        insert = RAW_INSERT.format(mark="?")

        def one(param: str) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(insert, ("true", param))
            conn.execute("COMMIT")

        one('{"warm-up":true}')
        began = time.perf_counter()
        for param in params:
            one(param)
        seconds = time.perf_counter() - began
        count = conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0]
    finally:
        conn.close()
    if count != len(params) + 1:
        raise BenchError(f"raw sqlite3 inserts: {count} rows for {len(params) + 1} calls")
    return seconds


def _raw_add_mysql(backend: Backend, url: str, params: Sequence[str],
                   facts: dict[str, Any]) -> float:
    conn = _mysql(backend, url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin, "
                        "@@innodb_flush_method")
            flush, sync_binlog, log_bin, method = cur.fetchone()
            conn.commit()
            facts["mariadb_server"] = {
                "innodb_flush_log_at_trx_commit": str(flush), "sync_binlog": str(sync_binlog),
                "log_bin": "ON" if str(log_bin) in ("1", "ON") else "OFF",
                "innodb_flush_method": str(method)}
            insert = RAW_INSERT.format(mark="%s")
            cur.execute(insert, ("true", '{"warm-up":true}'))
            conn.commit()
            began = time.perf_counter()
            for param in params:
                cur.execute(insert, ("true", param))
                conn.commit()
            seconds = time.perf_counter() - began
            cur.execute("SELECT COUNT(*) FROM queue")
            count = cur.fetchone()[0]
            conn.commit()
    finally:
        conn.close()
    if count != len(params) + 1:
        raise BenchError(f"raw PyMySQL inserts: {count} rows for {len(params) + 1} calls")
    return seconds


class _StubResult:
    """What add_many reads back from its JSON_TABLE INSERT: rowcount, lastrowid, or the ids."""

    def __init__(self, rows: int, first: int) -> None:
        self.rowcount = rows
        self.lastrowid = first

    def __iter__(self) -> Iterator[tuple[int]]:
        return iter([(self.lastrowid + k,) for k in range(self.rowcount)])


class _StubConnection:
    """Stands in for the connection add_many writes through (``Queue.add_many(connection=)``,
    taken as a Session: ``.connection()`` is itself). A statement whose parameters carry the
    JSON array of rows (the JSON_TABLE insert) is recorded, not executed; anything else goes
    to the real connection. Time spent in here is summed, so that the caller can take it out.
    """

    def __init__(self, real: Connection) -> None:
        self.real = real
        self.dialect = real.dialect
        self.recorded: list[tuple[Any, str]] = []
        self.elapsed = 0.0
        self._next_id = 1

    def connection(self) -> _StubConnection:
        return self

    def execute(self, statement: Any, parameters: Any = None, **kw: Any) -> Any:
        began = time.perf_counter()
        try:
            rows = parameters.get("rows") if isinstance(parameters, Mapping) else None
            if not isinstance(rows, str):
                return self.real.execute(statement, parameters, **kw)
            self.recorded.append((statement, rows))
            count = len(json.loads(rows))
            result = _StubResult(count, self._next_id)
            self._next_id += count
            return result
        finally:
            self.elapsed += time.perf_counter() - began


def add_many_split(ctx: Ctx, backend: Backend, facts: dict[str, Any]) -> dict[str, float]:
    """add_many's client side (cronqueue's code, database stubbed out), then the recorded
    statements on the server alone (raw PyMySQL): µs per row each, and their sum's ceiling."""
    rows = ctx.sizes.add_many_rows
    items = [{"taskscript": "true", "param": p} for p in drain_params(rows)]
    url = backend.fresh("addmanysplit")
    try:
        with ctx.queue(url) as q:
            q.init_db()
            with q.engine.connect() as real:
                real.exec_driver_sql("SELECT 1")  # connected: the dialect knows the server
                stub = _StubConnection(real)
                began = time.perf_counter()
                ids = q.add_many(items, connection=cast(Any, stub))
                client = time.perf_counter() - began - stub.elapsed
                real.rollback()
            dialect = q.engine.dialect
        if len(ids) != rows or not stub.recorded:
            raise BenchError(f"add_many with a stub connection: {len(ids)} ids, "
                             f"{len(stub.recorded)} JSON_TABLE statements recorded (this "
                             "server/cronqueue may not take the JSON_TABLE path)")
        compiled = {str(c): c for c in (st.compile(dialect=dialect) for st, _ in stub.recorded)}
        if len(compiled) != 1:
            raise BenchError(f"add_many sent {len(compiled)} different statements; expected one")
        statement, form = compiled.popitem()

        def bind(payload: str) -> Any:  # in the driver's paramstyle, as SQLAlchemy sends it
            params = {"rows": payload}
            if form.positional:
                return tuple(params[name] for name in form.positiontup or ())
            return params

        returning = "RETURNING" in statement.upper()
        facts["add_many_statements"] = len(stub.recorded)
        facts["add_many_returning"] = returning
        conn = _mysql(backend, url)
        inserted = 0
        try:
            with conn.cursor() as cur:
                began = time.perf_counter()
                for _, payload in stub.recorded:
                    cur.execute(statement, bind(payload))
                    inserted += len(cur.fetchall()) if returning else cur.rowcount
                conn.commit()
                server = time.perf_counter() - began
        finally:
            conn.close()
        if inserted != rows:
            raise BenchError(f"raw JSON_TABLE inserts: {inserted} rows for {rows}")
    finally:
        backend.drop(url)
    server_us, client_us = server / rows * 1e6, client / rows * 1e6
    return {"server_us_per_row": server_us, "client_us_per_row": client_us,
            "server_rows_per_s": rows / server, "client_rows_per_s": rows / client,
            "ceiling_rows_per_s": 1e6 / (server_us + client_us)}


# -- what blocks the missed targets -----------------------------------------------------------

def what_blocks(results: Results, judged: Sequence[dict[str, str]]
                ) -> list[dict[str, Any]]:
    """For each MISSED target of ``judged``: its gap (median vs bound) and the lines derived
    from the floors section's medians that bound it."""
    by_text = {t.text: t for t in TARGETS}
    out = []
    for row in judged:
        t = by_text.get(row["target"])
        if row["status"] != "MISSED" or t is None:
            continue
        backend = row["backend"]
        value = _median(results, t.section, backend, t.variant, t.metric)
        if value is None:
            continue
        explain = EXPLAINERS.get((t.section, t.variant, t.metric))
        lines = (explain(results, backend, t, value) if explain else
                 ["no floor for this target is measured by the floors section."])
        out.append({"target": t.text, "backend": backend, "gap": _gap(t, value),
                    "lines": lines})
    return out


def _median(results: Results, section: str, backend: str, variant: str,
            metric: str) -> float | None:
    result = results.get(section)
    if result is None:
        return None
    values = [s.metrics[metric] for s in result.samples
              if s.backend == backend and s.variant == variant and metric in s.metrics]
    return statistics.median(values) if values else None


def _gap(t: Target, value: float) -> str:
    shown, bound = fmt(t.metric, value), fmt(t.metric, t.bound)
    if t.op == ">=":
        return (f"measured {shown} (median), target ≥ {bound}: short by "
                f"{fmt(t.metric, t.bound - value)}, {value / t.bound:.0%} of the target.")
    return (f"measured {shown} (median), target ≤ {bound}: over by "
            f"{fmt(t.metric, value - t.bound)}, {value / t.bound:.0%} of the target.")


def _missing(*names: str) -> list[str]:
    return [f"floor not measured in this run: {', '.join(names)}."]


def _floor(results: Results, variant: str, metric: str,
           backend: str = NO_DB) -> float | None:
    return _median(results, "floors", backend, variant, metric)


def _drain(results: Results, backend: str, t: Target, ratio: float) -> list[str]:
    cq = _median(results, "drain", backend, "cronqueue", "seconds")
    limit = _median(results, "drain", backend, "limit", "seconds")
    p, a, k = (_floor(results, v, "startup_cpu_s") for v in ("pass", "sqlalchemy", "cli"))
    spawn, flimit = (_floor(results, v, "seconds") for v in ("spawn", "limit"))
    spawn_ratio = _floor(results, "spawn/limit", "ratio")
    if cq is None or limit is None:
        return _missing("drain seconds")
    if p is None or a is None or k is None or spawn is None or flimit is None \
            or spawn_ratio is None:
        return _missing("interpreter start-up / spawn loop")
    need = limit / t.bound
    imports = max(k - p, 0.0)
    floor_s = spawn + imports
    ceiling = flimit / floor_s
    lines = [
        f"time (drain section): cronqueue {cq:.2f} s, limit {limit:.2f} s; ≥ {t.bound:g}x "
        f"needs ≤ {need:.2f} s, {cq - need:.2f} s less.",
        f"start-up: importing SQLAlchemy costs {a - p:.3f} s CPU per shard process "
        f"(`import sqlalchemy` {a:.3f} s - `python -c pass` {p:.3f} s) = {(a - p) / limit:.0%} "
        f"of the limit's whole run; all of `import cronqueue.cli.main` ({k:.3f} s) costs "
        f"{imports:.3f} s beyond a bare interpreter = {imports / limit:.0%}.",
        f"Python's own subprocess.run loop in two processes, no queue, same params: "
        f"{spawn:.2f} s vs xargs {flimit:.2f} s in the same repetitions: {spawn_ratio:.2f}x of "
        f"the limit (paired median).",
        f"ceiling if a shard had zero per-task overhead beyond that loop: limit / (loop + "
        f"cronqueue.cli imports) = {flimit:.2f} / ({spawn:.2f} + {imports:.3f}) = "
        f"{ceiling:.2f}x (medians; start-up CPU counted as wall time, each shard on its own "
        f"core; an upper bound: a running shard imports more than cronqueue.cli).",
    ]
    if ceiling < t.bound:
        lines.append(
            f"⇒ {t.bound:g}x is above that ceiling: a shard that starts an interpreter, imports "
            f"cronqueue.cli and starts each task with subprocess cannot reach it on this "
            f"machine, whatever its queue work costs.")
    else:
        lines.append(f"⇒ the ceiling ({ceiling:.2f}x) is above {t.bound:g}x: these floors "
                     "leave room for the target.")
    lines.append(
        f"beyond the floor: cronqueue's {cq:.2f} s - (loop {spawn:.2f} s + imports "
        f"{imports:.3f} s) = {cq - floor_s:.2f} s, spent on the queue's per-task work and "
        "whatever these floors do not capture (drain and floors sections, medians).")
    tasks = _flags(results, "floors").get("drain_tasks")
    if isinstance(tasks, int) and tasks > 0:
        per_shard = tasks / 2  # two shards, each on its own core
        allowance = (flimit / t.bound - floor_s) / per_shard * 1e3
        spent = (cq - floor_s) / per_shard * 1e3
        lines.append(
            f"per task: ≥ {t.bound:g}x leaves (limit / {t.bound:g} - loop - imports) / "
            f"{per_shard:,.0f} tasks per shard = {allowance:.3f} ms per task for everything "
            f"the queue adds to starting the process (claim, start mark, outcome record, "
            f"output capture and day log, and the shard's start-up beyond its imports); "
            f"cronqueue spends {spent:.3f} ms ({spent / allowance:.0f}x that)."
            if allowance > 0 else
            f"per task: ≥ {t.bound:g}x leaves no time at all for the queue's work "
            f"({allowance:.3f} ms per task); cronqueue spends {spent:.3f} ms.")
    return lines


def _flags(results: Results, section: str) -> dict[str, Any]:
    result = results.get(section)
    return dict(result.flags) if result is not None else {}


def _add(results: Results, backend: str, t: Target, calls: float) -> list[str]:
    raw = _floor(results, "add raw", "calls_per_s", backend)
    if raw is None:
        return _missing(f"raw INSERT + COMMIT on {backend}")
    ms, raw_ms = 1e3 / calls, 1e3 / raw
    lines = [
        f"raw PyMySQL on the same server, one-row INSERT + COMMIT per call (no cronqueue, no "
        f"SQLAlchemy): {raw:,.0f} calls/s = {raw_ms:.3f} ms per call; cronqueue's add(): "
        f"{ms:.3f} ms per call, {ms - raw_ms:+.3f} ms beyond the raw call.",
    ]
    server = _server_facts(results)
    if server:
        note = (" (1: every COMMIT writes and flushes the redo log before it returns)"
                if server.get("innodb_flush_log_at_trx_commit") == "1" else "")
        lines.append("server durability: " + ", ".join(f"{k}={v}" for k, v in server.items())
                     + note + ".")
    if raw < t.bound:
        lines.append(f"⇒ the raw floor ({raw:,.0f}/s) is itself below {t.bound:,.0f}/s: one "
                     f"INSERT + COMMIT per call caps add() there on this server, whatever the "
                     f"client does.")
    else:
        lines.append(f"⇒ the raw floor ({raw:,.0f}/s) is above {t.bound:,.0f}/s: the server "
                     f"allows the target; ≥ {t.bound:,.0f}/s needs ≤ {1e3 / t.bound:.3f} ms "
                     f"per call, and cronqueue spends {ms - raw_ms:.3f} ms per call beyond "
                     f"the raw one.")
    return lines


def _server_facts(results: Results) -> dict[str, str]:
    result = results.get("floors")
    if result is None:
        return {}
    return dict(result.flags.get("mariadb_server") or {})


def _add_many(results: Results, backend: str, t: Target, rows: float) -> list[str]:
    server = _floor(results, "add_many", "server_us_per_row", backend)
    client = _floor(results, "add_many", "client_us_per_row", backend)
    if server is None or client is None:
        return _missing(f"add_many split on {backend}")
    ceiling = 1e6 / (server + client)
    us = 1e6 / rows
    lines = [
        f"server + driver alone (add_many's own JSON_TABLE statements and payloads, raw "
        f"PyMySQL, execute + commit): {server:.2f} µs/row = {1e6 / server:,.0f} rows/s.",
        f"client alone (add_many's validation and JSON encoding, database stubbed out): "
        f"{client:.2f} µs/row = {1e6 / client:,.0f} rows/s.",
        f"ceiling, the two one after the other: 1e6 / ({server:.2f} + {client:.2f}) = "
        f"{ceiling:,.0f} rows/s; add_many measured {us:.2f} µs/row, {us - server - client:+.2f} "
        f"µs/row beyond the two (medians of different runs).",
    ]
    if 1e6 / server < t.bound:
        lines.append(f"⇒ the server alone ({1e6 / server:,.0f} rows/s) is below "
                     f"{t.bound:,.0f}: this statement on this server caps add_many there, "
                     f"whatever the client does.")
    elif 1e6 / client < t.bound:
        lines.append(f"⇒ the client alone ({1e6 / client:,.0f} rows/s) is below "
                     f"{t.bound:,.0f}: validation + encoding caps add_many there, whatever "
                     f"the server does.")
    elif ceiling < t.bound:
        lines.append(f"⇒ each alone is above {t.bound:,.0f} rows/s, their sum is not "
                     f"(client {client / (server + client):.0%} of it): done one after the "
                     f"other, they cap add_many at {ceiling:,.0f} rows/s.")
    else:
        lines.append(f"⇒ the ceiling is above {t.bound:,.0f} rows/s: these floors leave room "
                     f"for the target.")
    return lines


def _fast_path(results: Results, backend: str, t: Target, ratio: float) -> list[str]:
    fork, exe = _floor(results, "fork", "ms_per_task"), _floor(results, "exec", "ms_per_task")
    fork_faults = _floor(results, "fork", "faults_per_task")
    if fork is None or exe is None:
        return _missing("fork / exec")
    ceiling = exe / fork
    lines = [
        f"fork + the trivial task's code + _exit + wait4 in a small Python process: "
        f"{fork:.3f} ms per task; "
        f"`subprocess.run([python, '-c', 'pass'])`, the exec path's floor: {exe:.2f} ms.",
        f"ceiling: {exe:.2f} / {fork:.3f} = {ceiling:.1f}x — a forked task still needs one "
        f"fork and one exit + reap, and with any per-task cost q ≥ 0 that both paths share, "
        f"(exec + q) / (fork + q) ≤ exec / fork (medians).",
    ]
    rate_exec = _median(results, "python", backend, "exec", "steady_per_s")
    rate_fork = _median(results, "python", backend, "fork", "steady_per_s")
    if rate_exec and rate_fork:
        lines.append(
            f"measured steady rates (python section, two shards): exec {rate_exec:,.0f}/s, "
            f"fork {rate_fork:,.0f}/s, i.e. {2e3 / rate_exec:.2f} and {2e3 / rate_fork:.2f} ms "
            f"per task and shard (2 / rate); {t.bound:g}x needs ≤ "
            f"{2e3 / rate_exec / t.bound:.2f} ms on the fork path, "
            f"{2e3 / rate_fork - fork:.2f} ms of its {2e3 / rate_fork:.2f} ms are beyond the "
            f"floor's fork.")
    cpu_exec = _median(results, "python", backend, "exec", "cpu_ms_per_task")
    cpu_fork = _median(results, "python", backend, "fork", "cpu_ms_per_task")
    flt_exec = _median(results, "python", backend, "exec", "faults_per_task")
    flt_fork = _median(results, "python", backend, "fork", "faults_per_task")
    tasks = _flags(results, "python").get("tasks")
    cli = _floor(results, "cli", "startup_cpu_s")
    if (cpu_exec and cpu_fork and flt_exec is not None and flt_fork is not None
            and isinstance(tasks, int) and tasks > 0 and cli is not None):
        start = 2 * cli / tasks * 1e3  # two shards' start-up, at least their imports
        lines.append(
            f"CPU per task (python section: the shards and all they reaped): exec "
            f"{cpu_exec:.2f} ms, fork {cpu_fork:.2f} ms; less the two shards' start-up spread "
            f"over the {tasks:,} tasks (at least 2 x `import cronqueue.cli.main` = {start:.2f} ms "
            f"per task): exec {cpu_exec - start:.2f} ms, fork {cpu_fork - start:.2f} ms, a "
            f"CPU ratio of {(cpu_exec - start) / (cpu_fork - start):.1f}x, which the steady "
            f"throughput ratio follows while two shards keep both cores busy. Minor page "
            f"faults per task: exec {flt_exec:,.0f}, fork {flt_fork:,.0f} (copy-on-write and "
            f"re-mapped pages of the fork server and its child); the floor's forked child: "
            f"{fork_faults or 0:,.0f}.")
    if ceiling < t.bound:
        lines.append(f"⇒ {t.bound:g}x is above that ceiling: a fork costs more than "
                     f"1/{t.bound:g} of an interpreter start here.")
    else:
        lines.append(f"⇒ the ceiling ({ceiling:.1f}x) is above {t.bound:g}x: the process "
                     f"floors leave room; the gap is per-task work above them.")
    return lines


def _mission(results: Results, backend: str, t: Target, cpu: float) -> list[str]:
    k = _floor(results, "cli", "startup_cpu_s")
    a = _floor(results, "sqlalchemy", "startup_cpu_s")
    if k is None or a is None:
        return _missing("interpreter start-up")
    lines = [f"imports: `python -c 'import cronqueue.cli.main'` costs {k:.3f} s CPU of the "
             f"{cpu:.3f} s tick ({k / cpu:.0%}; `import sqlalchemy` alone {a:.3f} s); a tick "
             f"cannot cost less than its imports."]
    if k > t.bound:
        lines.append(f"⇒ the imports alone exceed the {t.bound:g} s target.")
    else:
        lines.append(f"⇒ the imports leave {t.bound - k:.3f} s of the {t.bound:g} s budget; "
                     f"the tick spends {cpu - k:.3f} s beyond them (its work, and modules it "
                     f"imports beyond cronqueue.cli, such as the database driver).")
    return lines


EXPLAINERS = {
    ("drain", "cronqueue/limit", "ratio"): _drain,
    ("enqueue", "add", "calls_per_s"): _add,
    ("enqueue", "add_many", "rows_per_s"): _add_many,
    ("python", "fork/exec", "steady_ratio"): _fast_path,
    ("resources", "mission", "cpu_s"): _mission,
}
