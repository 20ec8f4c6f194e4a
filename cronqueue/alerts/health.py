"""``cronqueue check --health``: for an external monitor, one line and an exit code — 0 when
the database answers and the newest mission tick (of any host, ``cronqueue_ticks``) ended less
than ``health.max_age`` ago (default two minutes); 1 when it is older, when no tick was ever
recorded, or when the database does not answer; 2 for a schema this cronqueue does not run on
(``cronqueue migrate``) or a bad config."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cronqueue.alerts.rules import span
from cronqueue.config import Config
from cronqueue.errors import CronqueueError
from cronqueue.store.engine import make_engine
from cronqueue.store.migrate import SchemaVersionError, require_current
from cronqueue.store.ticks import Tick, Ticks
from cronqueue.text import visible, visible_line

HEALTHY, UNHEALTHY, REFUSED = 0, 1, 2


def check_health(cfg: Config, out: Callable[[str], None] = print, *,
                 max_age: float | None = None, now: datetime | None = None) -> int:
    limit = cfg.health.max_age if max_age is None else max_age

    def say(line: str) -> None:  # hosts and errors come from rows
        out(visible_line(line))

    try:
        engine = make_engine(cfg.db_url)
        try:
            require_current(engine)
            tick = Ticks(engine).newest()
        finally:
            engine.dispose()
    except SchemaVersionError as exc:
        say(f"FAIL health: {exc}")
        return REFUSED
    except (CronqueueError, Exception) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        say(f"FAIL health: database {cfg.safe_db_url}: {first}")
        return UNHEALTHY
    now = now or datetime.now(UTC)
    problem = tick_problem(tick.finished_at if tick else None, now, limit)
    if tick is None:
        say(f"FAIL health: {problem}: is the crontab line installed (`cronqueue crontab`)?")
        return UNHEALTHY
    if problem:
        say(f"FAIL health: {problem} ({_where(tick)}): has cron or the mission stopped?")
        return UNHEALTHY
    age = (now - tick.finished_at).total_seconds()
    errors = (f"; {tick.errors} of its steps failed, first: {tick.error}" if tick.errors
              else "")
    say(f"ok   health: the last mission tick ended {span(max(age, 0))} ago ({_where(tick)})"
        f"{errors}")
    return HEALTHY


def tick_problem(finished_at: datetime | None, now: datetime, limit: float) -> str | None:
    """Why the mission looks stopped, or None when a tick (of any host) ended at most ``limit``
    seconds before ``now``: the one rule behind ``check --health`` and ``/healthz``."""
    if finished_at is None:
        return "no mission tick recorded yet"
    age = (now - finished_at).total_seconds()
    if age > limit:
        return f"the last mission tick ended {span(age)} ago, more than {span(limit)}"
    return None


def _where(tick: Tick) -> str:
    return (f"at {tick.finished_at:%Y-%m-%dT%H:%M:%S}Z on host {visible(tick.host)} "
            f"pid {tick.pid if tick.pid is not None else '?'}")
