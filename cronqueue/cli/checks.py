"""``cronqueue check``: validate the configuration, the database and the directories, and run
nothing. Exit 0 when every check passes, 1 otherwise; 2 for a bad config and for a database
schema this cronqueue does not run on (behind: `cronqueue migrate`; ahead)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cronqueue.config import Config
from cronqueue.errors import CronqueueError, ScriptError
from cronqueue.process.scriptpath import open_beneath, strict_mode_problem
from cronqueue.store.database import Store
from cronqueue.store.engine import database_file_warning, make_engine
from cronqueue.store.runs import Runs
from cronqueue.store.version import SchemaVersionError, require_current
from cronqueue.text import visible_line


def shard_warnings(cfg: Config, step: int) -> list[str]:
    """Galera / multi-primary: ids advance by ``auto_increment_increment``. When it shares a
    factor with a shard total, some shards only ever see ids they can never match (``id % N``
    never takes their value) and starve."""
    out = []
    for entry in cfg.missions:
        if entry.do_queue is None:
            continue
        total = entry.do_queue.total
        if step > 1 and math.gcd(step, total) > 1:
            out.append(f"mission {entry.name!r}: auto_increment_increment={step} shares a "
                       f"factor with total={total}: some shards would never get a task; "
                       f"choose a total coprime to {step}")
    return out


def schedule_warnings(cfg: Config, runs: Runs, now: datetime) -> list[str]:
    """Entries whose last recorded run lies ahead of this host's clock (a clock that ran
    ahead): not binding for the ticks (see mission.py), but the operator should know."""
    from cronqueue.mission.tick import ahead_warning

    out = []
    for entry in cfg.missions:
        newest = runs.last_scheduled(entry.name)
        warning = None if newest is None else ahead_warning(newest, now)
        if warning is not None:
            out.append(f"mission {entry.name!r}: {warning}")
    return out


def script_problem(task_dir: Path, taskscript: str) -> str | None:
    """Why a shard of this host could not open ``taskscript`` beneath ``task_dir`` (not found,
    outside it, another user's or group-writable: the runner's own rules, ``scriptpath``), or
    None. (``taskscript`` syntax-checked already: ``spec.check_taskscript``.)"""
    try:
        opened = open_beneath(os.path.realpath(task_dir), taskscript)
    except ScriptError as exc:
        return str(exc)
    os.close(opened.fd)
    return None


def _visible_lines(out: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: out(visible_line(line))


def run_checks(cfg: Config, out: Callable[[str], None] = print,
               now: datetime | None = None) -> int:
    failures = 0
    refused = False  # the schema: exit 2
    # Paths, URLs and entry names come from the config, flags and environment: a newline or an
    # escape in one must neither forge an "ok" line nor drive the operator's terminal.
    out = _visible_lines(out)

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal failures
        failures += not ok
        out(f"{'ok  ' if ok else 'FAIL'} {what:<9} {detail}")

    report(True, "config", str(cfg.source) if cfg.source else "no config file; defaults")
    try:
        engine = make_engine(cfg.db_url)
        try:
            store = Store(engine)
            has = store.has_schema()
            version = ".".join(map(str, engine.dialect.server_version_info or ()))
            report(has, "database", f"{cfg.safe_db_url} ({engine.dialect.name} {version}); " +
                   ("schema present" if has else "no queue table: run `cronqueue init-db`"))
            if has:  # behind or ahead of this cronqueue: exit 2, like work and mission
                try:
                    report(True, "schema", f"version {require_current(engine)}")
                except SchemaVersionError as exc:
                    report(False, "schema", str(exc))
                    refused = True
            for warning in shard_warnings(cfg, store.auto_increment_step()):
                out(f"WARN sharding  {warning}")
            file_warning = database_file_warning(cfg.db_url)
            if file_warning:
                out(f"WARN secrets   {file_warning}")
            if has:
                for warning in schedule_warnings(cfg, store.runs, now or datetime.now(UTC)):
                    out(f"WARN schedule  {warning}")
        finally:
            engine.dispose()
    except (CronqueueError, Exception) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report(False, "database", f"{cfg.safe_db_url}: {first}")
    task_dir = cfg.task_dir
    if not task_dir.is_dir():
        report(False, "task_dir", f"{task_dir} does not exist")
    else:  # the runner's StrictModes rule: a loose task_dir refuses every script
        loose = strict_mode_problem(task_dir.stat(), os.geteuid())
        report(loose is None, "task_dir",
               f"{task_dir}" + (f" {loose}: every task would be refused" if loose else ""))
        for entry in cfg.missions:  # a recurring task whose script a shard would not find
            if entry.add is not None:
                problem = script_problem(task_dir, entry.add.taskscript)
                report(problem is None, "script", f"mission {entry.name!r}: " +
                       (problem or f"{entry.add.taskscript} found"))
    log_dir = cfg.log_dir
    parent = log_dir if log_dir.exists() else log_dir.parent
    if parent.exists() and not parent.is_dir():  # log_dir = "/dev/null" passed as writable
        report(False, "log_dir", f"{log_dir}: {parent} is not a directory")
    else:
        writable = os.access(parent, os.W_OK)
        report(writable, "log_dir", f"{log_dir}" + ("" if writable else " is not writable"))
        loose = strict_mode_problem(parent.stat(), os.geteuid()) if writable else None
        if loose:
            out(f"WARN log_dir   {parent} {loose}: another user can plant files there (cronqueue "
                "refuses links and others' files in it; make it writable by its owner only)")
    return 2 if refused else 1 if failures else 0
