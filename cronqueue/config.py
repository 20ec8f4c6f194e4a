"""The configuration: one object with defaults and ``validate()``, loaded from TOML.

Precedence for every setting: command-line flag > ``CRONQUEUE_*`` environment > config file >
default. Unknown keys and bad values are ``ConfigError``s naming the key (and the entry).
"""

from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronqueue.decode import INT_MAX
from cronqueue.errors import ConfigError, InvalidTask
from cronqueue.retry import RetryPolicy
from cronqueue.spec import build_spec, check_queue
from cronqueue.store.engine import normalize_url, redact

# How a task script that is not executable itself is run, by extension.
DEFAULT_INTERPRETERS: dict[str, list[str]] = {
    ".py": [sys.executable],
    ".sh": ["sh"],
    ".php": ["php"],
}
DEFAULT_DB_URL = "sqlite:///cronqueue.db"
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
    # Python fast path (see cronqueue/forkserver.py): .py scripts run in children forked from
    # a warm interpreter instead of a fresh one each; python_preload modules imported once.
    python_fork: bool = False
    python_preload: tuple[str, ...] = ()

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of these settings (the one place it is built from them)."""
        return RetryPolicy(self.max_attempts, self.backoff, self.backoff_max)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (``RetryPolicy.delay``)."""
        return self.retry.delay(attempt)

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


@dataclass(frozen=True)
class Retention:
    """How long finished tasks (and mission run records) are kept; None = forever.
    The mission purges by these at every tick; ``[retention]`` in the file."""

    done: float | None = 7 * 86400
    failed: float | None = 30 * 86400
    cancelled: float | None = 7 * 86400
    runs: float | None = 7 * 86400


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
    source: Path | None = None  # the file it came from, if any

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


def find_config_file(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        return path.resolve()
    env = os.environ.get("CRONQUEUE_CONFIG")
    if env:
        return find_config_file(env)
    local = Path(DEFAULT_CONFIG_NAME)
    return local.resolve() if local.is_file() else None


def load_config(config_file: str | os.PathLike[str] | None = None, *, db_url: str | None = None,
                **overrides: Any) -> Config:
    """Build the configuration: flags (``db_url``, ``overrides``) > env > file > defaults.

    ``overrides`` are top-level keys (``task_dir``, ``log_dir``, ``timezone``) or worker keys
    (``timeout``, ``max_attempts``, ``batch``, ...). ``None`` values are ignored.
    """
    path = find_config_file(config_file)
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: invalid TOML: {exc}") from None
        base = path.parent
    cfg = _from_mapping(data, base, source=path)
    env = {
        "db_url": os.environ.get("CRONQUEUE_DB_URL"),
        "task_dir": os.environ.get("CRONQUEUE_TASK_DIR"),
        "log_dir": os.environ.get("CRONQUEUE_LOG_DIR"),
    }
    top: dict[str, Any] = {k: v for k, v in env.items() if v}
    worker: dict[str, Any] = {}
    worker_names = {f.name for f in fields(WorkerConfig)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("task_dir", "log_dir", "timezone"):
            top[key] = value
        elif key in worker_names:
            worker[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}")
    if db_url:
        top["db_url"] = db_url
    for key in ("task_dir", "log_dir"):
        if key in top:
            top[key] = (Path.cwd() / Path(top[key])).resolve()
    cfg = replace(cfg, **top, worker=replace(cfg.worker, **worker))
    return cfg.validate()


_TOP_KEYS = {"db_url", "task_dir", "log_dir", "timezone", "interpreters", "worker", "retention",
             "mission"}


def _from_mapping(data: Mapping[str, Any], base: Path, source: Path | None) -> Config:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in config")
    kw: dict[str, Any] = {"source": source}
    for key in ("db_url", "timezone"):
        if key in data:
            kw[key] = _typed(key, data[key], str)
    for key, default in (("task_dir", "tasks"), ("log_dir", "logs")):
        kw[key] = (base / _typed(key, data.get(key, default), str)).resolve()
    if "interpreters" in data:
        table = _typed("interpreters", data["interpreters"], dict)
        interps = dict(Config().interpreters)
        for ext, argv in table.items():
            if isinstance(argv, str):
                argv = [argv]
            interps[ext] = tuple(_typed(f"interpreters.{ext}", argv, list))
        kw["interpreters"] = interps
    if "worker" in data:
        kw["worker"] = _section(WorkerConfig, "worker", _typed("worker", data["worker"], dict))
    if "retention" in data:
        kw["retention"] = _retention(_typed("retention", data["retention"], dict))
    if "mission" in data:
        entries = _typed("mission", data["mission"], list)
        kw["missions"] = tuple(_mission(i, e) for i, e in enumerate(entries))
    return Config(**kw)


def _typed(key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _section(cls: type, name: str, table: Mapping[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key!r}")
    values = dict(table)
    if isinstance(values.get("python_preload"), list):
        values["python_preload"] = tuple(values["python_preload"])
    return cls(**values)


def _retention(table: Mapping[str, Any]) -> Retention:
    known = {f.name for f in fields(Retention)}
    values: dict[str, float | None] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key retention.{key!r}")
        if value == "never":
            values[key] = None
            continue
        try:
            values[key] = parse_age(value).total_seconds()
        except ValueError as exc:
            raise ConfigError(f"retention.{key}: {exc}, or \"never\"") from None
    return Retention(**values)


def _mission(index: int, raw: Any) -> MissionEntry:
    if not isinstance(raw, dict):
        raise ConfigError(f"mission #{index + 1}: expected a table")
    name = raw.get("name")
    label = f"mission {name!r}" if isinstance(name, str) and name else f"mission #{index + 1}"
    unknown = sorted(set(raw) - {"name", "cron", "do_queue", "add", "catch_up",
                                 "catch_up_window"})
    if unknown:
        raise ConfigError(f"{label}: unknown key {unknown[0]!r}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{label}: 'name' is required")
    if not MISSION_NAME_RE.fullmatch(name):
        raise ConfigError(f"{label}: name must be 1-64 of letters, digits and _.- "
                          "(it names lock files and log lines)")
    catch_up = raw.get("catch_up", "latest")
    if catch_up not in CATCH_UP_POLICIES:
        raise ConfigError(f"{label}.catch_up: must be one of {', '.join(CATCH_UP_POLICIES)}, "
                          f"got {catch_up!r}")
    try:
        window = parse_age(raw.get("catch_up_window", 3600)).total_seconds()
    except ValueError as exc:
        raise ConfigError(f"{label}.catch_up_window: {exc}") from None
    policy = {"catch_up": catch_up, "catch_up_window": window}
    cron = raw.get("cron")
    from croniter import croniter  # only where a schedule is read: shards never need it

    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ConfigError(f"{label}: invalid cron expression {cron!r}")
    if not cron.strip().startswith("@") and len(cron.split()) != 5:
        # croniter reads a 6th field as seconds (7th: years), but the mission ticks once a
        # minute: "0 * * * * 30" passed check, then never fired with catch_up = "skip"
        raise ConfigError(f"{label}: cron expression {cron!r} has {len(cron.split())} fields; "
                          "give 5 (minute hour day-of-month month day-of-week): the mission "
                          "runs once a minute, without seconds or years")
    from cronqueue.mission.schedule import never_fires

    if never_fires(cron):
        raise ConfigError(f"{label}: cron expression {cron!r} never fires (no such date)")
    actions = [k for k in ("do_queue", "add") if k in raw]
    if len(actions) != 1:
        raise ConfigError(f"{label}: needs exactly one action, 'do_queue' or 'add'")
    try:
        if "do_queue" in raw:
            dq = _section(DoQueue, f"{label}.do_queue", _typed(f"{label}.do_queue",
                                                               raw["do_queue"], dict))
            if isinstance(dq.total, bool) or not isinstance(dq.total, int) or not (
                    1 <= dq.total <= MAX_SHARDS):
                raise ConfigError(f"{label}.do_queue.total: must be an integer from 1 to "
                                  f"{MAX_SHARDS}, got {dq.total!r}")
            if not isinstance(dq.queues, list | tuple):
                raise ConfigError(f"{label}.do_queue.queues: expected a list of queue names, "
                                  f"got {dq.queues!r}")
            for q in dq.queues:
                check_queue(q)
            ms = dq.max_seconds
            if ms is not None and (isinstance(ms, bool) or not isinstance(ms, int | float)
                                   or not (math.isfinite(ms) and 0 < ms <= MAX_SECONDS)):
                raise ConfigError(f"{label}.do_queue.max_seconds: must be a number > 0 and "
                                  f"<= {MAX_SECONDS}, got {ms!r}")
            if dq.batch is not None and (isinstance(dq.batch, bool)
                                         or not isinstance(dq.batch, int)
                                         or not 1 <= dq.batch <= MAX_BATCH):
                raise ConfigError(f"{label}.do_queue.batch: must be an integer from 1 to "
                                  f"{MAX_BATCH}, got {dq.batch!r}")
            return MissionEntry(name, cron, do_queue=replace(dq, queues=tuple(dq.queues)),
                                **policy)
        add = _section(AddAction, f"{label}.add", _typed(f"{label}.add", raw["add"], dict))
        build_spec(add.taskscript, add.param, priority=add.priority, queue=add.queue,
                   max_attempts=add.max_attempts, timeout=add.timeout, now=datetime.now(UTC))
        return MissionEntry(name, cron, add=add, **policy)
    except InvalidTask as exc:
        raise ConfigError(f"{label}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{label}: {exc}") from None
