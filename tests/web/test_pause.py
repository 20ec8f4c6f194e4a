"""The overview marks paused queues and pauses or resumes one (a POST with the CSRF token, the
admin role); the schedule page marks a paused entry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from cronqueue.config import AddAction, MissionEntry
from tests.web.conftest import PASSWORD, Web, web_config


def test_the_overview_marks_pauses_and_pauses_and_resumes(web: Web) -> None:
    web.queue.add("a.py", queue="reports")
    web.queue.add("a.py")
    page = web.html("/")
    assert "paused" not in page.replace("Paused", "")
    assert page.count(">Pause</button>") == 2 and ">Resume</button>" not in page

    response = web.post("/queues/pause", {"queue": "reports"})
    assert response.status_code == 302
    [pause] = web.queue.pauses()
    assert (pause.name, pause.until, pause.by) == ("reports", None, "local (web)")
    page = web.html("/")
    assert '<span class="paused">paused</span>' in page  # in the row of reports
    assert page.count(">Resume</button>") == 2  # the row and the list of paused queues
    assert page.count(">Pause</button>") == 1  # default's

    until = web.clock.now + timedelta(hours=2)
    web.post("/queues/pause", {"queue": "nightly-only", "until": until.strftime(
        "%Y-%m-%dT%H:%M:%S")})  # a queue without tasks: listed with the paused ones
    page = web.html("/")
    assert "nightly-only" in page and f"until {until:%Y-%m-%d %H:%M:%S}Z" in page

    assert web.post("/queues/resume", {"queue": "reports"}).status_code == 302
    assert [p.name for p in web.queue.pauses()] == ["nightly-only"]
    assert web.post("/queues/pause", {"queue": "a b"}).status_code == 400
    assert web.post("/queues/pause", {"queue": "x", "until": "2001-01-01T00:00"}
                    ).status_code == 400
    assert web.post("/queues/pause", {}).status_code == 400
    assert web.post("/queues/pause", {"queue": "x"}, csrf=False).status_code == 403
    assert [p.name for p in web.queue.pauses()] == ["nightly-only"]


def test_a_reader_sees_the_pause_and_may_not_change_it(make_web: Callable[..., Web]) -> None:
    web = make_web(web=web_config(users=(("reader", "read"),)))
    web.queue.add("a.py", queue="reports")
    web.queue.pause("reports", reason="deploy")
    assert web.post("/login", {"name": "reader", "password": PASSWORD}).status_code == 302
    page = web.html("/")
    assert '<span class="paused">paused</span>' in page and "(deploy)" in page
    assert ">Resume</button>" not in page and ">Pause</button>" not in page
    assert web.post("/queues/resume", {"queue": "reports"}).status_code == 403
    assert web.post("/queues/pause", {"queue": "other"}).status_code == 403
    assert [p.name for p in web.queue.pauses()] == ["reports"]


def test_the_schedule_page_marks_a_paused_entry(make_web: Callable[..., Web]) -> None:
    web = make_web(missions=(MissionEntry("nightly", "0 3 * * *", add=AddAction("r.py")),))
    assert "paused" not in web.html("/schedule")
    web.queue.pause_entry("nightly", reason="maintenance")
    page = web.html("/schedule")
    assert '<span class="paused">paused until resumed</span>' in page
    assert "maintenance" in page and "cronqueue schedule resume nightly" in page
