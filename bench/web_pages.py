"""The dashboard and /metrics on a big table (issue 14, item 4): fill a MariaDB database of its
own with 1,000,000 done and 100,000 pending tasks (and failed, running, delayed ones, a week of
mission runs, shards), then time every page through the app — the median of several requests
each, after one that warms it — and explain each page's slowest SELECT.

    python bench/web_pages.py                        # fill cq_bench_web, time, explain
    python bench/web_pages.py --reuse                # time again on the rows already there
    python bench/web_pages.py --markdown out.md      # also write the tables as Markdown

The rows are generated inside the server, a chunk per ``INSERT ... SELECT`` over MariaDB's
SEQUENCE engine (``seq_1_to_N``): a million rows in about a minute. Only databases named
``cq_bench_*`` are created and dropped. Nothing here asserts a time: the target (300 ms a page)
is judged by the reader; ``docs/benchmarks.md`` keeps a run.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import sql_time, table  # noqa: E402

from cronqueue import Queue  # noqa: E402
from cronqueue.config import load_config  # noqa: E402
from cronqueue.config.settings import DoQueue, MissionEntry  # noqa: E402

CHUNK = 200_000
QUEUES = 5
ENTRIES = ("drain-default", "drain-mail", "nightly-report")  # a week of runs, each minute
SCRIPTS = ("send_mail.py", "resize.py", "report.py", "sync.sh")
HOST = "bench-web-1#0a1b2c3d4e5f"

# -- filling ----------------------------------------------------------------------------------

_PARAM = """CONCAT('{"to":"user', seq, '@example.com","n":', seq, '}')"""
_QUEUE = f"CONCAT('q', seq % {QUEUES})"
_SCRIPT = "ELT(1 + seq % 4, " + ", ".join(f"'{s}'" for s in SCRIPTS) + ")"


@dataclass
class Shape:
    done: int
    pending: int
    failed: int
    delayed: int
    running: int
    hours: float  # the done and failed tasks finished over the last ``hours``
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def _fill_rows(engine: Engine, shape: Shape) -> None:
    """Ids 1..done done, then failed, pending (due), delayed, running: as add_many and the
    shards leave them. Done tasks ran 0-2 s each, finished evenly over the last hours."""
    now = shape.now
    start = now - timedelta(hours=shape.hours)
    span_us = int(shape.hours * 3600 * 1_000_000)

    def finished(count: int) -> str:  # evenly over [start, now), by seq
        return f"DATE_ADD(:start, INTERVAL FLOOR((seq - :first) * {span_us} / {count}) MICROSECOND)"

    kinds: list[tuple[str, int, str, str]] = [
        ("done", shape.done,
         "queue, taskscript, param, status, priority, ctime, run_at, attempts, worker_host, "
         "worker_pid, claim_token, started_at, finished_at, exit_code, output",
         f"{_QUEUE}, {_SCRIPT}, {_PARAM}, 1, 0, :start, :start, 1, '{HOST}', 4242, "
         f"MD5(seq), DATE_SUB({finished(shape.done)}, INTERVAL (seq % 2000) * 1000 MICROSECOND), "
         f"{finished(shape.done)}, 0, CONCAT('sent ', seq)"),
        ("failed", shape.failed,
         "queue, taskscript, param, status, priority, ctime, run_at, attempts, max_attempts, "
         "worker_host, worker_pid, started_at, finished_at, exit_code, output, error",
         f"{_QUEUE}, {_SCRIPT}, {_PARAM}, 3, 0, :start, :start, 3, 3, '{HOST}', 4242, "
         f"{finished(shape.failed)}, {finished(shape.failed)}, 1, 'boom', "
         f"'ProcessExitError: exit status 1'"),
        ("pending", shape.pending,
         "queue, taskscript, param, status, priority, ctime, run_at",
         f"{_QUEUE}, {_SCRIPT}, {_PARAM}, 0, seq % 3, :recent, "
         f"DATE_SUB(:now, INTERVAL (seq % 3600) SECOND)"),
        ("delayed", shape.delayed,
         "queue, taskscript, param, status, priority, ctime, run_at, attempts",
         f"{_QUEUE}, {_SCRIPT}, {_PARAM}, 0, 0, :recent, "
         f"DATE_ADD(:now, INTERVAL (seq % 86400) SECOND), 1"),
        ("running", shape.running,
         "queue, taskscript, param, status, priority, ctime, run_at, attempts, worker_host, "
         "worker_pid, claim_token, lease_until, started_at",
         f"{_QUEUE}, {_SCRIPT}, {_PARAM}, 2, 0, :recent, :recent, 1, '{HOST}', 4242, "
         f"MD5(seq), DATE_ADD(:now, INTERVAL 60 SECOND), :now"),
    ]
    binds = {"start": sql_time(start), "now": sql_time(now),
             "recent": sql_time(now - timedelta(minutes=30))}
    first_id = 1
    for name, count, cols, values in kinds:
        began = time.perf_counter()
        for lo in range(first_id, first_id + count, CHUNK):
            hi = min(first_id + count - 1, lo + CHUNK - 1)
            with engine.begin() as conn:
                conn.execute(text(f"INSERT INTO queue ({cols}) SELECT {values} "
                                  f"FROM seq_{lo}_to_{hi}"), {**binds, "first": first_id})
        print(f"  {count:>9,} {name} in {time.perf_counter() - began:.1f}s", file=sys.stderr)
        first_id += count


def _fill_runs(engine: Engine, shape: Shape) -> None:
    """A week of mission runs (the default retention), each entry every minute; a few
    shards registered."""
    minutes = 7 * 24 * 60
    base = shape.now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    with engine.begin() as conn:
        for entry in ENTRIES:
            conn.execute(text(
                "INSERT INTO cronqueue_runs (entry, scheduled_at, fired_at, host, pid, outcome) "
                "SELECT :entry, DATE_ADD(:base, INTERVAL seq MINUTE), "
                "DATE_ADD(:base, INTERVAL seq * 60 + 1 SECOND), :host, 1000 + seq % 30000, "
                "'launched 2 shard(s)' "
                f"FROM seq_0_to_{minutes - 1}"),
                {"entry": entry, "base": sql_time(base), "host": HOST})
        for shard in range(4):
            conn.execute(text(
                "INSERT INTO cronqueue_workers (host, pid, entry, shard, total, queues, "
                "heartbeat_at) VALUES (:host, :pid, 'drain-default', :shard, 4, '', :now)"),
                {"host": HOST, "pid": 5000 + shard, "shard": shard,
                 "now": sql_time(shape.now)})


def _fill_rollup(engine: Engine) -> None:
    """The counters as the shards would have left them for these rows (one pass)."""
    from cronqueue.store import rollup
    from cronqueue.store.backends import backend_for

    backend = backend_for(engine)
    with engine.connect() as conn:
        last = int(conn.execute(text("SELECT MAX(id) FROM queue")).scalar_one())
    step = 50_000
    for lo in range(1, last + 1, step):
        with engine.begin() as conn:
            ids = list(conn.execute(text(
                "SELECT id FROM queue WHERE id BETWEEN :lo AND :hi AND status IN (1, 3)"),
                {"lo": lo, "hi": lo + step - 1}).scalars())
            rollup.add_finished(conn, backend, ids, timed=True)


def fill(admin_url: str, database: str, shape: Shape) -> str:
    url = _database_url(admin_url, database)
    admin = create_engine(_database_url(admin_url, None), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
            conn.execute(text(f"CREATE DATABASE {database} CHARACTER SET utf8mb4"))
    finally:
        admin.dispose()
    q = Queue(url)
    q.init_db()
    q.close()
    engine = create_engine(url)
    began = time.perf_counter()
    try:
        _fill_rows(engine, shape)
        _fill_runs(engine, shape)
        _fill_rollup(engine)
        with engine.connect() as conn:  # the statistics a long-lived table would have
            for t in ("queue", "cronqueue_runs", "cronqueue_workers", "cronqueue_rollup"):
                conn.execute(text(f"ANALYZE TABLE {t}")).all()
    finally:
        engine.dispose()
    print(f"filled {database} in {time.perf_counter() - began:.0f}s", file=sys.stderr)
    return url


def _database_url(admin_url: str, database: str | None) -> str:
    if database is not None and not re.fullmatch(r"cq_bench_[a-z0-9_]+", database):
        raise SystemExit(f"--database {database!r}: only cq_bench_* databases are used")
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


# -- timing -----------------------------------------------------------------------------------

@dataclass
class Page:
    name: str
    path: str
    times_ms: list[float] = field(default_factory=list)
    statements: int = 0
    slowest: tuple[float, str, Any] = (0.0, "", None)  # ms, SQL, parameters of a SELECT
    status: int = 0


class Statements:
    """Every statement one request sends, with its time (SQLAlchemy's engine events)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seen: list[tuple[float, str, Any]] = []
        self._began = 0.0

    def _before(self, conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> None:
        self._began = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> None:
        self.seen.append(((time.perf_counter() - self._began) * 1000, sql, params))

    @contextlib.contextmanager
    def watching(self) -> Iterator[list[tuple[float, str, Any]]]:
        self.seen = []
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        try:
            yield self.seen
        finally:
            event.remove(self.engine, "before_cursor_execute", self._before)
            event.remove(self.engine, "after_cursor_execute", self._after)


def pages(engine: Engine) -> list[Page]:
    """Every page of the dashboard, with filters that hit each read path."""
    with engine.connect() as conn:
        done = int(conn.execute(text("SELECT MAX(id) FROM queue WHERE status = 1")).scalar_one())
        failed = int(conn.execute(text("SELECT MIN(id) FROM queue WHERE status = 3"))
                     .scalar_one())
    mid = done // 2
    return [
        Page("overview", "/"),
        Page("overview, 24 h chart", "/?hours=24"),
        Page("tasks", "/tasks"),
        Page("tasks, a page halfway down", f"/tasks?after={mid}"),
        Page("tasks status=pending queue=q3", "/tasks?status=pending&queue=q3"),
        Page("tasks status=done", "/tasks?status=done"),
        Page("tasks status=running", "/tasks?status=running"),
        Page("tasks script=report.py", "/tasks?script=report.py"),
        Page("tasks param substring", "/tasks?param=user4242%40"),
        Page("tasks unique key", "/tasks?unique_key=none-such"),
        Page("tasks time range", "/tasks?since=2000-01-01T00:00:00&until=2000-01-02T00:00:00"),
        Page("task (done)", f"/tasks/{mid}"),
        Page("task (failed)", f"/tasks/{failed}"),
        Page("failed", "/failed"),
        Page("delayed", "/delayed"),
        Page("schedule", "/schedule"),
        Page("workers", "/workers"),
        Page("/metrics", "/metrics"),
        Page("/healthz", "/healthz"),
    ]


def time_pages(url: str, reps: int, log_dir: Path) -> tuple[list[Page], float]:
    """Each page: one request that warms it, then ``reps`` timed (Flask's test client in this
    process: the app's own time, the database's included, no HTTP). The overview's chart counts
    30 uncounted minutes a page on a big table: it is warmed until full first, and that cold
    first page timed on its own."""
    from cronqueue.web.app import create_app

    missions = tuple(MissionEntry(e, "* * * * *", do_queue=DoQueue(total=2)) for e in ENTRIES)
    cfg = replace(load_config(None, db_url=url, log_dir=str(log_dir)), missions=missions)
    q = Queue(config=cfg)
    with q.engine.begin() as conn:  # this host's last mission tick, just now (/healthz)
        conn.execute(text("DELETE FROM cronqueue_ticks WHERE host = :host"), {"host": HOST})
        conn.execute(text("INSERT INTO cronqueue_ticks (host, pid, started_at, finished_at) "
                          "VALUES (:host, 4242, :now, :now)"),
                     {"host": HOST, "now": sql_time(datetime.now(UTC))})
    app = create_app(cfg, queue=q)
    client = app.test_client()
    watch = Statements(q.engine)
    began = time.perf_counter()
    first = client.get("/")
    cold_ms = (time.perf_counter() - began) * 1000
    assert first.status_code == 200, first.status_code
    for _ in range(12):  # 24 h of minutes, 30 a page (most are empty here: fast)
        client.get("/?hours=24")
    out = pages(q.engine)
    for page in out:
        client.get(page.path)
        for _ in range(reps):
            with watch.watching() as seen:
                began = time.perf_counter()
                response = client.get(page.path)
                page.times_ms.append((time.perf_counter() - began) * 1000)
            page.status = response.status_code
            page.statements = len(seen)
            selects = [s for s in seen if re.match(r"\s*SELECT\b", s[1], re.I)]
            top = max(selects, key=lambda s: s[0], default=(0.0, "", None))
            if top[0] > page.slowest[0]:
                page.slowest = top
    q.close()
    return out, cold_ms


# -- plans ------------------------------------------------------------------------------------

def explain(url: str, sql: str, params: Any) -> str:
    """MariaDB's plan of a statement as the app sent it (its parameters bound by the driver)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cur.execute("EXPLAIN " + sql, params)
            cols = [d[0] for d in cur.description]
            rows = [["NULL" if v is None else str(v) for v in r] for r in cur.fetchall()]
            shown = " ".join(cur.mogrify(sql, params).split())
    finally:
        engine.dispose()
    return f"{_abbreviate(shown)}\n\n{table(cols, rows)}"


def _abbreviate(sql: str) -> str:
    """The select list is every column: shortened."""
    sql = re.sub(r"^SELECT .*? FROM", "SELECT ... FROM", sql)
    return sql if len(sql) <= 600 else sql[:600] + " ..."


# -- the report -------------------------------------------------------------------------------

def report(found: list[Page], cold_ms: float, url: str, shape: Shape, reps: int,
           explained: bool) -> str:
    rows = []
    for p in found:
        rows.append([p.name, f"`{p.path}`", str(p.status), f"{statistics.median(p.times_ms):.0f}",
                     f"{max(p.times_ms):.0f}", str(p.statements), f"{p.slowest[0]:.1f}"])
    out = [f"{shape.done:,} done, {shape.failed:,} failed, {shape.pending:,} pending due, "
           f"{shape.delayed:,} delayed, {shape.running} running in {QUEUES} queues (finished "
           f"over the last {shape.hours:g} hours); a week of runs of {len(ENTRIES)} entries "
           f"each minute ({7 * 24 * 60 * len(ENTRIES):,} rows). Median and max of {reps} "
           f"requests per page after one that warms it; the overview's first page (its chart "
           f"not counted yet): {cold_ms:.0f} ms.", "",
           table(["page", "path", "status", "median ms", "max ms", "statements",
                  "slowest SELECT ms"], rows)]
    if explained:
        for p in found:
            if p.slowest[1]:
                out += ["", f"#### {p.name}: its slowest SELECT ({p.slowest[0]:.1f} ms)", "",
                        "```", explain(url, p.slowest[1], p.slowest[2]), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-url", default="mysql+pymysql://root:@127.0.0.1:3306/",
                   help="a MariaDB account that may CREATE/DROP DATABASE")
    p.add_argument("--database", default="cq_bench_web", help="its name (cq_bench_*)")
    p.add_argument("--done", type=int, default=1_000_000)
    p.add_argument("--pending", type=int, default=100_000)
    p.add_argument("--failed", type=int, default=2_000)
    p.add_argument("--delayed", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=7, help="timed requests per page (7)")
    p.add_argument("--reuse", action="store_true", help="time the rows already there")
    p.add_argument("--no-explain", action="store_true")
    p.add_argument("--markdown", type=Path, help="also write the report here")
    p.add_argument("--drop", action="store_true", help="drop the database at the end")
    args = p.parse_args(argv)
    shape = Shape(args.done, args.pending, args.failed, args.delayed, 20, 3.0)
    url = (_database_url(args.admin_url, args.database) if args.reuse
           else fill(args.admin_url, args.database, shape))
    log_dir = Path(f"/tmp/{args.database}-logs")
    try:
        found, cold = time_pages(url, args.reps, log_dir)
        text_out = report(found, cold, url, shape, args.reps, not args.no_explain)
    finally:
        if args.drop:
            admin = create_engine(_database_url(args.admin_url, None),
                                  isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {args.database}"))
            admin.dispose()
    print(text_out, end="")
    if args.markdown:
        args.markdown.write_text(text_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
