"""What every bench/ script shares: /proc, a child's environment and files, simulated minutes,
child processes reaped with their rusage (CPU), the machine and its CPU clock, fresh
databases, statistics and tables. Standard library and SQLAlchemy only; nothing of
cronqueue's internals."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import math
import os
import platform
import select as fdselect
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]


# -- /proc ------------------------------------------------------------------------------------

def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def proc_cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children_of(parent: int) -> list[int]:
    return [pid for pid in pids() if (stat := proc_stat(pid)) is not None and stat[1] == parent]


# -- child processes: environment, files, time ------------------------------------------------

def clean_env(url: str | None = None, **extra: str) -> dict[str, str]:
    """The caller's environment minus every CRONQUEUE_* (their settings must not leak into a
    measurement); ``url`` travels as CRONQUEUE_DB_URL, in the environment, not in argv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONQUEUE_")}
    if url is not None:
        env["CRONQUEUE_DB_URL"] = url
    env.update(extra)
    return env


def write_script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


def toml_str(value: object) -> str:
    """A TOML basic string (JSON's escaping is TOML's)."""
    return json.dumps(str(value))


def past_minute(minutes_back: int) -> datetime:
    """A whole minute ``minutes_back`` minutes ago: simulated ticks (``mission --now T``) start
    there, one minute apart, and stay in the past (a ``--now`` ahead of the clock is refused)."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_back)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class BenchError(Exception):
    """A run that cannot be trusted: a lost or failed task, a process that failed or hung."""


# -- child processes of bench.py -------------------------------------------------------------

@dataclass(frozen=True)
class Finished:
    returncode: int
    rusage: Any  # resource.struct_rusage of the child and the children it reaped
    seconds: float  # from start() to the reap

    @property
    def cpu_s(self) -> float:
        return float(self.rusage.ru_utime + self.rusage.ru_stime)


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
                             f"{_tail(out)}") from None
        proc.returncode = os.waitstatus_to_exitcode(status)
        del self.live[proc.pid]
        done = Finished(proc.returncode, usage, time.perf_counter() - began)
        if check and done.returncode != 0:
            args = [str(a) for a in proc.args] if isinstance(proc.args, list) else [proc.args]
            shown = " ".join(Path(a).name if a.startswith("/") else a for a in map(str, args))
            raise BenchError(f"{shown} exited {done.returncode}.{_tail(out)}")
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
        for pid in children_of(os.getpid()):  # orphans re-parented to us (subreaper)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, TimeoutError):
                wait_rusage(pid, 5)


def _tail(path: Path, size: int = 1500) -> str:
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
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(known: set[int], timeout: float) -> int:
    """Wait for (up to ``timeout``) and reap every orphan child; returns how many."""
    reaped = 0
    deadline = time.monotonic() + timeout
    while pids := [p for p in children_of(os.getpid()) if p not in known]:
        for pid in pids:
            try:
                wait_rusage(pid, max(deadline - time.monotonic(), 0.0))
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
    return reaped


class HwmSampler:
    """Polls the peak resident set (VmHWM) of some processes from /proc while they run: the
    process's own peak, unlike wait4's ru_maxrss, which is the largest of the process and
    every descendant it reaped (and, started by posix_spawn, inherits this process's)."""

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


# -- databases --------------------------------------------------------------------------------

def fresh_database(url: str) -> None:
    """Drop and create the database of ``url`` (a SQLite file: removed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{parsed.database}{suffix}").unlink(missing_ok=True)
        return
    name = parsed.database
    assert name and name.replace("_", "").isalnum(), "database name: letters, digits, _"
    admin = create_engine(parsed._replace(database=None), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    finally:
        admin.dispose()


def sql_time(value: datetime) -> str:
    """A time as the queue table holds it: naive UTC text (what SQLite stores; MariaDB reads
    it into DATETIME(6))."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def as_utc(value: Any) -> datetime:
    """A time read by raw SQL (SQLite: text; MariaDB: a naive datetime), as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a time: {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- the machine and the run ------------------------------------------------------------------

def machine() -> dict[str, str]:
    import sqlalchemy

    return {
        "CPU": _first("/proc/cpuinfo", "model name", ":") or platform.processor() or "?",
        "cores": str(os.cpu_count()),
        "RAM": f"{int((_first('/proc/meminfo', 'MemTotal', ':') or '0').split()[0]) >> 20} GiB",
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "OS": (_first("/etc/os-release", "PRETTY_NAME", "=") or "?").strip('"'),
        "Python": platform.python_version(),
        "SQLAlchemy": sqlalchemy.__version__,
        "cronqueue": f"git {_git_describe()}",
        "load average at start": load_average(),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_header() -> dict[str, Any]:
    """Date, command and machine: the head of every report."""
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", *[_relative(a) for a in sys.argv]]),
            "machine": machine()}


def _relative(arg: str) -> str:
    """An argument as shown: paths in the checkout relative to it, URLs without password."""
    if "://" in arg:
        with contextlib.suppress(Exception):
            return make_url(arg).render_as_string(hide_password=True)
    path = Path(arg)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) \
        else arg


def _first(path: str, key: str, sep: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(sep, 1)[1].strip()
    except OSError:
        pass
    return None


def _git_describe() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


_TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process: the database
    server and anyone else's load included), from /proc/stat. A difference of two readings
    over a run is that run's machine CPU."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / _TICK


# -- statistics and tables --------------------------------------------------------------------

def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded so that it also reads as plain text."""
    cells = [[c.replace("|", "\\|") for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
