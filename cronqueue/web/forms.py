"""Every input the dashboard takes, parsed with a size cap: a value that is too long, not of
its kind or holds control characters is answered 400, never passed on.

The caps follow the columns (a queue name is at most 64 characters, a script 255, a unique key
191) and keep the searches bounded (a param substring of at most 200 characters)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import abort
from werkzeug.datastructures import MultiDict

from cronqueue.decode import BIGINT_MAX
from cronqueue.model import Status
from cronqueue.store.browse import TaskFilter

CAPS = {"queue": 64, "script": 255, "unique_key": 191, "param": 200, "since": 32, "until": 32,
        "status": 16, "after": 20, "next": 2000, "name": 64, "password": 1024, "token": 256,
        "entry": 64, "hours": 3, "confirm": 3, "all": 3, "kind": 16}
MAX_FORM_BYTES = 256 * 1024  # a request body (the ids of one bulk action fit easily)
PAGE_SIZE = 50
CHART_HOURS = (1, 3, 6, 12, 24)


def text(source: Mapping[str, Any], name: str) -> str | None:
    """A short text input: None when absent or empty; 400 when longer than its cap or holding
    control characters."""
    value = source.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > CAPS[name]:
        abort(400, f"{name}: longer than {CAPS[name]} characters")
    if not value.isprintable():
        abort(400, f"{name}: holds control characters")
    return value


def integer(source: Mapping[str, Any], name: str, *, low: int = 1,
            high: int = BIGINT_MAX) -> int | None:
    value = text(source, name)
    if value is None:
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        abort(400, f"{name}: expected an integer from {low} to {high}")
    return int(value)


def status(source: Mapping[str, Any]) -> int | None:
    value = text(source, "status")
    if value is None:
        return None
    try:
        return int(Status.parse(value))
    except ValueError:
        abort(400, "status: one of pending, done, running, failed, cancelled")


def when(source: Mapping[str, Any], name: str) -> datetime | None:
    """An ISO time (``<input type=datetime-local>`` sends ``2026-11-23T15:00``), UTC when it
    carries no offset."""
    value = text(source, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        abort(400, f"{name}: expected an ISO time such as 2026-11-23T15:00")
    if not 1970 <= moment.year <= 9998:
        abort(400, f"{name}: the year must be within 1970..9998")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def task_filter(source: Mapping[str, Any], *, status_code: int | None = None,
                delayed: bool = False) -> TaskFilter:
    """The filters of a task list. ``status_code``: fixed by the page (Failed, Delayed)."""
    return TaskFilter(
        status=status_code if status_code is not None else status(source),
        queue=text(source, "queue"), script=text(source, "script"),
        unique_key=text(source, "unique_key"), param=text(source, "param"),
        since=when(source, "since"), until=when(source, "until"), delayed=delayed)


def filter_args(f: TaskFilter, *, with_status: bool = True) -> dict[str, str]:
    """A filter as query arguments (for links and for the hidden fields of a bulk form)."""
    out = {"queue": f.queue, "script": f.script, "unique_key": f.unique_key, "param": f.param,
           "since": _utc_text(f.since), "until": _utc_text(f.until)}
    if with_status and f.status is not None:
        out["status"] = Status.of(f.status).name.lower()
    return {k: v for k, v in out.items() if v}


def _utc_text(moment: datetime | None) -> str | None:
    """A time filter as the form sends it back: UTC, to the second."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def ids(form: MultiDict[str, str], cap: int) -> list[int]:
    """The ``id`` fields of a bulk form: at most ``cap``, each a task id."""
    values = form.getlist("id")
    if len(values) > cap:
        abort(400, f"more than {cap} ids")
    out = []
    for value in values:
        if not value.isdigit() or len(value) > 19 or not 1 <= int(value) <= BIGINT_MAX:
            abort(400, "id: expected task ids")
        out.append(int(value))
    return sorted(set(out), reverse=True)
