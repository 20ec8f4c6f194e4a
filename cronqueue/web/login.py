"""Sign in with a ``[web]`` user's password (or a token, for a browser), sign out. Failed
attempts are slowed: after ``MAX_FAILURES`` from one address within ``WINDOW`` seconds, that
address is refused until the window has passed."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, session, url_for

from cronqueue.config.web import token_matches, verify_password
from cronqueue.text import visible
from cronqueue.web import forms, security

bp = Blueprint("login", __name__)
MAX_FAILURES = 10
WINDOW = 300.0
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


class Throttle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def blocked(self, who: str) -> bool:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._failures.get(who, []) if now - t < WINDOW]
            self._failures[who] = recent
            return len(recent) >= MAX_FAILURES

    def failed(self, who: str) -> None:
        with self._lock:
            if len(self._failures) > 10_000:  # bounded: forget the oldest addresses
                for key in list(self._failures)[:5_000]:
                    del self._failures[key]
            self._failures.setdefault(who, []).append(time.monotonic())


THROTTLE = Throttle()


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    web = security.config()
    target = security.local_path(request.values.get("next"), url_for("overview.index"))
    if not web.authenticated or security.current() is not None:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target)
    address = request.remote_addr or "-"
    if THROTTLE.blocked(address):
        security.log.warning("login refused from %s: too many failures", address)
        return render_template("login.html", next=target,
                               error="too many failed attempts: wait a few minutes"), 429
    name = forms.text(request.form, "name")
    password = request.form.get("password", "")
    token = request.form.get("token", "")
    if len(password) > forms.CAPS["password"] or len(token) > forms.CAPS["token"]:
        return render_template("login.html", next=target, error="too long"), 400
    found, how = None, "token" if token else "password"
    if token:
        found = next((t.name for t in web.tokens if token_matches(token, t.token_hash)), None)
    elif name is not None:
        user = next((u for u in web.users if u.name == name), None)
        # An unknown name costs the same hash as a known one (no timing oracle).
        ok = verify_password(password, user.password_hash if user else _DUMMY)
        found = user.name if user is not None and ok else None
    if found is None:
        THROTTLE.failed(address)
        security.log.warning("login failed for %s from %s", visible(name or "-"),
                             address)
        return render_template("login.html", next=target,
                               error="wrong name, password or token"), 401
    security.sign_in(found, how)
    security.log.info("web login user=%s from=%s", visible(found), address)
    return redirect(target)


@bp.post("/logout")
def logout() -> Any:
    identity = security.current()
    session.clear()
    if identity is not None:
        security.log.info("web logout user=%s", visible(identity.name))
    flash("signed out")
    return redirect(url_for("login.login"))
