"""The backlog section of bench.py: claim time and drain rate on a small backlog vs a big one
(1M pending + 1M done rows, generated inside the database), plus the claim query's plan."""

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
    BenchError,
    Ctx,
    SectionResult,
    drain_params,
    has_exited,
    lease,
    merge_samples,
    paired_ratios,
    reader,
    require_done,
    run_rotated,
)
from sqlalchemy import Engine, Update, bindparam, func, select, text, update
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter

from cronqueue.model import Status
from cronqueue.process.identity import Owner
from cronqueue.store import queries
from cronqueue.store.claim import Claimer
from cronqueue.store.engine import make_engine, supports_skip_locked
from cronqueue.store.repository import Repository
from cronqueue.store.schema import UTCDateTime, queue_table

GEN_CHUNK = 250_000
DRAIN_PRIORITY = 10  # above every backlog row (priority 0)
_TOKEN = "b" * 32  # claim_token left on done rows, as a finished claim leaves it

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


def backlog(ctx: Ctx) -> SectionResult:
    s = ctx.sizes
    plans = {"small": (s.backlog_small, 0), "big": (s.backlog_big, s.backlog_big)}
    dbs: dict[tuple[str, str], str] = {}
    extras: dict[str, str] = {}
    notes: list[str] = []
    try:
        for backend, b in ctx.backends.items():
            for size, (pending, done) in plans.items():
                url = b.fresh(f"backlog{size}")
                dbs[(backend, size)] = url
                began = time.perf_counter()
                generate(ctx, url, backend, pending=pending, done=done)
                ctx.log(f"backlog {backend} {size}: {pending:,} pending + {done:,} done rows "
                        f"generated in {time.perf_counter() - began:.1f}s")
                plan, summary = explain(url, backend, s.claim_limit)
                extras[f"{backend}, {size} backlog: the claim query's plan"] = plan
                if summary:
                    notes.append(f"{backend} {size}: {summary}")

        def measure(backend: str, size: str, rep: int) -> dict[str, float]:
            url = dbs[(backend, size)]
            return {"claim_ms": time_claims(url, s.claims, s.claim_limit),
                    "drain_per_s": drain_on_backlog(ctx, url, s.backlog_drain)}

        variants = [(b, size) for b in ctx.backends for size in plans]
        samples = run_rotated(ctx, "backlog", variants, measure)
    finally:
        for (backend, _), url in dbs.items():
            with contextlib.suppress(Exception):  # drop_all retries at the end
                ctx.backends[backend].drop(url)
    ratios = (paired_ratios(samples, "backlog", "big", "small", "claim_ms", "big/small",
                            key="claim_ratio")
              + paired_ratios(samples, "backlog", "big", "small", "drain_per_s", "big/small",
                              key="drain_ratio"))
    samples += merge_samples(ratios)
    labels = {"small": f"small: {_count(s.backlog_small)} pending",
              "big": f"big: {_count(s.backlog_big)} pending + {_count(s.backlog_big)} done"}
    return SectionResult(samples, notes=[
        f"small = {s.backlog_small:,} pending rows; big = {s.backlog_big:,} pending + "
        f"{s.backlog_big:,} done rows, on both backends (SQLite generates 2M rows in seconds, "
        "so it is not skipped). Generated inside the database (MariaDB: INSERT ... SELECT from "
        "the SEQUENCE engine's seq_M_to_N; SQLite: a recursive CTE) with the values add_many "
        "and a successful run write: queue 'default', taskscript 'true', params like the drain "
        "section's, priority 0, unique_key/active_key NULL (no unique_key: active_key is NULL "
        "for pending and done alike), max_attempts/timeout NULL; done rows with status done, "
        "attempts 1, started_at/finished_at an hour ago, exit_code 0, the claim token kept. "
        "Every pending row is due (run_at an hour ago): a real backlog waiting its turn. "
        "No ANALYZE TABLE is run (cronqueue does not run it either).",
        f"claim: median of {s.claims} `Claimer.claim({s.claim_limit}, now)` calls (shard 0 of "
        "2, all queues; one untimed warm-up call first), each a whole claim transaction. "
        "Fresh rows: the calls follow each other like a draining shard's, without releasing "
        "in between; every claim must return the full limit; all claimed rows are released "
        "(back to pending) afterwards.",
        f"drain: {s.backlog_drain:,} /bin/true tasks added with priority {DRAIN_PRIORITY} on "
        "top of the backlog (the highest, so the claims reach them first, as they would reach "
        "any newly added urgent work), drained by two burst shards `--total 2`. Rate = tasks "
        "/ (the last of them finished_at - launch). The shards go on into the backlog "
        "afterwards and are stopped with SIGTERM; no row may be left running. The backlog "
        "shrinks by the few rows they ran — negligible.",
        "Ratios big/small are paired per repetition; the target is claim_ratio ≤ 1.25 and "
        "drain_ratio ≥ 0.8 (within 1.25x).",
        *notes,
    ], labels=labels, extras=extras)


def _count(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


# -- generating a big table -------------------------------------------------------------------

def generate(ctx: Ctx, url: str, backend: str, *, pending: int, done: int) -> None:
    with ctx.queue(url) as q:
        q.init_db()
    now = datetime.now(UTC)
    times = {"created": now - timedelta(hours=2), "finished": now - timedelta(hours=1),
             "due": now - timedelta(hours=1), "token": _TOKEN}
    engine = make_engine(url)
    try:
        for lo in range(0, done, GEN_CHUNK):
            _insert(engine, backend, lo + 1, min(done, lo + GEN_CHUNK), _DONE_COLS,
                    _DONE_VALUES, times)
        for lo in range(done, done + pending, GEN_CHUNK):
            _insert(engine, backend, lo + 1, min(done + pending, lo + GEN_CHUNK), _PENDING_COLS,
                    _PENDING_VALUES, times)
    finally:
        engine.dispose()


def _insert(engine: Engine, backend: str, first: int, last: int, cols: str, values: str,
            binds: dict[str, Any]) -> None:
    """Rows numbered first..last (ids first..last in a fresh table), in one statement."""
    row = values.format(param=_PARAM[backend])
    if backend == "mariadb":
        sql = f"INSERT INTO queue ({cols}) SELECT {row} FROM seq_{first}_to_{last}"
    else:
        sql = (f"WITH RECURSIVE gen(seq) AS (SELECT :first UNION ALL SELECT seq + 1 FROM gen "
               f"WHERE seq < :last) INSERT INTO queue ({cols}) SELECT {row} FROM gen")
    stmt = text(sql)
    used = {k: v for k, v in binds.items() if f":{k}" in sql}
    stmt = stmt.bindparams(*(bindparam(k, type_=UTCDateTime()) for k, v in used.items()
                             if isinstance(v, datetime)))
    if backend == "sqlite":
        used.update(first=first, last=last)
    with engine.begin() as conn:
        conn.execute(stmt, used)


# -- the claim --------------------------------------------------------------------------------

def time_claims(url: str, claims: int, limit: int) -> float:
    """Median milliseconds of ``claims`` consecutive claims (after one warm-up)."""
    engine = make_engine(url)
    owner = Owner.me()
    with engine.begin() as conn:  # rows a failed earlier attempt of ours left claimed
        conn.execute(update(queue_table).where(
            queue_table.c.status == int(Status.RUNNING), queue_table.c.worker_pid == owner.pid,
            queue_table.c.worker_host == owner.host, queue_table.c.started_at.is_(None),
        ).values(status=int(Status.PENDING), claim_token=None, lease_until=None))
    claimer = Claimer(engine, owner, shard=0, total=2, queues=None, lease=lease())
    tokens: list[str] = []
    timings: list[float] = []
    try:
        for i in range(claims + 1):
            began = time.perf_counter()
            claim = claimer.claim(limit, datetime.now(UTC))
            elapsed = time.perf_counter() - began
            tokens.append(claim.token)
            if len(claim.tasks) != limit:
                raise BenchError(f"claim {i} returned {len(claim.tasks)} rows, not {limit}: "
                                 "the backlog is too small for the claims made")
            if i:
                timings.append(elapsed * 1000)
    finally:
        repo = Repository(engine)
        for token in tokens:
            repo.release_unstarted(token)
        engine.dispose()
    return statistics.median(timings)


def explain(url: str, backend: str, limit: int) -> tuple[str, str]:
    """The claim statements and their plans: the candidate SELECT (MariaDB: EXPLAIN and
    ANALYZE FORMAT=JSON of the SQL compiled with literal binds; SQLite: EXPLAIN QUERY PLAN),
    then the guarded UPDATE that takes the rows (EXPLAIN only: it is not run). Returns
    (text, one-line summary)."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    if supports_skip_locked(engine):  # the lock-free read; the chosen rows are then locked
        stmt = queries.claim_top(shard=0, total=2, queue=None, now=now, limit=limit, passed=[])
    else:
        stmt = queries.claim_candidates(shard=0, total=2, queue=None, now=now, limit=limit)
    try:
        with engine.connect() as conn:
            text_, summary = _plan(conn, backend, stmt, analyze=True)
            ids = list(conn.execute(select(queue_table.c.id).where(
                queue_table.c.status == int(Status.PENDING)).order_by(queue_table.c.id)
                .limit(limit)).scalars())
            try:
                owner = Owner.me()
                update, params = queries.claim_rows(ids, token="0" * 32, host=owner.host,
                                                    pid=owner.pid, pid_start=owner.pid_start,
                                                    lease_until=now + lease())
                guarded = _bound(update, params)
                update_plan, update_summary = _plan(conn, backend, guarded, analyze=False)
            except Exception as exc:  # cronqueue changed under us: the plan is an extra
                update_plan, update_summary = f"(could not explain: {exc})", ""
            conn.rollback()
    finally:
        engine.dispose()
    return (f"-- the candidate SELECT\n{text_}\n\n-- the guarded UPDATE that takes them "
            f"({len(ids)} ids)\n{update_plan}",
            f"SELECT: {summary}; UPDATE: {update_summary}")


def _plan(conn: Any, backend: str, stmt: Any, *, analyze: bool) -> tuple[str, str]:
    if backend == "mariadb":
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        result = conn.exec_driver_sql("EXPLAIN " + sql)
        cols, rows = list(result.keys()), [tuple(r) for r in result.fetchall()]
        shown = _abbreviate(sql.replace("%%", "%"))
        out = f"{shown}\n\nEXPLAIN\n{_table(cols, rows)}"
        summary = ", ".join(f"key={r[cols.index('key')]} rows={r[cols.index('rows')]}"
                            for r in rows)
        if analyze:
            analyzed = str(conn.exec_driver_sql("ANALYZE FORMAT=JSON " + sql).scalar())
            out += f"\n\nANALYZE FORMAT=JSON\n{analyzed}"
            summary = _analyze_summary(analyzed) or summary
        return out, summary
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = tuple(_sqlite_value(compiled.params[name]) for name in compiled.positiontup or ())
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params).fetchall()
    plan = "; ".join(str(r[-1]) for r in rows)
    return f"{_abbreviate(str(compiled))}\n\nEXPLAIN QUERY PLAN\n{plan}", plan


def _bound(stmt: Update, params: dict[str, Any]) -> Any:
    """``stmt`` with its named parameters carrying ``params`` (for EXPLAIN, which needs the
    values in the statement)."""
    def bind(element: Any, **_: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in params:
            return bindparam(element.key, params[element.key], type_=element.type,
                             expanding=element.expanding)
        return None

    return visitors.replacement_traverse(stmt, {}, bind)


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ",
                                                                     timespec="microseconds")
    return value


def _abbreviate(sql: str) -> str:
    """The SELECT list is every column, the IN list a hundred ids: shorten both."""
    sql = re.sub(r"^SELECT .*?\nFROM", "SELECT queue.id, ... (every column)\nFROM", sql,
                 flags=re.S)
    return re.sub(r"IN \(([^,()]+), ([^()]*), ([^,()]+)\)",
                  lambda m: f"IN ({m[1]}, ... {m[2].count(',') + 3} values ..., {m[3]})", sql)


def _table(cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [cols, *[["NULL" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _analyze_summary(analyzed: str) -> str:
    try:
        tables = json.loads(analyzed)["query_block"].get("nested_loop", [])
        t = tables[0]["table"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    pages = t.get("r_engine_stats", {}).get("pages_accessed")
    return (f"claim query uses {t.get('key')} ({t.get('access_type')}), rows examined "
            f"r_rows={t.get('r_rows')} (estimate {t.get('rows')}), pages accessed {pages}, "
            f"{t.get('r_table_time_ms', 0):.2f} ms in the table")


# -- draining on top of the backlog -----------------------------------------------------------

def drain_on_backlog(ctx: Ctx, url: str, n: int) -> float:
    """Tasks per second: ``n`` top-priority tasks drained by two shards over the backlog."""
    with ctx.queue(url) as q:
        ids = q.add_many([{"taskscript": "true", "param": p, "priority": DRAIN_PRIORITY}
                          for p in drain_params(n)])
    first, last = min(ids), max(ids)
    ours = queue_table.c.id.between(first, last)
    engine = reader(url)
    try:
        began = time.time()
        shards = ctx.start_shards(url, 2)
        deadline = time.monotonic() + ctx.sizes.process_timeout
        while _count_where(engine, ours, Status.DONE, Status.FAILED, by_id=True) < n:
            if all(has_exited(s) for s in shards):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"backlog drain: {n} tasks not finished after "
                                 f"{ctx.sizes.process_timeout:g}s")
            time.sleep(0.05)
        for shard in shards:
            ctx.procs.signal(shard, signal.SIGTERM)
        for shard in shards:
            ctx.procs.wait(shard)
        require_done(url, n, "backlog drain", first, last)
        running = _count_where(engine, queue_table.c.id > 0, Status.RUNNING)
        if running:
            raise BenchError(f"backlog drain: {running} rows left running after the shards "
                             "exited on SIGTERM")
        with engine.connect() as conn:
            last_finish = conn.execute(select(func.max(queue_table.c.finished_at))
                                       .where(ours)).scalar_one()
    finally:
        engine.dispose()
    return float(n / (last_finish.timestamp() - began))


def _count_where(engine: Engine, where: Any, *statuses: Status, by_id: bool = False) -> int:
    """Rows matching ``where`` in one of ``statuses``. ``by_id``: ``where`` is an id range, and
    ``status + 0`` keeps SQLite on the primary key — on the status index, counting the drain's
    2,000 rows walked the million done rows (200 ms a poll, a core busy beside the shards)."""
    status = queue_table.c.status + 0 if by_id else queue_table.c.status
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(
            where, status.in_([int(s) for s in statuses]))).scalar_one())
