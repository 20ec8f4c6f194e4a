"""Failed and Delayed, and the actions on tasks: retry, cancel, run now — one task, the tasks
ticked on a page, or every task matching the page's filter (at most ``web.max_bulk``, after a
confirmation page that says how many).

Each action is the operation the CLI runs (``Queue.retry``, ``Queue.cancel``) or, for "run now"
of a delayed task, ``store.hasten`` — so each writes what ``states.py`` says, and nothing else:
no action edits a task's script or param. Every action is logged (``security.audit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from cronqueue.errors import InvalidTransition, TaskNotFound
from cronqueue.model import Status
from cronqueue.store.browse import TaskFilter
from cronqueue.store.hasten import hasten
from cronqueue.web import forms, security
from cronqueue.web.context import Dashboard, dash

bp = Blueprint("triage", __name__)


@dataclass(frozen=True)
class Kind:
    """A page whose list the actions may take "all matching" of."""

    title: str
    status: int | None
    delayed: bool
    actions: tuple[str, ...]


KINDS = {
    "failed": Kind("Failed", int(Status.FAILED), False, ("retry",)),
    "delayed": Kind("Delayed", int(Status.PENDING), True, ("run-now", "cancel")),
    "tasks": Kind("Tasks", None, False, ("retry", "cancel", "run-now")),
}
LABELS = {"retry": "Retry", "cancel": "Cancel", "run-now": "Run now"}


def _run_now(d: Dashboard, task_id: int) -> None:
    task = d.browse.task(task_id)
    if task is None:
        raise TaskNotFound(f"no task with id {task_id}")
    if task.status in (Status.FAILED, Status.CANCELLED):
        d.queue.retry(task_id)  # requeued: due now, fresh attempts
    else:
        hasten(d.queue.engine, task_id, d.now())


OPERATIONS: dict[str, Callable[[Dashboard, int], None]] = {
    "retry": lambda d, i: d.queue.retry(i),
    "cancel": lambda d, i: d.queue.cancel(i),
    "run-now": _run_now,
}


def _filter(kind: Kind, source: Any) -> TaskFilter:
    return forms.task_filter(source, status_code=kind.status, delayed=kind.delayed)


def _page(name: str) -> Any:
    d = dash()
    now = d.now()
    kind = KINDS[name]
    f = _filter(kind, request.args)
    after = forms.integer(request.args, "after")
    page = d.browse.tasks(f, now, after=after, limit=forms.PAGE_SIZE)
    return render_template("tasks.html", page=page, filter=f,
                           args=forms.filter_args(f, with_status=False), after=after, now=now,
                           statuses=list(Status), kind=name, title=kind.title,
                           actions=kind.actions, labels=LABELS)


@bp.get("/failed")
def failed() -> Any:
    return _page("failed")


@bp.get("/delayed")
def delayed() -> Any:
    return _page("delayed")


@bp.post("/actions/<action>")
def act(action: str) -> Any:
    if action not in OPERATIONS:
        abort(404, f"no action {action!r}")
    d = dash()
    cap = d.config.web.max_bulk
    name = forms.text(request.form, "kind") or "tasks"
    if name not in KINDS:
        abort(400, "kind: failed, delayed or tasks")
    kind = KINDS[name]
    back = security.local_path(request.form.get("next"), url_for("overview.index"))
    if request.form.get("all") == "1":
        f = _filter(kind, request.form)
        matched, more = d.browse.matching_ids(f, d.now(), cap)
        if request.form.get("confirm") != "yes":
            return render_template(
                "confirm.html", action=action, label=LABELS[action], kind=name,
                count=len(matched), more=more, cap=cap, args=forms.filter_args(
                    f, with_status=kind.status is None), back=back, title=kind.title)
        ids = matched
    else:
        ids = forms.ids(request.form, cap)
    if not ids:
        flash("nothing to do: no task selected or matched")
        return redirect(back)
    done, refused = apply(d, action, ids)
    security.audit(action, ids, f"done={done} refused={len(refused)}")
    flash(f"{LABELS[action]}: {done} of {len(ids)} task(s) done"
          + (f"; {len(refused)} refused" if refused else ""))
    for task_id, why in refused[:5]:
        flash(f"task {task_id}: {why}")
    return redirect(back)


def apply(d: Dashboard, action: str, ids: list[int]) -> tuple[int, list[tuple[int, str]]]:
    """Run ``action`` on each task, each in its own transaction: a task that moved on since
    the page was shown (done meanwhile, its unique key taken) is refused and named."""
    operation = OPERATIONS[action]
    done, refused = 0, []
    for task_id in ids:
        try:
            operation(d, task_id)
            done += 1
        except (InvalidTransition, TaskNotFound) as exc:
            refused.append((task_id, str(exc)))
    return done, refused
