"""bench.py's harness: sizes, backends (fresh databases), the run's context (shards, queues),
samples and repetitions. Talks to cronqueue through ``Queue``, the CLI and the queue table as
the README documents it."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from common import (
    BenchError,
    Finished,
    Procs,
    as_utc,
    clean_env,
    toml_str,
    write_script,
)
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Status

HERE = Path(__file__).resolve().parent
BOTH_BACKENDS = ("sqlite", "mariadb")
NO_DB = "no db"  # the "backend" of a measurement that uses no database (process floors)
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full run, or ``--quick`` for a smoke test)."""

    drain: int = 2000
    drain_big: int = 20_000  # the drain_big section (repeated --big-repeat times)
    add_calls: int = 3000
    add_many_rows: int = 100_000
    backlog_small: int = 10_000  # pending rows
    backlog_big: int = 1_000_000  # pending rows, plus as many done rows
    claims: int = 40  # timed claims per repetition (plus one warm-up)
    claim_limit: int = 100
    backlog_drain: int = 2000
    latency_tasks: int = 200
    python_tasks: int = 500
    mission_ticks: int = 5
    floor_runs: int = 5  # interpreter start-ups per floor variant and repetition (median)
    fork_loops: int = 1000  # fork + trivial task code + _exit + wait4 rounds
    exec_loops: int = 100  # subprocess.run([python, "-c", "pass"]) rounds
    process_timeout: float = 900.0  # seconds any one child process may take


FULL = Sizes()
QUICK = Sizes(drain=100, drain_big=200, add_calls=200, add_many_rows=5000, backlog_small=2000,
              backlog_big=20_000, claims=5, backlog_drain=100, latency_tasks=15,
              python_tasks=30, mission_ticks=2, floor_runs=3, fork_loops=100, exec_loops=10,
              process_timeout=180.0)


@dataclass
class Sample:
    """One measurement: a variant of a section on a backend in one repetition."""

    section: str
    backend: str
    variant: str
    rep: int
    metrics: dict[str, float]


@dataclass
class SectionResult:
    samples: list[Sample] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # variant -> display name
    extras: dict[str, str] = field(default_factory=dict)  # title -> preformatted output
    flags: dict[str, Any] = field(default_factory=dict)  # facts the targets look at


# -- backends ---------------------------------------------------------------------------------

class Backend:
    """Hands out fresh, empty databases of one kind and drops them again."""

    def __init__(self, kind: str, root: Path, mysql_url: str) -> None:
        self.kind = kind
        self.root = root / "db"
        self.root.mkdir(parents=True, exist_ok=True)
        self._token = secrets.token_hex(3)
        self._counter = itertools.count(1)
        self._live: set[str] = set()
        self._admin: Engine | None = None
        if kind == "mariadb":
            server = make_url(mysql_url)
            if server.drivername in ("mysql", "mariadb"):
                server = server.set(drivername="mysql+pymysql")
            self._server = server._replace(database=None)  # .set(database=None) keeps it

    def fresh(self, label: str) -> str:
        """The URL of a new empty database (no tables yet)."""
        name = f"{re.sub(r'[^a-z0-9]', '', label.lower())[:20]}{next(self._counter)}"
        if self.kind == "sqlite":
            path = self.root / f"{name}.db"
            _remove_sqlite(path)
            url = f"sqlite:///{path}"
        else:
            db = f"cq_bench_{self._token}_{name}"
            with self.admin().connect() as conn:
                conn.execute(text(f"CREATE DATABASE {db} CHARACTER SET utf8mb4"))
            url = self._server.set(database=db).render_as_string(hide_password=False)
        self._live.add(url)
        return url

    def drop(self, url: str) -> None:
        """Drop a database of ours; forgotten only once gone (drop_all retries the rest)."""
        if self.kind == "sqlite":
            _remove_sqlite(Path(make_url(url).database or ""))
        else:
            db = make_url(url).database
            assert db and db.startswith(f"cq_bench_{self._token}_"), db
            with self.admin().connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {db}"))
        self._live.discard(url)

    def drop_all(self) -> None:
        """At the end: every database this run created, even one whose URL was lost."""
        for url in list(self._live):
            with contextlib.suppress(Exception):
                self.drop(url)
        if self.kind == "mariadb":
            with contextlib.suppress(Exception), self.admin().connect() as conn:
                prefix = f"cq_bench_{self._token}_"
                names = conn.execute(text("SHOW DATABASES LIKE :pattern"),
                                     {"pattern": prefix.replace("_", "\\_") + "%"}).scalars()
                for name in [n for n in names if n.startswith(prefix)]:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        if self._admin is not None:
            self._admin.dispose()

    def boot_time(self, wait: float = 120.0) -> float | None:
        """When the MariaDB server started (epoch seconds), waiting up to ``wait`` seconds for
        it to answer: a change between two calls means it restarted in between. SQLite: None.
        """
        if self.kind == "sqlite":
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                with self.admin().connect() as conn:
                    return float(conn.execute(text(
                        "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM "
                        "information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'"
                    )).scalar_one())
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def admin(self) -> Engine:
        if self._admin is None:
            self._admin = create_engine(self._server, isolation_level="AUTOCOMMIT",
                                        pool_pre_ping=True)
        return self._admin

    def version(self) -> str:
        if self.kind == "sqlite":
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        with self.admin().connect() as conn:
            version, pool, flush, sync_binlog, log_bin = conn.execute(text(
                "SELECT VERSION(), @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit,"
                " @@sync_binlog, @@log_bin")).one()
        return (f"MariaDB {version} (innodb_buffer_pool_size={int(pool or 0) >> 20} MiB, "
                f"innodb_flush_log_at_trx_commit={flush}, sync_binlog={sync_binlog}, "
                f"log_bin={log_bin})")

    def driver_params(self, url: str) -> dict[str, Any]:
        """Connection parameters for a bare driver (sqlite3 / PyMySQL): the floors and the
        naive queue's workers connect without SQLAlchemy."""
        parsed = make_url(url)
        if self.kind == "sqlite":
            return {"backend": "sqlite", "path": parsed.database}
        return {"backend": "mysql", "host": parsed.host or "127.0.0.1",
                "port": parsed.port or 3306, "user": parsed.username or "root",
                "password": parsed.password or "", "database": parsed.database}


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- the benchmark context --------------------------------------------------------------------

@dataclass
class Ctx:
    sizes: Sizes
    repeat: int
    root: Path
    backends: dict[str, Backend]
    procs: Procs
    big_repeat: int = 2  # repetitions of the drain_big section
    peers: tuple[str, ...] = ("naive", "huey")  # the drain sections' peer queues
    redis_url: str = "redis://127.0.0.1:6379/15"  # the RQ peer's Redis (--peers ...,rq)
    t0: float = field(default_factory=time.monotonic)

    @property
    def task_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def config_file(self) -> Path:
        """task_dir and log_dir; the URL comes with each Queue or shard."""
        path = self.root / "cronqueue.toml"
        if not path.exists():
            path.write_text(f"task_dir = {toml_str(self.task_dir)}\n"
                            f"log_dir = {toml_str(self.log_dir)}\n")
        return path

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    def queue(self, url: str) -> Queue:
        return Queue(url, config_file=str(self.config_file))

    def shard_argv(self, total: int, shard: int, *extra: str) -> list[str]:
        return [sys.executable, "-m", "cronqueue", "work", "--config", str(self.config_file),
                "--total", str(total), "--shard", str(shard), "--log-level", "warning", *extra]

    def start_shards(self, url: str, total: int, *extra: str,
                     env: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
        return [self.procs.start(self.shard_argv(total, i, *extra), name=f"shard{i}",
                                 env=clean_env(url, **(env or {})), cwd=self.root)
                for i in range(total)]

    def run_shards(self, url: str, total: int = 2,
                   env: dict[str, str] | None = None) -> tuple[float, list[Finished]]:
        """Launch ``total`` burst shards at once; seconds until the last one has exited."""
        began = time.perf_counter()
        procs = self.start_shards(url, total, env=env)
        finished = [self.procs.wait(p) for p in procs]
        return time.perf_counter() - began, finished


def enqueue(ctx: Ctx, url: str, items: Iterable[dict[str, Any]]) -> list[int]:
    """Create the tables and enqueue ``items`` with add_many (one transaction)."""
    with ctx.queue(url) as q:
        q.init_db()
        return q.add_many(items)


def reader(url: str) -> Engine:
    """An engine for the benchmark's own raw reads of the queue table. A plain engine: on
    SQLite cronqueue opens every transaction with BEGIN IMMEDIATE, and a poll must not take
    the write lock from the shards it is watching."""
    return create_engine(url, pool_pre_ping=True)


def status_counts(url: str, first_id: int = 0, last_id: int = 2**62) -> dict[str, int]:
    engine = reader(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT status, COUNT(*) FROM queue WHERE id BETWEEN :a AND :b GROUP BY status"),
                {"a": first_id, "b": last_id}).all()
    finally:
        engine.dispose()
    return {Status(s).name.lower(): int(n) for s, n in rows}


def require_done(url: str, expected: int, what: str, first_id: int = 0,
                 last_id: int = 2**62) -> None:
    """Every task of the run must be done: a lost or failed task makes the run invalid."""
    counts = status_counts(url, first_id, last_id)
    if counts.get("done", 0) != expected or sum(counts.values()) != expected:
        raise BenchError(f"{what}: expected {expected} tasks done, found {counts}")


def run_times(url: str) -> tuple[int, datetime, datetime, datetime]:
    """Of the done rows: how many, the first start, the first and the last finish."""
    engine = reader(url)
    try:
        with engine.connect() as conn:
            n, started, first, last = conn.execute(text(
                "SELECT COUNT(*), MIN(started_at), MIN(finished_at), MAX(finished_at) "
                "FROM queue WHERE status = 1")).one()
    finally:
        engine.dispose()
    if not n:
        raise BenchError("no task is done")
    return int(n), as_utc(started), as_utc(first), as_utc(last)


def steady_rate(n: int, first: datetime, last: datetime) -> float:
    """Tasks per second between the first and the last finish: the rate once the shards are
    up (their interpreter start-up excluded)."""
    span = (last - first).total_seconds()
    return (n - 1) / span if n > 1 and span > 0 else math.inf


def drain_params(n: int) -> list[dict[str, Any]]:
    return [{"to": f"user{i}@example.com", "n": i} for i in range(n)]


def param_text(param: Any) -> str:
    """The JSON text cronqueue stores and passes as argv[1] (compact, UTF-8)."""
    return json.dumps(param, ensure_ascii=False, separators=(",", ":"))


# -- repetitions ------------------------------------------------------------------------------

def rotated(items: Sequence[T], rep: int) -> list[T]:
    """Repetition ``rep`` runs the variants starting at a different one each time, so that
    drift (other load on the machine, a warming cache) hits every variant alike."""
    if not items:
        return []
    k = rep % len(items)
    return [*items[k:], *items[:k]]


def run_rotated(ctx: Ctx, section: str, variants: Sequence[tuple[str, str]],
                measure: Callable[[str, str, int], dict[str, float]],
                repeat: int | None = None) -> list[Sample]:
    """Every variant ``repeat`` times (default ``ctx.repeat``), rotated."""
    samples = []
    repeat = ctx.repeat if repeat is None else repeat
    for rep in range(repeat):
        for backend, variant in rotated(variants, rep):
            metrics = measure_guarded(ctx, backend, functools.partial(measure, backend,
                                                                      variant, rep))
            samples.append(Sample(section, backend, variant, rep, metrics))
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            ctx.log(f"{section} {backend} {variant} rep {rep + 1}/{repeat}: {shown}")
    return samples


def measure_guarded(ctx: Ctx, backend: str,
                    measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run one measurement; if the MariaDB server restarted meanwhile (someone else's test
    may restart a shared server), the numbers are void: wait for it and measure again, once.
    Shards ride out an outage by design, so a restart would otherwise only show up as a slow
    run. A measurement without a database (backend ``NO_DB``) runs once, unguarded."""
    if backend == NO_DB:
        return measure()
    b = ctx.backends[backend]
    for attempt in (1, 2):
        before = b.boot_time()
        try:
            metrics = measure()
        except Exception:
            if attempt == 2 or before is None or b.boot_time() == before:
                raise
            ctx.log(f"{backend} server restarted during the measurement (it failed); again")
            continue
        if before is None or abs((b.boot_time() or 0) - before) < 2:
            return metrics
        if attempt == 2:
            raise BenchError(f"the {backend} server restarted during the measurement, twice")
        ctx.log(f"{backend} server restarted during the measurement; measuring again")
    raise AssertionError("unreachable")


def paired_ratios(samples: Sequence[Sample], section: str, num: str, den: str, metric: str,
                  variant: str, key: str = "ratio") -> list[Sample]:
    """Per backend and repetition: metric of ``num`` / metric of ``den`` (a paired ratio)."""
    by = {(s.backend, s.variant, s.rep): s.metrics[metric] for s in samples
          if metric in s.metrics}
    out = []
    for (backend, name, rep), value in by.items():
        if name != num or (backend, den, rep) not in by:
            continue
        base = by[(backend, den, rep)]
        out.append(Sample(section, backend, variant, rep,
                          {key: value / base if base else math.inf}))
    return out


def merge_samples(samples: list[Sample]) -> list[Sample]:
    """One sample per (backend, variant, rep), the metrics of all merged."""
    merged: dict[tuple[str, str, int], Sample] = {}
    for sample in samples:
        key = (sample.backend, sample.variant, sample.rep)
        if key in merged:
            merged[key].metrics.update(sample.metrics)
        else:
            merged[key] = sample
    return list(merged.values())


def install_tasks(task_dir: Path) -> None:
    """``true`` (a copy of /bin/true, mode 755) and the Python task (mode 644: run by the
    interpreter, the path CRONQUEUE_PYTHON_FORK speeds up)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.path.realpath(shutil.which("true") or "/bin/true"), task_dir / "true")
    (task_dir / "true").chmod(0o755)
    write_script(task_dir / "pytask.py", PYTHON_TASK, mode=0o644)


# The probe (first task only) tells whether the script ran in a fresh interpreter (exec path:
# its own command line names the script) or in a forked one (cronqueue modules preloaded).
PYTHON_TASK = '''\
import json
import sys

param = json.loads(sys.argv[1])
if "probe" in param:
    import os

    with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
        own = __file__.encode() in fh.read()
    preloaded = any(name.split(".")[0] == "cronqueue" for name in sys.modules)
    with open(param["probe"], "w") as out:
        out.write("fork" if preloaded or not own else "exec")
'''
