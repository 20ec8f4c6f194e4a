"""Validation of ``add()`` input (cronqueue.spec): every bad input is an ``InvalidTask``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cronqueue.errors import InvalidTask
from cronqueue.spec import (
    MAX_PARAM_BYTES,
    MAX_TASKSCRIPT_LEN,
    MAX_UNIQUE_KEY_LEN,
    TaskSpec,
    build_spec,
    check_queue,
    check_taskscript,
    serialize_param,
    spec_from_item,
)

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def spec(taskscript: object = "job.py", param: Any = None, **kw: Any) -> TaskSpec:
    return build_spec(taskscript, param, now=NOW, **kw)


def test_max_param_bytes_is_linux_argv_string_limit() -> None:
    # MAX_ARG_STRLEN is 32 pages (131072 bytes) including the terminating NUL.
    assert MAX_PARAM_BYTES == 131071


# -- param --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    [
        pytest.param({1, 2}, id="set"),
        pytest.param(object(), id="object"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param({"nested": [1, {"deep": b"bytes"}]}, id="nested-bytes"),
        pytest.param(datetime(2026, 1, 1, tzinfo=UTC), id="datetime"),
    ],
)
def test_unserializable_param_is_refused(param: Any) -> None:
    with pytest.raises(InvalidTask, match="param"):
        serialize_param(param)
    with pytest.raises(InvalidTask, match="param"):
        spec(param=param)


def _string_param_of_size(nbytes: int, char: str = "a") -> str:
    """A str whose JSON serialization (two quotes added) is exactly ``nbytes`` UTF-8 bytes."""
    width = len(char.encode("utf-8"))
    body = nbytes - 2
    assert body % width == 0
    return char * (body // width)


@pytest.mark.parametrize("char", ["a", "é", "€", "😀"],
                         ids=["1-byte", "2-byte", "3-byte", "4-byte"])
def test_param_exactly_at_the_argv_limit_is_accepted(char: str) -> None:
    # Pick a size at or just under the limit that the char width divides (plus two quotes).
    width = len(char.encode("utf-8"))
    size = MAX_PARAM_BYTES - (MAX_PARAM_BYTES - 2) % width
    value = _string_param_of_size(size, char)
    text = serialize_param(value)
    assert len(text.encode("utf-8")) == size
    assert json.loads(text) == value


def test_param_of_exactly_max_bytes_is_accepted() -> None:
    value = _string_param_of_size(MAX_PARAM_BYTES)
    text = serialize_param(value)
    assert len(text.encode("utf-8")) == MAX_PARAM_BYTES
    assert spec(param=value).param == text


def test_param_one_byte_over_the_limit_is_refused() -> None:
    value = "a" * (MAX_PARAM_BYTES - 2 + 1)
    with pytest.raises(InvalidTask, match=r"param is 131072 bytes"):
        serialize_param(value)


def test_param_size_counts_utf8_bytes_not_characters() -> None:
    # 45 000 three-byte characters: 45 002 characters serialized, but 135 002 bytes.
    value = "€" * 45_000
    assert len(json.dumps(value, ensure_ascii=False)) < MAX_PARAM_BYTES
    with pytest.raises(InvalidTask, match="bytes"):
        serialize_param(value)


def test_multibyte_param_just_over_the_limit_is_refused() -> None:
    # Two quotes + 1-byte padding + one 2-byte char that pushes it exactly one byte over.
    value = "a" * (MAX_PARAM_BYTES - 2 - 1) + "é"
    assert len(json.dumps(value, ensure_ascii=False).encode()) == MAX_PARAM_BYTES + 1
    with pytest.raises(InvalidTask, match="param"):
        serialize_param(value)


def test_param_with_nul_is_escaped_by_json_and_accepted() -> None:
    # JSON escapes a NUL char as \u0000, so the argv string itself holds no NUL byte.
    text = serialize_param("a\x00b")
    assert "\x00" not in text
    assert json.loads(text) == "a\x00b"


def test_param_with_lone_surrogate_is_refused() -> None:
    # A lone surrogate cannot be encoded as UTF-8: it can neither be stored nor put in argv.
    with pytest.raises(InvalidTask, match="param"):
        serialize_param("\ud800")


def test_param_round_trips_as_compact_json_keeping_non_ascii() -> None:
    param = {"name": "Zoë", "city": "Kraków", "tags": ["日本", 1, 2.5, None, True]}
    text = serialize_param(param)
    assert text == '{"name":"Zoë","city":"Kraków","tags":["日本",1,2.5,null,true]}'
    assert json.loads(text) == param
    assert spec(param=param).param == text


def test_param_default_is_json_null() -> None:
    assert spec().param == "null"


# -- taskscript ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "taskscript",
    [
        "/bin/sh",
        "../../bin/sh",
        "a/../../x",
        "..",
        "./x.py",
        ".hidden.py",
        "-rf",
        "sub/-x.py",
        "+x.py",
        "x\x00.py",
        "x;id",
        "$(id)",
        "`id`",
        "a b.py",
        " x.py",
        "x.py\n",
        "a//b.py",
        "a/",
        "x|y",
        "x&y",
        "x>y",
        "",
        "x" * (MAX_TASKSCRIPT_LEN + 1),
    ],
)
def test_bad_taskscript_is_refused_and_named(taskscript: str) -> None:
    with pytest.raises(InvalidTask, match="taskscript") as info:
        check_taskscript(taskscript)
    if taskscript and len(taskscript) <= MAX_TASKSCRIPT_LEN:
        assert repr(taskscript) in str(info.value)
    with pytest.raises(InvalidTask, match="taskscript"):
        spec(taskscript)


def test_absolute_taskscript_message_says_absolute() -> None:
    with pytest.raises(InvalidTask, match="absolute"):
        check_taskscript("/bin/sh")


@pytest.mark.parametrize("taskscript", ["../../bin/sh", "a/../../x"])
def test_dotdot_taskscript_message_mentions_dotdot(taskscript: str) -> None:
    with pytest.raises(InvalidTask, match=r"'\.\.'"):
        check_taskscript(taskscript)


@pytest.mark.parametrize("taskscript", [None, 1, b"x.py", ["x.py"]])
def test_non_string_taskscript_is_refused(taskscript: object) -> None:
    with pytest.raises(InvalidTask, match="taskscript must be a string"):
        check_taskscript(taskscript)


def test_too_long_taskscript_message_names_the_limit() -> None:
    with pytest.raises(InvalidTask, match=str(MAX_TASKSCRIPT_LEN)):
        check_taskscript("a" * (MAX_TASKSCRIPT_LEN + 1))


@pytest.mark.parametrize(
    "taskscript",
    ["x.py", "report.py", "sub/dir/job_1.sh", "a-b.c+d.php", "_private", "9.sh",
     "a" * MAX_TASKSCRIPT_LEN],
)
def test_good_taskscript_is_accepted(taskscript: str) -> None:
    assert check_taskscript(taskscript) == taskscript
    assert spec(taskscript).taskscript == taskscript


# -- queue --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "queue",
    ["", "q" * 65, "my queue", "-q", ".q", "_q", "q/x", "q;x", "é", "q\n"],
)
def test_malformed_queue_name_is_refused(queue: str) -> None:
    with pytest.raises(InvalidTask, match="queue name") as info:
        check_queue(queue)
    assert repr(queue) in str(info.value)
    with pytest.raises(InvalidTask, match="queue name"):
        spec(queue=queue)


@pytest.mark.parametrize("queue", [None, 1, b"default", ["default"]])
def test_non_string_queue_name_is_refused(queue: object) -> None:
    with pytest.raises(InvalidTask, match="queue name"):
        check_queue(queue)


@pytest.mark.parametrize("queue", ["default", "q", "Q" * 64, "emails.high", "a:b-c_d", "9"])
def test_good_queue_name_is_accepted(queue: str) -> None:
    assert check_queue(queue) == queue
    assert spec(queue=queue).queue == queue


# -- run_at / delay -------------------------------------------------------------------------------


def test_naive_run_at_is_refused() -> None:
    with pytest.raises(InvalidTask, match=r"run_at .* naive"):
        spec(run_at=datetime(2026, 11, 23, 12, 0))


@pytest.mark.parametrize("run_at", ["2026-11-23T12:00:00+00:00", 1_790_000_000, 1.5,
                                    NOW.date()])
def test_run_at_that_is_not_a_datetime_is_refused(run_at: object) -> None:
    with pytest.raises(InvalidTask, match="run_at must be a timezone-aware datetime"):
        spec(run_at=run_at)


def test_run_at_and_delay_together_are_refused() -> None:
    with pytest.raises(InvalidTask, match="run_at or delay"):
        spec(run_at=NOW, delay=5)


@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-1), float("nan"),
                                   float("inf"), float("-inf")])
def test_negative_or_non_finite_delay_is_refused(delay: object) -> None:
    with pytest.raises(InvalidTask, match="delay"):
        spec(delay=delay)


@pytest.mark.parametrize("delay", ["5", True, object(), [5]])
def test_delay_of_wrong_type_is_refused(delay: object) -> None:
    with pytest.raises(InvalidTask, match="delay"):
        spec(delay=delay)


@pytest.mark.parametrize("delay", [1e20, 10**12, timedelta(days=999_999_999)])
def test_absurdly_large_delay_is_an_invalid_task_not_a_crash(delay: object) -> None:
    # Beyond year 9999: must be refused as bad input, not leak an OverflowError.
    with pytest.raises(InvalidTask, match="delay"):
        spec(delay=delay)


def test_aware_run_at_in_other_zone_is_converted_to_utc() -> None:
    plus5 = timezone(timedelta(hours=5))
    result = spec(run_at=datetime(2026, 11, 23, 17, 30, tzinfo=plus5)).run_at
    assert result == datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
    assert result.utcoffset() == timedelta(0)
    assert result.hour == 12


def test_delay_as_float_seconds() -> None:
    assert spec(delay=1.5).run_at == NOW + timedelta(seconds=1.5)


def test_delay_as_int_seconds() -> None:
    assert spec(delay=90).run_at == NOW + timedelta(seconds=90)


def test_delay_as_timedelta() -> None:
    assert spec(delay=timedelta(minutes=5)).run_at == NOW + timedelta(minutes=5)


def test_zero_delay_is_now() -> None:
    assert spec(delay=0).run_at == NOW


def test_without_run_at_or_delay_the_task_is_due_now() -> None:
    assert spec().run_at == NOW


# -- integers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [True, False])
def test_bool_priority_is_refused(priority: bool) -> None:
    with pytest.raises(InvalidTask, match="priority"):
        spec(priority=priority)


@pytest.mark.parametrize("priority", [1.5, 1.0, "5", None, 2**31, -(2**31) - 1])
def test_non_int_or_out_of_range_priority_is_refused(priority: object) -> None:
    with pytest.raises(InvalidTask, match="priority"):
        spec(priority=priority)


@pytest.mark.parametrize("priority", [0, 5, -10, 2**31 - 1, -(2**31)])
def test_int_priority_incl_negative_is_accepted(priority: int) -> None:
    assert spec(priority=priority).priority == priority


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3"])
def test_bad_max_attempts_is_refused(value: object) -> None:
    with pytest.raises(InvalidTask, match="max_attempts"):
        spec(max_attempts=value)


@pytest.mark.parametrize("value", [0, -5, True, 2.0, "60"])
def test_bad_timeout_is_refused(value: object) -> None:
    with pytest.raises(InvalidTask, match="timeout"):
        spec(timeout=value)


def test_max_attempts_and_timeout_default_to_none_and_accept_positive_ints() -> None:
    default = spec()
    assert default.max_attempts is None
    assert default.timeout is None
    given = spec(max_attempts=1, timeout=1)
    assert (given.max_attempts, given.timeout) == (1, 1)


# -- unique_key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", 5, b"k"])
def test_empty_or_non_string_unique_key_is_refused(key: object) -> None:
    with pytest.raises(InvalidTask, match="unique_key"):
        spec(unique_key=key)


def test_unique_key_with_a_lone_surrogate_is_refused() -> None:
    """Was a UnicodeEncodeError from deep in the insert instead of InvalidTask."""
    with pytest.raises(InvalidTask, match="unique_key holds a lone surrogate"):
        spec(unique_key="k\ud800")


def test_too_long_unique_key_is_refused() -> None:
    with pytest.raises(InvalidTask, match="unique_key"):
        spec(unique_key="k" * (MAX_UNIQUE_KEY_LEN + 1))


def test_unique_key_at_max_length_is_accepted_and_becomes_active_key() -> None:
    key = "k" * MAX_UNIQUE_KEY_LEN
    s = spec(unique_key=key)
    assert s.unique_key == key
    row = s.row(NOW)
    assert row["unique_key"] == key
    assert row["active_key"] == key


def test_row_holds_every_validated_field() -> None:
    s = spec("sub/job.sh", {"a": 1}, priority=-3, queue="q1", delay=10, max_attempts=2,
             timeout=30)
    row = s.row(NOW)
    assert row == {
        "taskscript": "sub/job.sh",
        "param": '{"a":1}',
        "priority": -3,
        "queue": "q1",
        "ctime": NOW,
        "run_at": NOW + timedelta(seconds=10),
        "max_attempts": 2,
        "timeout": 30,
        "unique_key": None,
        "active_key": None,
        "secret": None,
    }


def test_secret_is_serialized_and_never_repr() -> None:
    s = spec(secret={"token": "s3cr3t"})
    assert s.row(NOW)["secret"] == '{"token":"s3cr3t"}'
    assert "s3cr3t" not in repr(s)


def test_unserializable_or_huge_secret_is_refused() -> None:
    with pytest.raises(InvalidTask, match="secret"):
        spec(secret={1, 2})
    with pytest.raises(InvalidTask, match="secret"):
        spec(secret="x" * (8 * 1024 * 1024 + 1))


# -- add_many items -------------------------------------------------------------------------------


def test_item_as_mapping() -> None:
    s = spec_from_item({"taskscript": "a.py", "param": [1], "priority": 4, "queue": "q",
                        "delay": 3}, NOW, 0)
    assert (s.taskscript, s.param, s.priority, s.queue) == ("a.py", "[1]", 4, "q")
    assert s.run_at == NOW + timedelta(seconds=3)


def test_item_as_tuple_and_list() -> None:
    assert spec_from_item(("a.py", {"x": "é"}), NOW, 0).param == '{"x":"é"}'
    assert spec_from_item(("a.py",), NOW, 0).param == "null"
    assert spec_from_item(["b.sh", 1], NOW, 0).taskscript == "b.sh"


def test_item_as_taskspec_passes_through() -> None:
    s = spec()
    assert spec_from_item(s, NOW, 0) is s


def test_item_unknown_key_names_key_and_index() -> None:
    with pytest.raises(InvalidTask, match=r"add_many item 7: unknown key\(s\) \['prio'\]"):
        spec_from_item({"taskscript": "a.py", "prio": 1}, NOW, 7)


def test_item_unknown_non_string_keys_still_invalid_task() -> None:
    # Mixed key types must not crash the error path (sorting str and int raises TypeError).
    with pytest.raises(InvalidTask, match="add_many item 4"):
        spec_from_item({"taskscript": "a.py", 1: 2, "zz": 3}, NOW, 4)


def test_item_missing_taskscript_names_index() -> None:
    with pytest.raises(InvalidTask, match="add_many item 2: missing 'taskscript'"):
        spec_from_item({"param": 1}, NOW, 2)


def test_item_invalid_field_names_index_and_culprit() -> None:
    with pytest.raises(InvalidTask, match=r"add_many item 3: taskscript '/bin/sh' is absolute"):
        spec_from_item(("/bin/sh", None), NOW, 3)
    with pytest.raises(InvalidTask, match=r"add_many item 1: .*param"):
        spec_from_item({"taskscript": "a.py", "param": {1, 2}}, NOW, 1)


@pytest.mark.parametrize("item", ["a.py", 5, (), ("a.py", 1, 2), None])
def test_item_of_wrong_shape_is_refused_with_index(item: object) -> None:
    with pytest.raises(InvalidTask, match="add_many item 9"):
        spec_from_item(item, NOW, 9)


def test_item_mapping_is_not_mutated() -> None:
    item = {"taskscript": "a.py", "param": 1, "priority": 2}
    spec_from_item(item, NOW, 0)
    assert item == {"taskscript": "a.py", "param": 1, "priority": 2}



def test_an_oversized_queue_name_is_refused_without_quoting_it_whole() -> None:
    with pytest.raises(InvalidTask) as refused:
        check_queue("x" * 100_000 + "!")
    message = str(refused.value)
    assert "is malformed" in message and "100,001 characters" in message
    assert len(message) < 300 and "\n" not in message
