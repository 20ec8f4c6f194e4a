"""Tasks: the filtered list (keyset pages, newest first) and one task — its row, its lines
from the day log, and for a running task a page that follows it (``live.json`` polled by
``static/follow.js``: its state, and its output tail, which the shard's heartbeat writes to the
row while the output grows)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template, request

from cronqueue.model import Status, status_name
from cronqueue.web import daylog, forms
from cronqueue.web.context import dash

bp = Blueprint("tasks", __name__)
LIVE_OUTPUT = 64 * 1024  # characters of output live.json returns (the end of it)


@bp.get("/tasks")
def task_list() -> Any:
    d = dash()
    now = d.now()
    f = forms.task_filter(request.args)
    after = forms.integer(request.args, "after")
    page = d.browse.tasks(f, now, after=after, limit=forms.PAGE_SIZE)
    return render_template("tasks.html", page=page, filter=f, args=forms.filter_args(f),
                           after=after, now=now, statuses=list(Status), kind="tasks",
                           title="Tasks")


@bp.get("/tasks/<int:task_id>")
def task(task_id: int) -> Any:
    d = dash()
    t = d.browse.task(task_id)
    if t is None:
        abort(404, f"no task with id {task_id}")
    lines = daylog.lines_of(d.config.log_dir, t)
    # a task whose max_attempts/timeout are NULL gets the configuration's, as a shard does
    return render_template("task.html", task=t, log=lines, now=d.now(),
                           running=t.status == Status.RUNNING,
                           max_attempts=t.max_attempts
                           or d.config.worker.retry.attempts_for(None),
                           timeout=t.timeout or d.config.worker.timeout)


@bp.get("/tasks/<int:task_id>/live.json")
def live(task_id: int) -> Any:
    """A task's state for the follow page's poller: plain JSON, read as text by the script."""
    d = dash()
    t = d.browse.task(task_id)
    if t is None:
        abort(404, f"no task with id {task_id}")
    output = t.output or ""
    return {"id": t.id, "status": status_name(t.status),
            "finished": t.status.finished, "attempts": t.attempts,
            "started_at": t.started_at.isoformat() if t.started_at else None,
            "finished_at": t.finished_at.isoformat() if t.finished_at else None,
            "lease_until": t.lease_until.isoformat() if t.lease_until else None,
            "worker": f"{t.worker_host}:{t.worker_pid}" if t.worker_host else None,
            "exit_code": t.exit_code, "error": t.error,
            "output": output[-LIVE_OUTPUT:]}
