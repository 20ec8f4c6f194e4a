"""cron_mission in process: which entries fire when, once per scheduled time, on both backends.

The launcher is a fake that records (argv, env, cwd): no shard process is started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from croniter import croniter
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Status
from cronqueue.config import Config, load_config
from cronqueue.mission.tick import Mission, TickReport, ahead_warning
from cronqueue.process.identity import host_identity
from cronqueue.shard.guard import ShardGuard
from cronqueue.store.engine import make_engine
from cronqueue.store.outcomes import Outcomes
from cronqueue.store.runs import Runs
from cronqueue.store.schema import runs_table
from tests.helpers import clean_env, write_script

# No CRONQUEUE_* of the caller's reaches the missions (the conftest fixture).
pytestmark = pytest.mark.usefixtures("clean_env")

DAY = datetime(2031, 5, 6, tzinfo=UTC)


def at(hour: int, minute: int, second: int = 0, day: datetime = DAY) -> datetime:
    return day + timedelta(hours=hour, minutes=minute, seconds=second)


class FakeLauncher:
    """Records every launch; thread-safe."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str], Path]] = []
        self._lock = threading.Lock()

    def __call__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        with self._lock:
            self.calls.append((list(argv), dict(env), cwd))


def work_options(argv: list[str]) -> dict[str, list[str]]:
    """The `cronqueue work` options of a launched argv, flag -> values."""
    assert argv[:4] == [sys.executable, "-m", "cronqueue", "work"], argv
    rest = argv[4:]
    assert len(rest) % 2 == 0, argv
    out: dict[str, list[str]] = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        assert flag.startswith("--"), argv
        out.setdefault(flag, []).append(value)
    return out


def cron_times(expr: str, start: datetime, end: datetime) -> list[datetime]:
    """Scheduled times in [start, end) by croniter (UTC)."""
    it = croniter(expr, start - timedelta(microseconds=1))
    out = []
    while (t := it.get_next(datetime)) < end:
        out.append(t.astimezone(UTC))
    return out


@pytest.fixture
def make_config(tmp_path: Path, db_url: str, task_dir: Path,
                log_dir: Path) -> Iterator[Any]:
    """Write cronqueue.toml (db_url/task_dir/log_dir from the fixtures + ``body``), load it
    and create the tables."""
    queues: list[Queue] = []

    def make(body: str, timezone: str = "UTC") -> Config:
        path = tmp_path / "cronqueue.toml"
        path.write_text(f"db_url = {json.dumps(db_url)}\n"
                        f"task_dir = {json.dumps(str(task_dir))}\n"
                        f"log_dir = {json.dumps(str(log_dir))}\n"
                        f"timezone = {json.dumps(timezone)}\n" + body)
        cfg = load_config(path)
        q = Queue(config=cfg)
        q.init_db()
        queues.append(q)
        return cfg

    yield make
    for q in queues:
        q.close()


def count_tasks(q: Queue) -> int:
    with q.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM queue")).scalar_one())


def runs(q: Queue, entry: str | None = None) -> list[dict[str, Any]]:
    stmt = select(runs_table).order_by(runs_table.c.id)
    if entry is not None:
        stmt = stmt.where(runs_table.c.entry == entry)
    with q.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


DAY_CONFIG = """
[[mission]]
name = "a"
cron = "*/7 * * * *"
do_queue = { total = 3, queues = ["q1"], max_seconds = 55, batch = 10 }

[[mission]]
name = "b"
cron = "0 3 * * *"
add = { taskscript = "send.sh", param = { kind = "nightly", n = [1, 2] }, priority = 5 }

[[mission]]
name = "c"
cron = "15 */4 * * *"
add = { taskscript = "report.py", param = "every-4h", queue = "reports" }
"""


# -- a simulated day ----------------------------------------------------------------------------


def test_simulated_day(make_config: Any, db_url: str, task_dir: Path, tmp_path: Path) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    write_script(task_dir, "report.py", "pass\n")
    cfg = make_config(DAY_CONFIG)
    q = Queue(config=cfg)
    end = DAY + timedelta(days=1)
    expected = {"a": cron_times("*/7 * * * *", DAY, end),
                "b": cron_times("0 3 * * *", DAY, end),
                "c": cron_times("15 */4 * * *", DAY, end)}
    assert (len(expected["a"]), len(expected["b"]), len(expected["c"])) == (216, 1, 6)

    launcher = FakeLauncher()
    engine = make_engine(cfg.db_url)  # one engine for the day: keeps 1,440 ticks quick
    mission = Mission(cfg, launcher=launcher, engine=engine)
    fired: dict[str, list[datetime]] = {"a": [], "b": [], "c": []}
    added: dict[str, list[int]] = {"b": [], "c": []}
    launches_at: dict[datetime, list[list[str]]] = {}
    scheduled_minutes = {int((t - DAY).total_seconds()) // 60 for ts in expected.values()
                         for t in ts}
    # Every scheduled minute, and every other one of the rest (MariaDB round trips add up).
    minutes = [m for m in range(24 * 60) if m in scheduled_minutes or m % 2 == 0]
    assert len(minutes) > 700
    for minute in minutes:
        # A cron tick starts a little after the minute; vary where in the minute it lands.
        now = DAY + timedelta(minutes=minute, seconds=minute % 50, microseconds=1234)
        before = len(launcher.calls)
        report = mission.tick(now)
        assert report.missed == {} and report.lost_race == [], (now, report)
        assert report.already_running == []
        for name, scheduled in report.fired.items():
            assert scheduled == now.replace(second=0, microsecond=0)
            fired[name].append(scheduled)
        for name, task_id in report.added.items():
            added[name].append(task_id)
        new = [argv for argv, _, _ in launcher.calls[before:]]
        if new:
            launches_at[now.replace(second=0, microsecond=0)] = new
        assert sorted(report.launched) == sorted(
            ("a", int(work_options(argv)["--shard"][0])) for argv in new)

    engine.dispose()
    assert fired == expected
    assert sorted(launches_at) == expected["a"]
    for when, argvs in launches_at.items():
        assert len(argvs) == 3, when
        shards = []
        for argv in argvs:
            opts = work_options(argv)
            shards.append(int(opts.pop("--shard")[0]))
            opts.pop("--config", None)
            assert opts == {"--total": ["3"], "--entry": ["a"], "--queue": ["q1"],
                            "--max-seconds": ["55"], "--batch": ["10"]}, argv
        assert sorted(shards) == [0, 1, 2]

    # The database URL travels in the environment only (argv is public in `ps`).
    url = make_url(db_url)
    secrets_ = [db_url, str(url.database)] + ([url.host] if url.host else [])
    for argv, env, cwd in launcher.calls:
        for arg in argv:
            assert "://" not in arg and "pymysql" not in arg, argv
            assert not any(s in arg for s in secrets_), argv
        assert env["CRONQUEUE_DB_URL"] == db_url
        assert Path(env["CRONQUEUE_TASK_DIR"]) == cfg.task_dir
        assert Path(env["CRONQUEUE_LOG_DIR"]) == cfg.log_dir
        assert Path(cwd) == tmp_path

    # The recurring tasks: one per scheduled time, with the configured values.
    assert len(added["b"]) == 1 and len(added["c"]) == 6
    assert count_tasks(q) == 7
    nightly = q.get(added["b"][0])
    assert nightly is not None
    assert (nightly.taskscript, nightly.priority, nightly.queue, nightly.status) == (
        "send.sh", 5, "default", Status.PENDING)
    assert json.loads(nightly.param) == {"kind": "nightly", "n": [1, 2]}
    for task_id in added["c"]:
        task = q.get(task_id)
        assert task is not None
        assert (task.taskscript, task.priority, task.queue) == ("report.py", 0, "reports")
        assert json.loads(task.param) == "every-4h"

    # One runs row per fire.
    with q.engine.connect() as conn:
        counts: dict[str, int] = dict(conn.execute(text(
            "SELECT entry, COUNT(*) FROM cronqueue_runs GROUP BY entry")).all())
    assert counts == {"a": 216, "b": 1, "c": 6}
    all_runs = runs(q)
    assert len({(r["entry"], r["scheduled_at"]) for r in all_runs}) == len(all_runs) == 223
    for entry, times in expected.items():
        assert [r["scheduled_at"] for r in all_runs if r["entry"] == entry] == times
    for entry in ("b", "c"):
        rows = runs(q, entry)
        assert [r["outcome"] for r in rows] == ["added"] * len(rows)
        assert sorted(r["task_id"] for r in rows) == sorted(added[entry])
    assert {r["outcome"] for r in runs(q, "a")} == {"started shards 0,1,2"}

    latest = Runs(q.engine).latest()
    assert set(latest) == {"a", "b", "c"}
    assert latest["a"]["scheduled_at"] == expected["a"][-1] == at(23, 56)
    assert latest["a"]["outcome"] == "started shards 0,1,2"
    assert latest["a"]["task_id"] is None
    assert latest["b"]["scheduled_at"] == at(3, 0)
    assert (latest["b"]["outcome"], latest["b"]["task_id"]) == ("added", added["b"][0])
    assert latest["c"]["scheduled_at"] == at(20, 15)
    assert latest["c"]["task_id"] == added["c"][-1]
    q.close()


# -- once per scheduled time ------------------------------------------------------------------


ONCE_CONFIG = """
[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = { total = 3 }

[[mission]]
name = "nightly"
cron = "0 10 * * *"
add = { taskscript = "send.sh", param = 7, priority = 2 }
"""


def test_same_minute_twice_and_on_another_host(make_config: Any, task_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config(ONCE_CONFIG)
    q = Queue(config=cfg)
    launcher = FakeLauncher()
    mission = Mission(cfg, launcher=launcher)

    first = mission.tick(at(10, 0, 2))
    assert set(first.fired) == {"drain", "nightly"}
    assert sorted(first.launched) == [("drain", 0), ("drain", 1), ("drain", 2)]
    assert len(launcher.calls) == 3
    assert count_tasks(q) == 1

    # cron ran the mission twice this minute: nothing is due any more.
    again = mission.tick(at(10, 0, 41))
    assert again.fired == {} and again.launched == [] and again.added == {}
    assert again.lost_race == []

    # Another host's mission, later in the same minute: sees the runs table, not due.
    other_launcher = FakeLauncher()
    other = Mission(cfg, launcher=other_launcher)
    report = other.tick(at(10, 0, 59))
    assert report.fired == {} and report.added == {} and report.lost_race == []
    assert other_launcher.calls == []

    # A mission that read the runs table before the first one wrote (the race): the
    # unique (entry, scheduled_at) key makes it lose, acting on nothing.
    monkeypatch.setattr(Runs, "last_scheduled", lambda self, entry: None)
    raced = other.tick(at(10, 0, 30))
    assert sorted(raced.lost_race) == ["drain", "nightly"]
    assert raced.fired == {} and raced.added == {} and raced.launched == []
    assert other_launcher.calls == []
    monkeypatch.undo()

    assert count_tasks(q) == 1
    assert len(launcher.calls) == 3
    assert Counter(r["entry"] for r in runs(q)) == {"drain": 1, "nightly": 1}

    # The next minute fires again (the do_queue entry only).
    nxt = mission.tick(at(10, 1, 0))
    assert set(nxt.fired) == {"drain"} and len(launcher.calls) == 6
    assert count_tasks(q) == 1
    q.close()


def test_ten_missions_in_threads_fire_once(make_config: Any, task_dir: Path) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config(ONCE_CONFIG)
    q = Queue(config=cfg)
    launcher = FakeLauncher()
    n = 10
    barrier = threading.Barrier(n)
    reports: list[TickReport] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            mission = Mission(cfg, launcher=launcher)  # its own engine, made in tick()
            barrier.wait(timeout=30)
            report = mission.tick(at(10, 0, i))
            with lock:
                reports.append(report)
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(reports) == n

    for entry in ("drain", "nightly"):
        winners = [r for r in reports if entry in r.fired]
        assert len(winners) == 1, entry
        for r in reports:
            if r is not winners[0]:
                assert entry not in r.fired and entry not in r.added
    assert sorted(int(work_options(argv)["--shard"][0]) for argv, _, _ in launcher.calls) == [
        0, 1, 2]
    assert sum(len(r.launched) for r in reports) == 3
    assert count_tasks(q) == 1
    [task] = q.list()
    assert (task.taskscript, task.param, task.priority) == ("send.sh", "7", 2)
    assert Counter(r["entry"] for r in runs(q)) == {"drain": 1, "nightly": 1}
    q.close()


# -- catch-up after missed ticks -----------------------------------------------------------


def test_catch_up_latest_runs_the_most_recent_missed_time_once(make_config: Any,
                                                               task_dir: Path) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "e"\ncron = "*/5 * * * *"\n'
                      'add = { taskscript = "send.sh" }\n')
    q = Queue(config=cfg)
    mission = Mission(cfg, launcher=FakeLauncher())

    first = mission.tick(at(10, 0, 3))
    assert first.fired == {"e": at(10, 0)} and first.missed == {}
    # The machine was down from 10:01 to 10:22.
    late = mission.tick(at(10, 23, 1))
    assert late.fired == {"e": at(10, 20)}
    assert late.missed == {"e": 3}  # 10:05, 10:10, 10:15 are not replayed
    assert set(late.added) == {"e"}
    assert count_tasks(q) == 2
    for minute in (24, 24):
        report = mission.tick(at(10, minute, 30))
        assert report.fired == {} and report.missed == {} and report.added == {}
    on_time = mission.tick(at(10, 25, 0))
    assert on_time.fired == {"e": at(10, 25)} and on_time.missed == {}
    assert count_tasks(q) == 3
    assert [(r["scheduled_at"], r["outcome"]) for r in runs(q, "e")] == [
        (at(10, 0), "added"), (at(10, 20), "added"), (at(10, 25), "added")]
    q.close()


@pytest.mark.parametrize("policy", ["catch_up = \"skip\"", "catch_up_window = 60"])
def test_catch_up_skip_records_the_skipped_time(make_config: Any, task_dir: Path,
                                                policy: str) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "e"\ncron = "*/5 * * * *"\n'
                      f'add = {{ taskscript = "send.sh" }}\n{policy}\n')
    q = Queue(config=cfg)
    mission = Mission(cfg, launcher=FakeLauncher())

    assert mission.tick(at(10, 0, 3)).fired == {"e": at(10, 0)}
    late = mission.tick(at(10, 23, 1))
    assert late.fired == {} and late.added == {}
    assert late.missed == {"e": 4}  # 10:05 .. 10:20, none of them run
    assert count_tasks(q) == 1
    rows = runs(q, "e")
    assert [r["scheduled_at"] for r in rows] == [at(10, 0), at(10, 20)]
    assert rows[1]["outcome"].startswith("skipped")
    assert rows[1]["task_id"] is None

    # Logged once: the next tick does not count it again.
    again = mission.tick(at(10, 24, 0))
    assert again.fired == {} and again.missed == {} and again.added == {}
    assert len(runs(q, "e")) == 2
    on_time = mission.tick(at(10, 25, 0))
    assert on_time.fired == {"e": at(10, 25)} and on_time.missed == {}
    assert set(on_time.added) == {"e"}
    assert count_tasks(q) == 2
    assert Runs(q.engine).latest()["e"]["outcome"] == "added"
    q.close()


def test_catch_up_window_boundary(make_config: Any, task_dir: Path) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "e"\ncron = "*/5 * * * *"\n'
                      'add = { taskscript = "send.sh" }\ncatch_up_window = "1m"\n')
    mission = Mission(cfg, launcher=FakeLauncher())
    assert mission.tick(at(10, 0)).fired == {"e": at(10, 0)}
    # 10:05 missed by exactly the window (60 s): still caught up.
    within = mission.tick(at(10, 6, 0))
    assert within.fired == {"e": at(10, 5)} and within.missed == {}
    # 10:10 missed by 3 minutes: skipped.
    beyond = mission.tick(at(10, 13, 0))
    assert beyond.fired == {} and beyond.missed == {"e": 1}


# -- shards still running ---------------------------------------------------------------------


def test_shard_still_running_is_not_launched_again(make_config: Any, log_dir: Path) -> None:
    cfg = make_config('[[mission]]\nname = "a"\ncron = "* * * * *"\n'
                      'do_queue = { total = 3, max_seconds = 55 }\n')
    q = Queue(config=cfg)
    launcher = FakeLauncher()
    mission = Mission(cfg, launcher=launcher)
    engine = make_engine(cfg.db_url)
    guard = ShardGuard(engine, log_dir, "a", 1)
    try:
        assert guard.acquire()
        report = mission.tick(at(10, 0, 1))
        assert report.fired == {"a": at(10, 0)}
        assert report.launched == [("a", 0), ("a", 2)]
        assert report.already_running == [("a", 1)]
        assert sorted(work_options(argv)["--shard"][0] for argv, _, _ in launcher.calls) == [
            "0", "2"]
        outcome = Runs(q.engine).latest()["a"]["outcome"]
        assert "still running 1" in outcome
        assert outcome.startswith("started shards 0,2")
    finally:
        guard.release()
        engine.dispose()
    # Released (the shard exited): the next minute starts all three.
    report = mission.tick(at(10, 1, 1))
    assert report.launched == [("a", 0), ("a", 1), ("a", 2)]
    assert report.already_running == []
    assert Runs(q.engine).latest()["a"]["outcome"] == "started shards 0,1,2"
    q.close()


# -- retention --------------------------------------------------------------------------------


def _finished(q: Queue, status: Status, when: datetime) -> int:
    task_id = q.add("send.sh")
    with q.engine.begin() as conn:
        conn.execute(text("UPDATE queue SET status = :s, finished_at = :f, active_key = NULL "
                          "WHERE id = :i"),
                     {"s": int(status), "i": task_id,
                      "f": when.replace(tzinfo=None).isoformat(sep=" ")})
    task = q.get(task_id)
    assert task is not None and task.finished_at == when and task.status is status
    return task_id


@pytest.mark.parametrize("retention", ["", '[retention]\ndone = "never"\n'])
def test_retention_purge_at_tick(make_config: Any, task_dir: Path, retention: str) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config(retention)
    q = Queue(config=cfg)
    now = at(12, 0, 0)
    ids = {
        "done8": _finished(q, Status.DONE, now - timedelta(days=8)),
        "done6": _finished(q, Status.DONE, now - timedelta(days=6)),
        "failed8": _finished(q, Status.FAILED, now - timedelta(days=8)),
        "failed29": _finished(q, Status.FAILED, now - timedelta(days=29)),
        "failed31": _finished(q, Status.FAILED, now - timedelta(days=31)),
        "cancelled8": _finished(q, Status.CANCELLED, now - timedelta(days=8)),
        "cancelled6": _finished(q, Status.CANCELLED, now - timedelta(days=6)),
    }
    pending = q.add("send.sh")
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: now).tick(now)
    gone = {"failed31", "cancelled8"} | ({"done8"} if not retention else set())
    assert report.purged == len(gone)
    for name, task_id in ids.items():
        assert (q.get(task_id) is None) == (name in gone), name
    assert q.get(pending) is not None
    # A second tick has nothing left to purge.
    later = now + timedelta(minutes=1)
    assert Mission(cfg, launcher=FakeLauncher(), clock=lambda: later).tick(later).purged == 0
    q.close()


# -- Queue.schedule() ---------------------------------------------------------------------------


def test_schedule_overview(make_config: Any, task_dir: Path) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config("""
[[mission]]
name = "a"
cron = "*/7 * * * *"
do_queue = { total = 3, queues = ["q1"] }

[[mission]]
name = "b"
cron = "0 10 * * *"
add = { taskscript = "send.sh", priority = 5 }
""")
    q = Queue(config=cfg)
    now = at(9, 58, 30)

    def next_three(expr: str, start: datetime) -> list[datetime]:
        it = croniter(expr, start)
        return [it.get_next(datetime) for _ in range(3)]

    before = {e["name"]: e for e in q.schedule(now)}
    assert list(before) == ["a", "b"]
    for name, expr in (("a", "*/7 * * * *"), ("b", "0 10 * * *")):
        entry = before[name]
        assert entry["cron"] == expr and entry["timezone"] == "UTC"
        assert [datetime.fromisoformat(t) for t in entry["next"]] == next_three(expr, now)
        assert entry["last_outcome"] is None and entry["last_task"] is None
        assert entry["last_scheduled"] is None
    assert [datetime.fromisoformat(t) for t in before["a"]["next"]] == [
        at(10, 0), at(10, 7), at(10, 14)]

    report = Mission(cfg, launcher=FakeLauncher()).tick(at(10, 0, 4))
    assert set(report.fired) == {"a", "b"}  # minute 0 matches */7 too
    later = at(10, 0, 30)
    after = {e["name"]: e for e in q.schedule(later)}
    assert after["a"]["last_outcome"] == "started shards 0,1,2"
    assert after["a"]["last_task"] is None
    assert after["b"]["last_outcome"] == "added"
    assert after["b"]["last_task"] == report.added["b"]
    for name in ("a", "b"):
        assert datetime.fromisoformat(after[name]["last_scheduled"]) == at(10, 0)
    assert [datetime.fromisoformat(t) for t in after["a"]["next"]] == [
        at(10, 7), at(10, 14), at(10, 21)]
    assert [datetime.fromisoformat(t) for t in after["b"]["next"]] == [
        at(10, 0, day=DAY + timedelta(days=d)) for d in (1, 2, 3)]
    q.close()


def test_schedule_in_a_time_zone(make_config: Any, task_dir: Path) -> None:
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "morning"\ncron = "30 9 * * *"\n'
                      'add = { taskscript = "send.sh" }\n', timezone="America/New_York")
    q = Queue(config=cfg)
    # 2031-05-06 is in EDT (UTC-4): 09:30 local is 13:30 UTC.
    [entry] = q.schedule(at(12, 0))
    first = datetime.fromisoformat(entry["next"][0])
    assert first == at(13, 30) and first.utcoffset() == timedelta(hours=-4)
    mission = Mission(cfg, launcher=FakeLauncher())
    assert mission.tick(at(9, 30)).fired == {}
    assert mission.tick(at(13, 30, 5)).fired == {"morning": at(13, 30)}
    q.close()


# -- what a tick must not do ----------------------------------------------------------------


def test_run_retention_keeps_the_last_run_of_each_entry(make_config: Any,
                                                         task_dir: Path) -> None:
    """An entry that fires less often than runs are kept (monthly vs 7 days) must still know
    its last run: for `schedule` and for catching up a missed time."""
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "monthly"\ncron = "0 3 1 * *"\n'
                      'add = { taskscript = "send.sh" }\n')
    q = Queue(config=cfg)
    clock = {"now": datetime(2031, 5, 1, 3, 0, 2, tzinfo=UTC)}
    mission = Mission(cfg, launcher=FakeLauncher(), clock=lambda: clock["now"])

    def tick(when: datetime) -> TickReport:
        clock["now"] = when
        return mission.tick(when)

    may = datetime(2031, 5, 1, 3, 0, tzinfo=UTC)
    assert tick(may + timedelta(seconds=2)).fired == {"monthly": may}
    for day in range(2, 31):  # the mission keeps ticking (and purging) all month
        tick(datetime(2031, 5, day, 12, 0, tzinfo=UTC))
    [entry] = q.schedule(datetime(2031, 5, 31, 12, 0, tzinfo=UTC))
    assert entry["last_scheduled"] is not None, "the last run was purged: shown as never"
    assert datetime.fromisoformat(entry["last_scheduled"]) == may
    assert entry["last_outcome"] == "added"

    # The host was down at 03:00 on June 1st and back at 03:10: catch_up "latest" runs it.
    june = datetime(2031, 6, 1, 3, 0, tzinfo=UTC)
    report = tick(june + timedelta(minutes=10))
    assert report.fired == {"monthly": june}
    assert count_tasks(q) == 2
    q.close()


def test_simulated_now_does_not_expire_leases(make_config: Any) -> None:
    """`cronqueue mission --now LATER` (a catch-up drill) must not take running tasks away from
    live shards on other hosts: their leases are real time."""
    from cronqueue.process.identity import Owner
    from cronqueue.store.claims import Claimer
    from cronqueue.store.outcomes import Flush

    cfg = make_config("")
    q = Queue(config=cfg)
    task_id = q.add("send.sh")
    real = datetime.now(UTC)
    claimer = Claimer(q.engine, Owner("otherhost", 4242, 1), shard=0, total=1, queues=None,
                      lease=timedelta(seconds=300))
    claim = claimer.claim(10, real + timedelta(seconds=1))
    assert [t.id for t in claim.tasks] == [task_id]
    lease_until = real + timedelta(seconds=900)
    assert Outcomes(q.engine).flush(Flush(claim.token, mark=[task_id], now=real,
                                          lease_until=lease_until)).marked == {task_id}

    drill = real + timedelta(days=1)
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: real).tick(drill)
    assert report.rescue.retried == [] and report.rescue.released == []
    task = q.get(task_id)
    assert task is not None and task.status is Status.RUNNING
    assert task.claim_token == claim.token
    q.close()


def test_simulated_now_does_not_purge_by_fake_time(make_config: Any, task_dir: Path) -> None:
    """Retention counts real time: a drill with --now a month ahead deletes nothing young."""
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config("")
    q = Queue(config=cfg)
    real = datetime.now(UTC).replace(microsecond=0)
    task_id = _finished(q, Status.DONE, real - timedelta(days=1))
    drill = real + timedelta(days=30)
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: real).tick(drill)
    assert report.purged == 0
    assert q.get(task_id) is not None
    q.close()


def test_shard_does_exactly_what_the_entry_says(make_config: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard settings in the mission's own environment (CRONQUEUE_QUEUES, ...) must not leak
    into the shards it launches: an entry without queues drains every queue, without
    max_seconds it is a burst shard."""
    from cronqueue.cli.main import build_parser

    cfg = make_config('[[mission]]\nname = "all"\ncron = "* * * * *"\n'
                      'do_queue = { total = 2 }\n')
    for name, value in (("CRONQUEUE_QUEUES", "elsewhere"), ("CRONQUEUE_MAX_SECONDS", "9"),
                        ("CRONQUEUE_BATCH", "2"), ("CRONQUEUE_ENTRY", "other")):
        monkeypatch.setenv(name, value)
    launcher = FakeLauncher()
    Mission(cfg, launcher=launcher).tick(at(10, 0, 1))
    assert len(launcher.calls) == 2
    for argv, env, _cwd in launcher.calls:
        # Parse the argv as the shard will, in the environment it gets.
        monkeypatch.setattr(os, "environ", dict(env))
        args = build_parser().parse_args(argv[3:])
        monkeypatch.undo()
        assert (args.total, args.entry) == (2, "all")
        assert args.queues in (None, [])
        assert args.max_seconds is None
        assert args.batch is None


# -- issue 11, item 6: no entry, row or clock stops the tick ----------------------------------


def _entries(cfg: Config, *extra: Any) -> Config:
    """``cfg`` with entries that the loader would refuse (a config written before the rule,
    or a cron expression that fails at run time)."""
    from dataclasses import replace

    return replace(cfg, missions=tuple(extra))


def test_a_failing_entry_does_not_stop_the_others_the_rescue_or_the_retention(
        make_config: Any, task_dir: Path) -> None:
    """0.1.0: a never-firing entry raised CroniterBadDateError from the tick: the entries
    after it, the rescue and the retention never ran."""
    from cronqueue.config import AddAction, MissionEntry

    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config("")
    q = Queue(config=cfg)
    real = datetime.now(UTC).replace(microsecond=0)
    old_done = _finished(q, Status.DONE, real - timedelta(days=30))
    orphan = q.add("send.sh")
    with q.engine.begin() as conn:  # running, owned by a dead pid of this host
        conn.execute(text("UPDATE queue SET status = 2, claim_token = 'tok', attempts = 1, "
                          "worker_host = :h, worker_pid = 4000000, started_at = :t, "
                          "lease_until = '2099-01-01 00:00:00' WHERE id = :i"),
                     {"h": host_identity(), "i": orphan,
                      "t": (real - timedelta(minutes=5)).replace(tzinfo=None)})
    cfg = _entries(cfg,
                   MissionEntry("before", "* * * * *", add=AddAction("send.sh")),
                   MissionEntry("leapday", "0 0 30 2 *", add=AddAction("send.sh")),
                   MissionEntry("after", "* * * * *", add=AddAction("send.sh")))
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: real).tick(real)
    assert set(report.fired) == {"before", "after"}
    assert len(report.errors) == 1 and report.errors[0].startswith(
        "mission=leapday: CroniterBadDateError"), report.errors
    assert report.rescue.retried == [orphan]
    assert report.purged == 1 and q.get(old_done) is None
    q.close()


def test_a_failing_rescue_does_not_stop_the_retention(make_config: Any, task_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import cronqueue.mission.tick

    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "a"\ncron = "* * * * *"\n'
                      'add = { taskscript = "send.sh" }\n')
    q = Queue(config=cfg)
    real = datetime.now(UTC).replace(microsecond=0)
    old_done = _finished(q, Status.DONE, real - timedelta(days=30))

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("rescue exploded")

    monkeypatch.setattr(cronqueue.mission.tick, "rescue", broken)
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: real).tick(real)
    assert report.errors == ["rescue: RuntimeError: rescue exploded"]
    assert set(report.fired) == {"a"} and report.purged == 1 and q.get(old_done) is None
    q.close()


def test_a_launcher_crash_in_one_entry_does_not_stop_the_next(make_config: Any) -> None:
    cfg = make_config('[[mission]]\nname = "a"\ncron = "* * * * *"\n'
                      'do_queue = { total = 1 }\n'
                      '[[mission]]\nname = "b"\ncron = "* * * * *"\n'
                      'do_queue = { total = 1 }\n')
    calls: list[str] = []

    def launcher(argv: list[str], env: dict[str, str], cwd: Path) -> None:
        entry = argv[argv.index("--entry") + 1]
        calls.append(entry)
        if entry == "a":
            raise ValueError("boom")

    report = Mission(cfg, launcher=launcher).tick(at(10, 0, 1))
    assert calls == ["a", "b"]
    assert report.errors == ["mission=a: ValueError: boom"]
    assert ("b", 0) in report.launched


def test_mission_exit_status_is_1_when_a_step_failed_and_0_otherwise(
        make_config: Any, task_dir: Path, tmp_path: Path, db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import cronqueue.mission.tick
    from tests.conftest import run_main

    write_script(task_dir, "send.sh", "exit 0\n")
    make_config('[[mission]]\nname = "a"\ncron = "* * * * *"\n'
                'add = { taskscript = "send.sh" }\n')
    config = str(tmp_path / "cronqueue.toml")
    assert run_main(["mission", "--config", config]) == 0

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("retention exploded")

    monkeypatch.setattr(cronqueue.mission.tick.Mission, "_purge", broken)
    assert run_main(["mission", "--config", config]) == 1


def test_token_less_running_row_and_the_real_orphan_behind_it_are_rescued(
        make_config: Any, task_dir: Path) -> None:
    """0.1.0: a running row without claim_token failed an assertion in the rescue at every
    tick, and the real orphan behind it (a dead pid of this host) stayed running."""
    write_script(task_dir, "ok.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "a"\ncron = "0 3 * * *"\n'
                      'add = { taskscript = "ok.sh" }\n')
    q = Queue(config=cfg)
    with q.engine.begin() as conn:  # the two rows of findings-0.1.0.md
        conn.execute(text(
            "INSERT INTO queue (taskscript, param, status, worker_host, worker_pid, "
            "lease_until, started_at, attempts) VALUES ('ok.sh', '{}', 2, 'otherhost', 123, "
            "'2020-01-01 00:00:00', '2020-01-01 00:00:00', 1)"))
        conn.execute(text(
            "INSERT INTO queue (taskscript, param, status, worker_host, worker_pid, claim_token,"
            " lease_until, started_at, attempts) VALUES ('ok.sh', '{}', 2, :h, 4000000, 'tok', "
            "'2099-01-01 00:00:00', '2020-01-01 00:00:00', 1)"), {"h": host_identity()})
        conn.execute(text(  # token-less, never started: straight back to pending
            "INSERT INTO queue (taskscript, param, status, worker_host, worker_pid) "
            "VALUES ('ok.sh', '{}', 2, 'otherhost', 5)"))
    report = Mission(cfg, launcher=FakeLauncher()).tick()
    assert report.errors == []
    assert report.rescue.retried == [1, 2] and report.rescue.released == [3]
    first, second, third = (q.get(i) for i in (1, 2, 3))
    assert first is not None and first.status is Status.PENDING and first.claim_token is None
    assert "without a claim token" in (first.error or "")
    assert second is not None and second.status is Status.PENDING
    assert "was lost" in (second.error or "")
    assert third is not None and third.status is Status.PENDING and third.attempts == 0
    q.close()


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from tests.helpers import cronqueue_cmd

    return subprocess.run(cronqueue_cmd(*args, "--config", str(config)), capture_output=True,
                          text=True, timeout=120, check=False)


def test_mission_now_in_the_future_is_refused_and_dry_run_writes_nothing(
        make_config: Any, task_dir: Path, tmp_path: Path) -> None:
    """0.1.0: one `mission --now <two hours ahead>` recorded a run that every real tick then
    obeyed: the schedule was frozen until that time."""
    write_script(task_dir, "ok.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "every"\ncron = "* * * * *"\n'
                      'add = { taskscript = "ok.sh" }\n')
    q = Queue(config=cfg)
    config = tmp_path / "cronqueue.toml"
    ahead = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    refused = _cli(config, "mission", "--now", ahead)
    assert refused.returncode == 2, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "ahead of the clock" in errors[0] and "--dry-run" in errors[0]
    assert runs(q) == [] and count_tasks(q) == 0

    dry = _cli(config, "mission", "--now", ahead, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "mission=every would fire scheduled=" in dry.stdout
    assert runs(q) == [] and count_tasks(q) == 0

    real = _cli(config, "mission")  # a real tick still fires
    assert real.returncode == 0, real.stderr
    assert [r["entry"] for r in runs(q)] == ["every"] and count_tasks(q) == 1
    q.close()


def test_a_run_recorded_ahead_of_the_clock_does_not_stop_real_ticks(
        make_config: Any, task_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A host whose clock ran two hours ahead recorded a run; the real ticks afterwards must
    go on firing every minute, warning each time; `check` and `schedule` show it."""
    import logging

    from cronqueue.cli.checks import run_checks

    write_script(task_dir, "ok.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "every"\ncron = "* * * * *"\n'
                      'add = { taskscript = "ok.sh" }\n')
    q = Queue(config=cfg)
    real = at(10, 0, 5)
    ahead = real + timedelta(hours=2)
    assert Mission(cfg, launcher=FakeLauncher(), clock=lambda: ahead).tick().fired == {
        "every": at(12, 0)}
    for minute in range(1, 4):
        now = at(10, minute, 5)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cronqueue.mission"):
            report = Mission(cfg, launcher=FakeLauncher(), clock=lambda n=now: n).tick()
        assert report.fired == {"every": at(10, minute)}, minute
        assert report.ahead == {"every": at(12, 0)}
        assert f"mission=every {ahead_warning(at(12, 0), now)}" in [
            r.getMessage() for r in caplog.records]
    # catch-up still counts from the runs up to now: a missed minute is reported as such
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: at(10, 5, 5)).tick()
    assert report.fired == {"every": at(10, 5)} and report.missed == {"every": 1}
    # the run ahead itself is not fired twice when its time comes
    report = Mission(cfg, launcher=FakeLauncher(), clock=lambda: at(12, 0, 5)).tick()
    assert report.fired == {} and report.ahead == {}

    lines: list[str] = []
    assert run_checks(cfg, lines.append, now=real) == 0
    # One wording (mission.ahead_warning) for the tick's log, `check` and `schedule`: they
    # each had their own, three different texts for one situation.
    warning = ahead_warning(at(12, 0), real)
    assert warning is not None and "1:59:55 ahead of the clock" in warning
    assert f"WARN schedule  mission 'every': {warning}" in lines, lines
    entry = q.schedule(real)[0]
    assert entry["warning"] == warning
    assert q.schedule(at(12, 0, 5))[0]["warning"] is None
    assert ahead_warning(at(12, 0), at(11, 59)) is None  # within the tolerance
    q.close()


def test_schedule_overview_survives_an_entry_that_cannot_be_computed(make_config: Any) -> None:
    """0.1.0: `cronqueue schedule` crashed on a never-firing entry (the loader now refuses it;
    an entry that still fails is shown with a warning, the others as usual)."""
    from cronqueue.config import AddAction, MissionEntry
    from cronqueue.mission.tick import overview

    cfg = _entries(make_config(""),
                   MissionEntry("leapday", "0 0 30 2 *", add=AddAction("send.sh")),
                   MissionEntry("every", "* * * * *", add=AddAction("send.sh")))
    q = Queue(config=cfg)
    leapday, every = overview(cfg, q.store.runs, at(10, 0, 5))
    assert leapday["next"] == [] and "cannot be computed" in leapday["warning"]
    assert every["next"][0].startswith("2031-05-06T10:01") and every["warning"] is None
    q.close()


# -- issue 12 #4: missions that say what they did, and return at once -------------------------


def test_every_mission_says_which_host_took_each_entry_and_tick(
        make_config: Any, task_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a mission that lost the race mostly logged nothing (it read the winner's run
    and found the entry not due); now each says, at info level, who took each entry."""
    import logging

    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config(ONCE_CONFIG)
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            mission = Mission(cfg, launcher=FakeLauncher())
            barrier.wait(timeout=30)
            mission.tick(at(10, 0, i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="cronqueue.mission")
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    # And one more, after all of them: it reads the run and finds the entry not due.
    Mission(cfg, launcher=FakeLauncher()).tick(at(10, 0, 40))
    lines = [r.getMessage() for r in caplog.records if r.name == "cronqueue.mission"]
    for entry in ("drain", "nightly"):
        won = [m for m in lines if m.startswith(f"mission={entry} scheduled=2031-05-06T10:00Z "
                                                "taken by host=")]
        lost = [m for m in lines if m.startswith(f"mission={entry} scheduled=2031-05-06T10:00Z "
                                                 "already taken by another mission: host=")]
        assert len(won) == 1, lines
        assert len(lost) == n, lines
        winner = won[0].split(" taken by ")[1].split(" outcome=")[0]  # host=... pid=...
        assert all(f": {winner} outcome=" in m for m in lost), (winner, lost)


def test_shards_start_after_the_rescue_and_the_retention(make_config: Any,
                                                          task_dir: Path) -> None:
    """A shard process starting competes for the CPU with what the tick still has to do:
    the mission starts shards last (and a fresh shard finds the rescued rows)."""
    write_script(task_dir, "send.sh", "exit 0\n")
    cfg = make_config('[[mission]]\nname = "a"\ncron = "* * * * *"\n'
                      'do_queue = { total = 1 }\n')
    q = Queue(config=cfg)
    now = at(12, 0, 0)
    old = _finished(q, Status.DONE, now - timedelta(days=8))
    seen: list[bool] = []

    def launcher(argv: list[str], env: dict[str, str], cwd: Path) -> None:
        seen.append(q.get(old) is None)  # retention already ran

    report = Mission(cfg, launcher=launcher, clock=lambda: now).tick(now)
    assert report.launched == [("a", 0)] and report.purged == 1
    assert seen == [True]
    assert set(report.timings) == {"mission=a", "rescue", "retention", "tick record", "tick"}
    q.close()


@pytest.mark.any_backend  # the process's exit and logs
def test_mission_as_a_program_exits_with_its_logs_written(make_config: Any, task_dir: Path,
                                                          tmp_path: Path) -> None:
    """`cronqueue mission` skips the interpreter's teardown (os._exit): its log lines, the
    debug timings included, and its exit status must still come out."""
    write_script(task_dir, "send.sh", "exit 0\n")
    make_config('[[mission]]\nname = "a"\ncron = "* * * * *"\n'
                'add = { taskscript = "send.sh" }\n')
    env = clean_env()
    for script in (["-m", "cronqueue", "mission"], [str(Path(__file__).parents[2] / "scripts"
                                                        / "cron_mission.py")]):
        res = subprocess.run([sys.executable, *script, "--config",
                              str(tmp_path / "cronqueue.toml"), "--log-level", "debug"],
                             capture_output=True, text=True, timeout=60, env=env, check=False)
        assert res.returncode == 0, res.stderr
        assert "mission=a scheduled=" in res.stderr, res.stderr
        assert "tick took mission=a=" in res.stderr, res.stderr
