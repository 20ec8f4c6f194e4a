"""decode.py: a row's values as untrusted input; Task.from_row never raises (issue 11, item 1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cronqueue import decode
from cronqueue.model import Status, Task
from tests.unit.test_model import row


@pytest.mark.parametrize(("value", "expected", "problem"), [
    ("plain", "plain", None),
    ("é ok", "é ok", None),
    (b"ok.sh", "ok.sh", None),  # a BLOB holding UTF-8 is that text
    (b"\xff\xfe", "\ufffd\ufffd", "x is not valid UTF-8 (b'\\xff\\xfe')"),
    ("ab\udcffc", "ab\ufffdc", "x is not valid UTF-8 (b'ab\\xffc')"),  # surrogate-escaped
    ("\ud800", "\ufffd", "x is not valid UTF-8"),  # a lone surrogate not from an escape
    (12, "12", "x is not text: 12"),
])
def test_text(value: object, expected: str, problem: str | None) -> None:
    problems = decode.Problems()
    assert decode.text("x", value, problems) == expected
    assert problems == ([problem] if problem else [])


def test_text_null() -> None:
    problems = decode.Problems()
    assert decode.text("param", None, problems) == ""
    assert problems == ["param is NULL"]
    assert decode.optional_text("error", None, problems) is None
    assert problems == ["param is NULL"]


@pytest.mark.parametrize(("value", "expected", "problem"), [
    (5, 5, None),
    (Status.DONE, 1, None),
    (3.0, 3, None),
    (None, None, None),
    (1.5, None, "n is not an integer: 1.5"),
    ("7", None, "n is not an integer: '7'"),
    (b"\x01", None, "n is not an integer: b'\\x01'"),
    (2**31, 2**31, "n 2147483648 is out of range (1..2147483647)"),  # kept, named
    (0, 0, "n 0 is out of range (1..2147483647)"),
])
def test_optional_integer(value: object, expected: int | None, problem: str | None) -> None:
    problems = decode.Problems()
    assert decode.optional_integer("n", value, problems, low=1) == expected
    assert problems == ([problem] if problem else [])


T = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected", "problem"), [
    (T, T, None),
    (T.replace(tzinfo=None), T, None),
    ("2020-01-01 00:00:00", T, None),
    ("2020-01-01T05:00:00+05:00", T, None),
    (datetime(2020, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))), T, None),
    ("0000-00-00 00:00:00", None, "t is not a valid time: '0000-00-00 00:00:00'"),
    ("2020-13-45 00:00:00", None, "t is not a valid time: '2020-13-45 00:00:00'"),
    (1, None, "t is not a valid time: 1"),
    (b"2020", None, "t is not a valid time: b'2020'"),
    (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), None,
     "t is out of range: " + decode.show(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))),
])
def test_time(value: object, expected: datetime | None, problem: str | None) -> None:
    problems = decode.Problems()
    assert decode.time("t", value, problems) == expected
    assert problems == ([problem] if problem else [])


def test_show_shortens() -> None:
    assert decode.show("x" * 100) == repr("x" * 100)[:60] + "..."


def test_from_row_never_raises_and_names_every_problem() -> None:
    bad: dict[str, Any] = row(status="x", priority="high", run_at="0000-00-00 00:00:00",
                              ctime=None, attempts=-1, max_attempts=0, timeout=b"1",
                              param=b"\xff", queue="bad\x00queue")
    task = Task.from_row(bad)
    assert task.problem == (
        "status is not an integer: 'x'; queue name 'bad\\x00queue' holds a NUL byte, which "
        "the script's environment cannot carry; "
        "param is not valid UTF-8 (b'\\xff'); priority is not an integer: 'high'; "
        "ctime is NULL; run_at is not a valid time: '0000-00-00 00:00:00'; "
        "attempts -1 is out of range (0..2147483646); "
        "max_attempts 0 is out of range (1..2147483647); timeout is not an integer: b'1'")
    assert (task.priority, task.attempts, task.run_at, task.ctime, task.timeout) == (
        0, -1, None, None, None)
    assert task.bad_columns == {"status", "queue", "param", "priority", "ctime", "run_at",
                                "attempts", "max_attempts", "timeout"}
    assert Task.from_row(row()).problem is None
    assert Task.from_row(row()).bad_columns == frozenset()


def test_bad_columns_name_the_column_not_a_word_in_the_reason() -> None:
    """The rescue asked whether attempts were readable by searching "attempts" in the
    problem text, which a bad max_attempts matched too."""
    task = Task.from_row(row(max_attempts=0))
    assert task.problem == "max_attempts 0 is out of range (1..2147483647)"
    assert task.bad_columns == {"max_attempts"}
    assert "attempts" not in task.bad_columns
    assert "bad_columns" not in task.as_dict()  # the problem text names them, with values


def test_problems_record_the_column_of_each_reason() -> None:
    problems = decode.Problems()
    decode.optional_integer("max_attempts", 0, problems, low=1)
    decode.text("param", None, problems)
    decode.optional_text("error", "fine", problems)
    assert problems == ["max_attempts 0 is out of range (1..2147483647)", "param is NULL"]
    assert problems.columns == {"max_attempts", "param"}


def test_priority_key_puts_non_integers_first() -> None:
    rows: list[dict[str, Any]] = [{"id": 3, "priority": 1}, {"id": 2, "priority": "high"},
                                  {"id": 1, "priority": 9}, {"id": 4, "priority": 1}]
    assert [r["id"] for r in sorted(rows, key=decode.priority_key)] == [2, 1, 3, 4]
