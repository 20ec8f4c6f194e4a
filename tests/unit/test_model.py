"""The task model: stable status codes, ``Task.from_row``, ``args`` and ``as_dict``."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cronqueue.model import Status, Task, status_name
from cronqueue.store import schema
from cronqueue.store.tasks import FINISHED

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def row(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 42,
        "queue": "default",
        "taskscript": "job.py",
        "param": '{"a":1,"b":"é"}',
        "status": 0,
        "priority": 0,
        "ctime": T0,
        "run_at": T0,
        "attempts": 0,
        "max_attempts": None,
        "timeout": None,
        "unique_key": None,
        "active_key": None,
        "worker_host": None,
        "worker_pid": None,
        "worker_pid_start": None,
        "claim_token": None,
        "lease_until": None,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "error": None,
        "output": None,
    }
    base.update(overrides)
    return base


def test_enum_synced() -> None:
    # The contract's stable codes; other languages read them, never renumber.
    assert {s.name: int(s) for s in Status} == {
        "PENDING": 0,
        "DONE": 1,
        "RUNNING": 2,
        "FAILED": 3,
        "CANCELLED": 4,
    }
    # The database-side default of a hand-inserted row is PENDING.
    default = schema.queue_table.c.status.server_default
    assert default is not None
    assert str(default.arg) == "0"
    assert int(str(default.arg)) == Status.PENDING
    # The statements use the same codes.
    assert set(FINISHED) == {int(Status.DONE), int(Status.FAILED),
                                     int(Status.CANCELLED)}


def test_finished_property() -> None:
    assert {s for s in Status if s.finished} == {Status.DONE, Status.FAILED, Status.CANCELLED}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pending", Status.PENDING),
        ("DONE", Status.DONE),
        ("Running", Status.RUNNING),
        (" failed ", Status.FAILED),
        ("cancelled", Status.CANCELLED),
        ("0", Status.PENDING),
        ("1", Status.DONE),
        ("2", Status.RUNNING),
        ("3", Status.FAILED),
        ("4", Status.CANCELLED),
    ],
)
def test_status_parse_accepts_names_and_codes(text: str, expected: Status) -> None:
    assert Status.parse(text) is expected


@pytest.mark.parametrize("text", ["", "   ", "junk", "5", "-1", "3.0", "fail", "done!", "0x1"])
def test_status_parse_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the type is the contract here
        Status.parse(text)


def test_status_parse_error_lists_the_names() -> None:
    with pytest.raises(ValueError, match="pending, done, running, failed, cancelled"):
        Status.parse("junk")


def test_from_row_builds_a_frozen_task_with_status_enum() -> None:
    task = Task.from_row(row(status=3, attempts=2, error="ProcessExitError: exit status 3"))
    assert task.id == 42
    assert task.status is Status.FAILED
    assert isinstance(task.status, Status)
    assert task.attempts == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.status = Status.DONE  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.param = "null"  # type: ignore[misc]


def test_from_row_ignores_extra_columns_and_needs_all_known_ones() -> None:
    task = Task.from_row(row(extra_column="ignored"))
    assert not hasattr(task, "extra_column")
    incomplete = row()
    del incomplete["output"]
    with pytest.raises(KeyError):
        Task.from_row(incomplete)


def test_from_row_keeps_an_unknown_status_code_visible() -> None:
    # 0.1.0: ValueError ("9 is not a valid Status"), so list/stats/status crashed on the row.
    task = Task.from_row(row(status=9))
    assert int(task.status) == 9
    assert str(task.status) == "9"
    assert task.status.name == "UNKNOWN(9)"
    assert task.status not in list(Status)
    assert not task.status.finished
    assert task.problem == "status 9 is out of range (0..4)"  # shown, and named
    assert task.bad_columns == {"status"}
    assert task.as_dict()["status"] == "unknown(9)"
    text_status = Task.from_row(row(status="x"))
    assert text_status.status.name == "UNKNOWN('x')"
    assert text_status.problem == "status is not an integer: 'x'"


@pytest.mark.parametrize(("stored", "problem", "shown"), [
    (-1, "status -1 is out of range (0..4)", "unknown(-1)"),
    (0.5, "status is not an integer: 0.5", "unknown(0.5)"),  # a REAL (SQLite)
    (b"\x00", "status is not an integer: b'\\x00'", "unknown(b'\\x00')"),  # a BLOB
    ("PENDING", "status is not an integer: 'PENDING'", "unknown('PENDING')"),
    (None, "status is NULL", "unknown(None)"),
])
def test_every_status_that_is_no_code_is_a_problem_of_that_column(
        stored: object, problem: str, shown: str) -> None:
    """Only text statuses were named (by the prefix "UNKNOWN('" of the stand-in's name): a
    REAL or a BLOB became the stand-in with no problem recorded."""
    task = Task.from_row(row(status=stored))
    assert (task.problem, task.bad_columns) == (problem, {"status"})
    assert task.status not in list(Status) and not task.status.finished
    assert task.as_dict()["status"] == shown  # as stored: not lower-cased into a name
    assert status_name(stored) == shown
    for code in Status:
        assert Task.from_row(row(status=int(code))).problem is None


def test_attribute_names_are_the_column_names() -> None:
    columns = {c.name for c in schema.queue_table.columns}
    assert {f.name for f in dataclasses.fields(Task)} - {"problem", "bad_columns"} == columns


def test_args_decodes_param() -> None:
    assert Task.from_row(row()).args == {"a": 1, "b": "é"}
    assert Task.from_row(row(param="null")).args is None
    assert Task.from_row(row(param="[1,2]")).args == [1, 2]


def test_args_of_bad_json_raises_value_error() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        _ = Task.from_row(row(param="{bad")).args


def test_as_dict_is_json_serializable() -> None:
    task = Task.from_row(row(status=1, started_at=T0, finished_at=T0, exit_code=0,
                             output="ok\n", worker_host="h", worker_pid=7))
    data = task.as_dict()
    decoded = json.loads(json.dumps(data))
    assert decoded["status"] == "done"
    assert decoded["ctime"] == T0.isoformat()
    assert decoded["finished_at"] == "2026-11-23T12:00:00+00:00"
    assert decoded["lease_until"] is None
    assert decoded["param"] == '{"a":1,"b":"é"}'
    assert set(decoded) == {f.name for f in dataclasses.fields(Task)} - {"bad_columns"}
    assert decoded["problem"] is None
