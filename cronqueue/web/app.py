"""``create_app()``: the dashboard as a WSGI application.

``cronqueue web`` serves it with waitress; a host application mounts it under its own login
(``auth=``): see ``docs/web.md``. Pages are server-rendered by Jinja with autoescaping forced
on for every template, whatever its name; JavaScript (one small poller) and CSS are files of
this package, served by it — nothing is loaded from elsewhere.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, render_template, request
from jinja2 import StrictUndefined
from werkzeug.exceptions import HTTPException

from cronqueue.config import Config, load_config
from cronqueue.errors import DatabaseError
from cronqueue.queue import Queue
from cronqueue.store.browse import Browse
from cronqueue.text import visible, visible_line
from cronqueue.web import context, forms, security
from cronqueue.web.chart import PerMinute
from cronqueue.web.security import Authenticator

log = logging.getLogger("cronqueue.web")


def blueprints() -> list[Blueprint]:
    """The page groups, registered in this order. Each is one import and one entry here; its
    routes pass through the same checks (``security.PUBLIC`` names the endpoints open without a
    login: ``/healthz`` of ``metrics``)."""
    from cronqueue.web import login, metrics, overview, schedule, tasks, triage, workers

    return [login.bp, overview.bp, tasks.bp, triage.bp, schedule.bp, workers.bp, metrics.bp]


def create_app(config: Config | None = None, *, auth: Authenticator | None = None,
               queue: Queue | None = None, extra: Iterable[Blueprint] = ()) -> Flask:
    """The dashboard on ``config`` (default: looked up as ``Queue()`` does).

    ``auth``: the host application's login — ``auth(request) -> Identity | None`` (role
    ``read`` or ``admin``); without it, the ``[web]`` users and tokens, or, when none are
    configured, the local operator as admin (``cronqueue web`` then binds loopback only).
    ``queue``: a ready :class:`Queue` (tests give one with a clock). ``extra``: more blueprints
    of the host's, behind the same checks."""
    if config is None:
        config = queue.config if queue is not None else load_config()
    web = config.web
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        CRONQUEUE_WEB=web,
        # Signs the session cookie. Not configured: random, in this process's memory only
        # (never written anywhere); sessions then end when the server restarts.
        SECRET_KEY=web.secret_key or secrets.token_bytes(32),
        SESSION_COOKIE_NAME="cronqueue_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=web.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=web.session_hours),
        MAX_CONTENT_LENGTH=forms.MAX_FORM_BYTES,
        MAX_FORM_MEMORY_SIZE=forms.MAX_FORM_BYTES,
        MAX_FORM_PARTS=web.max_bulk + 50,
        TEMPLATES_AUTO_RELOAD=False,
        JSON_SORT_KEYS=False,
    )
    # Escape every value in every template, whatever its file name (Flask's default escapes
    # only .html/.htm/.xml/.xhtml); an undefined name is an error, not an empty string.
    app.jinja_env.autoescape = True
    app.jinja_env.undefined = StrictUndefined
    app.jinja_env.globals.update(
        csrf_token=security.csrf_token, visible=visible, visible_line=visible_line,
        ts=context.ts, age=context.age, status_label=context.status_label,
        identity=security.current, open_mode=auth is None and not web.authenticated,
        host_auth=auth is not None)
    queue = queue or Queue(config=config)
    browse = Browse(queue.engine)
    app.extensions["cronqueue"] = context.Dashboard(config, queue, browse, PerMinute(browse))
    security.install(app, web, auth)
    for bp in [*blueprints(), *extra]:
        app.register_blueprint(bp)
    _errors(app)
    return app


def _errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        code = exc.code or 500
        if request.path.endswith(".json"):
            return {"error": exc.description or exc.name}, code
        return render_template("error.html", code=code, title=exc.name,
                               message=exc.description or ""), code

    @app.errorhandler(DatabaseError)
    def _database(exc: DatabaseError) -> Any:
        log.warning("web: database error on %s: %s", visible(request.path), exc)
        if request.path.endswith(".json"):
            return {"error": "database unreachable"}, 503
        return render_template("error.html", code=503, title="Database unreachable",
                               message=str(exc)), 503
