"""A paused mission entry (issue 15 #3): the mission does not fire it, records no run for the
times it skips, logs one line per tick, fires it again after a resume (or once ``until``
passes) from its next scheduled time — no catch-up of the paused span — and the rest of each
tick goes on. An injected clock; the launcher records instead of starting shards."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from cronqueue import InvalidTask, Queue
from cronqueue.config import Config, load_config
from cronqueue.mission.tick import Mission
from cronqueue.store.schema import runs_table
from tests.conftest import Clock
from tests.helpers import write_script

pytestmark = pytest.mark.usefixtures("clean_env")

DAY = datetime(2031, 5, 6, tzinfo=UTC)
ENTRIES = """
[[mission]]
name = "e"
cron = "*/5 * * * *"
add = { taskscript = "t.sh" }

[[mission]]
name = "d"
cron = "* * * * *"
add = { taskscript = "t.sh", queue = "other" }
"""


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute, seconds=second)


@pytest.fixture
def setup(tmp_path: Path, db_url: str, task_dir: Path,
          log_dir: Path) -> Iterator[tuple[Config, Queue, Mission, Clock]]:
    write_script(task_dir, "t.sh", "exit 0\n")
    path = tmp_path / "cronqueue.toml"
    path.write_text(f"db_url = {json.dumps(db_url)}\ntask_dir = {json.dumps(str(task_dir))}\n"
                    f"log_dir = {json.dumps(str(log_dir))}\n" + ENTRIES)
    cfg = load_config(path)
    clock = Clock(at(10, 0, 3))
    q = Queue(config=cfg, clock=clock)
    q.init_db()
    launched: list[Any] = []
    yield cfg, q, Mission(cfg, launcher=lambda *a: launched.append(a), clock=clock), clock
    q.close()


def fired_times(q: Queue, entry: str) -> list[datetime]:
    with q.engine.connect() as conn:
        return list(conn.execute(select(runs_table.c.scheduled_at)
                                 .where(runs_table.c.entry == entry)
                                 .order_by(runs_table.c.scheduled_at)).scalars())


def tick(mission: Mission, clock: Clock, when: datetime) -> Any:
    clock.set(when)
    report = mission.tick(when)
    assert report.errors == [], report.errors
    return report


def test_a_paused_entry_does_not_fire_and_resumes_without_catching_up(
        setup: tuple[Config, Queue, Mission, Clock], caplog: pytest.LogCaptureFixture) -> None:
    _, q, mission, clock = setup
    assert tick(mission, clock, at(10, 0, 3)).fired == {"e": at(10, 0), "d": at(10, 0)}
    clock.set(at(10, 2))
    pause = q.pause_entry("e", reason="maintenance")
    assert pause.kind == "entry" and pause.until is None
    with caplog.at_level(logging.INFO, logger="cronqueue.mission"):
        for minute in (5, 10, 15):
            report = tick(mission, clock, at(10, minute, 1))
            assert report.fired == {"d": at(10, minute)}  # the other entry goes on
            assert report.paused == ["e"] and "e" not in report.missed
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mission=e ")]
    assert len(lines) == 3 and all(line.endswith("(maintenance): not fired") for line in lines)
    assert "paused since 2031-05-06T10:02Z by " in lines[0]
    assert fired_times(q, "e") == [at(10, 0)]  # no run recorded for 10:05..10:15

    shown = {e["name"]: e for e in q.schedule(at(10, 16))}
    assert shown["e"]["paused"]["reason"] == "maintenance" and shown["d"]["paused"] is None
    plan = mission.plan(at(10, 20, 0)).plan
    assert any(line.startswith("mission=e paused since") for line in plan), plan

    clock.set(at(10, 17, 30))
    assert q.resume_entry("e") is not None
    assert q.resume_entry("e") is None  # not paused any more
    # catch_up = "latest" (1h window) would run 10:15 now: a paused time is not missed.
    late = tick(mission, clock, at(10, 18, 0))
    assert "e" not in late.fired and "e" not in late.missed and late.paused == []
    assert tick(mission, clock, at(10, 20, 0)).fired["e"] == at(10, 20)
    assert fired_times(q, "e") == [at(10, 0), at(10, 20)]


def test_a_pause_until_ends_by_itself(setup: tuple[Config, Queue, Mission, Clock]) -> None:
    _, q, mission, clock = setup
    tick(mission, clock, at(10, 0, 3))
    clock.set(at(10, 2))
    q.pause_entry("e", at(10, 12, 30))
    assert tick(mission, clock, at(10, 10, 0)).paused == ["e"]
    after = tick(mission, clock, at(10, 13, 0))  # 10:10 was paused: not caught up
    assert "e" not in after.fired and after.paused == [] and "e" not in after.missed
    assert tick(mission, clock, at(10, 15, 0)).fired["e"] == at(10, 15)
    # A missed time after the end of the pause is a missed time as ever.
    late = tick(mission, clock, at(10, 26, 0))
    assert late.fired.get("e") == at(10, 25) and late.missed.get("e") == 1


def test_pauses_that_cannot_be_read_fire_no_entry_and_the_tick_goes_on(
        setup: tuple[Config, Queue, Mission, Clock]) -> None:
    _, q, mission, clock = setup
    with q.engine.begin() as conn:
        conn.execute(text("DROP TABLE cronqueue_pauses"))
    clock.set(at(10, 0, 3))
    report = mission.tick(at(10, 0, 3))
    assert report.fired == {}
    assert any(e.startswith("pauses: ") for e in report.errors), report.errors
    assert any(e.startswith("mission=e: DatabaseError: not fired: whether it is paused")
               for e in report.errors), report.errors
    assert "rescue" in report.timings and "retention" in report.timings


def test_an_entry_the_configuration_lacks_is_refused(
        setup: tuple[Config, Queue, Mission, Clock]) -> None:
    _, q, _, _ = setup
    with pytest.raises(InvalidTask, match=r"no \[\[mission\]\] entry named 'nope' in .*"
                                          r"\(entries: e, d\)"):
        q.pause_entry("nope")
    with pytest.raises(InvalidTask, match="entry name 'a b' is malformed"):
        q.pause_entry("a b")
    assert q.resume_entry("gone-from-the-config") is None  # resuming any name is fine
    assert q.pauses("entry") == []
