"""The dashboard's security (issue 14 #3): stored XSS through every value a row or a worker
holds, cross-site and token-less POSTs, no GET that changes anything, roles, logins, the
bind refusal, headers, input caps."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from sqlalchemy import update

from cronqueue.config.web import WebConfig, bind_refusal
from cronqueue.model import Status
from cronqueue.store.schema import queue_table as q
from cronqueue.web.security import Identity
from tests.conftest import get_task, insert_raw
from tests.web.conftest import PASSWORD, TOKEN, Web, web_config

PAYLOADS = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "javascript:alert(3)",
    "'><svg onload=alert(4)>",
)
RAW = ("<script>alert(1)", "<img src=x onerror", "<svg onload", 'href="javascript:',
       "href='javascript:", 'src="javascript:')


def _hostile_rows(w: Web) -> list[int]:
    """Rows whose every text column carries a payload: output, param, script, queue name,
    error, unique key, lease holder — as a hand-written row or a task's output would."""
    ids = []
    for i, payload in enumerate(PAYLOADS):
        task_id = insert_raw(w.queue, {
            "taskscript": payload, "param": f'{{"x": "{payload}"}}', "queue": payload,
            "unique_key": f"{payload}{i}"})
        with w.queue.engine.begin() as conn:
            conn.execute(update(q).where(q.c.id == task_id).values(
                status=int(Status.FAILED), error=payload, output=f"{payload}\n{payload}",
                worker_host=payload, exit_code=1, started_at=w.clock.now,
                finished_at=w.clock.now))
        ids.append(task_id)
    running = w.queue.add("ok.py")
    with w.queue.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == running).values(
            status=int(Status.RUNNING), worker_host=PAYLOADS[1], worker_pid=1,
            started_at=w.clock.now))
    w.register_worker(host=PAYLOADS[0], pid=7, pid_start=1, entry=PAYLOADS[1],
                                   shard=0, total=1, queues=PAYLOADS[2],
                                   started_at=w.clock.now, heartbeat_at=w.clock.now)
    return [*ids, running]


def test_stored_xss_never_reaches_a_page_unescaped(web: Web, log_dir: Any) -> None:
    ids = _hostile_rows(web)
    day = f"{web.clock.now:%Y-%m-%d}"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{day}.log").write_text(
        f"--- 2031-05-06T07:08:09.000+00:00 task={ids[0]} attempt=1 queue=x script=x "
        f"shard=0/1 exit=1 duration=0.1s bytes=9\n{PAYLOADS[0]}\n{PAYLOADS[1]}\n")
    (log_dir / f"{day}.log").chmod(0o600)
    pages = ["/", "/tasks", "/failed", "/delayed", "/workers", "/schedule",
             *[f"/tasks/{i}" for i in ids],
             *[f"/tasks?queue={p}" for p in ("x", "y")]]
    for path in pages:
        html = web.html(path)
        for raw in RAW:
            assert raw not in html, f"{path}: {raw!r} unescaped"
    task_page = web.html(f"/tasks/{ids[0]}")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in task_page
    assert task_page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5  # every column, log
    assert "&lt;svg onload" in web.html(f"/tasks/{ids[3]}")
    # A filter value comes back into the form and the links: escaped there too.
    html = web.html("/tasks?param=%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert(9)%3E")
    assert "<img src=x" not in html and "&#34;&gt;&lt;img src=x" in html
    # live.json is JSON (never sniffed as HTML), its payloads as JSON strings
    live = web.get(f"/tasks/{ids[0]}/live.json")
    assert live.mimetype == "application/json"
    assert live.headers["X-Content-Type-Options"] == "nosniff"


def test_headers_on_every_answer(web: Web) -> None:
    for path in ("/", "/tasks", "/static/style.css", "/nosuch", "/tasks/1/live.json"):
        response = web.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert "default-src 'none'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"
    assert web.get("/tasks").headers["Cache-Control"] == "no-store"


class _Tags(HTMLParser):
    """The elements and attributes a browser would build from a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def _active_content(html: str) -> list[str]:
    """What in a page could run script or inline style: a script not from /static/, a style
    element or attribute, an on* handler, a javascript: URL, anything from another site."""
    parser = _Tags()
    parser.feed(html)
    bad = []
    for tag, attrs in parser.found:
        if tag == "script" and not (attrs.get("src") or "").startswith("/static/"):
            bad.append(f"<script {attrs}>")
        if tag == "style" or "style" in attrs:
            bad.append(f"style on <{tag}>")
        bad += [f"{name} on <{tag}>" for name in attrs if name.startswith("on")]
        for name in ("href", "src", "action", "formaction", "data-url"):
            value = (attrs.get(name) or "").strip().lower()
            if value.startswith(("javascript:", "data:", "//", "http:", "https:")):
                bad.append(f"{name}={value!r} on <{tag}>")
    return bad


def test_pages_carry_no_active_content(web: Web) -> None:
    ids = _hostile_rows(web)
    web.queue.add("x.py")
    paths = ["/", "/tasks", "/failed", "/delayed", "/workers", "/schedule",
             *[f"/tasks/{i}" for i in ids], "/tasks?param=%3Cscript%3E"]
    for path in paths:
        assert _active_content(web.html(path)) == [], path
    # the check sees what it looks for
    assert _active_content('<p onclick="x()">') == ["onclick on <p>"]
    assert _active_content('<a href=" JavaScript:x">') != []
    assert _active_content("<script>x</script>") != []


def test_a_post_from_another_site_is_refused(web: Web) -> None:
    task_id = web.queue.add("a.py")
    form = {"id": str(task_id), "next": "/tasks"}
    for headers, origin in (
            ({}, "http://evil.example"),
            ({}, "null"),
            ({"Sec-Fetch-Site": "cross-site"}, None),
            ({"Sec-Fetch-Site": "same-site"}, "http://localhost"),
            ({}, None),  # neither header: refused too
    ):
        response = web.post("/actions/cancel", form, origin=origin, headers=headers)
        assert response.status_code == 403, (headers, origin)
        assert get_task(web.queue, task_id).status == Status.PENDING
    ok = web.post("/actions/cancel", form, origin=None,
                  headers={"Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 302
    assert get_task(web.queue, task_id).status == Status.CANCELLED
    # A browser under `Referrer-Policy: no-referrer` (a host application's) sends Origin: null
    # with its own form POSTs; Sec-Fetch-Site, which no page can forge, says same-origin.
    other = web.queue.add("b.py")
    ok = web.post("/actions/cancel", {"id": str(other), "next": "/tasks"}, origin="null",
                  headers={"Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 302
    assert get_task(web.queue, other).status == Status.CANCELLED


def test_a_post_without_the_csrf_token_is_refused(web: Web) -> None:
    task_id = web.queue.add("a.py")
    for csrf in (False, "wrong-token", ""):
        response = web.post("/actions/cancel", {"id": str(task_id)}, csrf=csrf)
        assert response.status_code == 403, csrf
        assert get_task(web.queue, task_id).status == Status.PENDING
    # A token of another session does not pass either.
    other = web.app.test_client()
    with other.session_transaction() as s:
        s["csrf"] = "the-other-session"
    response = web.post("/actions/cancel", {"id": str(task_id)}, csrf="the-other-session")
    assert response.status_code == 403
    assert web.post("/actions/cancel", {"id": str(task_id)}).status_code == 302


def _get_routes(web: Web, ids: dict[str, int]) -> list[str]:
    """Every route of the app as a GET, with real ids for its arguments."""
    paths = []
    for rule in web.app.url_map.iter_rules():
        args = {"task_id": ids["task"], "action": "retry", "name": "nightly",
                "filename": "style.css"}
        path = rule.rule
        for name in rule.arguments:
            path = re.sub(rf"<(?:\w+:)?{name}>", str(args[name]), path)
        paths.append(path)
    return paths


def test_no_get_changes_anything(make_web: Callable[..., Web]) -> None:
    from cronqueue.config import AddAction, MissionEntry

    web = make_web(missions=(MissionEntry("nightly", "0 3 * * *", add=AddAction("r.py")),))
    task = web.queue.add("c.py", {"i": 1})
    with web.queue.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == task).values(
            status=int(Status.FAILED), finished_at=web.clock.now))
    web.queue.add("b.py", delay=600)
    web.register_worker(host="elsewhere", pid=7, pid_start=1, entry="nightly",
                                     shard=0, total=1, queues="", started_at=web.clock.now,
                                     heartbeat_at=web.clock.now)
    before = web.snapshot()
    queries = ["", "?all=1&confirm=yes&id=1&kind=failed", "?id=1&csrf=x"]
    paths = _get_routes(web, {"task": task})
    assert len(paths) >= 12, paths
    for path in paths:
        for query in queries:
            response = web.get(path + query)
            answers = (200, 302, 404, 405) + ((503,) if path == "/healthz" else ())  # no tick
            assert response.status_code in answers, (path, response.status_code)
            if "/actions/" in path or path.endswith(("/stop", "/enqueue", "/logout")):
                assert response.status_code == 405, path
    assert web.snapshot() == before


def test_roles(make_web: Callable[..., Web]) -> None:
    web = make_web(web=web_config(users=(("reader", "read"), ("boss", "admin"))))
    task_id = web.queue.add("a.py")
    # Not signed in: pages send to the login, actions are refused.
    response = web.get("/tasks")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert web.post("/actions/cancel", {"id": str(task_id)}).status_code == 401
    # A reader sees every page and may not act.
    assert web.post("/login", {"name": "reader", "password": PASSWORD}).status_code == 302
    assert "reader · read" in web.html("/tasks")
    assert "Cancel selected" not in web.html("/tasks")
    for url, data in (("/actions/cancel", {"id": str(task_id)}), ("/workers/stop", {"all": "1"}),
                      ("/actions/retry", {"all": "1", "kind": "failed"})):
        assert web.post(url, data).status_code == 403, url
    assert get_task(web.queue, task_id).status == Status.PENDING
    # Signing out is allowed to every role; then an admin acts.
    assert web.post("/logout").status_code == 302
    assert web.get("/tasks").status_code == 302
    assert web.post("/login", {"name": "boss", "password": PASSWORD}).status_code == 302
    assert web.post("/actions/cancel", {"id": str(task_id)}).status_code == 302
    assert get_task(web.queue, task_id).status == Status.CANCELLED


def test_login_and_session_cookie(make_web: Callable[..., Web]) -> None:
    web = make_web(web=web_config(users=(("ops", "admin"),)))
    assert web.get("/login").status_code == 200
    bad = web.post("/login", {"name": "ops", "password": "wrong"})
    assert bad.status_code == 401 and b"wrong name" in bad.data
    assert web.post("/login", {"name": "nobody", "password": PASSWORD}).status_code == 401
    # the login form is a POST like any other: same origin and the session's token
    assert web.post("/login", {"name": "ops", "password": PASSWORD},
                    origin="http://evil.example").status_code == 403
    ok = web.post("/login", {"name": "ops", "password": PASSWORD, "next": "//evil.example/x"})
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    cookie = ok.headers["Set-Cookie"]
    assert cookie.startswith("cronqueue_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert PASSWORD not in cookie
    assert web.get("/tasks").status_code == 200
    # a session outlives neither its hours nor its user's removal
    with web.client.session_transaction() as s:
        s["since"] = s["since"] - 13 * 3600
    assert web.get("/tasks").status_code == 302


def test_too_many_failed_logins_are_refused(make_web: Callable[..., Web]) -> None:
    from cronqueue.web import login

    login.THROTTLE = login.Throttle()
    web = make_web(web=web_config(users=(("ops", "admin"),)))
    for _ in range(login.MAX_FAILURES):
        assert web.post("/login", {"name": "ops", "password": "nope"}).status_code == 401
    assert web.post("/login", {"name": "ops", "password": PASSWORD}).status_code == 429
    login.THROTTLE = login.Throttle()


def test_tokens(make_web: Callable[..., Web]) -> None:
    web = make_web(web=web_config(tokens=(("prometheus", "read"), )))
    assert web.get("/tasks", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert web.get("/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401
    # a token POST still needs the same origin and a CSRF token, and the admin role
    task_id = web.queue.add("a.py")
    response = web.post("/actions/cancel", {"id": str(task_id)},
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403
    # a browser may sign in with the token
    assert web.post("/login", {"token": TOKEN}).status_code == 302
    assert "prometheus · read" in web.html("/")


def test_host_application_login(make_web: Callable[..., Web]) -> None:
    seen: list[str] = []

    def auth(request: Any) -> Identity | None:
        user = request.headers.get("X-Test-User")
        seen.append(user or "-")
        if user == "admin":
            return Identity("alice", "admin", "host")
        return Identity("bob", "read", "host") if user else None

    web = make_web(auth=auth)
    task_id = web.queue.add("a.py")
    assert web.get("/").status_code == 401
    assert web.get("/", headers={"X-Test-User": "r"}).status_code == 200
    assert web.post("/actions/cancel", {"id": str(task_id)},
                    headers={"X-Test-User": "r"}).status_code == 403
    assert web.post("/actions/cancel", {"id": str(task_id)},
                    headers={"X-Test-User": "admin"}).status_code == 302
    assert get_task(web.queue, task_id).status == Status.CANCELLED
    assert "r" in seen and "admin" in seen


@pytest.mark.any_backend
def test_open_mode_answers_only_a_loopback_host(web: Web) -> None:
    assert web.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert web.get("/", headers={"Host": "evil.example:8321"}).status_code == 400
    for host in ("127.0.0.1:8321", "localhost", "[::1]:8321", "127.0.0.5"):
        assert web.get("/tasks", headers={"Host": host}).status_code == 200, host


@pytest.mark.any_backend
def test_bind_refusal() -> None:
    assert bind_refusal("127.0.0.1", WebConfig()) is None
    assert bind_refusal("::1", WebConfig()) is None
    assert bind_refusal("localhost", WebConfig()) is None
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.org"):
        refusal = bind_refusal(host, WebConfig())
        assert refusal is not None and "[[web.user]]" in refusal
        assert bind_refusal(host, web_config(users=(("ops", "admin"),))) is None
        assert bind_refusal(host, web_config(tokens=(("p", "read"),))) is None


def test_input_caps(web: Web) -> None:
    assert web.get("/tasks?queue=" + "q" * 65).status_code == 400
    assert web.get("/tasks?param=" + "p" * 201).status_code == 400
    assert web.get("/tasks?param=%01x").status_code == 400
    assert web.get("/tasks?status=sleeping").status_code == 400
    assert web.get("/tasks?after=-1").status_code == 400
    assert web.get("/tasks?after=99999999999999999999999").status_code == 400
    assert web.get("/tasks?since=yesterday").status_code == 400
    assert web.post("/actions/retry", {"id": "1 OR 1=1"}).status_code == 400
    assert web.post("/actions/nosuch", {"id": "1"}).status_code == 404
    big = web.post("/actions/retry", {"id": "1", "pad": "x" * 300_000})
    assert big.status_code == 413
    task_id = web.queue.add("a.py")
    with web.queue.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == task_id).values(
            status=int(Status.FAILED), finished_at=web.clock.now + timedelta(seconds=1)))
    nxt = web.post("/actions/retry", {"id": str(task_id), "next": "https://evil.example/"})
    assert nxt.status_code == 302 and nxt.headers["Location"] == "/"
