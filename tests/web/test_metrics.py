"""``/metrics`` and ``/healthz`` of the dashboard: the exposition parses and holds the
database's values; ``/metrics`` needs a user or a token like every page (401 without, never the
login form), ``/healthz`` is public and answers 200 only when the database answers and the last
mission tick is recent."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from cronqueue.config.alerts import HealthConfig
from cronqueue.store.ticks import Ticks
from tests.web.conftest import TOKEN, Web, web_config


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_hold_the_databases_values(web: Web) -> None:
    for _ in range(3):
        web.queue.add("a.py", queue="mail")
    web.queue.add("b.py", queue="mail", delay=600)
    web.clock.advance(90)
    response = web.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    got = samples(response.data.decode())
    assert got[("cronqueue_tasks", (("queue", "mail"), ("status", "pending")))] == 4
    assert got[("cronqueue_tasks", (("queue", "mail"), ("status", "failed")))] == 0
    assert got[("cronqueue_oldest_due_age_seconds", (("queue", "mail"),))] == 90
    assert got[("cronqueue_tasks_finished_total", (("outcome", "done"), ("queue", "mail")))] == 0
    assert ("cronqueue_build_info", (("version", "0.1.0"),)) in got
    assert response.headers["Cache-Control"] == "no-store"


def test_metrics_need_a_login_or_a_token(make_web: Callable[..., Web]) -> None:
    web = make_web(web=web_config(users=(("ops", "admin"),), tokens=(("prometheus", "read"),)))
    anonymous = web.get("/metrics")
    assert anonymous.status_code == 401  # a scraper is told, not sent to the login form
    assert b"cronqueue_tasks" not in anonymous.data
    assert web.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = web.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200
    assert "cronqueue_build_info" in scraped.data.decode()


def test_healthz_answers_200_only_after_a_recent_tick(make_web: Callable[..., Web]) -> None:
    web = make_web(web=web_config(users=(("ops", "admin"),)),
                   health=HealthConfig(max_age=300.0))
    none = web.get("/healthz")  # public: no login asked
    assert (none.status_code, none.data) == (503, b"no mission tick recorded yet\n")
    ticks = Ticks(web.queue.engine)
    ticks.record("host-a#1", 10, web.clock.now - timedelta(seconds=2), web.clock.now, [])
    fresh = web.get("/healthz")
    assert fresh.status_code == 200, fresh.data
    assert fresh.data.startswith(b"ok: ")
    web.clock.advance(301)
    stale = web.get("/healthz")
    assert stale.status_code == 503
    assert stale.data == b"the last mission tick ended 5m 1s ago, more than 5m\n"
    ticks.record("host-b#2", 11, web.clock.now, web.clock.now, [])  # another host ticks
    assert web.get("/healthz").status_code == 200


def test_healthz_and_metrics_say_503_when_the_database_is_gone(web: Web) -> None:
    web.queue.engine.dispose()
    url = web.queue.engine.url
    if url.get_backend_name() == "sqlite":
        from pathlib import Path

        Path(str(url.database)).unlink()
        Path(str(url.database)).mkdir()  # no database file can be opened there
    else:
        with web.queue.engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {url.database}")
    down = web.get("/healthz")
    assert down.status_code == 503
    assert down.data in (b"database unreachable\n", b"database error (see the log)\n")
    assert str(url.database).encode() not in down.data
    assert web.get("/metrics").status_code == 503
