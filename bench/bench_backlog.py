"""The backlog section of bench.py: claim time and drain rate on a small backlog vs a big one
(1M pending + 1M done rows, generated inside the database), and the claim's statements with
their plans (EXPLAIN; on MariaDB also ANALYZE FORMAT=JSON of the candidate read)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_lib import (
    Ctx,
    SectionResult,
    drain_params,
    merge_samples,
    paired_ratios,
    reader,
    require_done,
    run_rotated,
)
from common import BenchError, as_utc, has_exited, sql_time, table
from driver_clock import DriverClock
from sqlalchemy import Engine, create_engine, text

from cronqueue import Queue

# The claim is what this section times, and no public API claims rows (a shard does, inside
# `cronqueue work`); Claimer needs the owner identity it writes into worker_host/worker_pid.
from cronqueue.process.identity import Owner
from cronqueue.store.claims import Claimer

GEN_CHUNK = 250_000
DRAIN_PRIORITY = 10  # above every backlog row (priority 0)

# Columns and values as add_many + a successful run leave them; every other column keeps its
# default (NULL: max_attempts, timeout, unique_key, active_key, secret, lease_until, error...).
_DONE_COLS = ("queue, taskscript, param, status, priority, ctime, run_at, attempts, "
              "worker_host, worker_pid, claim_token, started_at, finished_at, exit_code, output")
_DONE_VALUES = ("'default', 'true', {param}, 1, 0, :created, :created, 1, 'bench', 1, :token, "
                ":finished, :finished, 0, ''")
_PENDING_COLS = "queue, taskscript, param, status, priority, ctime, run_at, attempts"
_PENDING_VALUES = "'default', 'true', {param}, 0, 0, :due, :due, 0"
# '{"to":"user17@example.com","n":17}', the text add_many stores for the drain params.
_PARAM = {
    "mariadb": """CONCAT('{"to":"user', seq, '@example.com","n":', seq, '}')""",
    "sqlite": """'{"to":"user' || seq || '@example.com","n":' || seq || '}'""",
}
_RELEASE = ("UPDATE queue SET status = 0, claim_token = NULL, lease_until = NULL "
            "WHERE claim_token = :token AND status = 2 AND started_at IS NULL")


def backlog(ctx: Ctx) -> SectionResult:
    s = ctx.sizes
    plans = {"small": (s.backlog_small, 0), "big": (s.backlog_big, s.backlog_big)}
    dbs: dict[tuple[str, str], str] = {}
    extras: dict[str, str] = {}
    try:
        for backend, b in ctx.backends.items():
            for size, (pending, done) in plans.items():
                url = b.fresh(f"backlog{size}")
                dbs[(backend, size)] = url
                began = time.perf_counter()
                generate(ctx, url, backend, pending=pending, done=done)
                ctx.log(f"backlog {backend} {size}: {pending:,} pending + {done:,} done rows "
                        f"generated in {time.perf_counter() - began:.1f}s")
                extras[f"{backend}, {size} backlog: the claim's statements and plans"] = \
                    explain(ctx, url, backend, s.claim_limit)

        def measure(backend: str, size: str, rep: int) -> dict[str, float]:
            url = dbs[(backend, size)]
            return {"claim_ms": time_claims(ctx, url, s.claims, s.claim_limit),
                    "drain_per_s": drain_on_backlog(ctx, url, s.backlog_drain)}

        variants = [(b, size) for b in ctx.backends for size in plans]
        samples = run_rotated(ctx, "backlog", variants, measure)
    finally:
        for (backend, _), url in dbs.items():
            with contextlib.suppress(Exception):  # drop_all retries at the end
                ctx.backends[backend].drop(url)
    samples += merge_samples(
        paired_ratios(samples, "backlog", "big", "small", "claim_ms", "big/small",
                      key="claim_ratio")
        + paired_ratios(samples, "backlog", "big", "small", "drain_per_s", "big/small",
                        key="drain_ratio"))
    labels = {"small": f"small: {_count(s.backlog_small)} pending",
              "big": f"big: {_count(s.backlog_big)} pending + {_count(s.backlog_big)} done"}
    return SectionResult(samples, labels=labels, extras=extras)


def _count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


# -- generating a big table -------------------------------------------------------------------

def generate(ctx: Ctx, url: str, backend: str, *, pending: int, done: int) -> None:
    """Rows as add_many and a successful run leave them, ids 1..done done, then ``pending``
    due rows; one INSERT ... SELECT per chunk (MariaDB: the SEQUENCE engine's seq_M_to_N,
    SQLite: a recursive CTE)."""
    with ctx.queue(url) as q:
        q.init_db()
    now = datetime.now(UTC)
    binds = {"created": sql_time(now - timedelta(hours=2)), "token": "b" * 32,
             "finished": sql_time(now - timedelta(hours=1)),
             "due": sql_time(now - timedelta(hours=1))}
    engine = create_engine(url)
    try:
        for lo in range(0, done, GEN_CHUNK):
            _insert(engine, backend, lo + 1, min(done, lo + GEN_CHUNK), _DONE_COLS,
                    _DONE_VALUES, binds)
        for lo in range(done, done + pending, GEN_CHUNK):
            _insert(engine, backend, lo + 1, min(done + pending, lo + GEN_CHUNK), _PENDING_COLS,
                    _PENDING_VALUES, binds)
    finally:
        engine.dispose()


def _insert(engine: Engine, backend: str, first: int, last: int, cols: str, values: str,
            binds: dict[str, Any]) -> None:
    row = values.format(param=_PARAM[backend])
    if backend == "mariadb":
        sql = f"INSERT INTO queue ({cols}) SELECT {row} FROM seq_{first}_to_{last}"
    else:
        sql = (f"WITH RECURSIVE gen(seq) AS (SELECT :first UNION ALL SELECT seq + 1 FROM gen "
               f"WHERE seq < :last) INSERT INTO queue ({cols}) SELECT {row} FROM gen")
    used = {k: v for k, v in binds.items() if f":{k}" in sql}
    if backend == "sqlite":
        used.update(first=first, last=last)
    with engine.begin() as conn:
        conn.execute(text(sql), used)


# -- the claim --------------------------------------------------------------------------------

def claimer(q: Queue) -> Claimer:
    """Shard 0 of 2, every queue: what `cronqueue work --total 2 --shard 0` claims with."""
    return Claimer(q.engine, Owner.me(), shard=0, total=2, queues=None,
                   lease=timedelta(seconds=q.config.worker.lease))


def time_claims(ctx: Ctx, url: str, claims: int, limit: int) -> float:
    """Median milliseconds of ``claims`` consecutive claims (after one warm-up), each a whole
    claim transaction, without releasing in between (as a draining shard claims); every claim
    must return ``limit`` rows; all are released (back to pending) afterwards."""
    with ctx.queue(url) as q:
        engine = q.engine
        tokens: list[str] = []
        timings: list[float] = []
        try:
            taker = claimer(q)
            for i in range(claims + 1):
                began = time.perf_counter()
                claim = taker.claim(limit, datetime.now(UTC))
                elapsed = time.perf_counter() - began
                tokens.append(claim.token)
                if len(claim.tasks) != limit:
                    raise BenchError(f"claim {i} returned {len(claim.tasks)} rows, not {limit}")
                if i:
                    timings.append(elapsed * 1000)
        finally:
            with engine.begin() as conn:
                for token in tokens:
                    conn.execute(text(_RELEASE), {"token": token})
    return statistics.median(timings)


def explain(ctx: Ctx, url: str, backend: str, limit: int) -> str:
    """One claim, its statements captured as sent to the driver, the claim released; then
    each SELECT and UPDATE of it explained with its own parameters (MariaDB: EXPLAIN, and
    ANALYZE FORMAT=JSON of the first SELECT, the candidate read; SQLite: EXPLAIN QUERY PLAN).
    """
    with ctx.queue(url) as q:
        with DriverClock(q.engine, keep=True) as clock:
            claim = claimer(q).claim(limit, datetime.now(UTC))
        with q.engine.begin() as conn:
            conn.execute(text(_RELEASE), {"token": claim.token})
    statements = [(sql, params) for sql, params in clock.statements
                  if re.match(r"\s*(SELECT|UPDATE)\b", sql, re.I)]
    engine = reader(url)
    out = []
    try:
        with engine.connect() as conn:
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for k, (sql, params) in enumerate(statements):
                shown = sql if backend == "sqlite" else cur.mogrify(sql, params)
                out.append(f"-- {_abbreviate(' '.join(shown.split()))}\n"
                           + _plan(cur, backend, sql, params, analyze=k == 0))
            conn.rollback()
    finally:
        engine.dispose()
    return "\n\n".join(out)


def _plan(cur: Any, backend: str, sql: str, params: Any, *, analyze: bool) -> str:
    """The plan of one statement, run on the driver's cursor as cronqueue sent it."""
    if backend == "sqlite":
        cur.execute("EXPLAIN QUERY PLAN " + sql, params)
        return "; ".join(str(r[-1]) for r in cur.fetchall())
    cur.execute("EXPLAIN " + sql, params)
    cols = [d[0] for d in cur.description]
    out = table(cols, [["NULL" if v is None else str(v) for v in r] for r in cur.fetchall()])
    if analyze:
        cur.execute("ANALYZE FORMAT=JSON " + sql, params)
        out += "\n" + _analyze_summary(str(cur.fetchone()[0]))
    return out


def _abbreviate(sql: str) -> str:
    """The SELECT list is every column, the IN list a hundred ids: shorten both."""
    sql = re.sub(r"^SELECT .*? FROM", "SELECT ... FROM", sql)
    return re.sub(r"IN \(([^()]*)\)", lambda m: f"IN ({m[1].count(',') + 1} values)"
                  if m[1].count(",") > 3 else m[0], sql)


def _analyze_summary(analyzed: str) -> str:
    """ANALYZE's facts about the table access: key, rows examined, pages, time."""
    try:
        t = json.loads(analyzed)["query_block"]["nested_loop"][0]["table"]
    except (ValueError, KeyError, IndexError, TypeError):
        return "ANALYZE: (unreadable)"
    return (f"ANALYZE: key={t.get('key')} access={t.get('access_type')} "
            f"r_rows={t.get('r_rows')} (estimate {t.get('rows')}) "
            f"pages_accessed={t.get('r_engine_stats', {}).get('pages_accessed')} "
            f"r_table_time_ms={t.get('r_table_time_ms', 0):.3f}")


# -- draining on top of the backlog -----------------------------------------------------------

# ``status + 0`` keeps SQLite on the primary key: on the status index, counting the drain's
# 2,000 rows walked the million done rows (200 ms a poll, a core busy beside the shards).
_FINISHED = "SELECT COUNT(*) FROM queue WHERE id BETWEEN :a AND :b AND status + 0 IN (1, 3)"


def drain_on_backlog(ctx: Ctx, url: str, n: int) -> float:
    """Tasks per second: ``n`` top-priority tasks drained by two shards over the backlog,
    from the launch to the last of them finished. The shards go on into the backlog and are
    stopped with SIGTERM; no row may be left running."""
    with ctx.queue(url) as q:
        ids = q.add_many([{"taskscript": "true", "param": p, "priority": DRAIN_PRIORITY}
                          for p in drain_params(n)])
    ours = {"a": min(ids), "b": max(ids)}
    engine = reader(url)
    try:
        began = time.time()
        shards = ctx.start_shards(url, 2)
        deadline = time.monotonic() + ctx.sizes.process_timeout
        while _scalar(engine, _FINISHED, ours) < n and not all(map(has_exited, shards)):
            if time.monotonic() > deadline:
                raise BenchError(f"backlog drain: {n} tasks not finished after "
                                 f"{ctx.sizes.process_timeout:g}s")
            time.sleep(0.05)
        for shard in shards:
            ctx.procs.signal(shard, signal.SIGTERM)
        for shard in shards:
            ctx.procs.wait(shard)
        require_done(url, n, "backlog drain", ours["a"], ours["b"])
        running = _scalar(engine, "SELECT COUNT(*) FROM queue WHERE status = 2", {})
        if running:
            raise BenchError(f"backlog drain: {running} rows left running after the shards "
                             "exited on SIGTERM")
        last = as_utc(_scalar(engine, "SELECT MAX(finished_at) FROM queue WHERE id BETWEEN :a "
                                      "AND :b", ours))
    finally:
        engine.dispose()
    return n / (last.timestamp() - began)


def _scalar(engine: Engine, sql: str, params: dict[str, Any]) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()
