"""Who is asking, and whether the request may do what it asks — checked once per request,
before any view runs (``install``), never left to each view.

* **Who**: the host application's ``auth`` callable when the dashboard is mounted under its
  login; else the ``[web]`` users (a session cookie after the login form) and tokens (an
  ``Authorization: Bearer`` header); else nobody is configured and every request is the local
  operator (admin) — allowed only on a loopback address (``cronqueue web`` refuses to bind
  another) and only with a loopback ``Host`` header (a page elsewhere that rebinds its own name
  to 127.0.0.1 gets nothing).
* **May it**: a GET changes nothing (every action is a POST route); every POST must come from
  this site (``Sec-Fetch-Site: same-origin``, or an ``Origin`` equal to this site or one of
  ``web.trusted_origins``) and carry the session's CSRF token; every POST but the login and
  logout needs the admin role.
* **Answers**: a strict Content-Security-Policy (no inline script or style: only this app's
  own static files), ``nosniff``, no referrer, no framing, no caching of pages.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, abort, current_app, g, redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from cronqueue.config.web import WebConfig, is_loopback, token_matches
from cronqueue.text import visible

log = logging.getLogger("cronqueue.web")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with a
    # form POST, which the same-origin check could not tell from another site's.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Endpoints served without a login: the login form, the vendored CSS/JS, the health check for
# monitors (web/metrics.py: it says only whether the mission ticks). A page group whose routes
# must answer without one adds its endpoint names here; every other route needs a user, a token
# or the host's login (or the open local mode).
PUBLIC = frozenset({"login.login", "static", "metrics.healthz"})
# Endpoints a program reads (a Prometheus scrape): answered 401 without a login, never
# redirected to the login form.
MACHINE = frozenset({"metrics.metrics"})
# POSTs any signed-in role may make (they change only the caller's own session).
SESSION_POSTS = frozenset({"login.login", "login.logout"})


@dataclass(frozen=True)
class Identity:
    name: str
    role: str  # "read" or "admin"
    how: str  # "local", "password", "token", "host"

    @property
    def admin(self) -> bool:
        return self.role == "admin"


Authenticator = Callable[[Any], "Identity | None"]
"""``auth(request) -> Identity | None``: the host application says who is asking (its own
login), None for nobody (answered 401)."""


def install(app: Flask, web: WebConfig, auth: Authenticator | None) -> None:
    """Register the checks and headers on ``app``."""

    @app.before_request
    def _check() -> ResponseReturnValue | None:
        if auth is None and not web.authenticated and not is_loopback(_hostname()):
            abort(400, "this dashboard has no users configured, so it answers only to a "
                       "loopback Host (127.0.0.1, localhost)")
        who = identify(web, auth)
        g.identity = who
        endpoint = request.endpoint or ""
        if who is None and endpoint not in PUBLIC:
            if auth is not None or request.method != "GET" or _wants_json() or \
                    "Authorization" in request.headers:
                abort(401)
            return redirect(url_for("login.login", next=local_path(request.full_path, "/")))
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            refusal = cross_site(web) or bad_csrf()
            if refusal is not None:
                log.warning("refused %s %s from %s (user %s): %s", request.method,
                            visible(request.path), request.remote_addr,
                            visible(who.name) if who else "-", refusal)
                abort(403, f"refused: {refusal}")
            if endpoint not in SESSION_POSTS and (who is None or not who.admin):
                log.warning("refused %s %s: user %s has role %s, not admin", request.method,
                            visible(request.path), visible(who.name) if who else "-",
                            who.role if who else "-")
                abort(403, "this needs the admin role")
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response


def _hostname() -> str:
    host = request.host
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _wants_json() -> bool:
    return request.path.endswith(".json") or request.endpoint in MACHINE


def identify(web: WebConfig, auth: Authenticator | None) -> Identity | None:
    if auth is not None:
        return auth(request)
    if not web.authenticated:
        return Identity("local", "admin", "local")
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
        for t in web.tokens:
            if token_matches(token, t.token_hash):
                return Identity(t.name, t.role, "token")
        return None
    name, how, since = session.get("user"), session.get("how"), session.get("since")
    if not isinstance(name, str) or not isinstance(since, int | float):
        return None
    if time.time() - since > web.session_hours * 3600:
        session.clear()
        return None
    # The role as configured now: a user removed or demoted since the login loses it at once.
    if how == "token":
        known = next((t for t in web.tokens if t.name == name), None)
        return Identity(known.name, known.role, "token") if known is not None else None
    user = next((u for u in web.users if u.name == name), None)
    return Identity(user.name, user.role, "password") if user is not None else None


def sign_in(name: str, how: str) -> None:
    """A new session for ``name`` (``how``: "password" or "token")."""
    session.clear()
    session.permanent = True
    session["user"] = name
    session["how"] = how
    session["since"] = time.time()
    session["csrf"] = secrets.token_urlsafe(32)  # a new token with each login


def csrf_token() -> str:
    """The session's CSRF token (made on first use): the hidden field of every form."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def bad_csrf() -> str | None:
    sent = request.form.get("csrf", "")
    token = session.get("csrf")
    if not isinstance(token, str) or not sent:
        return "no CSRF token"
    if not hmac.compare_digest(sent.encode(), token.encode()):
        return "wrong CSRF token"
    return None


def cross_site(web: WebConfig) -> str | None:
    """Why this POST is not from this site (None: it is)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return f"Sec-Fetch-Site is {visible(site[:40])}"
    if site == "same-origin":
        # Set by the browser alone (a page cannot forge it), and sent with every request by
        # current browsers; their Origin may be "null" under a host application's
        # `Referrer-Policy: no-referrer`, so it is not asked for as well.
        return None
    origin = request.headers.get("Origin")
    if origin is None:
        return "neither Origin nor Sec-Fetch-Site sent"
    mine = f"{request.scheme}://{request.host}".lower()
    if origin.lower() == mine or origin.lower() in web.trusted_origins:
        return None
    return f"Origin {visible(origin[:100])} is not this site ({mine})"


def local_path(path: str | None, default: str) -> str:
    """A redirect target from a form or query (``next``): a path on this site, never
    another site (``//evil``, ``https://...``, ``\\\\evil``)."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")) or any(
            c in path for c in "\r\n\\") or len(path) > 2000:
        return default
    return path


def current() -> Identity | None:
    """The identity of the request, None before the login."""
    identity: Identity | None = g.get("identity")
    return identity


def who() -> Identity:
    """The identity of the request (set by the check before every view)."""
    identity: Identity | None = g.get("identity")
    if identity is None:
        abort(401)
    return identity


def audit(action: str, ids: list[int] | None = None, detail: str = "") -> None:
    """One log line per action: who (name, role, how, address), what, which ids, outcome."""
    identity = g.get("identity")
    ids = ids or []
    shown = ",".join(map(str, ids[:50])) + (f",...({len(ids)})" if len(ids) > 50 else "")
    log.info("web action=%s user=%s role=%s via=%s from=%s ids=%s %s", action,
             visible(identity.name) if identity else "-", identity.role if identity else "-",
             identity.how if identity else "-", request.remote_addr, shown or "-",
             visible(detail))


def config() -> WebConfig:
    web: WebConfig = current_app.config["CRONQUEUE_WEB"]
    return web
