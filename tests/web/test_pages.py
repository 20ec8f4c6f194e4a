"""Every page of the dashboard and every action, through Flask's test client, on each backend:
what the pages show, and that each action writes what the CLI's operation writes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from cronqueue.config import AddAction, DoQueue, MissionEntry
from cronqueue.config.web import WebConfig
from cronqueue.model import Status
from tests.conftest import get_task, insert_raw
from tests.web.conftest import Web


def _fail(w: Web, task_id: int, error: str = "boom", output: str = "out") -> None:
    """A task that ran and failed (as the shard leaves it), written by hand."""
    with w.queue.engine.begin() as conn:
        from sqlalchemy import update

        from cronqueue.store.schema import queue_table as q

        conn.execute(update(q).where(q.c.id == task_id).values(
            status=int(Status.FAILED), attempts=3, error=error, output=output, exit_code=1,
            started_at=w.clock.now - timedelta(seconds=2), finished_at=w.clock.now,
            active_key=None))


def _done(w: Web, task_id: int) -> None:
    with w.queue.engine.begin() as conn:
        from sqlalchemy import update

        from cronqueue.store.schema import queue_table as q

        conn.execute(update(q).where(q.c.id == task_id).values(
            status=int(Status.DONE), attempts=1, exit_code=0, output="fine\n",
            started_at=w.clock.now - timedelta(seconds=1), finished_at=w.clock.now,
            active_key=None))


def _every_status(w: Web) -> dict[str, int]:
    q = w.queue
    ids = {
        "pending": q.add("a.py", {"n": 1}, queue="alpha"),
        "delayed": q.add("b.py", {"n": 2}, queue="beta", delay=3600),
        "failed": q.add("c.py", {"n": 3}, queue="alpha"),
        "done": q.add("d.py", {"n": 4}, queue="alpha"),
        "cancelled": q.add("e.py", {"n": 5}, queue="beta"),
    }
    _fail(w, ids["failed"])
    _done(w, ids["done"])
    q.cancel(ids["cancelled"])
    return ids


def test_every_page_answers(web: Web) -> None:
    ids = _every_status(web)
    for path in ("/", "/?hours=24", "/tasks", "/failed", "/delayed", "/schedule", "/workers"):
        html = web.html(path)
        assert "<main>" in html
    for task_id in ids.values():
        html = web.html(f"/tasks/{task_id}")
        assert f"Task {task_id}" in html
    assert web.get("/tasks/999999").status_code == 404


def test_overview_counts_and_chart(web: Web) -> None:
    ids = _every_status(web)
    html = web.html("/")
    assert "reachable" in html and "version" in html
    row = re.search(r"<td><a href=\"/tasks\?queue=alpha\">alpha</a></td>(.*?)</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r"<td class=\"num\">(.*?)</td>", row.group(1), re.S)
    # pending, done, running, failed, cancelled
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells] == ["1", "1", "0", "1", "0"]
    chart = re.search(r"done (\d+) · failed (\d+)", html)
    assert chart is not None and chart.groups() == ("1", "1"), chart
    assert "<polyline class=\"done\"" in html
    # oldest due: alpha's pending task is due now
    assert "0s ago" in html
    assert ids


def test_overview_shows_each_hosts_last_tick(web: Web) -> None:
    """From cronqueue_ticks, which every tick writes (a tick that fires no entry included)."""
    from cronqueue.store.ticks import Ticks

    def ticks_table(html: str) -> str:
        part = html.split("<h2>Mission ticks per host</h2>", 1)[1]
        return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", part.split("</table>", 1)[0]))

    assert "no mission tick recorded" in ticks_table(web.html("/"))
    ended = web.clock.now - timedelta(seconds=42)
    Ticks(web.queue.engine).record("web1#a1b2", 4242, ended - timedelta(seconds=1), ended, [])
    shown = ticks_table(web.html("/"))
    assert "web1#a1b2" in shown and "42s ago" in shown


def test_task_list_filters(web: Web) -> None:
    ids = _every_status(web)
    unique = web.queue.add("f.py", {"needle": "haystack-42"}, queue="gamma", unique_key="k-1")

    def listed(query: str) -> set[int]:
        html = web.html(f"/tasks?{query}")
        return {int(i) for i in re.findall(r'<a href="/tasks/(\d+)">', html)}

    assert listed("") == {*ids.values(), unique}
    assert listed("status=failed") == {ids["failed"]}
    assert listed("status=3") == {ids["failed"]}
    assert listed("queue=beta") == {ids["delayed"], ids["cancelled"]}
    assert listed("queue=alpha&status=pending") == {ids["pending"]}
    assert listed("script=c.py") == {ids["failed"]}
    assert listed("unique_key=k-1") == {unique}
    assert listed("param=haystack-4") == {unique}
    assert listed("param=%25") == set()  # a LIKE wildcard is a plain character here
    since = (web.clock.now + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert listed(f"since={since}") == set()
    assert listed(f"until={since}") == {*ids.values(), unique}
    assert listed("") >= set(listed("status=pending"))
    assert {int(i) for i in re.findall(r'<a href="/tasks/(\d+)">',
                                       web.html("/delayed"))} == {ids["delayed"]}
    assert {int(i) for i in re.findall(r'<a href="/tasks/(\d+)">',
                                       web.html("/failed"))} == {ids["failed"]}


def test_pages_through_the_list_see_every_task_once(web: Web) -> None:
    made = set(web.queue.add_many([("p.py", {"i": i}) for i in range(123)]))
    seen: list[int] = []
    url: str | None = "/tasks"
    pages = 0
    while url is not None:
        html = web.html(url)
        seen += [int(i) for i in re.findall(r'<a href="/tasks/(\d+)">', html)]
        more = re.search(r'<a href="(/tasks\?[^"]*after=\d+[^"]*)">more</a>', html)
        url = more.group(1).replace("&amp;", "&") if more else None
        pages += 1
    assert pages == 3
    assert len(seen) == len(made) and set(seen) == made
    assert seen == sorted(seen, reverse=True)


def test_task_page_shows_the_row(web: Web) -> None:
    ids = _every_status(web)
    html = web.html(f"/tasks/{ids['failed']}")
    for expected in ("c.py", "alpha", "boom", "out", "3</span> of 3 (worker.max_attempts)",
                     "600 s (worker.timeout)", "exit code", "took"):
        assert expected in html, expected
    html = web.html(f"/tasks/{ids['pending']}")
    assert "not run yet" in html
    live = web.get(f"/tasks/{ids['failed']}/live.json")
    assert live.status_code == 200 and live.is_json
    assert live.json["status"] == "failed" and live.json["finished"] is True


def test_a_running_task_page_follows_it(web: Web) -> None:
    task_id = web.queue.add("r.py")
    with web.queue.engine.begin() as conn:
        from sqlalchemy import update

        from cronqueue.store.schema import queue_table as q

        conn.execute(update(q).where(q.c.id == task_id).values(
            status=int(Status.RUNNING), worker_host="h1", worker_pid=42, attempts=1,
            started_at=web.clock.now, lease_until=web.clock.now + timedelta(seconds=60)))
    html = web.html(f"/tasks/{task_id}")
    assert '<script src="/static/follow.js" defer></script>' in html
    assert f'data-url="/tasks/{task_id}/live.json"' in html
    assert "h1 pid 42" in html
    script = web.get("/static/follow.js")
    assert script.status_code == 200 and b"textContent" in script.data
    assert web.get(f"/tasks/{task_id}/live.json").json["finished"] is False


def test_task_page_shows_its_day_log_lines(web: Web, log_dir: Path) -> None:
    ids = _every_status(web)
    task_id = ids["failed"]
    day = f"{web.clock.now:%Y-%m-%d}"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{day}.log").write_text(
        f"--- 2031-05-06T07:08:09.000+00:00 task={task_id + 1000} attempt=1 queue=x "
        f"script=x.py shard=0/1 exit=0 duration=0.1s bytes=6\nother\n"
        f"--- 2031-05-06T07:08:09.000+00:00 task={task_id} attempt=3 queue=alpha "
        f"script=c.py shard=0/1 exit=1 duration=0.1s bytes=20\nline one\n<b>line two</b>\n"
        f"--- 2031-05-06T07:08:10.000+00:00 task={task_id + 1} attempt=1 queue=x "
        f"script=x.py shard=0/1 exit=0 duration=0.1s bytes=6\nnot mine\n")
    (log_dir / f"{day}.log").chmod(0o600)
    html = web.html(f"/tasks/{task_id}")
    assert "line one" in html and "&lt;b&gt;line two&lt;/b&gt;" in html
    assert "not mine" not in html and "other" not in html


@pytest.mark.parametrize("how", ["one", "selected"])
def test_retry_cancel_and_run_now(web: Web, how: str) -> None:
    ids = _every_status(web)

    def act(action: str, task_id: int) -> None:
        data = {"id": str(task_id), "kind": "tasks", "next": f"/tasks/{task_id}"}
        response = web.post(f"/actions/{action}", data)
        assert response.status_code == 302, response.data.decode()[:500]
        assert response.headers["Location"] == f"/tasks/{task_id}"

    act("retry", ids["failed"])
    failed = get_task(web.queue, ids["failed"])
    assert failed.status == Status.PENDING and failed.attempts == 0
    assert failed.run_at == web.clock.now and failed.finished_at is None
    assert failed.param == '{"n":3}' and failed.taskscript == "c.py"

    act("cancel", ids["pending"])
    assert get_task(web.queue, ids["pending"]).status == Status.CANCELLED

    before = get_task(web.queue, ids["delayed"])
    act("run-now", ids["delayed"])
    after = get_task(web.queue, ids["delayed"])
    assert after.status == Status.PENDING and after.run_at == web.clock.now
    assert (after.attempts, after.param, after.ctime) == (before.attempts, before.param,
                                                          before.ctime)

    act("run-now", ids["cancelled"])  # a cancelled task runs now by a retry
    assert get_task(web.queue, ids["cancelled"]).status == Status.PENDING

    # Refused, named, nothing written: a done task cannot be retried or cancelled.
    response = web.post("/actions/retry", {"id": str(ids["done"]), "next": "/tasks"})
    assert response.status_code == 302
    assert get_task(web.queue, ids["done"]).status == Status.DONE
    assert "refused" in web.html("/tasks")


def test_act_on_ticked_tasks(web: Web) -> None:
    made = [web.queue.add("c.py", {"i": i}) for i in range(4)]
    for task_id in made:
        _fail(web, task_id)
    response = web.post("/actions/retry", {"id": [str(i) for i in made[:3]], "kind": "failed",
                                           "next": "/failed"})
    assert response.status_code == 302
    assert [get_task(web.queue, i).status for i in made] == [Status.PENDING] * 3 + [
        Status.FAILED]


def test_all_matching_is_confirmed_and_capped(make_web: Callable[..., Web]) -> None:
    web = make_web(web=WebConfig(max_bulk=3))
    made = [web.queue.add("c.py", {"i": i}, queue="q1" if i < 5 else "q2") for i in range(7)]
    for task_id in made:
        _fail(web, task_id)
    form = {"all": "1", "kind": "failed", "queue": "q1", "next": "/failed"}
    page = web.post("/actions/retry", form)
    assert page.status_code == 200
    text = page.data.decode()
    assert "Retry 3 task(s)" in text and "web.max_bulk" in text
    assert all(get_task(web.queue, i).status == Status.FAILED for i in made)  # not yet
    done = web.post("/actions/retry", {**form, "confirm": "yes"})
    assert done.status_code == 302
    statuses = [get_task(web.queue, i).status for i in made]
    # the newest three of q1 (ids 5, 4, 3 of 1..5); q2 untouched
    assert statuses == [Status.FAILED] * 2 + [Status.PENDING] * 3 + [Status.FAILED] * 2
    # More ids than the cap in one form: refused whole.
    too_many = web.post("/actions/retry", {"id": [str(i) for i in made], "kind": "failed"})
    assert too_many.status_code == 400


def test_delayed_all_matching_run_now_and_cancel(web: Web) -> None:
    later = [web.queue.add("b.py", {"i": i}, delay=600) for i in range(3)]
    due = web.queue.add("b.py", {"i": 9})
    form = {"all": "1", "kind": "delayed", "confirm": "yes", "next": "/delayed"}
    assert web.post("/actions/run-now", form).status_code == 302
    assert [get_task(web.queue, i).run_at for i in later] == [web.clock.now] * 3
    assert get_task(web.queue, due).status == Status.PENDING
    web.queue.add("b.py", delay=60)
    assert web.post("/actions/cancel", form).status_code == 302
    assert get_task(web.queue, due).status == Status.PENDING  # not delayed: not matched
    assert [t.status for t in web.queue.list(status=Status.CANCELLED)] == [Status.CANCELLED]


def test_schedule_and_enqueue_now(make_web: Callable[..., Web]) -> None:
    missions = (
        MissionEntry("nightly", "0 3 * * *", add=AddAction("report.py", {"day": "y"}, 5)),
        MissionEntry("drain", "* * * * *", do_queue=DoQueue(2)),
    )
    web = make_web(missions=missions)
    html = web.html("/schedule")
    assert "At 03:00 AM" in html and "Every minute" in html and "do_queue total=2" in html
    assert html.count("Enqueue now") == 1
    response = web.post("/schedule/nightly/enqueue")
    assert response.status_code == 302
    task_id = int(response.headers["Location"].rsplit("/", 1)[1])
    task = get_task(web.queue, task_id)
    assert (task.taskscript, task.param, task.priority) == ("report.py", '{"day":"y"}', 5)
    assert web.post("/schedule/drain/enqueue").status_code == 404
    assert web.post("/schedule/nosuch/enqueue").status_code == 404


def test_workers_and_stop(web: Web) -> None:
    now = web.clock.now
    ids = [web.register_worker(
        host="elsewhere", pid=100 + i, pid_start=1, entry="drain", shard=i, total=2,
        queues="", started_at=now, heartbeat_at=now) for i in range(2)]
    html = web.html("/workers")
    assert "elsewhere" in html and "drain" in html and html.count(">Stop<") == 2
    assert web.post("/workers/stop", {"id": str(ids[0])}).status_code == 302
    rows = {w.id: w.stop_requested for w in web.queue.workers()}
    assert rows == {ids[0]: 1, ids[1]: 0}
    page = web.post("/workers/stop", {"all": "1"})
    assert page.status_code == 200 and b"Stop 2 worker(s)" in page.data
    assert {w.id: w.stop_requested for w in web.queue.workers()} == rows  # not yet
    assert web.post("/workers/stop", {"all": "1", "confirm": "yes"}).status_code == 302
    assert all(w.stop_requested for w in web.queue.workers())


def test_a_hand_written_row_is_shown(web: Web) -> None:
    task_id = insert_raw(web.queue, {"taskscript": "x.py", "param": "not json", "status": 7,
                                     "queue": "odd queue"})
    assert "unknown(7)" in web.html(f"/tasks/{task_id}")
    assert "odd queue" in web.html("/tasks")
