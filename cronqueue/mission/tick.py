"""cron_mission (``cronqueue mission``): the one crontab line's work, once a minute.

For each schedule entry due this minute it performs the entry's action and returns at once:
``do_queue`` starts the entry's shards as detached processes (except those still running —
each shard also guards itself, see guard.py), ``add`` enqueues the recurring task. Every
(entry, scheduled time) is claimed through a unique key in ``cronqueue_runs`` first, so any
number of concurrent missions, on one host or several, act on it once. Then it rescues the
tasks of dead shards and purges by the retention settings: no other cron line is needed.
Shards start last, once the rest of the tick is done (their start-up would compete with it for
the CPU). Every mission logs which host and pid took each due entry and tick, whether it won
the race or not; ``--log-level debug`` adds the time of each step (``TickReport.timings``).

Each entry, the rescue and the retention run in isolation: one failing (a database error, an
entry that cannot be computed) is logged naming it and makes the tick's exit status 1, and the
others still run. A last run recorded later than the tick's minute (a host clock that ran
ahead) is not binding: the entry goes on by the runs up to this minute, and every tick warns
while it lasts. ``--now`` more than a minute ahead of the clock is refused (it would record
runs that real ticks then skip); ``plan`` (``--dry-run``) shows what a tick would do and writes
nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from cronqueue.config import Config, MissionEntry
from cronqueue.errors import ConfigError, DatabaseError, one_line
from cronqueue.mission.rescue import RescueReport, rescue
from cronqueue.mission.schedule import MAX_SCAN, Schedule, decide, minute_floor
from cronqueue.model import Status
from cronqueue.process.identity import Owner
from cronqueue.process.logfiles import LogFileRefused, open_in_log_dir
from cronqueue.shard.guard import is_locked_here, is_locked_in_db
from cronqueue.spec import build_spec
from cronqueue.store.database import Store
from cronqueue.store.engine import make_engine
from cronqueue.store.pauses import Pause
from cronqueue.store.runs import Runs
from cronqueue.store.ticks import Ticks
from cronqueue.store.version import require_current
from cronqueue.text import visible

if TYPE_CHECKING:  # the alert step and the ping are imported when configured (urllib, smtp)
    from cronqueue.alerts.ping import Pinger
    from cronqueue.alerts.record import AlertsReport

log = logging.getLogger("cronqueue.mission")
Launcher = Callable[[list[str], dict[str, str], Path], Any]
_SHARD_ENV = frozenset({"CRONQUEUE_TOTAL", "CRONQUEUE_SHARD", "CRONQUEUE_QUEUES",
                        "CRONQUEUE_BATCH", "CRONQUEUE_MAX_SECONDS", "CRONQUEUE_ENTRY",
                        "CRONQUEUE_NOW"})
PURGE_CHUNKS_PER_TICK = 5  # bounded work per tick; a large backlog drains over a few minutes
# A recorded run later than this past a tick's time is a clock that ran ahead (or a drill in
# the future): warned about at every tick, shown by `check` and `schedule`.
AHEAD_TOLERANCE = timedelta(seconds=60)


@dataclass
class TickReport:
    fired: dict[str, datetime] = field(default_factory=dict)  # entry -> scheduled time
    missed: dict[str, int] = field(default_factory=dict)
    lost_race: list[str] = field(default_factory=list)  # another mission had fired it
    launched: list[tuple[str, int]] = field(default_factory=list)
    already_running: list[tuple[str, int]] = field(default_factory=list)
    added: dict[str, int] = field(default_factory=dict)  # entry -> task id
    rescue: RescueReport = field(default_factory=RescueReport)
    purged: int = 0
    ahead: dict[str, datetime] = field(default_factory=dict)  # entry -> run recorded ahead
    paused: list[str] = field(default_factory=list)  # entries paused: not fired
    errors: list[str] = field(default_factory=list)  # what failed: "<what>: <reason>"
    plan: list[str] = field(default_factory=list)  # with plan(): what the tick would do
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds it took
    alerts: AlertsReport | None = None  # with [alerts]: what the alert step changed and sent


def _pinger(config: Config) -> Pinger | None:
    """The tick's pings when ``[health] ping_url`` is set (``urllib.request`` is imported only
    then), else None."""
    if config.health.ping_url is None:
        return None
    from cronqueue.alerts.ping import Pinger

    return Pinger(config.health)


def _run_alerts(config: Config, engine: Engine, *, now: datetime, host: str,
                fired: Mapping[str, datetime], missed: Mapping[str, int]) -> AlertsReport:
    """The alert step, imported with ``[alerts]`` only (rules, sinks, SMTP, e-mail)."""
    from cronqueue.alerts.record import run_alerts

    return run_alerts(config, engine, now=now, host=host, fired=fired, missed=missed)


def refuse_future_drill(now: datetime, real: datetime) -> None:
    """``--now`` more than a minute ahead of the clock would record runs that real ticks then
    take as done: refused (``--dry-run`` shows what it would do)."""
    if now - real > AHEAD_TOLERANCE:
        raise ConfigError(f"--now {now.isoformat()} is {_span(now - real)} ahead of the clock "
                          f"({real:%Y-%m-%dT%H:%M:%S}Z): a tick in the future would record runs "
                          "that real ticks then skip; use --dry-run to see what it would do")


def _span(delta: timedelta) -> str:
    return str(timedelta(seconds=round(delta.total_seconds())))


def ahead_warning(recorded: datetime, now: datetime) -> str | None:
    """The one wording, for the tick's log, ``check`` and ``schedule``, of a run recorded
    for ``recorded``, more than AHEAD_TOLERANCE ahead of the clock's ``now``; None when it
    is not."""
    if recorded - now <= AHEAD_TOLERANCE:
        return None
    return (f"a run is recorded for {recorded:%Y-%m-%dT%H:%M}Z, {_span(recorded - now)} "
            f"ahead of the clock ({now:%Y-%m-%dT%H:%M:%S}Z): not binding, the entry goes on "
            "by its runs up to now, and that time will not fire again (a host clock that ran "
            "ahead, or a mission --now in the future? check the clocks of the hosts running "
            "the mission)")


def detached_launcher(log_dir: Path) -> Launcher:
    """Start a shard in its own session, stdin closed, output appended to ``shards.log``."""

    def launch(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        try:  # never through a link planted in log_dir (root would append to its target)
            out = open_in_log_dir(log_dir, "shards.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except (OSError, LogFileRefused) as exc:
            log.error("shard output not kept: %s", exc)
            out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(out)

    return launch


class Mission:
    def __init__(self, config: Config, *, launcher: Launcher | None = None,
                 engine: Engine | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.clock = clock  # real time: when a recurring task is enqueued and may run
        self.launcher = launcher or detached_launcher(config.log_dir)
        self._engine = engine
        self.tz = ZoneInfo(config.timezone)

    def tick(self, now: datetime | None = None) -> TickReport:
        """Act on the entries due at ``now`` (default: the clock), rescue, purge."""
        return self._tick(now, dry_run=False)

    def plan(self, now: datetime | None = None) -> TickReport:
        """What ``tick(now)`` would do, in ``report.plan``; writes and starts nothing."""
        return self._tick(now, dry_run=True)

    def _tick(self, now: datetime | None, *, dry_run: bool) -> TickReport:
        began = time.perf_counter()
        started = self.clock()
        now = now or started
        report = TickReport()
        pinger = _pinger(self.config) if not dry_run else None  # the dead-man's switch
        if pinger is not None:
            pinger.start()
        completed = False
        engine = self._engine or make_engine(self.config.db_url)
        try:
            require_current(engine)  # a database behind or ahead: SchemaVersionError, exit 2
            store = Store(engine)
            me = Owner.me()
            # Shards start last: their start-up (an interpreter each) would compete for the
            # CPU with the rest of the tick, which the mission then waits for.
            starts: list[tuple[str, Callable[[], None]]] = []
            pauses = self._pauses(store, report)
            for entry in self.config.missions:
                self._isolated(report, f"mission={entry.name}", functools.partial(
                    self._entry, entry, store.runs, engine, me, now, report, starts,
                    pauses, dry_run=dry_run))
            if dry_run:
                report.plan.append("rescue and retention: not run (dry run)")
                return report
            # Leases and retention are real time, even when ``now`` is simulated (--now).
            real = self.clock()
            rescued = self._isolated(report, "rescue", lambda: rescue(
                store, self.config.worker, real, me=me))
            if rescued is not None:
                report.rescue = rescued
                report.errors += [f"rescue: {e}" for e in rescued.errors]
            purged = self._isolated(report, "retention", lambda: self._purge(store, real))
            report.purged = purged or 0
            for what, start in starts:
                self._isolated(report, what, start)
            if self.config.alerts.enabled:  # after the shards: they need not wait for it
                report.alerts = self._isolated(report, "alerts", lambda: _run_alerts(
                    self.config, engine, now=self.clock(), host=me.host, fired=report.fired,
                    missed=report.missed))
            self._isolated(report, "tick record", lambda: Ticks(engine).record(
                me.host, me.pid, started, self.clock(), report.errors))
            completed = True
            return report
        finally:
            if pinger is not None:
                self._isolated(report, "ping", lambda: pinger.finish(
                    completed and not report.errors))
            if self._engine is None:
                engine.dispose()
            report.timings["tick"] = time.perf_counter() - began
            log.debug("tick took %s", " ".join(f"{k}={v:.3f}s"
                                               for k, v in report.timings.items()))

    @staticmethod
    def _isolated(report: TickReport, what: str, step: Callable[[], Any]) -> Any:
        """Run one step of the tick; a failure is logged naming the step and recorded in
        ``report.errors``, and the tick goes on with the next step. Its time is kept in
        ``report.timings`` (logged at debug level: what a tick waits for)."""
        began = time.perf_counter()
        try:
            return step()
        except Exception as exc:
            reason = one_line(exc)
            log.error("%s failed: %s (the rest of the tick goes on)", what, reason)
            log.debug("%s failed", what, exc_info=True)
            report.errors.append(f"{what}: {reason}")
            return None
        finally:
            report.timings[what] = (report.timings.get(what, 0.0)
                                    + time.perf_counter() - began)

    def _pauses(self, store: Store, report: TickReport) -> dict[str, Pause] | None:
        """The entries' pauses, read once per tick; None when they cannot be read (logged,
        in ``report.errors``): then no entry fires, and the rest of the tick goes on."""
        if not self.config.missions:
            return {}
        try:
            return store.pauses.rows("entry")
        except Exception as exc:
            log.error("pauses could not be read: %s (no entry fires; the rest of the tick goes "
                      "on)", one_line(exc))
            report.errors.append(f"pauses: {one_line(exc)}")
            return None

    def _last(self, entry: MissionEntry, runs: Runs, now: datetime,
              report: TickReport) -> datetime | None:
        """The last scheduled time the entry acted on, up to this tick's minute. A run
        recorded later (a clock that ran ahead, a drill in the future) is not binding."""
        tick = minute_floor(now)
        newest = runs.last_scheduled(entry.name)
        if newest is None or newest <= tick:
            return newest
        warning = ahead_warning(newest, now)
        if warning is not None:
            report.ahead[entry.name] = newest
            log.warning("mission=%s %s", entry.name, warning)
        return runs.last_scheduled(entry.name, until=tick)

    def _entry(self, entry: MissionEntry, runs: Runs, engine: Engine, me: Owner,
               now: datetime, report: TickReport,
               starts: list[tuple[str, Callable[[], None]]],
               pauses: dict[str, Pause] | None = None, *, dry_run: bool = False) -> None:
        if pauses is None:
            raise DatabaseError("not fired: whether it is paused could not be read (pauses)")
        pause = pauses.get(entry.name)
        if pause is not None and pause.active(now):
            report.paused.append(entry.name)
            line = f"mission={entry.name} {paused_line(pause)}: not fired"
            if dry_run:
                report.plan.append(line)
            else:
                log.info("%s", line)
            return
        last = self._last(entry, runs, now, report)
        schedule = Schedule(entry.cron, self.tz)
        ended = pause.ended(now) if pause is not None else None
        if ended is not None and (last is None or last < ended):
            # The times it skipped while paused are not missed: no catch-up of them.
            skipped = schedule.latest(ended - timedelta(microseconds=1))
            if skipped is not None and (last is None or skipped > last):
                last = skipped
        decision = decide(schedule, last, now, catch_up=entry.catch_up,
                          window=entry.catch_up_window)
        if dry_run:
            report.plan.append(self._describe(entry, decision.fire, decision.missed, last))
            if decision.fire is not None:
                report.fired[entry.name] = decision.fire
            return
        if decision.missed:
            report.missed[entry.name] = decision.missed
            log.warning("mission=%s missed %s scheduled run(s) since %s; catch_up=%s: %s",
                        entry.name, f"{decision.missed}" if decision.missed < MAX_SCAN
                        else f"at least {MAX_SCAN}", last.isoformat() if last else "-",
                        entry.catch_up, f"running the one of {decision.fire:%Y-%m-%d %H:%M}Z"
                        if decision.fire else "not replayed")
        if decision.skipped is not None:
            runs.record(entry.name, decision.skipped, host=me.host, pid=me.pid,
                            now=self.clock(), outcome="skipped: missed, outside catch_up_window")
        if decision.fire is None:
            if last is not None and last == minute_floor(now):  # due now, taken already
                self._log_taken(entry, runs, last)
            return
        scheduled = decision.fire
        spec = None
        if entry.add is not None:
            a = entry.add
            spec = build_spec(a.taskscript, a.param, priority=a.priority, queue=a.queue,
                              max_attempts=a.max_attempts, timeout=a.timeout,
                              now=self.clock())
        claimed = runs.record(entry.name, scheduled, host=me.host, pid=me.pid,
                                  now=self.clock(), outcome="added" if spec else "launching",
                                  spec=spec)
        if claimed is None:
            report.lost_race.append(entry.name)
            self._log_taken(entry, runs, scheduled)
            return
        report.fired[entry.name] = scheduled
        run_id, task_id = claimed
        if task_id is not None:
            report.added[entry.name] = task_id
            log.info("mission=%s scheduled=%s taken by host=%s pid=%d outcome=added task=%d",
                     entry.name, f"{scheduled:%Y-%m-%dT%H:%M}Z", visible(me.host), me.pid,
                     task_id)
            return
        starts.append((f"mission={entry.name}", functools.partial(
            self._start, entry, runs, engine, me, report, run_id, scheduled)))

    def _start(self, entry: MissionEntry, runs: Runs, engine: Engine, me: Owner,
               report: TickReport, run_id: int, scheduled: datetime) -> None:
        """The shards of a ``do_queue`` entry whose tick this mission took."""
        started, running, failed = self._launch(entry, engine)
        report.launched += [(entry.name, i) for i in started]
        report.already_running += [(entry.name, i) for i in running]
        outcome = (f"started shards {_ids(started)}" if started else "started no shard") + (
            f"; still running {_ids(running)}" if running else "") + (
            f"; could not start {_ids(failed)}" if failed else "")
        runs.set_outcome(run_id, outcome)
        log.info("mission=%s scheduled=%s taken by host=%s pid=%d outcome=%s", entry.name,
                 f"{scheduled:%Y-%m-%dT%H:%M}Z", visible(me.host), me.pid, outcome)

    @staticmethod
    def _log_taken(entry: MissionEntry, runs: Runs, scheduled: datetime) -> None:
        """This tick lost the race for (entry, scheduled): say which mission took it."""
        run = runs.taker(entry.name, scheduled)
        who = (f"host={visible(run['host'])} pid={run['pid']} "
               f"outcome={visible(run['outcome'])}"
               if run is not None else "host=? (its run is gone)")
        log.info("mission=%s scheduled=%s already taken by another mission: %s", entry.name,
                 f"{scheduled:%Y-%m-%dT%H:%M}Z", who)

    @staticmethod
    def _describe(entry: MissionEntry, fire: datetime | None, missed: int,
                  last: datetime | None) -> str:
        since = f"; last run {last:%Y-%m-%dT%H:%M}Z" if last else "; never run"
        gone = f"; {missed} missed time(s) not replayed" if missed else ""
        if fire is None:
            return f"mission={entry.name} not due{since}{gone}"
        if entry.add is not None:
            action = f"add {entry.add.taskscript} priority={entry.add.priority}"
        else:
            assert entry.do_queue is not None
            action = f"start shards 0..{entry.do_queue.total - 1} (those not running)"
        return f"mission={entry.name} would fire scheduled={fire:%Y-%m-%dT%H:%M}Z: {action}" \
            f"{since}{gone}"

    def _launch(self, entry: MissionEntry,
                engine: Engine) -> tuple[list[int], list[int], list[int]]:
        dq = entry.do_queue
        assert dq is not None
        cfg = self.config
        started: list[int] = []
        running: list[int] = []
        failed: list[int] = []
        # The entry alone decides what the shard does: drop shard settings that the
        # mission's own environment may carry (they would become the shard's defaults).
        env = {k: v for k, v in os.environ.items() if k not in _SHARD_ENV}
        # The shard sees the mission's effective settings; the URL travels in the
        # environment, never in argv (argv is public in `ps`).
        env.update(CRONQUEUE_DB_URL=cfg.db_url, CRONQUEUE_TASK_DIR=str(cfg.task_dir),
                   CRONQUEUE_LOG_DIR=str(cfg.log_dir))
        for shard in range(dq.total):
            if (is_locked_here(cfg.log_dir, entry.name, shard, engine.url)
                    or is_locked_in_db(engine, entry.name, shard)):
                running.append(shard)
                continue
            argv = [sys.executable, "-m", "cronqueue", "work", "--total", str(dq.total),
                    "--shard", str(shard), "--entry", entry.name]
            if cfg.source is not None:
                argv += ["--config", str(cfg.source)]
            for name in dq.queues:
                argv += ["--queue", name]
            if dq.max_seconds is not None:
                argv += ["--max-seconds", str(dq.max_seconds)]
            if dq.batch is not None:
                argv += ["--batch", str(dq.batch)]
            try:
                self.launcher(argv, env, cfg.source.parent if cfg.source else Path.cwd())
            except OSError as exc:  # one shard that cannot start must not stop the tick
                log.error("mission=%s shard=%d could not be started: %s", entry.name, shard,
                          exc)
                failed.append(shard)
                continue
            started.append(shard)
        return started, running, failed

    def _purge(self, store: Store, now: datetime) -> int:
        keep = self.config.retention
        total = 0
        for status, seconds in ((Status.DONE, keep.done), (Status.FAILED, keep.failed),
                                (Status.CANCELLED, keep.cancelled)):
            if seconds is not None:
                total += store.tasks.purge(now - timedelta(seconds=seconds), [int(status)],
                                    max_chunks=PURGE_CHUNKS_PER_TICK)
        if keep.runs is not None:
            store.runs.purge(now - timedelta(seconds=keep.runs), PURGE_CHUNKS_PER_TICK)
        if total:
            log.info("purged %d finished task(s) by retention", total)
        return total


def paused_line(pause: Pause) -> str:
    """``paused since 2026-12-02T10:00Z by ops@web1 until 12:00Z (deploy)``: one line."""
    since = f" since {pause.paused_at:%Y-%m-%dT%H:%M}Z" if pause.paused_at else ""
    until = f"until {pause.until:%Y-%m-%dT%H:%M}Z" if pause.until else "until resumed"
    why = f" ({visible(pause.reason)})" if pause.reason else ""
    return f"paused{since} by {visible(pause.by) or '?'} {until}{why}"


def overview(config: Config, runs: Runs, now: datetime, upcoming: int = 3, *,
             paused: dict[str, Pause] | None = None) -> list[dict[str, Any]]:
    """Each entry: its cron, a description, the next runs, the last run with its outcome,
    and its pause in force (``paused``: None, or since, until, by, reason)."""
    from cronqueue.mission.schedule import describe

    tz = ZoneInfo(config.timezone)
    last = runs.latest()
    out = []
    for entry in config.missions:
        run = last.get(entry.name)
        warning = None
        try:
            upcoming_runs = [t.astimezone(tz).isoformat()
                             for t in Schedule(entry.cron, tz).next_runs(now, upcoming)]
        except Exception as exc:  # one entry must not break the overview
            upcoming_runs = []
            warning = f"next runs cannot be computed: {type(exc).__name__}: {exc}"
        if run:
            warning = ahead_warning(run["scheduled_at"], now) or warning
        if entry.do_queue is not None:
            dq = entry.do_queue
            action = (f"do_queue total={dq.total} queues={','.join(dq.queues) or '*'}"
                      + (f" max_seconds={dq.max_seconds:g}" if dq.max_seconds else ""))
        else:
            assert entry.add is not None
            action = f"add {entry.add.taskscript} priority={entry.add.priority}"
        out.append({
            "name": entry.name, "cron": entry.cron, "timezone": config.timezone,
            "description": describe(entry.cron), "action": action,
            "next": upcoming_runs,
            "last_scheduled": run["scheduled_at"].astimezone(tz).isoformat() if run else None,
            "last_fired": run["fired_at"].astimezone(tz).isoformat() if run else None,
            "last_host": run["host"] if run else None,
            "last_outcome": run["outcome"] if run else None,
            "last_task": run["task_id"] if run else None,
            "warning": warning,
            "paused": _details((paused or {}).get(entry.name)),
        })
    return out


def _details(pause: Pause | None) -> dict[str, Any] | None:
    return None if pause is None else pause.details()


def _ids(shards: list[int]) -> str:
    return ",".join(map(str, shards))

