"""The dashboard under Flask's test client, on a fresh database of the backend under test.

``web`` builds an app on the test's database with a settable clock; ``post`` sends a form the
way the dashboard's own pages do (same origin, the session's CSRF token) unless told not to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from cronqueue import Queue
from cronqueue.config import load_config
from cronqueue.config.web import WebConfig, WebToken, WebUser, hash_password, hash_token
from cronqueue.web.app import create_app
from tests.conftest import Clock

ORIGIN = "http://localhost"
PASSWORD = "correct horse battery staple"
TOKEN = "t0ken-for-the-tests-0123456789abcdefghij"
TABLES = ("queue", "cronqueue_runs", "cronqueue_workers", "cronqueue_migrations",
          "cronqueue_rollup", "cronqueue_pauses")


@dataclass
class Web:
    queue: Queue
    clock: Clock
    app: Flask
    client: FlaskClient

    def csrf(self) -> str:
        with self.client.session_transaction() as s:
            token = s.get("csrf")
            if token is None:
                token = s["csrf"] = "csrf-token-of-the-test-session"
        return str(token)

    def post(self, url: str, data: dict[str, Any] | None = None, *, origin: str | None = ORIGIN,
             csrf: bool | str = True, **kw: Any) -> Any:
        form = dict(data or {})
        if csrf is True:
            form["csrf"] = self.csrf()
        elif isinstance(csrf, str):
            self.csrf()
            form["csrf"] = csrf
        headers = dict(kw.pop("headers", {}))
        if origin is not None:
            headers["Origin"] = origin
        return self.client.post(url, data=form, headers=headers, **kw)

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(url, **kw)

    def html(self, url: str) -> str:
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.status_code,
                                              response.data.decode()[:2000])
        return str(response.data.decode())

    def register_worker(self, **values: Any) -> int:
        """A row of ``cronqueue_workers``, as a shard registers itself."""
        from cronqueue.store.schema import workers_table

        with self.queue.engine.begin() as conn:
            key = conn.execute(workers_table.insert(), values).inserted_primary_key
        assert key is not None
        return int(key[0])

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table: what no GET may change."""
        with self.queue.engine.connect() as conn:
            return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
                    for t in TABLES}


def web_config(*, users: tuple[tuple[str, str], ...] = (),
               tokens: tuple[tuple[str, str], ...] = (), **kw: Any) -> WebConfig:
    return WebConfig(
        users=tuple(WebUser(n, hash_password(PASSWORD, method="pbkdf2_sha256"), r)
                    for n, r in users),
        tokens=tuple(WebToken(n, hash_token(TOKEN), r) for n, r in tokens), **kw)


@pytest.fixture
def make_web(db_url: str, task_dir: Path, log_dir: Path) -> Iterator[Callable[..., Web]]:
    """``make_web(web=WebConfig(...), auth=..., missions=...)``: a dashboard on the test's
    database (tables created), its clock settable."""
    made: list[Queue] = []

    def make(web: WebConfig | None = None, auth: Any = None, **config: Any) -> Web:
        cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir))
        cfg = replace(cfg, web=web or WebConfig(), **config)
        clock = Clock()
        q = Queue(config=cfg, clock=clock)
        q.init_db()
        made.append(q)
        app = create_app(cfg, queue=q, auth=auth)
        app.config["TESTING"] = True
        return Web(q, clock, app, app.test_client())

    yield make
    for q in made:
        q.close()


@pytest.fixture
def web(make_web: Callable[..., Web]) -> Web:
    """The dashboard with no users configured: the local operator, admin, on loopback."""
    return make_web()
