"""``cronqueue_ticks``: each host's last mission tick — when it started and ended, how many of
its steps failed and the first failure. Every tick writes its host's row at its end; ``cronqueue
check --health`` reads the newest (the dead-man's switch for the crontab line), the dashboard's
overview and the metrics read every host's, and the alerts take the previous tick's start as
the beginning of what they look at."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from cronqueue.store.engine import transaction
from cronqueue.store.schema import ticks_table as t

MAX_HOSTS = 100  # rows read by latest(): one per host that ever ran the mission


@dataclass(frozen=True)
class Tick:
    host: str
    pid: int | None
    started_at: datetime
    finished_at: datetime
    errors: int
    error: str


def _tick(row: Any) -> Tick | None:
    """A row as a Tick; None for one that is not (hand-written: a time that is no time)."""
    started, finished = row["started_at"], row["finished_at"]
    if not isinstance(started, datetime) or not isinstance(finished, datetime):
        return None
    pid, errors = row["pid"], row["errors"]
    return Tick(str(row["host"]), pid if isinstance(pid, int) else None, started, finished,
                errors if isinstance(errors, int) and errors >= 0 else 0, str(row["error"]))


class Ticks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, host: str, pid: int, started_at: datetime, finished_at: datetime,
               errors: list[str]) -> None:
        """This host's row, written over (inserted the first time)."""
        values = {"pid": pid, "started_at": started_at, "finished_at": finished_at,
                  "errors": len(errors), "error": (errors[0] if errors else "")[:1000]}
        host = host[:255]
        mine = update(t).where(t.c.host == host).values(**values)

        def work(conn: Connection) -> None:
            if conn.execute(mine).rowcount:
                return
            try:
                with conn.begin_nested():
                    conn.execute(t.insert().values(host=host, **values))
            except IntegrityError:  # another tick of this host inserted it meanwhile
                conn.execute(mine)

        transaction(self.engine, work)

    def latest(self) -> list[Tick]:
        """Every host's last tick, the newest first."""
        stmt = select(t).order_by(t.c.finished_at.desc()).limit(MAX_HOSTS)
        rows = transaction(self.engine, lambda conn: list(conn.execute(stmt).mappings()),
                           readonly=True)
        return [tick for tick in map(_tick, rows) if tick is not None]

    def newest(self) -> Tick | None:
        """The last tick that ended, on any host."""
        ticks = self.latest()
        return ticks[0] if ticks else None

    def last_start(self) -> datetime | None:
        """When the newest tick (of any host) started."""
        stmt = select(func.max(t.c.started_at))
        value = transaction(self.engine, lambda conn: conn.execute(stmt).scalar(),
                            readonly=True)
        return value if isinstance(value, datetime) else None
