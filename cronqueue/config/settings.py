"""The configuration's values: ``Config`` and its parts, their defaults, bounds and
``validate()``. Where the values come from: ``layers`` (flag > environment > file > default)
and ``parse`` (the TOML file)."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronqueue.config.alerts import AlertsConfig, HealthConfig
from cronqueue.config.web import WebConfig
from cronqueue.decode import INT_MAX
from cronqueue.errors import ConfigError
from cronqueue.retry import RetryPolicy
from cronqueue.store.engine import normalize_url, redact

# How a task script that is not executable itself is run, by extension.
DEFAULT_INTERPRETERS: dict[str, list[str]] = {
    ".py": [sys.executable],
    ".sh": ["sh"],
    ".php": ["php"],
}
DEFAULT_DB_FILE = "cronqueue.db"  # in the working directory
DEFAULT_DB_URL = f"sqlite:///{DEFAULT_DB_FILE}"
DEFAULT_CONFIG_NAME = "cronqueue.toml"
MISSION_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CATCH_UP_POLICIES = ("latest", "skip")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_AGE = 100 * 365 * 86400  # seconds; beyond it ``now - age`` leaves the datetime range
# Bounds of every number a shard or the mission computes with: beyond them a value would
# overflow a datetime (``now + backoff``), a database integer or the host (shards to start).
MAX_SECONDS = 366 * 86400  # any duration setting: a year and a day
MAX_SHARDS = 1024  # do_queue.total and `work --total`
MAX_BATCH = 10_000  # worker.batch, do_queue.batch and `work --batch`


def parse_age(text: str | int | float, maximum: float = MAX_AGE) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (a number alone is seconds), at most
    ``maximum`` seconds. Raises ``ValueError`` with a readable reason."""
    if isinstance(text, int | float) and not isinstance(text, bool) and text >= 0:
        seconds = float(text)
    else:
        match = _AGE_RE.fullmatch(text.strip().lower()) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"bad age {text!r} (examples: 3600, 15m, 12h, 7d)")
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
    if not seconds <= maximum:  # also inf
        bound = "100 years" if maximum == MAX_AGE else f"{maximum:.0f} seconds"
        raise ValueError(f"age {text!r} is too large (at most {bound})")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class WorkerConfig:
    """Defaults for tasks and shards; ``[worker]`` in the file."""

    timeout: int = 600  # seconds a task may run (per task: add(timeout=...))
    max_attempts: int = 3  # per task: add(max_attempts=...)
    batch: int = 100  # rows one claim takes
    backoff: float = 10.0  # first retry delay, seconds; doubles per attempt, +0-25 % jitter
    backoff_max: float = 3600.0
    poll_interval: float = 0.5  # with --max-seconds: how often an idle shard looks again
    lease: int = 60  # seconds a claim lives without heartbeat before another host rescues it
    outage_wait: float = 300.0  # a burst shard waits this long for an unreachable database
    stop_grace: float = 600.0  # after a first TERM, the running task may finish within this
    kill_grace: float = 5.0  # TERM → KILL delay when a task is timed out or stopped hard
    heartbeat: float = 5.0  # seconds between a shard's heartbeats (workers table)
    output_tail: int = 4096  # bytes of output kept on the row
    # Group commit (see cronqueue/ledger.py): starts and outcomes of up to flush_every tasks
    # are written in one commit, at the latest flush_interval seconds after the oldest
    # outcome. After a kill -9 of the shard, at most that much finished work runs again.
    # flush_every = 1 commits every task on its own.
    flush_every: int = 50
    flush_interval: float = 1.0
    max_log_bytes: int = 64 * 1024 * 1024  # bytes of one task's output kept in the day log
    # Python fast path (see cronqueue/forkserver/): .py scripts run in children forked from
    # a warm interpreter instead of a fresh one each. python_preload is obsolete: accepted (a
    # config naming it still loads), ignored, and the shard logs that it is.
    python_fork: bool = False
    python_preload: tuple[str, ...] = ()

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of these settings (the one place it is built from them)."""
        return RetryPolicy(self.max_attempts, self.backoff, self.backoff_max)

    def validate(self) -> None:
        if not isinstance(self.python_fork, bool):
            raise ConfigError(f"worker.python_fork: expected true or false, got "
                              f"{self.python_fork!r}")
        if not isinstance(self.python_preload, tuple | list) or not all(
                isinstance(m, str) and _MODULE_RE.fullmatch(m) for m in self.python_preload):
            raise ConfigError("worker.python_preload: expected a list of module names, got "
                              f"{self.python_preload!r}")
        for f in fields(self):
            if f.name in ("python_fork", "python_preload"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"worker.{f.name}: expected a number, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ConfigError(f"worker.{f.name}: expected an integer, got {value!r}")
            check_bounds(f"worker.{f.name}", value, WORKER_MAXIMA[f.name])
            if value < WORKER_MINIMA.get(f.name, 0):
                raise ConfigError(f"worker.{f.name}: must be at least "
                                  f"{WORKER_MINIMA[f.name]:g}, got {value!r}")
        if self.backoff_max < self.backoff:
            raise ConfigError("worker.backoff_max: must be >= worker.backoff")
        if self.heartbeat * 3 > self.lease:
            raise ConfigError("worker.lease: must be at least 3 heartbeats "
                              f"({3 * self.heartbeat:g}s), got {self.lease}")


WORKER_MAXIMA: dict[str, float] = {
    "timeout": MAX_SECONDS, "max_attempts": INT_MAX, "batch": MAX_BATCH,
    "backoff": MAX_SECONDS, "backoff_max": MAX_SECONDS, "poll_interval": MAX_SECONDS,
    "lease": MAX_SECONDS, "outage_wait": MAX_SECONDS, "stop_grace": MAX_SECONDS,
    "kill_grace": MAX_SECONDS, "heartbeat": MAX_SECONDS // 3, "output_tail": 16 * 1024 * 1024,
    "flush_every": MAX_BATCH, "flush_interval": MAX_SECONDS, "max_log_bytes": 2**40,
}


# Intervals of loops that write to or query the database: heartbeat = 1e-7 passed check and a
# shard then updated its workers row in a busy loop (a CPU and the database server's time);
# poll_interval the same with claims.
WORKER_MINIMA: dict[str, float] = {"heartbeat": 0.01, "poll_interval": 0.01}


def check_bounds(key: str, value: float, maximum: float) -> None:
    """``0 < value <= maximum`` and finite (not inf, not nan), else a ConfigError naming
    ``key``."""
    if not (math.isfinite(value) and 0 < value <= maximum):
        limit = f"{maximum:g}" if isinstance(maximum, float) else str(maximum)
        raise ConfigError(f"{key}: must be a number > 0 and <= {limit}, got {value!r}")


@dataclass(frozen=True)
class DoQueue:
    total: int
    queues: tuple[str, ...] = ()
    max_seconds: float | None = None
    batch: int | None = None


@dataclass(frozen=True)
class AddAction:
    taskscript: str
    param: Any = None
    priority: int = 0
    queue: str = "default"
    max_attempts: int | None = None
    timeout: int | None = None


@dataclass(frozen=True)
class MissionEntry:
    name: str
    cron: str
    do_queue: DoQueue | None = None
    add: AddAction | None = None
    # When ticks were missed (machine down, cron stopped): "latest" runs once for the most
    # recent missed time if it is at most catch_up_window old; "skip" never catches up.
    catch_up: str = "latest"
    catch_up_window: float = 3600.0
    # Alerts (``[alerts]``, cronqueue/alerts/): a run longer than max_runtime seconds (an
    # ``add`` entry's task, or a ``do_queue`` entry's shard still running), or an ``add``
    # entry's task done in less than min_runtime seconds.
    max_runtime: float | None = None
    min_runtime: float | None = None


@dataclass(frozen=True)
class Retention:
    """How long finished tasks (and mission run records) are kept; None = forever.
    The mission purges by these at every tick; ``[retention]`` in the file."""

    done: float | None = 7 * 86400
    failed: float | None = 30 * 86400
    cancelled: float | None = 7 * 86400
    runs: float | None = 7 * 86400


@dataclass(frozen=True)
class Origin:
    """Where a loaded configuration came from: how its file was found (``argument``,
    ``CRONQUEUE_CONFIG``, ``./cronqueue.toml``, or ``none``) and which layer gave its database
    URL (``argument``, ``CRONQUEUE_DB_URL``, ``config file``, ``default``)."""

    file: str = "none"
    db_url: str = "default"


@dataclass(frozen=True)
class Config:
    db_url: str = DEFAULT_DB_URL
    task_dir: Path = Path("tasks")
    log_dir: Path = Path("logs")
    timezone: str = "UTC"
    interpreters: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {k: tuple(v) for k, v in DEFAULT_INTERPRETERS.items()})
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    retention: Retention = field(default_factory=Retention)
    missions: tuple[MissionEntry, ...] = ()
    web: WebConfig = field(default_factory=WebConfig)  # [web]: the dashboard's users
    alerts: AlertsConfig = field(default_factory=AlertsConfig)  # [alerts]: cronqueue/alerts/
    health: HealthConfig = field(default_factory=HealthConfig)  # [health]: the ping, check
    source: Path | None = None  # the file it came from, if any
    origin: Origin = field(default_factory=Origin, compare=False)

    def validate(self) -> Config:
        normalize_url(self.db_url)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"timezone: unknown time zone {self.timezone!r}") from None
        for ext, argv in self.interpreters.items():
            if not ext.startswith(".") or not argv or not all(isinstance(a, str) for a in argv):
                raise ConfigError(f"interpreters.{ext}: expected '.ext' = [\"program\", ...]")
        self.worker.validate()
        names: set[str] = set()
        for entry in self.missions:
            if entry.name in names:
                raise ConfigError(f"mission {entry.name!r}: duplicate name")
            names.add(entry.name)
        return self

    @property
    def safe_db_url(self) -> str:
        return redact(self.db_url)

    def __repr__(self) -> str:  # the dataclass's, with the URL's password hidden
        shown = (f"{f.name}={self.safe_db_url if f.name == 'db_url' else getattr(self, f.name)!r}"
                 for f in fields(self))
        return f"Config({', '.join(shown)})"
