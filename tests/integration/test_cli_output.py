"""Human CLI output never passes a row's control characters to the terminal (issue 11, item
5): hand-written rows with ANSI/OSC escapes and newlines, through the real `cronqueue` command,
on SQLite and MariaDB. ``--json`` stays exact."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from cronqueue import Queue
from tests.conftest import run_cli

# OSC 52 (write the clipboard), BEL, clear screen, colour, a C1 CSI, a bidi override, CR.
HOSTILE = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b[31mred\x9b\u202eevil\rover"
ROWS: list[dict[str, Any]] = [
    {"taskscript": "ok.sh\x1b]0;pwned\x07", "param": '{"x": "\x1b[2J"}',
     "queue": "evil\n2  done  forged", "output": "first\n" + HOSTILE + "\n", "error": HOSTILE,
     "status": 1},
    {"taskscript": "ok.sh", "param": "{}", "queue": "q\x1b[8m", "output": None,
     "error": None, "status": 0},
]
CONTROL = [chr(c) for c in (*range(0x20), *range(0x7f, 0xa0)) if chr(c) != "\n"] + ["\u202e"]


def _insert(q: Queue, rows: list[dict[str, Any]]) -> None:
    with q.engine.begin() as conn:
        for row in rows:
            conn.execute(text("INSERT INTO queue (taskscript, param, queue, output, error, status)"
                              " VALUES (:taskscript, :param, :queue, :output, :error, :status)"),
                         row)


def _cli(db_url: str, task_dir: Path, log_dir: Path, *args: str) -> str:
    done = run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _clean(out: str) -> bool:
    return not any(c in out for c in CONTROL)


def test_list_status_and_stats_show_control_characters_visibly(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    _insert(queue, ROWS)
    listing = _cli(db_url, task_dir, log_dir, "list")
    assert _clean(listing), listing
    assert len(listing.strip("\n").split("\n")) == 1 + len(ROWS)  # no forged row
    assert "'evil\\n2  done  forged'" in listing

    status = _cli(db_url, task_dir, log_dir, "status", "1")
    assert _clean(status), status
    assert "'ok.sh\\x1b]0;pwned\\x07'" in status
    assert "    \\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\x1b[31mred\\x9b\\u202eevil\\rover" in status

    stats = _cli(db_url, task_dir, log_dir, "stats")
    assert _clean(stats), stats
    assert len(stats.strip("\n").split("\n")) == 1 + len(ROWS) + 2  # header, queues, all, due


def test_json_output_stays_exact(queue: Queue, db_url: str, task_dir: Path,
                                 log_dir: Path) -> None:
    _insert(queue, ROWS)
    listed = json.loads(_cli(db_url, task_dir, log_dir, "list", "--json"))
    by_id = {t["id"]: t for t in listed}
    for task_id, row in enumerate(ROWS, 1):
        for key in ("taskscript", "param", "queue", "output", "error"):
            assert by_id[task_id][key] == row[key]
    one = json.loads(_cli(db_url, task_dir, log_dir, "status", "1", "--json"))
    assert one["output"] == ROWS[0]["output"] and one["queue"] == ROWS[0]["queue"]
    stats = json.loads(_cli(db_url, task_dir, log_dir, "stats", "--json"))
    assert set(stats["queues"]) == {r["queue"] for r in ROWS}


def test_a_status_outside_0_to_4_is_shown_not_fatal(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    _insert(queue, [{**ROWS[1], "queue": "default", "status": 7}])
    listing = _cli(db_url, task_dir, log_dir, "list")
    assert listing.split("\n")[1].split()[:2] == ["1", "unknown(7)"], listing
    assert _cli(db_url, task_dir, log_dir, "status", "1").startswith("task 1: unknown(7)\n")


def test_schedule_and_workers_show_hand_written_rows_visibly(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "cronqueue.toml"
    config.write_text('[[mission]]\nname = "nightly"\ncron = "0 3 * * *"\n'
                      'add = { taskscript = "ok.sh" }\n')
    with queue.engine.begin() as conn:
        conn.execute(text("INSERT INTO cronqueue_runs (entry, scheduled_at, host, outcome) "
                          "VALUES ('nightly', :at, :host, :outcome)"),
                     {"at": datetime(2030, 1, 1, 3, 0), "host": "h\x1b]0;x\x07",
                      "outcome": "ok\n  last    forged"})
        conn.execute(text("INSERT INTO cronqueue_workers (host, pid, entry, shard, total, "
                          "queues, started_at, heartbeat_at) VALUES (:host, 1, :entry, 0, 1, "
                          ":queues, :at, :at)"),
                     {"host": "far\x1b[2J", "entry": "e\nforged", "queues": "q\r",
                      "at": datetime(2030, 1, 1)})
    schedule = _cli(db_url, task_dir, log_dir, "schedule", "--config", str(config))
    assert _clean(schedule), schedule
    assert "on 'h\\x1b]0;x\\x07': 'ok\\n  last    forged'" in schedule
    workers = _cli(db_url, task_dir, log_dir, "workers")
    assert _clean(workers), workers
    assert len(workers.strip("\n").split("\n")) == 2
    assert "'far\\x1b[2J'" in workers and "'e\\nforged'" in workers


# -- issue 15 item 4: what the human output says about itself ------------------------------------


def test_list_says_when_it_stops_at_its_limit(queue: Queue, db_url: str, task_dir: Path,
                                             log_dir: Path) -> None:
    """`list` stopped at 50 rows without saying so."""
    queue.add_many([{"taskscript": "ok.sh"}] * 120 + [{"taskscript": "ok.sh", "queue": "q2"}])
    listing = _cli(db_url, task_dir, log_dir, "list").strip("\n").split("\n")
    assert len(listing) == 1 + 50 + 1
    assert listing[-1] == "50 of 121 shown (newest first); --limit N for more"
    listing = _cli(db_url, task_dir, log_dir, "list", "--queue", "default", "--limit", "7")
    assert listing.strip("\n").split("\n")[-1].startswith("7 of 120 shown")
    for everything in (("--limit", "121"), ("--limit", "500"), ("--queue", "q2")):
        listing = _cli(db_url, task_dir, log_dir, "list", *everything)
        assert " shown" not in listing, everything
    assert json.loads(_cli(db_url, task_dir, log_dir, "list", "--json")).__len__() == 50


def test_the_count_behind_list_is_capped(queue: Queue, db_url: str, task_dir: Path,
                                         log_dir: Path) -> None:
    """Never an unbounded COUNT(*): it stops at the cap (``cap + 1``: more than that)."""
    queue.add_many([{"taskscript": "ok.sh"}] * 10_050)
    assert queue.count(cap=100) == 101
    assert queue.count(cap=20_000) == 10_050
    assert queue.count(queue="other", cap=100) == 0
    listing = _cli(db_url, task_dir, log_dir, "list", "--limit", "3")
    assert listing.strip("\n").split("\n")[-1] == (
        "3 of more than 10,000 shown (newest first); --limit N for more")


_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def test_every_time_shown_is_labelled_with_its_zone(queue: Queue, db_url: str, task_dir: Path,
                                                   log_dir: Path, tmp_path: Path) -> None:
    """`list`/`status` printed UTC times without a zone while `schedule` printed local ones."""
    import re

    task_id = queue.add("ok.sh", max_attempts=2)
    with queue.engine.begin() as conn:
        conn.execute(text("INSERT INTO cronqueue_workers (host, pid, entry, shard, total, "
                          "queues, started_at, heartbeat_at) VALUES ('far', 1, 'e', 0, 1, '', "
                          ":at, :at)"), {"at": datetime(2030, 1, 1, 12, 0)})
        conn.execute(text("INSERT INTO cronqueue_runs (entry, scheduled_at, host, outcome) "
                          "VALUES ('nightly', :at, 'far', 'added')"),
                     {"at": datetime(2030, 7, 1, 1, 0)})
    status = _cli(db_url, task_dir, log_dir, "status", str(task_id))
    times = re.findall(_TIME + r"(?: \S+)?", status)
    assert len(times) == 2 and all(t.endswith(" UTC") for t in times), status
    assert re.search(rf"created   {_TIME} UTC   run at {_TIME} UTC\n", status), status
    header = _cli(db_url, task_dir, log_dir, "list").split("\n")[0]
    assert "RUN AT (UTC)" in header
    workers = _cli(db_url, task_dir, log_dir, "workers").split("\n")
    assert "STARTED (UTC)" in workers[0] and "HEARTBEAT (UTC)" in workers[0]
    assert workers[1].count("2030-01-01 12:00:00") == 2

    config = tmp_path / "cronqueue.toml"
    config.write_text('timezone = "Europe/Paris"\n[[mission]]\nname = "nightly"\n'
                      'cron = "0 3 * * *"\nadd = { taskscript = "ok.sh" }\n')
    schedule = _cli(db_url, task_dir, log_dir, "schedule", "--config", str(config))
    next_line = next(line for line in schedule.split("\n") if line.startswith("  next"))
    assert re.fullmatch(r"  next    (\d{4}-\d\d-\d\d 03:00 CES?T(, )?){3}", next_line), schedule
    assert "  last    2030-07-01 03:00 CEST on far: added" in schedule  # 01:00 UTC in summer
    utc = tmp_path / "utc.toml"
    utc.write_text(config.read_text().replace('"Europe/Paris"', '"UTC"'))
    assert "  last    2030-07-01 01:00 UTC on far" in _cli(
        db_url, task_dir, log_dir, "schedule", "--config", str(utc))

    # --json: ISO-8601 with the offset, everywhere
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d")
    one = json.loads(_cli(db_url, task_dir, log_dir, "status", str(task_id), "--json"))
    listed = json.loads(_cli(db_url, task_dir, log_dir, "list", "--json"))[0]
    shards = json.loads(_cli(db_url, task_dir, log_dir, "workers", "--json"))[0]
    entries = json.loads(_cli(db_url, task_dir, log_dir, "schedule", "--config", str(config),
                              "--json"))[0]
    for value in (one["ctime"], one["run_at"], listed["run_at"], shards["started_at"],
                  shards["heartbeat_at"], entries["last_scheduled"], *entries["next"]):
        assert iso.fullmatch(value), value
    assert entries["last_scheduled"] == "2030-07-01T03:00:00+02:00"


def test_status_shows_the_effective_attempts_and_timeout(queue: Queue, db_url: str,
                                                         task_dir: Path, log_dir: Path,
                                                         tmp_path: Path) -> None:
    """`status` said "attempts 0/default" where a shard gives the task worker.max_attempts."""
    config = tmp_path / "cronqueue.toml"
    config.write_text("[worker]\nmax_attempts = 5\ntimeout = 90\n")
    plain = queue.add("ok.sh")
    own = queue.add("ok.sh", max_attempts=2, timeout=30)
    assert "  attempts  0/3  timeout 600s\n" in _cli(db_url, task_dir, log_dir, "status",
                                                     str(plain))
    assert "  attempts  0/5  timeout 90s\n" in _cli(db_url, task_dir, log_dir, "status",
                                                    str(plain), "--config", str(config))
    assert "  attempts  0/2  timeout 30s\n" in _cli(db_url, task_dir, log_dir, "status",
                                                    str(own), "--config", str(config))
