"""What may be enqueued: validation of ``add()`` input, before anything touches the database."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cronqueue.decode import INT_MAX, INT_MIN
from cronqueue.errors import InvalidTask

# Linux caps one argv string at MAX_ARG_STRLEN = 32 pages = 131072 bytes, including its NUL.
MAX_PARAM_BYTES = 131072 - 1
MAX_SECRET_BYTES = 8 * 1024 * 1024  # on stdin, stored in MEDIUMTEXT (16 MiB) on MySQL
MAX_TASKSCRIPT_LEN = 255
MAX_UNIQUE_KEY_LEN = 191
# json encodes and decodes recursively: a value nested thousands deep exhausts the stack.
NESTING_HINT = "nesting deeper than Python's recursion limit"

# Each path segment: starts with a letter, digit or underscore (so no "-opt", no ".." and no
# hidden files), then letters, digits, "._+-". No shell metacharacters, no spaces, no NUL.
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._+-]*"
TASKSCRIPT_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


# One encoder for every param and secret (json.dumps with options builds a new one per call).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def check_taskscript(taskscript: object) -> str:
    """Lexical check of a task script path, relative to task_dir. Raises ``InvalidTask``."""
    if not isinstance(taskscript, str):
        raise InvalidTask(f"taskscript must be a string, got {type(taskscript).__name__}")
    return _check_taskscript_text(taskscript)


@functools.lru_cache(maxsize=256)  # a batch repeats a handful of scripts
def _check_taskscript_text(taskscript: str) -> str:
    if not taskscript:
        raise InvalidTask("taskscript is empty")
    if len(taskscript) > MAX_TASKSCRIPT_LEN:
        raise InvalidTask(f"taskscript longer than {MAX_TASKSCRIPT_LEN} characters")
    if taskscript.startswith("/"):
        raise InvalidTask(f"taskscript {taskscript!r} is absolute; give a path inside task_dir")
    if ".." in taskscript.split("/"):
        raise InvalidTask(f"taskscript {taskscript!r} climbs out of task_dir with '..'")
    if not TASKSCRIPT_RE.fullmatch(taskscript):
        raise InvalidTask(
            f"taskscript {taskscript!r} is not a plain relative path "
            "(segments of letters, digits and ._+- not starting with '.', '-' or '+')"
        )
    return taskscript


def check_queue(queue: object) -> str:
    if not isinstance(queue, str) or not _queue_name_ok(queue):
        shown = repr(queue)
        if len(shown) > 100:  # one line naming the culprit, not 100,000 characters of it
            size = len(queue) if isinstance(queue, str) else len(shown)
            shown = f"{shown[:100]}... ({size:,} characters)"
        raise InvalidTask(
            f"queue name {shown} is malformed (1-64 of letters, digits and _.:-, "
            "starting with a letter or digit)"
        )
    return queue


@functools.lru_cache(maxsize=256)  # a process uses a handful of queue names
def _queue_name_ok(queue: str) -> bool:
    return QUEUE_RE.fullmatch(queue) is not None


def serialize_param(param: Any) -> str:
    """JSON text as stored and passed in argv[1]. Raises ``InvalidTask`` if it cannot be."""
    try:
        text = _ENCODE(param)
    except (TypeError, ValueError) as exc:
        raise InvalidTask(f"param is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise InvalidTask(f"param is nested too deeply to serialize ({NESTING_HINT})") from None
    check_param_text(text)
    return text


def check_param_text(text: str) -> None:
    """A stored param must fit in one argv string and hold no NUL byte."""
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidTask("param holds a lone surrogate, which is not valid UTF-8") from None
    if size > MAX_PARAM_BYTES:
        raise InvalidTask(
            f"param is {size} bytes serialized; argv holds at most {MAX_PARAM_BYTES} "
            "(store large data elsewhere and pass a reference)"
        )
    if "\x00" in text:
        raise InvalidTask("param contains a NUL byte, which argv cannot carry")


def serialize_secret(secret: Any) -> str:
    """JSON text handed to the script on stdin: no argv limit, but a sane cap."""
    try:
        text = _ENCODE(secret)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise InvalidTask(f"secret is not JSON-serializable: {exc}") from None
    except RecursionError:
        raise InvalidTask(f"secret is nested too deeply to serialize ({NESTING_HINT})") from None
    if size > MAX_SECRET_BYTES:
        raise InvalidTask(f"secret is {size} bytes serialized; at most {MAX_SECRET_BYTES}")
    return text


def _int_field(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTask(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidTask(f"{name} must be >= {minimum}, got {value}")
    if not INT_MIN <= value <= INT_MAX:
        raise InvalidTask(f"{name} is out of range: {value}")
    return value


def resolve_run_at(run_at: object, delay: object, now: datetime) -> datetime:
    if run_at is not None and delay is not None:
        raise InvalidTask("give run_at or delay, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidTask(f"run_at must be a timezone-aware datetime, got {run_at!r}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise InvalidTask(f"run_at {run_at.isoformat()} is naive; give it a timezone")
        try:
            return run_at.astimezone(UTC)
        except OverflowError:
            raise InvalidTask(f"run_at {run_at!r} is out of range") from None
    if delay is not None:
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, int | float) and not isinstance(delay, bool):
            seconds = float(delay)
        else:
            raise InvalidTask(f"delay must be seconds or a timedelta, got {delay!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidTask(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        try:
            return now + timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidTask(f"delay {delay!r} is too large") from None
    return now


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated task, ready to insert."""

    taskscript: str
    param: str
    priority: int
    queue: str
    run_at: datetime
    max_attempts: int | None
    timeout: int | None
    unique_key: str | None
    secret: str | None = field(default=None, repr=False)

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "taskscript": self.taskscript,
            "param": self.param,
            "priority": self.priority,
            "queue": self.queue,
            "ctime": now,
            "run_at": self.run_at,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "unique_key": self.unique_key,
            "active_key": self.unique_key,
            "secret": self.secret,
        }


def build_spec(
    taskscript: object,
    param: Any = None,
    *,
    priority: object = 0,
    queue: object = "default",
    run_at: object = None,
    delay: object = None,
    max_attempts: object = None,
    timeout: object = None,
    unique_key: object = None,
    secret: Any = None,
    now: datetime,
) -> TaskSpec:
    """Validate everything ``add()`` takes; the error names the first culprit."""
    if unique_key is not None:
        if not isinstance(unique_key, str) or not unique_key:
            raise InvalidTask(f"unique_key must be a non-empty string, got {unique_key!r}")
        if len(unique_key) > MAX_UNIQUE_KEY_LEN:
            raise InvalidTask(f"unique_key longer than {MAX_UNIQUE_KEY_LEN} characters")
        try:
            unique_key.encode("utf-8")
        except UnicodeEncodeError:  # was a UnicodeEncodeError from the driver, not InvalidTask
            raise InvalidTask("unique_key holds a lone surrogate, which is not valid UTF-8"
                              ) from None
    return TaskSpec(
        taskscript=check_taskscript(taskscript),
        param=serialize_param(param),
        priority=_int_field("priority", priority),
        queue=check_queue(queue),
        run_at=resolve_run_at(run_at, delay, now),
        max_attempts=None if max_attempts is None
        else _int_field("max_attempts", max_attempts, minimum=1),
        timeout=None if timeout is None else _int_field("timeout", timeout, minimum=1),
        unique_key=unique_key,
        secret=None if secret is None else serialize_secret(secret),
    )


_SPEC_KEYS = frozenset(
    {"taskscript", "param", "priority", "queue", "run_at", "delay", "max_attempts", "timeout",
     "unique_key", "secret"}
)


def spec_from_item(item: object, now: datetime, index: int) -> TaskSpec:
    """One element of ``add_many()``: a TaskSpec, a mapping of add() arguments, or a tuple."""
    try:
        if type(item) is tuple and 1 <= len(item) <= 2:  # the common case first: no ABC check
            return build_spec(*item, now=now)
        if isinstance(item, TaskSpec):
            return item
        if isinstance(item, Mapping):
            if not _SPEC_KEYS.issuperset(item):
                unknown = set(item) - _SPEC_KEYS
                raise InvalidTask(f"unknown key(s) {sorted(unknown, key=repr)}")
            if "taskscript" not in item:
                raise InvalidTask("missing 'taskscript'")
            get = item.get
            return build_spec(item["taskscript"], get("param"), priority=get("priority", 0),
                              queue=get("queue", "default"), run_at=get("run_at"),
                              delay=get("delay"), max_attempts=get("max_attempts"),
                              timeout=get("timeout"), unique_key=get("unique_key"),
                              secret=get("secret"), now=now)
        if isinstance(item, tuple | list) and 1 <= len(item) <= 2:
            return build_spec(*item, now=now)
        raise InvalidTask(f"expected a mapping or (taskscript, param), got {type(item).__name__}")
    except InvalidTask as exc:
        raise InvalidTask(f"add_many item {index}: {exc}") from None
