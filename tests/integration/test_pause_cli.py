"""``cronqueue pause`` / ``resume``, ``schedule pause`` / ``schedule resume``, and what ``stats``,
``list`` and ``schedule`` show of the pauses (text and ``--json``); bad input is refused with
one line and exit 2. The real CLI, in a process of its own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cronqueue import Queue
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("clean_env")
Cli = Callable[..., subprocess.CompletedProcess[str]]

CONFIG = """
[[mission]]
name = "nightly"
cron = "0 3 * * *"
add = { taskscript = "report.sh" }
"""


@pytest.fixture
def cli(queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> Cli:
    """``cronqueue ARGS`` on the test's database, with a config of one mission entry."""
    config = tmp_path / "cronqueue.toml"
    config.write_text(CONFIG)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--config", str(config), db_url=db_url, task_dir=task_dir,
                       log_dir=log_dir)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def test_pause_and_resume_a_queue_as_stats_and_list_show_it(cli: Cli, queue: Queue) -> None:
    held = queue.add("t.sh", queue="reports")
    queue.add("t.sh")
    out = ok(cli("pause", "reports", "--until", "2031-01-01T10:00+01:00", "--reason", "deploy"))
    assert out.startswith("queue reports paused since ")
    assert ("until 2031-01-01 09:00:00 UTC (deploy): shards claim none of its tasks; tasks "
            "running now finish; add() still enqueues") in out

    stats = ok(cli("stats"))
    assert "reports (paused)" in stats and "default (paused)" not in stats
    assert [line for line in stats.splitlines() if line.startswith("queue reports paused")]
    paused = json.loads(ok(cli("stats", "--json")))["paused"]
    assert list(paused) == ["reports"]
    assert paused["reports"]["until"] == "2031-01-01T09:00:00+00:00"
    assert paused["reports"]["reason"] == "deploy" and "@" in paused["reports"]["by"]

    listed = ok(cli("list"))
    row = next(line for line in listed.splitlines() if line.startswith(f"{held} "))
    assert "pending (paused)" in row
    assert "(paused) queue reports is paused since " in listed
    tasks = {t["id"]: t for t in json.loads(ok(cli("list", "--json")))}
    assert tasks[held]["queue_paused"]["until"] == "2031-01-01T09:00:00+00:00"
    assert [t["queue_paused"] for i, t in tasks.items() if i != held] == [None]

    again = json.loads(ok(cli("pause", "reports", "--json")))
    assert again["until"] is None and again["name"] == "reports"
    out = ok(cli("resume", "reports"))
    assert out.startswith("queue reports resumed (it was paused since ")
    assert out.rstrip().endswith("until resumed): shards claim its tasks again")
    assert ok(cli("resume", "reports")) == "queue reports was not paused\n"
    assert json.loads(ok(cli("resume", "reports", "--json"))) == {
        "queue": "reports", "resumed": False, "pause": None}
    assert "paused" not in ok(cli("stats")) and "(paused)" not in ok(cli("list"))
    assert json.loads(ok(cli("stats", "--json")))["paused"] == {}


def test_pause_and_resume_a_schedule_entry(cli: Cli) -> None:
    before = ok(cli("schedule"))
    assert "paused" not in before and before.startswith("nightly  [0 3 * * *]")
    out = ok(cli("schedule", "pause", "nightly", "--reason", "db maintenance"))
    assert out.startswith("entry nightly paused since ")
    assert "until resumed (db maintenance): the mission does not fire it" in out
    shown = ok(cli("schedule"))
    assert shown.startswith(before.rstrip("\n").split("\n")[0])  # the listing as before ...
    assert "\n  paused  since " in shown  # ... with a line for the pause
    assert "until resumed (db maintenance): not fired, its skipped times not caught up" in shown
    entry = json.loads(ok(cli("schedule", "--json")))[0]
    assert entry["paused"]["reason"] == "db maintenance" and entry["paused"]["until"] is None
    resumed = json.loads(ok(cli("schedule", "resume", "nightly", "--json")))
    assert resumed["entry"] == "nightly" and resumed["resumed"] is True
    assert json.loads(ok(cli("schedule", "--json")))[0]["paused"] is None
    assert ok(cli("schedule")) == before


@pytest.mark.any_backend
@pytest.mark.parametrize(("args", "says"), [
    (("pause", ""), "cronqueue: error: queue name '' is malformed"),
    (("pause", "q" * 300), "cronqueue: error: queue name of 300 characters is too long"),
    (("resume", "a/b"), "cronqueue: error: queue name 'a/b' is malformed"),
    (("pause", "reports", "--until", "2001-01-01"),
     "cronqueue: error: until 2001-01-01T00:00:00+00:00 is not in the future"),
    (("pause", "reports", "--reason", "r" * 1001),
     "cronqueue: error: reason must be text of at most 1000 characters"),
    (("schedule", "pause", "nope"),
     "cronqueue: error: no [[mission]] entry named 'nope' in "),
    (("schedule", "pause"), "cronqueue: error: schedule pause: give the entry's NAME"),
    (("schedule", "--until", "2031-01-01"),
     "cronqueue: error: --until and --reason go with `schedule pause NAME`"),
    (("schedule", "resume", "nightly", "--reason", "x"),
     "cronqueue: error: --until and --reason go with `schedule pause NAME`"),
])
def test_bad_input_is_refused_with_one_line(cli: Cli, args: tuple[str, ...], says: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(says) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert json.loads(ok(cli("stats", "--json")))["paused"] == {}


@pytest.mark.any_backend
def test_until_takes_the_forms_of_add_at_and_says_so(cli: Cli) -> None:
    helped = ok(cli("pause", "--help"))
    assert "UTC unless an offset is given" in " ".join(helped.split())
    assert "UTC unless an offset is given" in " ".join(ok(cli("schedule", "--help")).split())
    bad = cli("pause", "reports", "--until", "tomorrow")
    assert bad.returncode == 2 and "bad time 'tomorrow' (ISO-8601" in bad.stderr
    naive = json.loads(ok(cli("pause", "reports", "--until", "2031-02-03T04:05", "--json")))
    assert naive["until"] == "2031-02-03T04:05:00+00:00"  # no offset: UTC
