"""The overview's chart: tasks done and failed per minute over the last hours, from
``finished_at``, drawn on the server as SVG (no script, no chart library, nothing inline that
the Content-Security-Policy would have to allow: the colours are classes of style.css).

Minutes that are over do not change (a purge or a retry of an old task aside, which the chart
may ignore): they are kept in memory, so a page reads only the minutes since the last one it
read. The minutes not counted before are counted at once when they hold at most ``ROWS``
finished tasks (a capped count says so); else a page counts ``FILL`` of them, the newest first:
the first page of a process on a busy table shows the last ``FILL`` minutes and says how many
older ones are still to count (each page then adds ``FILL`` more), instead of reading hours of
rows at once (1M rows in 3 hours: 0.5 s on MariaDB in one read).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from cronqueue.model import Status
from cronqueue.store.browse import Browse

WIDTH, HEIGHT, PAD = 720, 160, 28
KEEP = timedelta(hours=24)
FILL = 30  # minutes not counted before that one page counts, when they are many
ROWS = 50_000  # finished tasks the minutes not counted yet may hold to be counted at once


def _floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _key(minute: datetime) -> str:
    return minute.strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Chart:
    hours: int
    done: list[int]  # per counted minute, oldest first
    failed: list[int]
    done_points: str  # SVG polyline points
    failed_points: str
    top: int  # the y axis' top value
    ticks: list[tuple[float, str]]  # (x, "HH:MM") along the time axis
    uncounted: int  # the oldest minutes of the span not counted yet
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD

    @property
    def total_done(self) -> int:
        return sum(self.done)

    @property
    def total_failed(self) -> int:
        return sum(self.failed)


class PerMinute:
    def __init__(self, browse: Browse, fill: int = FILL) -> None:
        self.browse = browse
        self.fill = fill
        self._lock = threading.Lock()
        self._minutes: dict[str, tuple[int, int]] = {}  # complete minutes: (done, failed)

    def counts(self, now: datetime, hours: int) -> list[tuple[datetime, int, int] | None]:
        """(minute, done, failed) for each minute of the last ``hours`` up to ``now``'s,
        oldest first; None for a minute not counted yet."""
        current = _floor(now)
        minutes = [current - timedelta(minutes=n) for n in range(hours * 60 - 1, -1, -1)]
        with self._lock:
            # The current minute is never kept (it is not over): read on every page, alone;
            # then the newest of the minutes not counted yet, as one span.
            missing = [m for m in minutes[:-1] if _key(m) not in self._minutes]
            block = missing
            if missing and self.browse.finished_count(
                    missing[0], missing[-1] + timedelta(minutes=1), ROWS).capped:
                block = missing[-(self.fill - 1):] if self.fill > 1 else []
            found = self.browse.finished_per_minute(current)
            if block:
                found.update(self.browse.finished_per_minute(
                    block[0], block[-1] + timedelta(minutes=1)))
            counted = {*block, current}
            out: list[tuple[datetime, int, int] | None] = []
            for minute in minutes:
                key = _key(minute)
                if minute in counted:
                    value = (found.get((key, int(Status.DONE)), 0),
                             found.get((key, int(Status.FAILED)), 0))
                    if minute < current:
                        self._minutes[key] = value
                else:
                    cached = self._minutes.get(key)
                    if cached is None:
                        out.append(None)
                        continue
                    value = cached
                out.append((minute, *value))
            oldest = _key(current - KEEP)
            for key in [k for k in self._minutes if k < oldest]:
                del self._minutes[key]
        return out

    def chart(self, now: datetime, hours: int) -> Chart:
        rows = self.counts(now, hours)
        n = max(len(rows) - 1, 1)
        inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
        known = [(i, row) for i, row in enumerate(rows) if row is not None]
        done = [row[1] for _, row in known]
        failed = [row[2] for _, row in known]
        top = max([*done, *failed, 1])

        def points(values: list[int]) -> str:
            return " ".join(f"{PAD + i * inner_w / n:.1f},{PAD + inner_h * (1 - v / top):.1f}"
                            for (i, _), v in zip(known, values, strict=True))

        step = max(1, len(rows) // 6)
        last = _floor(now)
        ticks = [(PAD + i * inner_w / n,
                  (last - timedelta(minutes=len(rows) - 1 - i)).strftime("%H:%M"))
                 for i in range(0, len(rows), step)]
        return Chart(hours, done, failed, points(done), points(failed), top, ticks,
                     sum(row is None for row in rows))
