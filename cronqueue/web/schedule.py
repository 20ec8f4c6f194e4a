"""Schedule: the mission entries — cron and the cron in words (cron-descriptor), the next runs,
the last run and its outcome — and "enqueue now" for an ``add`` entry (its task, as configured,
added once more now: the entry's own schedule and runs are left as they are)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, url_for

from cronqueue.config import MISSION_NAME_RE
from cronqueue.web import security
from cronqueue.web.context import dash

bp = Blueprint("schedule", __name__)


@bp.get("/schedule")
def entries() -> Any:
    d = dash()
    now = d.now()
    adds = {e.name for e in d.config.missions if e.add is not None}
    return render_template("schedule.html", entries=d.queue.schedule(now), adds=adds, now=now,
                           source=str(d.config.source) if d.config.source else None)


@bp.post("/schedule/<name>/enqueue")
def enqueue(name: str) -> Any:
    if not MISSION_NAME_RE.fullmatch(name):
        abort(404)
    d = dash()
    entry = next((e for e in d.config.missions if e.name == name), None)
    if entry is None or entry.add is None:
        abort(404, "no add entry of that name in the configuration")
    a = entry.add
    task_id = d.queue.add(a.taskscript, a.param, priority=a.priority, queue=a.queue,
                          max_attempts=a.max_attempts, timeout=a.timeout)
    security.audit("enqueue", [task_id], f"entry={name}")
    flash(f"{name}: task {task_id} added")
    return redirect(url_for("tasks.task", task_id=task_id))
