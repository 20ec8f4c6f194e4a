"""The config file: TOML in, a validated shape out (``from_mapping``). Unknown keys and bad
values are ``ConfigError``s naming the key (and the mission entry)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cronqueue.config.alerts import alerts_from_mapping, health_from_mapping
from cronqueue.config.settings import (
    CATCH_UP_POLICIES,
    MAX_BATCH,
    MAX_SECONDS,
    MAX_SHARDS,
    MISSION_NAME_RE,
    AddAction,
    Config,
    DoQueue,
    MissionEntry,
    Origin,
    Retention,
    WorkerConfig,
    parse_age,
)
from cronqueue.config.web import web_from_mapping
from cronqueue.errors import ConfigError, InvalidTask
from cronqueue.spec import build_spec, check_queue

TOP_KEYS = {"db_url", "task_dir", "log_dir", "timezone", "interpreters", "worker", "retention",
             "mission", "web", "alerts", "health"}


def from_mapping(data: Mapping[str, Any], base: Path, source: Path | None,
                 origin: Origin | None = None) -> Config:
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in config")
    kw: dict[str, Any] = {"source": source, "origin": origin or Origin()}
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
    if "web" in data:
        kw["web"] = web_from_mapping(_typed("web", data["web"], dict))
    if "alerts" in data:
        kw["alerts"] = alerts_from_mapping(_typed("alerts", data["alerts"], dict), base,
                                           _duration)
    if "health" in data:
        kw["health"] = health_from_mapping(_typed("health", data["health"], dict), _duration)
    if "mission" in data:
        entries = _typed("mission", data["mission"], list)
        kw["missions"] = tuple(_mission(i, e) for i, e in enumerate(entries))
    return Config(**kw)


def _duration(value: Any) -> timedelta:
    """An age (``90``, ``15m``...) of at most MAX_SECONDS: a duration setting."""
    return parse_age(value, MAX_SECONDS)


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
                                 "catch_up_window", "max_runtime", "min_runtime"})
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
    policy: dict[str, Any] = {"catch_up": catch_up, "catch_up_window": window}
    for key in ("max_runtime", "min_runtime"):
        if key in raw:
            try:
                policy[key] = parse_age(raw[key], MAX_SECONDS).total_seconds()
            except ValueError as exc:
                raise ConfigError(f"{label}.{key}: {exc}") from None
    if "min_runtime" in raw and "do_queue" in raw:
        raise ConfigError(f"{label}.min_runtime: only for an 'add' entry (a do_queue entry's "
                          "shards end when their queues are drained: no run is too short)")
    if policy.get("min_runtime", 0) > policy.get("max_runtime", math.inf):
        raise ConfigError(f"{label}.min_runtime: must not be more than max_runtime")
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
