"""Overview: tasks per queue and status, done and failed per minute, the oldest due task per
queue, the last mission tick per host, whether the database answers, the schema version; the
paused queues, with Pause and Resume (``Queue.pause`` / ``resume``: POST, admin)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from cronqueue.errors import CronqueueError, DatabaseError, InvalidTask
from cronqueue.model import Status
from cronqueue.store import migrate
from cronqueue.store.browse import ping
from cronqueue.web import forms, security
from cronqueue.web.context import dash

bp = Blueprint("overview", __name__)


@bp.get("/")
def index() -> Any:
    d = dash()
    now = d.now()
    hours = forms.integer(request.args, "hours", low=1, high=24) or 3
    if hours not in forms.CHART_HOURS:
        hours = 3
    try:
        ping(d.queue.engine)
    except DatabaseError as exc:
        return render_template("overview.html", reachable=False, error=str(exc), now=now), 503
    try:
        state = migrate.status(d.queue.engine)
        schema = f"{migrate.describe(state)} (this cronqueue: version {state.newest})"
    except CronqueueError as exc:
        schema = f"unknown: {exc}"
    overview = d.browse.overview(now)
    paused = {p.name: p for p in d.queue.pauses()}
    statuses = list(Status)
    totals = {int(s): sum(c[int(s)].value for c in overview.counts.values() if int(s) in c)
              for s in statuses}
    capped = {int(s): any(c[int(s)].capped for c in overview.counts.values() if int(s) in c)
              for s in statuses}
    return render_template(
        "overview.html", reachable=True, now=now, overview=overview, statuses=statuses,
        totals=totals, capped=capped, chart=d.chart.chart(now, hours),
        chart_hours=forms.CHART_HOURS, schema=schema, paused=paused)


@bp.post("/queues/pause")
def pause() -> Any:
    """Pause a queue until resumed (``until``: optional, an ISO time, UTC without offset)."""
    d = dash()
    name = forms.text(request.form, "queue") or abort(400, "queue: missing")
    until = forms.when(request.form, "until")
    try:
        d.queue.pause(name, until, by=f"{security.who().name} (web)")
    except InvalidTask as exc:
        abort(400, str(exc))
    security.audit("pause", [], f"queue={name} until={until.isoformat() if until else '-'}")
    flash(f"queue {name} paused: shards claim none of its tasks")
    return redirect(url_for("overview.index"))


@bp.post("/queues/resume")
def resume() -> Any:
    d = dash()
    name = forms.text(request.form, "queue") or abort(400, "queue: missing")
    try:
        ended = d.queue.resume(name)
    except InvalidTask as exc:
        abort(400, str(exc))
    security.audit("resume", [], f"queue={name}")
    flash(f"queue {name} resumed" if ended else f"queue {name} was not paused")
    return redirect(url_for("overview.index"))
