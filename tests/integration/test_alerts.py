"""Alerts sent by the mission tick, on SQLite and MariaDB, to a real local HTTP server (the
webhook, its HMAC checked) and a real SMTP server (aiosmtpd): every kind fires once and
recovers once while two missions ("hosts") tick at the same moments; a failure that goes on is
not sent again (dedup); the hourly cap; a failing sink tried again at the next tick; a task's
failure from a real shard with its output tail.

Time is the missions' injected clock (``Clock``); the outcomes of tasks are written as a shard
writes them (status, times, output), except in the last test where a real shard runs."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, update

from cronqueue import Queue
from cronqueue.config import Config, load_config
from cronqueue.mission.tick import Mission, TickReport
from cronqueue.store.alerts import Alerts
from cronqueue.store.schema import queue_table as q
from cronqueue.store.schema import workers_table as w
from tests.conftest import Clock
from tests.helpers import cronqueue_cmd, write_script
from tests.servers import HttpRecorder, SmtpRecorder

pytestmark = pytest.mark.usefixtures("clean_env")

DAY = datetime(2031, 5, 6, tzinfo=UTC)
SECRET = "test-webhook-secret"
SECRET_ENV = "CQ_TEST_WEBHOOK_SECRET"


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute, seconds=second)


@pytest.fixture
def webhook() -> Iterator[HttpRecorder]:
    server = HttpRecorder(secret=SECRET)
    yield server
    server.close()


@pytest.fixture
def smtp() -> Iterator[SmtpRecorder]:
    server = SmtpRecorder()
    yield server
    server.close()


@pytest.fixture
def make_config(tmp_path: Path, db_url: str, task_dir: Path, log_dir: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Config]]:
    """cronqueue.toml with the fixtures' database and directories + ``body``; tables made."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    queues: list[Queue] = []

    def make(body: str) -> Config:
        path = tmp_path / "cronqueue.toml"
        path.write_text(f"db_url = {json.dumps(db_url)}\ntask_dir = {json.dumps(str(task_dir))}"
                        f"\nlog_dir = {json.dumps(str(log_dir))}\n" + body)
        cfg = load_config(path)
        queue = Queue(config=cfg)
        queue.init_db()
        queues.append(queue)
        return cfg

    yield make
    for queue in queues:
        queue.close()


def sinks(webhook: HttpRecorder, smtp: SmtpRecorder | None = None) -> str:
    out = (f"[alerts.webhook]\nurl = \"{webhook.url}/hook/t0ken\"\n"
           f"secret_env = \"{SECRET_ENV}\"\ntimeout = 5\n")
    if smtp is not None:
        out += (f"[alerts.email]\nhost = \"127.0.0.1\"\nport = {smtp.port}\ntls = \"none\"\n"
                "from = \"cronqueue@example.com\"\nto = [\"ops@example.com\"]\n")
    return out


class Launcher:
    """Records launches; raises OSError (a shard that cannot start) at the times in
    ``fail_at``, read from the missions' clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.fail_at: set[datetime] = set()
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with self._lock:
            self.calls += 1
        if self.clock().replace(second=0, microsecond=0) in self.fail_at:
            raise OSError(12, "Cannot allocate memory")


def tick_together(missions: list[Mission], now: datetime) -> list[TickReport]:
    """Every mission ticks at ``now`` at once (threads released by a barrier)."""
    barrier = threading.Barrier(len(missions))
    reports: list[TickReport] = []
    errors: list[BaseException] = []

    def run(m: Mission) -> None:
        barrier.wait()
        try:
            reports.append(m.tick(now))
        except BaseException as exc:  # the test fails on it below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m in missions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(reports) == len(missions)
    for r in reports:
        assert r.errors == [], r.errors
    return reports


def finish(queue: Queue, task_id: int, status: int, started: datetime,
           finished: datetime | None, *, output: str = "", error: str = "",
           exit_code: int | None = None) -> None:
    """Write a task's outcome as a shard records it (``finished`` None: still running)."""
    values: dict[str, Any] = {"status": status, "attempts": 1, "started_at": started,
                              "finished_at": finished, "output": output, "error": error,
                              "exit_code": exit_code}
    if finished is None:
        values.update(claim_token="c" * 32, worker_host="elsewhere#1", worker_pid=4242,
                      lease_until=finished or started + timedelta(hours=2))
    else:
        values["active_key"] = None
    with queue.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id == task_id).values(**values))


def added(reports: list[TickReport], entry: str) -> int:
    ids = [r.added[entry] for r in reports if entry in r.added]
    assert len(ids) == 1, (entry, ids)
    return ids[0]


def received(webhook: HttpRecorder) -> list[dict[str, Any]]:
    out = []
    for request in webhook.requests:
        assert request.method == "POST" and request.path == "/hook/t0ken"
        assert request.signature_ok, "the HMAC signature does not match the body"
        assert request.headers["content-type"].startswith("application/json")
        out.append(json.loads(request.body))
    return out


def kinds(bodies: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((b["kind"], b["subject"], b["state"]) for b in bodies)


ENTRIES = """
[[mission]]
name = "report"
cron = "*/2 * * * *"
add = { taskscript = "report.sh", queue = "reports" }

[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = { total = 1, queues = ["default"] }

[[mission]]
name = "long"
cron = "*/3 * * * *"
add = { taskscript = "long.sh", queue = "reports" }
max_runtime = 90

[[mission]]
name = "short"
cron = "*/3 * * * *"
add = { taskscript = "short.sh", queue = "reports" }
min_runtime = "10s"

[[mission]]
name = "slowdrain"
cron = "0 3 * * *"
do_queue = { total = 1, queues = ["slow"] }
max_runtime = "90s"
"""

EXPECTED = {  # (kind, subject): (the tick it fires at, the tick it recovers at)
    ("queue_backlog", "slow"): (at(3, 0), at(3, 3)),
    ("entry_failed", "report"): (at(3, 1), at(3, 3)),
    ("task_failed", "default/fail.sh"): (at(3, 1), at(3, 2)),
    ("entry_failed", "drain"): (at(3, 1), at(3, 2)),
    ("entry_too_short", "short"): (at(3, 1), at(3, 4)),
    ("entry_too_long", "long"): (at(3, 2), at(3, 4)),
    ("entry_too_long", "slowdrain"): (at(3, 2), at(3, 3)),
    ("entry_missed", "drain"): (at(3, 6), at(3, 7)),
}


def test_each_kind_fires_once_and_recovers_once_across_two_hosts(
        make_config: Callable[[str], Config], task_dir: Path, webhook: HttpRecorder,
        smtp: SmtpRecorder) -> None:
    for name in ("report.sh", "long.sh", "short.sh", "fail.sh", "slow.sh"):
        write_script(task_dir, name, "exit 0\n")
    cfg = make_config("[alerts]\nfailed_queues = [\"default\"]\nbacklog = { slow = \"5m\" }\n"
                      "max_per_hour = 50\n" + sinks(webhook, smtp) + ENTRIES)
    queue = Queue(config=cfg)
    clock = Clock(at(3, 0))
    launcher = Launcher(clock)
    launcher.fail_at = {at(3, 1)}
    hosts = [Mission(cfg, launcher=launcher, clock=clock) for _ in range(2)]
    seen: dict[tuple[str, str, str], datetime] = {}  # (kind, subject, state) -> tick

    def tick(when: datetime) -> list[TickReport]:
        clock.set(when)
        reports = tick_together(hosts, when)
        for body in received(webhook)[len(seen):]:
            key = (body["kind"], body["subject"], body["state"])
            assert key not in seen, f"{key} sent twice (at {seen[key]} and {when})"
            seen[key] = when
        return reports

    slow = queue.add("slow.sh", queue="slow", run_at=at(2, 50))
    r0 = tick(at(3, 0))
    a, c, e = added(r0, "report"), added(r0, "long"), added(r0, "short")
    finish(queue, a, 3, at(3, 0, 5), at(3, 0, 30), output="report: no data for 2031-05-05\n",
           error="ProcessExitError: exit status 3", exit_code=3)
    t1, t3 = queue.add("fail.sh", {"n": 1}), queue.add("fail.sh", {"n": 3})
    finish(queue, t1, 3, at(3, 0, 35), at(3, 0, 40), output="Traceback ...\nKeyError: 'n'\n",
           error="ProcessExitError: exit status 1", exit_code=1)
    finish(queue, t3, 3, at(3, 0, 45), at(3, 0, 50), output="boom\n",
           error="ProcessExitError: exit status 1", exit_code=1)
    finish(queue, c, 2, at(3, 0, 5), None)
    finish(queue, e, 1, at(3, 0, 5), at(3, 0, 7), exit_code=0)
    with queue.engine.begin() as conn:
        conn.execute(insert(w).values(host="elsewhere#1", pid=4343, entry="slowdrain",
                                      shard=0, total=1, queues="slow",
                                      started_at=at(3, 0, 1), heartbeat_at=at(3, 0, 50)))

    tick(at(3, 1))
    t4, t2 = queue.add("fail.sh", {"n": 4}), queue.add("fail.sh", {"n": 2})
    finish(queue, t4, 3, at(3, 1, 5), at(3, 1, 10), output="again\n",
           error="ProcessExitError: exit status 1", exit_code=1)  # still failing: not re-sent
    finish(queue, t2, 1, at(3, 1, 20), at(3, 1, 30), exit_code=0)
    with queue.engine.begin() as conn:
        conn.execute(update(w).values(heartbeat_at=at(3, 1, 50)))

    r2 = tick(at(3, 2))
    b = added(r2, "report")
    finish(queue, b, 1, at(3, 2, 5), at(3, 2, 20), exit_code=0)
    finish(queue, c, 1, at(3, 0, 5), at(3, 2, 30), exit_code=0)
    finish(queue, slow, 1, at(3, 2, 1), at(3, 2, 2), exit_code=0)
    with queue.engine.begin() as conn:
        conn.execute(delete(w))  # the slowdrain shard ended

    r3 = tick(at(3, 3))
    finish(queue, added(r3, "long"), 1, at(3, 3, 5), at(3, 3, 35), exit_code=0)
    finish(queue, added(r3, "short"), 1, at(3, 3, 5), at(3, 3, 25), exit_code=0)
    tick(at(3, 4))
    tick(at(3, 6))  # no tick at 03:05: drain's run of 03:05 never happened
    tick(at(3, 7))

    expected = {(k, s, state): t for (k, s), times in EXPECTED.items()
                for state, t in zip(("firing", "resolved"), times, strict=True)}
    assert seen == expected
    bodies = received(webhook)
    assert len(bodies) == len(expected)  # nothing else, nothing twice
    mails = smtp.wait_for(len(expected))
    assert Counter(m["X-Cronqueue-Alert"] for m in mails) == Counter(
        f"{k}; state={state}" for k, _, state in expected)
    assert launcher.calls >= 6

    failed = next(b for b in bodies if b["kind"] == "task_failed" and b["state"] == "firing")
    assert failed["detail"]["failed"] == 2  # T1 and T3, in one message
    assert [t["id"] for t in failed["detail"]["tasks"]] == [t3, t1]
    assert failed["detail"]["tasks"][1]["output_tail"] == "Traceback ...\nKeyError: 'n'\n"
    missed = next(b for b in bodies if b["kind"] == "entry_missed" and b["state"] == "firing")
    assert missed["detail"] == {"entry": "drain", "missed": 1,
                                "newest_missed": "2031-05-06T03:05:00Z",
                                "ran_instead": "2031-05-06T03:06:00Z"}
    mail = next(m for m in mails if m["X-Cronqueue-Alert"] == "task_failed; state=firing")
    assert mail["Subject"].startswith("[cronqueue] FIRING task_failed default/fail.sh: 2 task")
    text = mail.get_content()
    assert "| KeyError: 'n'" in text and f"id: {t1}" in text
    rows = Alerts(queue.engine).rows()
    assert {r.key for r in rows.values()} == set(EXPECTED)
    capture(webhook, mails)
    assert all(r.state == "resolved" and r.unsent == () and r.seq == 2 for r in rows.values())
    queue.close()


def capture(webhook: HttpRecorder, mails: list[Any]) -> None:
    """With CQ_ALERTS_CAPTURE=DIR, each message as received, in DIR (the examples of
    docs/alerts.md): <kind>-<subject>-<state>.json (the webhook's body) and .eml."""
    where = os.environ.get("CQ_ALERTS_CAPTURE")
    if not where:
        return
    Path(where).mkdir(parents=True, exist_ok=True)
    for request in webhook.requests:
        body = json.loads(request.body)
        name = f"{body['kind']}-{body['subject'].replace('/', '_')}-{body['state']}"
        Path(where, f"{name}.json").write_bytes(request.body)
    for mail in mails:
        kind, state = mail["X-Cronqueue-Alert"].split("; state=")
        subject = mail["Subject"].split(" ")[3].rstrip(":").replace("/", "_")
        Path(where, f"{kind}-{subject}-{state}.eml").write_bytes(bytes(mail))


def flap_config(make_config: Callable[[str], Config], webhook: HttpRecorder,
                cap: int = 2, smtp: SmtpRecorder | None = None) -> Config:
    return make_config(f"[alerts]\nbacklog = {{ slow = \"5m\" }}\nmax_per_hour = {cap}\n"
                       + sinks(webhook, smtp))


def test_the_hourly_cap_holds_back_a_flapping_alert_and_sends_its_state_after(
        make_config: Callable[[str], Config], webhook: HttpRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = flap_config(make_config, webhook, cap=2)
    queue = Queue(config=cfg)
    clock = Clock(at(3, 0))
    mission = Mission(cfg, launcher=Launcher(clock), clock=clock)

    def tick(when: datetime) -> list[str]:
        clock.set(when)
        report = mission.tick(when)
        assert report.errors == []
        return [b["state"] for b in received(webhook)]

    def late() -> int:
        return queue.add("x.sh", queue="slow", run_at=clock() - timedelta(minutes=30))

    first = late()
    assert tick(at(3, 0)) == ["firing"]
    finish(queue, first, 1, at(3, 0, 1), at(3, 0, 2))
    assert tick(at(3, 1)) == ["firing", "resolved"]
    second = late()
    caplog.set_level(logging.INFO, "cronqueue.alerts")
    assert tick(at(3, 2)) == ["firing", "resolved"]  # firing again: held back
    assert "held back by the cap (2 per hour) until 04:00:00Z" in caplog.text
    finish(queue, second, 1, at(3, 2, 1), at(3, 2, 2))
    assert tick(at(3, 3)) == ["firing", "resolved"]  # resolved again: held back
    # The hour is over; the receiver last heard "resolved", which it is: nothing to send.
    assert tick(at(4, 1)) == ["firing", "resolved"]
    late()
    assert tick(at(4, 2)) == ["firing", "resolved", "firing"]
    row = Alerts(queue.engine).rows()[("queue_backlog", "slow")]
    assert (row.seq, row.hour_count, row.hour_start, row.sent_state) == (5, 1, at(4, 2),
                                                                         "firing")
    queue.close()


def test_a_paused_queues_backlog_says_it_is_paused(
        make_config: Callable[[str], Config], webhook: HttpRecorder) -> None:
    cfg = flap_config(make_config, webhook)
    queue = Queue(config=cfg)
    clock = Clock(at(3, 0))
    queue.add("x.sh", queue="slow", run_at=at(2, 0))
    queue.pause("slow", by="ops", reason="deploy")
    Mission(cfg, launcher=Launcher(clock), clock=clock).tick(at(3, 0))
    body = received(webhook)[0]
    assert body["summary"].endswith(", 0 shards registered for it; the queue is paused")
    assert body["detail"]["paused"] is True
    queue.close()


def test_a_failing_sink_is_logged_in_one_line_and_tried_again_next_tick(
        make_config: Callable[[str], Config], webhook: HttpRecorder, smtp: SmtpRecorder,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = flap_config(make_config, webhook, cap=10, smtp=smtp)
    queue = Queue(config=cfg)
    clock = Clock(at(3, 0))
    mission = Mission(cfg, launcher=Launcher(clock), clock=clock)
    queue.add("x.sh", queue="slow", run_at=at(2, 0))
    webhook.fail_next = 2  # the first attempt and its retry
    caplog.set_level(logging.INFO, "cronqueue")
    report = mission.tick(at(3, 0))
    assert report.errors == []  # a sink failure never fails the tick
    assert report.alerts is not None and len(report.alerts.failed) == 1
    assert len(webhook.wait_for(2)) == 2  # tried twice
    assert len(smtp.wait_for(1)) == 1  # the other sink got it
    lines = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert lines == [f"alert queue_backlog slow (firing) not sent: webhook {webhook.url}: "
                     "HTTP 500 (after 2 attempt(s)); tried again next tick"]
    assert "t0ken" not in caplog.text and SECRET not in caplog.text
    row = Alerts(queue.engine).rows()[("queue_backlog", "slow")]
    assert row.unsent == ("webhook",) and row.sent_state is None

    clock.set(at(3, 1))
    mission.tick(at(3, 1))
    assert [(r.method, json.loads(r.body)["state"]) for r in webhook.wait_for(3)] == [
        ("POST", "firing")] * 3
    assert received(webhook)[2]["change"] == 1
    clock.set(at(3, 2))
    mission.tick(at(3, 2))
    assert len(webhook.requests) == 3 and len(smtp.messages) == 1  # each sink had it once
    row = Alerts(queue.engine).rows()[("queue_backlog", "slow")]
    assert row.unsent == () and row.sent_state == "firing"
    queue.close()


def test_an_unset_secret_variable_sends_nothing_unsigned(
        make_config: Callable[[str], Config], webhook: HttpRecorder,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cfg = flap_config(make_config, webhook)
    queue = Queue(config=cfg)
    clock = Clock(at(3, 0))
    mission = Mission(cfg, launcher=Launcher(clock), clock=clock)
    queue.add("x.sh", queue="slow", run_at=at(2, 0))
    monkeypatch.delenv(SECRET_ENV)
    mission.tick(at(3, 0))
    assert webhook.requests == []
    assert f"{SECRET_ENV} is unset or empty: not sent unsigned" in caplog.text
    monkeypatch.setenv(SECRET_ENV, SECRET)
    clock.set(at(3, 1))
    mission.tick(at(3, 1))
    assert [b["state"] for b in received(webhook)] == ["firing"]
    queue.close()


def test_a_real_shards_failure_is_sent_with_its_output_tail(
        make_config: Callable[[str], Config], task_dir: Path, webhook: HttpRecorder,
        smtp: SmtpRecorder, tmp_path: Path) -> None:
    """A task script fails for real (a shard runs it, its attempts spent), and the next tick
    sends it (CQ_ALERTS_CAPTURE: see ``capture``)."""
    import subprocess

    write_script(task_dir, "import.py",
                 "import sys\nprint('importing', sys.argv[1])\n"
                 "print('row 17: bad date 2031-02-30', file=sys.stderr)\nsys.exit(2)\n")
    cfg = make_config("[alerts]\nfailed_scripts = [\"import.py\"]\noutput_tail = 200\n"
                      + sinks(webhook, smtp))
    queue = Queue(config=cfg)
    task = queue.add("import.py", {"file": "orders.csv"}, queue="imports", max_attempts=1)
    now = datetime.now(UTC)
    mission = Mission(cfg, launcher=Launcher(Clock(now)), clock=lambda: datetime.now(UTC))
    mission.tick(now)  # the first tick: nothing to say yet
    done = subprocess.run(cronqueue_cmd("work", "--total", "1", "--shard", "0", "--config",
                                        str(cfg.source)), capture_output=True, text=True,
                          timeout=120, check=False,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("CRONQUEUE_")})
    assert done.returncode == 0, done.stderr
    assert queue.get(task) is not None and int(queue.get(task).status) == 3  # type: ignore[union-attr]
    mission.tick(datetime.now(UTC))
    body = received(webhook)[0]
    assert (body["kind"], body["subject"], body["state"]) == ("task_failed",
                                                              "imports/import.py", "firing")
    shown = body["detail"]["tasks"][0]
    assert shown["id"] == task and shown["exit_code"] == 2
    assert "row 17: bad date 2031-02-30" in shown["output_tail"]
    mail = smtp.wait_for(1)[0]
    assert "row 17: bad date 2031-02-30" in mail.get_content()
    capture(webhook, [mail])
    queue.close()
