"""A running task's page follows its output: what the shard's heartbeat writes to the row is
what ``live.json`` returns (and the page shows) while the task runs."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from cronqueue.model import Status
from cronqueue.store.schema import queue_table as q
from cronqueue.store.workers import LiveOutput
from tests.web.conftest import Web

TOKEN = "T" * 32


def test_live_json_of_a_running_task_returns_its_output_so_far(web: Web) -> None:
    task_id = web.queue.add("r.py")
    now = web.clock.now
    with web.queue.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == task_id).values(
            status=int(Status.RUNNING), claim_token=TOKEN, worker_host="h1", worker_pid=42,
            attempts=1, started_at=now, lease_until=now + timedelta(seconds=60)))
    assert web.get(f"/tasks/{task_id}/live.json").json["output"] == ""

    workers = web.queue.store.workers
    worker = workers.register(host="h1", pid=42, pid_start=5, entry=None, shard=0, total=1,
                              queues="", started_at=now, heartbeat_at=now)
    workers.heartbeat(worker, now, task_id, 0, token=TOKEN,
                      lease_until=now + timedelta(seconds=60),
                      live=LiveOutput(TOKEN, task_id, "step 1 of 3\n<b>step 2</b>\n"))
    live = web.get(f"/tasks/{task_id}/live.json").json
    assert live["status"] == "running" and live["finished"] is False
    assert live["output"] == "step 1 of 3\n<b>step 2</b>\n"
    html = web.html(f"/tasks/{task_id}")
    assert 'id="follow"' in html
    assert "step 1 of 3" in html and "&lt;b&gt;step 2&lt;/b&gt;" in html
