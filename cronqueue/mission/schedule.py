"""When a mission entry is due: cron expressions evaluated in the configured time zone.

Daylight-saving changes follow Vixie cron's rule: a time that does not exist (spring forward)
runs at the first instant after the gap; a wall-clock time that happens twice (fall back) runs
once for an entry with a fixed hour, and at both instants for an entry whose hour field is a
wildcard (``*``, ``*/2``: those are intervals, not times of day).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

MAX_SCAN = 10_000  # bound on iterations when counting missed times (a week of minutes)


def never_fires(expr: str, now: datetime | None = None) -> bool:
    """A valid expression that names no date (``0 0 30 2 *``): croniter finds no time before
    or after ``now``. The config refuses it at load; a tick would otherwise fail on it."""
    start = now or datetime.now(UTC)
    try:
        croniter(expr, start).get_next(datetime)
        croniter(expr, start).get_prev(datetime)
    except CroniterBadDateError:
        return True
    return False


def minute_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _hour_is_wildcard(expr: str) -> bool:
    fields = expr.split()
    return len(fields) >= 2 and fields[1].startswith("*")


def _repeated_wall_time(moment: datetime) -> bool:
    """The second occurrence of an ambiguous local time (fall back)."""
    if moment.fold != 1:
        return False
    return moment.replace(fold=0).utcoffset() != moment.utcoffset()


@dataclass(frozen=True)
class Schedule:
    expr: str
    tz: ZoneInfo

    def _keep(self, moment: datetime) -> bool:
        return _hour_is_wildcard(self.expr) or not _repeated_wall_time(moment)

    def after(self, start: datetime) -> Iterator[datetime]:
        """Scheduled times strictly after ``start``, as UTC datetimes."""
        it = croniter(self.expr, start.astimezone(self.tz))
        while True:
            moment = it.get_next(datetime)
            if self._keep(moment):
                yield moment.astimezone(UTC)

    def latest(self, at: datetime) -> datetime | None:
        """The most recent scheduled time <= ``at`` (UTC), or None within a year."""
        # Add in UTC, then convert: arithmetic on an aware local datetime drops ``fold``, which
        # would move an instant of the repeated (fall-back) hour one hour back.
        it = croniter(self.expr, (at + timedelta(microseconds=1)).astimezone(self.tz))
        for _ in range(MAX_SCAN):
            moment = it.get_prev(datetime)
            if moment.astimezone(UTC) < at - timedelta(days=366):
                return None
            if self._keep(moment):
                return moment.astimezone(UTC)
        return None

    def next_runs(self, now: datetime, count: int) -> list[datetime]:
        out: list[datetime] = []
        for moment in self.after(now):
            out.append(moment)
            if len(out) == count:
                break
        return out

    def count_between(self, start: datetime, end: datetime) -> int:
        """How many scheduled times lie strictly between ``start`` and ``end`` (bounded)."""
        n = 0
        for moment in self.after(start):
            if moment >= end or n >= MAX_SCAN:
                break
            n += 1
        return n


@dataclass(frozen=True)
class Decision:
    fire: datetime | None  # the scheduled time to act for now, if any
    missed: int  # scheduled times that passed without a tick and will not be run
    skipped: datetime | None = None  # a missed time to record as skipped (outside the window)

    @property
    def due(self) -> bool:
        return self.fire is not None


def decide(schedule: Schedule, last: datetime | None, now: datetime, *, catch_up: str,
           window: float) -> Decision:
    """What an entry should do at the tick ``now`` given the last scheduled time it acted on.

    The current minute's time fires. Times missed since ``last`` fire once for the most recent
    of them under the "latest" policy when it is at most ``window`` seconds old; all others
    are counted as missed, never replayed one by one. An entry never seen before starts now.
    """
    tick = minute_floor(now)
    latest = schedule.latest(tick)
    if latest is None or (last is not None and latest <= last):
        return Decision(None, 0)
    if last is None:
        return Decision(latest, 0) if latest == tick else Decision(None, 0)
    missed = schedule.count_between(last, latest)
    if latest == tick:
        return Decision(latest, missed)
    # The tick for ``latest`` itself was missed.
    if catch_up == "latest" and (tick - latest).total_seconds() <= window:
        return Decision(latest, missed)
    return Decision(None, missed + 1, skipped=latest)


def describe(expr: str) -> str:
    """A human-readable description of a cron expression."""
    try:
        from cron_descriptor import get_description  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - it is a dependency; be robust anyway
        return expr
    try:
        return str(get_description(expr))
    except Exception:  # a description must never break `schedule`
        return expr
