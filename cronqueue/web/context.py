"""What every page shares: the dashboard's state on the app (``dash()``), and the helpers the
templates call to show a value (times, ages, statuses) — each returns plain text, which the
templates escape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import current_app

from cronqueue.config import Config
from cronqueue.model import status_name
from cronqueue.queue import Queue
from cronqueue.store.browse import Browse
from cronqueue.web.chart import PerMinute


@dataclass
class Dashboard:
    config: Config
    queue: Queue
    browse: Browse
    chart: PerMinute

    def now(self) -> datetime:
        return self.queue.clock()


def dash() -> Dashboard:
    found: Dashboard = current_app.extensions["cronqueue"]
    return found


def ts(value: object) -> str:
    """A stored time as ``2026-11-23 15:00:00Z``; a value that is not a time as text."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return "-" if value is None else str(value)


def span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m {seconds % 60:.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:.0f}m"
    return f"{seconds // 86400:.0f}d {seconds % 86400 // 3600:.0f}h"


def age(value: object, now: datetime) -> str:
    """How long ago (or, ahead, in how long) a time is."""
    if not isinstance(value, datetime):
        return "-"
    delta = (now - value).total_seconds()
    return f"{span(delta)} ago" if delta >= 0 else f"in {span(delta)}"


def status_label(value: object) -> str:
    return status_name(value)
