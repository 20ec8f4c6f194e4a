"""The CLI's human output shows control characters visibly (issue 11, item 5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cronqueue.cli.display import (
    far_ahead,
    format_columns,
    format_stats,
    format_table,
    format_task,
    status_name,
    visible,
    visible_line,
)
from cronqueue.model import Status, Task

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
HOSTILE = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b[31mred\x9b\u202e\r\n"


def _task(**values: Any) -> Task:
    base: dict[str, Any] = {
        "id": 1, "queue": "default", "taskscript": "ok.sh", "param": "{}",
        "status": Status.DONE, "priority": 0, "ctime": NOW, "run_at": NOW, "attempts": 1}
    base.update(dict.fromkeys(
        ("max_attempts", "timeout", "unique_key", "active_key", "worker_host", "worker_pid",
         "worker_pid_start", "claim_token", "lease_until", "started_at", "finished_at",
         "exit_code", "error", "output")))
    base.update(values)
    return Task(**base)


def _only_printable(text: str) -> bool:
    return all(line.isprintable() for line in text.split("\n"))


@pytest.mark.parametrize("text", ["plain", "naïve ünïcode ✓", "a b"])
def test_printable_text_is_unchanged(text: str) -> None:
    assert visible(text) == text
    assert visible_line(text) == text


def test_control_characters_become_escapes() -> None:
    assert visible("a\nb") == "'a\\nb'"
    assert visible("\x1b[31m") == "'\\x1b[31m'"
    assert visible_line("\x1b[31mred\tcol\r") == "\\x1b[31mred\tcol\\r"
    assert visible_line("\x9b\u202e") == "\\x9b\\u202e"
    assert _only_printable(visible(HOSTILE)) and _only_printable(visible_line(HOSTILE))


@pytest.mark.parametrize(("value", "shown"), [
    (Status.PENDING, "pending"), (Status.CANCELLED, "cancelled"), (3, "failed"),
    (7, "unknown(7)"), (-1, "unknown(-1)"), ("x\x1b", "unknown('x\\x1b')")])
def test_status_names_include_codes_outside_0_to_4(value: object, shown: str) -> None:
    assert status_name(value) == shown


def test_a_status_stand_in_for_an_unknown_code_is_shown_with_it() -> None:
    assert status_name(Status.of(7)) == "unknown(7)"


def test_a_newline_in_a_cell_cannot_forge_a_row() -> None:
    table = format_columns([("ID", "QUEUE"), ("1", "q\n2  forged"), ("3", HOSTILE)])
    lines = table.split("\n")
    assert len(lines) == 3
    assert lines[1].split(None, 1) == ["1", "'q\\n2  forged'"]
    assert _only_printable(table)


def test_task_details_show_every_field_visibly() -> None:
    task = _task(taskscript="ok.sh\x1b[8m", queue="q\nx", param='{"a": "\x1b]0;t\x07"}',
                 status=7, worker_host="h\x1b", error="bad\x1b[0m",
                 output="line one\n\x1b[31mred\x1b[0m\n" + HOSTILE)
    shown = format_task(task)
    assert _only_printable(shown)
    assert shown.startswith("task 1: unknown(7)\n")
    assert "    \\x1b[31mred\\x1b[0m" in shown.split("\n")
    assert "    line one" in shown.split("\n")
    assert "'ok.sh\\x1b[8m'" in shown and "'q\\nx'" in shown


def test_task_table_has_one_line_per_task() -> None:
    tasks = [_task(id=i, queue="q\n9  done  forged", error=HOSTILE) for i in (1, 2)]
    table = format_table(tasks)
    assert len(table.split("\n")) == 3
    assert _only_printable(table)


def test_stats_show_hostile_queue_names_and_unknown_statuses() -> None:
    names = [s.name.lower() for s in Status]
    counts = dict.fromkeys(names, 0)
    stats = {"total": 3, **counts, "due": 0, "oldest_due_seconds": 0.0,
             "queues": {"ok": {**counts, "done": 1},
                        "evil\n(all)": {**counts, "pending": 1, "unknown(7)": 1}}}
    shown = format_stats(stats)
    assert _only_printable(shown)
    lines = shown.split("\n")
    assert len(lines) == 5  # header, two queues, (all), due
    assert lines[0].split() == ["queue", *names, "unknown(7)"]
    assert lines[1].split()[0] == "'evil\\n(all)'"


def test_only_a_pending_task_more_than_a_day_ahead_is_flagged() -> None:
    """Issue 12 #5: a hand-written run_at in local time or a wrong year is visible."""
    day = timedelta(days=1)
    second = timedelta(seconds=1)
    assert far_ahead(_task(status=Status.PENDING, run_at=NOW + day + second), NOW) == day + second
    assert far_ahead(_task(status=Status.PENDING, run_at=NOW + day), NOW) is None
    assert far_ahead(_task(status=Status.DONE, run_at=NOW + 9 * day), NOW) is None
    assert far_ahead(_task(status=7, run_at=NOW + 9 * day), NOW) is None
    assert far_ahead(_task(status=Status.PENDING, run_at=None), NOW) is None
    tasks = [_task(id=1, status=Status.PENDING, run_at=NOW + 2 * day),
             _task(id=2, status=Status.PENDING, run_at=NOW)]
    table = format_table(tasks, NOW).split("\n")
    assert table[1].endswith("(!)") and not table[2].endswith("(!)")
    assert table[3].startswith("(!) 1 pending task(s) to run more than a day ahead")
    assert "  WARNING   pending, run at 2.0 days ahead; " in format_task(tasks[0], NOW)
    assert "WARNING" not in format_task(tasks[1], NOW)
