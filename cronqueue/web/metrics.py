"""``/metrics`` (the Prometheus text exposition, ``cronqueue/metrics.py``) and ``/healthz`` (200
when the database answers and the last mission tick is recent, else 503; one line of text).

Both pass the dashboard's checks (``security.py``): ``/metrics`` needs a user or a token, like
every page (a scraper sends ``Authorization: Bearer <token>`` of a ``[[web.token]]``, role
``read``; without one it is answered 401, not the login form); ``/healthz`` is public
(``security.PUBLIC``), for a load balancer or an uptime monitor that carries no token, and says
nothing but whether and why: no URL, no error text, no name from the database.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response

from cronqueue.errors import DatabaseError
from cronqueue.metrics import CONTENT_TYPE, exposition, health
from cronqueue.web.context import dash

log = logging.getLogger("cronqueue.web")
bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Any:
    d = dash()
    try:
        text = exposition(d.queue.engine, entries=[e.name for e in d.config.missions],
                          clock=d.now)
    except DatabaseError as exc:
        log.warning("web: /metrics: %s", exc)
        return _text("database unreachable", 503)
    return Response(text, 200, content_type=CONTENT_TYPE)


@bp.get("/healthz")
def healthz() -> Any:
    d = dash()
    state = health(d.queue.engine, d.now(), d.config.health.max_age)
    return _text(state.reason, 200 if state.ok else 503)


def _text(line: str, status: int) -> Response:
    return Response(line + "\n", status, content_type="text/plain; charset=utf-8")
