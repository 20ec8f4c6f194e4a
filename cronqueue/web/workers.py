"""Workers: the shards registered on every host, with their heartbeats; stop one, or all
(after a confirmation). A stop is ``Queue.stop_workers``: the shard is asked through the
database (it stops at its next heartbeat, its running task finished) and, when it runs on this
host and proves to be that shard, signalled at once."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from cronqueue.web import forms, security
from cronqueue.web.context import dash

bp = Blueprint("workers", __name__)


@bp.get("/workers")
def shards() -> Any:
    d = dash()
    return render_template("workers.html", workers=d.queue.workers(), now=d.now(),
                           heartbeat=d.config.worker.heartbeat, lease=d.config.worker.lease)


@bp.post("/workers/stop")
def stop() -> Any:
    d = dash()
    if request.form.get("all") == "1":
        alive = [w for w in d.queue.workers() if w.alive]
        if request.form.get("confirm") != "yes":
            return render_template("confirm_workers.html", count=len(alive))
        ids = None
    else:
        ids = forms.ids(request.form, 10_000)
        if not ids:
            flash("no worker selected")
            return redirect(url_for("workers.shards"))
    asked = d.queue.stop_workers(ids)
    security.audit("stop-workers", [w.id for w in asked],
                   "all" if ids is None else f"asked={len(asked)}")
    flash(f"asked {len(asked)} worker(s) to stop"
          + (f"; {sum(w.signalled for w in asked)} signalled at once" if asked else ""))
    return redirect(url_for("workers.shards"))
