"""Plumbing shared by the benchmark sections: sizes, backends (fresh databases), child
processes (reaped with ``wait4`` for their rusage), samples and statistics. See bench.py."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import math
import os
import re
import secrets
import select as fdselect
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url

from cronqueue import Queue
from cronqueue.config import Config, WorkerConfig
from cronqueue.model import Status
from cronqueue.store.schema import queue_table

HERE = Path(__file__).resolve().parent
BOTH_BACKENDS = ("sqlite", "mariadb")
T = TypeVar("T")
_PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    """A run that cannot be trusted: a lost or failed task, a process that failed or hung."""


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full run, or ``--quick`` for a smoke test)."""

    drain: int = 2000
    add_calls: int = 3000
    add_many_rows: int = 100_000
    backlog_small: int = 10_000  # pending rows
    backlog_big: int = 1_000_000  # pending rows, plus as many done rows
    claims: int = 40  # timed Claimer.claim() calls per repetition (plus one warm-up)
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
QUICK = Sizes(drain=100, add_calls=200, add_many_rows=5000, backlog_small=2000,
              backlog_big=20_000, claims=5, backlog_drain=100, latency_tasks=15,
              python_tasks=30, mission_ticks=2, floor_runs=3, fork_loops=100, exec_loops=10,
              process_timeout=180.0)
NO_DB = "no db"  # the "backend" of a measurement that uses no database (process floors)


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
    notes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # variant -> display name
    extras: dict[str, str] = field(default_factory=dict)  # title -> preformatted text
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
            self._server = server.set(database=None)

    def fresh(self, label: str) -> str:
        """The URL of a new empty database (no tables yet)."""
        name = f"{re.sub(r'[^a-z0-9]', '', label.lower())[:20]}{next(self._counter)}"
        if self.kind == "sqlite":
            path = self.root / f"{name}.db"
            self._remove_files(path)
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
            self._remove_files(Path(make_url(url).database or ""))
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
            version = conn.execute(text("SELECT VERSION()")).scalar()
            pool = conn.execute(text("SELECT @@innodb_buffer_pool_size")).scalar()
            flush = conn.execute(text("SELECT @@innodb_flush_log_at_trx_commit")).scalar()
        return (f"MariaDB {version} (innodb_buffer_pool_size={int(pool or 0) >> 20} MiB, "
                f"innodb_flush_log_at_trx_commit={flush})")

    def naive_target(self, url: str) -> dict[str, Any]:
        """Connection parameters for naive_worker.py (plain sqlite3 / pymysql)."""
        parsed = make_url(url)
        if self.kind == "sqlite":
            return {"backend": "sqlite", "path": parsed.database}
        return {"backend": "mysql", "host": parsed.host or "127.0.0.1",
                "port": parsed.port or 3306, "user": parsed.username or "root",
                "password": parsed.password or "", "database": parsed.database}

    @staticmethod
    def _remove_files(path: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- child processes --------------------------------------------------------------------------

@dataclass(frozen=True)
class Finished:
    returncode: int
    rusage: Any  # resource.struct_rusage of the child and the children it reaped
    seconds: float  # from start() to the reap

    @property
    def cpu_s(self) -> float:
        return float(self.rusage.ru_utime + self.rusage.ru_stime)

    @property
    def maxrss_kib(self) -> int:
        return int(self.rusage.ru_maxrss)


class Procs:
    """Every child the benchmark starts, so that an error or Ctrl-C ends them (by pid)."""

    def __init__(self, log_dir: Path, timeout: float) -> None:
        self.log_dir = log_dir
        self.timeout = timeout
        self.live: dict[int, tuple[subprocess.Popen[bytes], float, Path]] = {}
        self._seq = itertools.count(1)

    def start(self, argv: Sequence[str], *, name: str, env: dict[str, str] | None = None,
              cwd: Path | None = None, stdin: IO[bytes] | None = None
              ) -> subprocess.Popen[bytes]:
        out = self.log_dir / f"{next(self._seq):04d}-{name}.log"
        with open(out, "wb") as fh:
            proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=fh,
                                    stderr=subprocess.STDOUT,
                                    stdin=stdin if stdin is not None else subprocess.DEVNULL)
        self.live[proc.pid] = (proc, time.perf_counter(), out)
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float | None = None,
             check: bool = True) -> Finished:
        """Reap ``proc`` with ``wait4`` (its own rusage); kill it if it overruns."""
        _, began, out = self.live[proc.pid]
        try:
            status, usage = wait_rusage(proc.pid, timeout or self.timeout)
        except TimeoutError:
            self.kill(proc)
            raise BenchError(f"{proc.args!r} ran past {timeout or self.timeout:g}s; killed."
                             f"{self.tail(out)}") from None
        proc.returncode = os.waitstatus_to_exitcode(status)
        del self.live[proc.pid]
        done = Finished(proc.returncode, usage, time.perf_counter() - began)
        if check and done.returncode != 0:
            raise BenchError(f"{_short_argv(proc.args)} exited {done.returncode}."
                             f"{self.tail(out)}")
        return done

    def signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.signal(proc, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, TimeoutError):
            wait_rusage(proc.pid, 10)
        proc.returncode = -9
        self.live.pop(proc.pid, None)

    def kill_all(self) -> None:
        for proc, _, _ in list(self.live.values()):
            self.kill(proc)
        for pid in orphan_children(set()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, TimeoutError):
                wait_rusage(pid, 5)

    @staticmethod
    def tail(path: Path, size: int = 1500) -> str:
        try:
            data = path.read_bytes()[-size:].decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"\n--- {path.name} (tail) ---\n{data}" if data else ""


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the child exited? Leaves it unreaped (``Popen.poll`` would reap it and lose the
    rusage that ``Procs.wait`` reads)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _short_argv(argv: Any) -> str:
    parts = [str(a) for a in argv] if isinstance(argv, list | tuple) else [str(argv)]
    return " ".join(Path(p).name if p.startswith("/") else p for p in parts)


def wait_rusage(pid: int, timeout: float) -> tuple[int, Any]:
    """``wait4`` with a timeout: a pidfd tells when the child exits (no polling delay)."""
    deadline = time.monotonic() + timeout
    try:
        fd: int | None = os.pidfd_open(pid)
    except OSError:
        fd = None
    try:
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got == pid:
                return status, usage
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(pid)
            if fd is not None:
                fdselect.select([fd], [], [], left)
            else:
                time.sleep(min(left, 0.002))
    finally:
        if fd is not None:
            os.close(fd)


def become_subreaper() -> bool:
    """Orphans of our tree (the shards a mission launches detached) are re-parented to us, so
    that we can reap them: the whole run stays one process tree."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def orphan_children(known: set[int]) -> list[int]:
    """Our children that no Popen of ours owns (re-parented orphans)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in known:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry.name))
    return found


def reap_orphans(known: set[int], timeout: float) -> int:
    """Wait for (up to ``timeout``) and reap every orphan child; returns how many."""
    reaped = 0
    deadline = time.monotonic() + timeout
    while True:
        pids = orphan_children(known)
        if not pids:
            return reaped
        for pid in pids:
            left = max(deadline - time.monotonic(), 0.0)
            try:
                wait_rusage(pid, left)
                reaped += 1
            except ChildProcessError:
                continue
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError, TimeoutError):
                    wait_rusage(pid, 5)
                raise BenchError(f"orphan process {pid} still running after {timeout:g}s; "
                                 "killed") from None


# -- the benchmark context --------------------------------------------------------------------

@dataclass
class Ctx:
    sizes: Sizes
    repeat: int
    root: Path
    backends: dict[str, Backend]
    procs: Procs
    quick: bool
    t0: float = field(default_factory=time.monotonic)

    @property
    def task_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    def config(self, url: str) -> Config:
        """A Config built in code: no cronqueue.toml or CRONQUEUE_* is read."""
        return Config(db_url=url, task_dir=self.task_dir, log_dir=self.log_dir,
                      worker=WorkerConfig()).validate()

    def queue(self, url: str) -> Queue:
        return Queue(config=self.config(url))

    def env(self, url: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a cronqueue child: the caller's minus every CRONQUEUE_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONQUEUE_")}
        if url is not None:
            env["CRONQUEUE_DB_URL"] = url  # the URL travels in the environment, not argv
        env.update(extra)
        return env

    def shard_argv(self, total: int, shard: int, *extra: str) -> list[str]:
        return [sys.executable, "-m", "cronqueue", "work", "--task-dir", str(self.task_dir),
                "--log-dir", str(self.log_dir), "--total", str(total), "--shard", str(shard),
                "--log-level", "warning", *extra]

    def start_shards(self, url: str, total: int, *extra: str,
                     env: dict[str, str] | None = None) -> list[subprocess.Popen[bytes]]:
        return [self.procs.start(self.shard_argv(total, i, *extra), name=f"shard{i}",
                                 env=self.env(url, **(env or {})), cwd=self.root)
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
    """An engine for the benchmark's own reads. Not cronqueue's make_engine: on SQLite that
    opens every transaction with BEGIN IMMEDIATE, and a poll must not take the write lock
    from the shards it is watching."""
    return create_engine(url, pool_pre_ping=True)


def status_counts(url: str, first_id: int = 0, last_id: int = 2**62) -> dict[str, int]:
    engine = reader(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(queue_table.c.status, func.count())
                .where(queue_table.c.id.between(first_id, last_id))
                .group_by(queue_table.c.status)).all()
    finally:
        engine.dispose()
    return {Status(s).name.lower(): int(n) for s, n in rows}


def require_done(url: str, expected: int, what: str, first_id: int = 0,
                 last_id: int = 2**62) -> None:
    """Every task of the run must be done: a lost or failed task makes the run invalid."""
    counts = status_counts(url, first_id, last_id)
    if counts.get("done", 0) != expected or sum(counts.values()) != expected:
        raise BenchError(f"{what}: expected {expected} tasks done, found {counts}")


def steady_rate(url: str) -> float:
    """Tasks per second between the first and the last finish of the done rows: the rate
    once the shards are up (their interpreter start-up excluded)."""
    engine = reader(url)
    try:
        with engine.connect() as conn:
            n, first, last = conn.execute(
                select(func.count(), func.min(queue_table.c.finished_at),
                       func.max(queue_table.c.finished_at))
                .where(queue_table.c.status == int(Status.DONE))).one()
    finally:
        engine.dispose()
    span = (last - first).total_seconds() if n > 1 else 0.0
    return (n - 1) / span if span > 0 else math.inf


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


def drain_params(n: int) -> list[dict[str, Any]]:
    return [{"to": f"user{i}@example.com", "n": i} for i in range(n)]


def param_text(param: Any) -> str:
    """The JSON text cronqueue stores and passes as argv[1] (compact, UTF-8)."""
    return json.dumps(param, ensure_ascii=False, separators=(",", ":"))


# -- repetitions and statistics ---------------------------------------------------------------

def rotated(items: Sequence[T], rep: int) -> list[T]:
    """Repetition ``rep`` runs the variants starting at a different one each time, so that
    drift (other load on the machine, a warming cache) hits every variant alike."""
    if not items:
        return []
    k = rep % len(items)
    return [*items[k:], *items[:k]]


def run_rotated(ctx: Ctx, section: str, variants: Sequence[tuple[str, str]],
                measure: Callable[[str, str, int], dict[str, float]]) -> list[Sample]:
    samples = []
    for rep in range(ctx.repeat):
        for backend, variant in rotated(variants, rep):
            metrics = measure_guarded(ctx, backend, functools.partial(measure, backend,
                                                                      variant, rep))
            samples.append(Sample(section, backend, variant, rep, metrics))
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            ctx.log(f"{section} {backend} {variant} rep {rep + 1}/{ctx.repeat}: {shown}")
    return samples


def measure_guarded(ctx: Ctx, backend: str,
                    measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run one measurement; if the MariaDB server restarted meanwhile (someone else's test
    may restart the shared server), the numbers are void: wait for it and measure again,
    once. Shards ride out an outage by design, so a restart would otherwise only show up as
    a slow run. A measurement without a database (backend ``NO_DB``) runs once, unguarded."""
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


class HwmSampler:
    """Polls the peak resident set (VmHWM) of some processes from /proc while they run: the
    process's own peak, unlike wait4's ru_maxrss, which is the largest of the process and
    every descendant it reaped."""

    def __init__(self, pids: Sequence[int], interval: float = 0.02) -> None:
        self.peaks = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for pid in self.peaks:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peaks[pid] = max(self.peaks[pid], int(line.split()[1]))

    def stop(self) -> dict[int, int]:
        """KiB per pid (0 if never read)."""
        self._stop.set()
        self._thread.join()
        return self.peaks


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
        ratio = value / base if base else math.inf
        out.append(Sample(section, backend, variant, rep, {key: ratio}))
    return out


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def install_tasks(task_dir: Path) -> None:
    """``true`` (a copy of /bin/true, mode 755) and the Python task (mode 644: run by the
    interpreter, the path CRONQUEUE_PYTHON_FORK speeds up)."""
    task_dir.mkdir(parents=True, exist_ok=True)
    true = shutil.which("true") or "/bin/true"
    shutil.copyfile(os.path.realpath(true), task_dir / "true")
    (task_dir / "true").chmod(0o755)
    (task_dir / "pytask.py").write_text(PYTHON_TASK)
    (task_dir / "pytask.py").chmod(0o644)


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


def lease() -> timedelta:
    return timedelta(seconds=WorkerConfig().lease)
