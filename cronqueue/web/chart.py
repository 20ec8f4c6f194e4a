"""The overview's chart: tasks done and failed per minute over the last hours, from
``finished_at``, drawn on the server as SVG (no script, no chart library, nothing inline that
the Content-Security-Policy would have to allow: the colours are classes of style.css).

Minutes that are over do not change (a purge or a retry of an old task aside, which the chart
may ignore): they are kept in memory, so a page reads only the minutes since the last one it
read — the first page of a process reads the whole span once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from cronqueue.model import Status
from cronqueue.store.browse import Browse

WIDTH, HEIGHT, PAD = 720, 160, 28
KEEP = timedelta(hours=24)


def _floor(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _key(minute: datetime) -> str:
    return minute.strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Chart:
    hours: int
    done: list[int]  # per minute, oldest first
    failed: list[int]
    done_points: str  # SVG polyline points
    failed_points: str
    top: int  # the y axis' top value
    ticks: list[tuple[float, str]]  # (x, "HH:MM") along the time axis
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
    def __init__(self, browse: Browse) -> None:
        self.browse = browse
        self._lock = threading.Lock()
        self._minutes: dict[str, tuple[int, int]] = {}  # complete minutes: (done, failed)

    def counts(self, now: datetime, hours: int) -> list[tuple[datetime, int, int]]:
        """(minute, done, failed) for each minute of the last ``hours`` up to ``now``'s."""
        current = _floor(now)
        start = current - timedelta(hours=hours) + timedelta(minutes=1)
        with self._lock:
            first_missing = start
            while first_missing < current and _key(first_missing) in self._minutes:
                first_missing += timedelta(minutes=1)
            found = self.browse.finished_per_minute(first_missing)
            minute = first_missing
            while minute <= current:
                key = _key(minute)
                value = (found.get((key, int(Status.DONE)), 0),
                         found.get((key, int(Status.FAILED)), 0))
                if minute < current:
                    self._minutes[key] = value
                else:
                    now_value = value
                minute += timedelta(minutes=1)
            oldest = _key(current - KEEP)
            for key in [k for k in self._minutes if k < oldest]:
                del self._minutes[key]
            out = []
            minute = start
            while minute < current:
                done, failed = self._minutes.get(_key(minute), (0, 0))
                out.append((minute, done, failed))
                minute += timedelta(minutes=1)
            out.append((current, *now_value))
        return out

    def chart(self, now: datetime, hours: int) -> Chart:
        rows = self.counts(now, hours)
        done = [d for _, d, _ in rows]
        failed = [f for _, _, f in rows]
        top = max([*done, *failed, 1])
        n = max(len(rows) - 1, 1)
        inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

        def points(values: list[int]) -> str:
            return " ".join(f"{PAD + i * inner_w / n:.1f},{PAD + inner_h * (1 - v / top):.1f}"
                            for i, v in enumerate(values))

        step = max(1, len(rows) // 6)
        ticks = [(PAD + i * inner_w / n, rows[i][0].strftime("%H:%M"))
                 for i in range(0, len(rows), step)]
        return Chart(hours, done, failed, points(done), points(failed), top, ticks)
