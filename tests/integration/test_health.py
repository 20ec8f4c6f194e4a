"""The dead-man's switch on SQLite and MariaDB: each tick pings a real local HTTP server
(``/start``, then the URL itself or ``/fail``), a ping that fails never fails the tick, and
``cronqueue check --health`` (a real process) exits 0 only while the last tick is recent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue import Queue
from cronqueue.config import Config, load_config
from cronqueue.mission.tick import Mission
from cronqueue.store.ticks import Ticks
from tests.conftest import Clock, run_cli
from tests.servers import HttpRecorder

pytestmark = pytest.mark.usefixtures("clean_env")
UUID = "5f8a7c9e-0000-4000-8000-health"


@pytest.fixture
def monitor() -> Iterator[HttpRecorder]:
    server = HttpRecorder()
    yield server
    server.close()


def config(tmp_path: Path, db_url: str, body: str = "") -> Config:
    path = tmp_path / "cronqueue.toml"
    path.write_text(f"db_url = {json.dumps(db_url)}\n" + body + """
[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = { total = 1 }
""")
    cfg = load_config(path)
    Queue(config=cfg).init_db()
    return cfg


def launch_ok(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    pass


def launch_broken(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    raise RuntimeError("the launcher broke")  # not an OSError: the step fails, the tick goes on


def test_a_tick_pings_start_then_success_or_fail(tmp_path: Path, db_url: str,
                                                 monitor: HttpRecorder) -> None:
    cfg = config(tmp_path, db_url, f"[health]\nping_url = \"{monitor.url}/ping/{UUID}\"\n")
    clock = Clock(datetime(2031, 5, 6, 3, 0, tzinfo=UTC))
    report = Mission(cfg, launcher=launch_ok, clock=clock).tick()
    assert report.errors == []
    assert [(r.method, r.path) for r in monitor.wait_for(2)] == [
        ("GET", f"/ping/{UUID}/start"), ("GET", f"/ping/{UUID}")]
    clock.advance(60)
    report = Mission(cfg, launcher=launch_broken, clock=clock).tick()
    assert report.errors == ["mission=drain: RuntimeError: the launcher broke"]
    assert [r.path for r in monitor.wait_for(4)][2:] == [f"/ping/{UUID}/start",
                                                         f"/ping/{UUID}/fail"]
    tick = Ticks(Queue(config=cfg).engine).newest()
    assert tick is not None and tick.errors == 1 and "the launcher broke" in tick.error


def test_explicit_start_and_fail_urls_cronitor_style(tmp_path: Path, db_url: str,
                                                     monitor: HttpRecorder) -> None:
    base = f"{monitor.url}/p/KEY/cronqueue"
    cfg = config(tmp_path, db_url, f"[health]\nping_url = \"{base}?state=complete\"\n"
                                   f"ping_start_url = \"{base}?state=run\"\n"
                                   f"ping_fail_url = \"{base}?state=fail\"\n")
    Mission(cfg, launcher=launch_broken).tick()
    assert [r.path for r in monitor.wait_for(2)] == ["/p/KEY/cronqueue?state=run",
                                                     "/p/KEY/cronqueue?state=fail"]


def test_a_monitor_that_does_not_answer_never_fails_the_tick(
        tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    dead = HttpRecorder()
    url = dead.url
    dead.close()
    cfg = config(tmp_path, db_url, f"[health]\nping_url = \"{url}/{UUID}\"\nping_timeout = 2\n")
    caplog.set_level(logging.WARNING, "cronqueue.ping")
    report = Mission(cfg, launcher=launch_ok).tick()
    assert report.errors == []
    lines = [r.getMessage() for r in caplog.records if r.name == "cronqueue.ping"]
    assert len(lines) == 2 and lines[0].startswith(f"ping start to {url} failed: ")
    assert lines[1].startswith(f"ping success to {url} failed: ")
    assert UUID not in caplog.text  # the URL is a credential: its host only
    assert Ticks(Queue(config=cfg).engine).newest() is not None


def test_the_ping_url_from_the_environment(tmp_path: Path, db_url: str, monitor: HttpRecorder,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_PING_URL", f"{monitor.url}/env")
    cfg = config(tmp_path, db_url, "[health]\nping_url = \"http://127.0.0.1:9/file\"\n")
    assert cfg.health.ping_url == f"{monitor.url}/env"
    Mission(cfg, launcher=launch_ok).tick()
    assert [r.path for r in monitor.wait_for(2)] == ["/env/start", "/env"]


def health(db_url: str, task_dir: Path, log_dir: Path, *args: str,
           env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    done = run_cli("check", "--health", *args, db_url=db_url, task_dir=task_dir,
                   log_dir=log_dir, env=env)
    assert done.stderr == ""
    return done.returncode, done.stdout.splitlines()


def test_check_health_exit_codes(tmp_path: Path, db_url: str, task_dir: Path,
                                 log_dir: Path) -> None:
    cfg = config(tmp_path, db_url)
    code, lines = health(db_url, task_dir, log_dir)
    assert (code, lines) == (1, ["FAIL health: no mission tick recorded yet: is the crontab "
                                 "line installed (`cronqueue crontab`)?"])

    three_ago = datetime.now(UTC) - timedelta(minutes=3)
    Mission(cfg, launcher=launch_ok, clock=lambda: three_ago).tick()
    code, lines = health(db_url, task_dir, log_dir)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("FAIL health: the last mission tick ended 3m ")
    assert "ago, more than 2m (at " in lines[0] and lines[0].endswith(
        "): has cron or the mission stopped?")
    assert health(db_url, task_dir, log_dir, "--max-age", "5m")[0] == 0
    assert health(db_url, task_dir, log_dir, env={"CRONQUEUE_HEALTH_MAX_AGE": "5m"})[0] == 0

    Mission(cfg, launcher=launch_broken).tick()  # now; one step failed
    code, lines = health(db_url, task_dir, log_dir)
    assert code == 0 and len(lines) == 1
    assert lines[0].startswith("ok   health: the last mission tick ended ")
    assert lines[0].endswith("; 1 of its steps failed, first: mission=drain: RuntimeError: "
                             "the launcher broke")


@pytest.mark.any_backend
def test_check_health_without_a_database(tmp_path: Path, task_dir: Path,
                                         log_dir: Path) -> None:
    closed = HttpRecorder()
    port = closed.server.server_address[1]
    closed.close()
    url = f"mysql+pymysql://cq:pw@127.0.0.1:{port}/app?connect_timeout=2"
    code, lines = health(url, task_dir, log_dir)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("FAIL health: database mysql+pymysql://cq:***@127.0.0.1:")
    code, lines = health(f"sqlite:///{tmp_path / 'empty.db'}", task_dir, log_dir)
    assert (code, lines) == (2, ["FAIL health: the database has no cronqueue tables: run "
                                 "`cronqueue init-db`"])
