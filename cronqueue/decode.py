"""Decoding one ``queue`` row: every value is untrusted input.

A row may have been written by hand, by another language, or by an attacker with INSERT
rights, and the databases accept a lot: on SQLite any column may hold text, a number or a
BLOB (invalid UTF-8 included), and ``DATETIME`` text that is not a time; MariaDB's default
``sql_mode`` accepts ``'0000-00-00 00:00:00'`` and integers up to the INT maximum. Each
converter here returns a usable value of the column's Python type and, when the stored value
is not one, records a one-line reason naming the column in ``problems`` (and the column in
``problems.columns``, so that code can ask which columns were bad without reading the
reasons' text). A row with problems is never run: the shard fails it by id with the reasons
(``InvalidRow``); the read commands show it with the reasons instead of raising.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

# What the database's integer columns hold (the one place these bounds are written).
INT_MIN = -(2**31)  # INTEGER
INT_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1  # BIGINT: ids, pid start times
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOW = 60  # characters of a bad value quoted in a reason


class Problems(list[str]):
    """The reasons a row cannot be used as stored (a list of one-line reasons, each naming
    its column) and, in ``columns``, the names of the columns they are about."""

    def __init__(self) -> None:
        super().__init__()
        self.columns: set[str] = set()

    def add(self, column: str, reason: str) -> None:
        self.append(reason)
        self.columns.add(column)


def show(value: object) -> str:
    """A bad value for a reason: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= _SHOW else text[:_SHOW] + "..."


def text(name: str, value: object, problems: Problems) -> str:
    """A NOT NULL text column."""
    out = optional_text(name, value, problems)
    if out is None:
        problems.add(name, f"{name} is NULL")
        return ""
    return out


def optional_text(name: str, value: object, problems: Problems) -> str | None:
    """A text column. A BLOB holding UTF-8 is that text; other bytes are a problem (the
    SQLite driver hands invalid UTF-8 text over with surrogate escapes, see db.py), and the
    value returned is printable, with replacement characters."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.isascii():
            return value
        if _SURROGATE.search(value) is None:
            return value
        raw = value.encode("utf-8", "surrogateescape") if _escapes_only(value) else None
        problems.add(name, f"{name} is not valid UTF-8"
                        + (f" ({show(raw)})" if raw is not None else ""))
        return (raw.decode("utf-8", "replace") if raw is not None
                else _SURROGATE.sub("\ufffd", value))
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            problems.add(name, f"{name} is not valid UTF-8 ({show(data)})")
            return data.decode("utf-8", "replace")
    problems.add(name, f"{name} is not text: {show(value)}")
    return str(value)


def _escapes_only(value: str) -> bool:
    return all("\udc80" <= c <= "\udcff" for c in _SURROGATE.findall(value))


def integer(name: str, value: object, problems: Problems, *, low: int = INT_MIN,
            high: int = INT_MAX, default: int = 0) -> int:
    """A NOT NULL integer column, within ``low..high``."""
    out = optional_integer(name, value, problems, low=low, high=high)
    if out is None:
        if value is None:
            problems.add(name, f"{name} is NULL")
        return default
    return out


def optional_integer(name: str, value: object, problems: Problems, *, low: int = INT_MIN,
                     high: int = INT_MAX) -> int | None:
    """An integer column: None for NULL and (with a problem) for what is not an integer; an
    integer outside ``low..high`` is kept (shown as stored) with a problem. SQLite may hand
    back text, a REAL or a BLOB."""
    if value is None:
        return None
    if type(value) is int:
        number = value
    elif isinstance(value, int) and not isinstance(value, bool):
        number = int(value)  # an IntEnum member
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        problems.add(name, f"{name} is not an integer: {show(value)}")
        return None
    if not low <= number <= high:
        problems.add(name, f"{name} {number} is out of range ({low}..{high})")
    return number


def time(name: str, value: object, problems: Problems) -> datetime | None:
    """A UTC time column (naive UTC in the database). None, with a problem, for what is not
    a time: ``'0000-00-00 00:00:00'`` (MariaDB hands it over as text), ``'1'``,
    ``'2020-13-45 00:00:00'``, a number or a BLOB on SQLite."""
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            problems.add(name, f"{name} is not a valid time: {show(value)}")
            return None
    else:
        problems.add(name, f"{name} is not a valid time: {show(value)}")
        return None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        problems.add(name, f"{name} is out of range: {show(value)}")
        return None


def required_time(name: str, value: object, problems: Problems) -> datetime | None:
    out = time(name, value, problems)
    if value is None:
        problems.add(name, f"{name} is NULL")
    return out


def priority_key(row: dict[str, Any]) -> tuple[int, int, Any]:
    """Sort key of claim candidates merged from several queues: highest priority first, then
    oldest; a priority that is not an integer (text on SQLite) first, so that its row is
    failed at once instead of crashing the merge."""
    priority = row["priority"]
    if type(priority) is int:
        return (1, -priority, row["id"])
    return (0, 0, row["id"])
