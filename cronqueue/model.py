"""The task model: a frozen dataclass read from a ``queue`` row, and the stable status codes."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from cronqueue import decode


class Status(enum.IntEnum):
    """Stored status codes. Stable: never renumber (other languages read them)."""

    PENDING = 0
    DONE = 1
    RUNNING = 2
    FAILED = 3
    CANCELLED = 4

    @classmethod
    def parse(cls, text: str) -> Status:
        """Accept a name (``failed``) or a code (``3``)."""
        if text.strip().lstrip("-").isdigit():
            return cls(int(text))
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown status {text!r} (one of {names})") from None

    @classmethod
    def of(cls, value: int, label: str | None = None) -> Status:
        """The member for a stored code, or, for a code outside 0..4 (a hand-written row),
        a stand-in that is no member: ``int()`` and ``str()`` give the stored code, ``name``
        is ``UNKNOWN(7)``, ``x in Status`` is false, and it is never ``finished``."""
        try:
            return cls(value)
        except ValueError:
            pass
        unknown = int.__new__(cls, value)
        unknown._name_ = f"UNKNOWN({label or value})"
        unknown._value_ = value
        return unknown

    @property
    def finished(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELLED)


def status_of(value: object) -> Status:
    """The status of a stored value, whatever it holds: a member, or a stand-in named
    ``UNKNOWN(7)`` (``UNKNOWN('x')`` for text; its code is then -1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Status.of(value)
    return Status.of(-1, decode.show(value))


def status_problem(value: object) -> str | None:
    """Why a stored status is none of the codes 0..4, or None when it is one. No command
    moves such a row (shards claim 0, the rescue takes 2, purge 1, 3 and 4): it stays as it
    is, shown as ``unknown(...)`` with this reason, until an operator rewrites it."""
    if value is None:
        return "status is NULL"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"status is not an integer: {decode.show(value)}"
    try:
        Status(int(value))  # (a stand-in passed back is no member either)
    except ValueError:
        return f"status {int(value)} is out of range ({min(Status)}..{max(Status)})"
    return None


def status_name(value: object) -> str:
    """A stored status as the commands name it: ``pending`` ... ``cancelled``, ``unknown(7)``
    for a code outside 0..4, ``unknown('x')`` for a value that is not an integer (shown
    as stored: ``unknown('PENDING')`` is not ``pending``)."""
    status = status_of(value)
    if status_problem(value) is None:
        return status.name.lower()
    return "unknown" + status.name.removeprefix("UNKNOWN")


@dataclass(frozen=True, slots=True)
class Task:
    """One row of the ``queue`` table. Attribute names are the column names.

    Built from any row, whatever it holds (see decode.py): a value that is not of its
    column's type is replaced (None for times, 0 for integers, replacement characters in
    text) and named in ``problem``, its column in ``bad_columns``. A task with a ``problem``
    is never run: the shard fails it with ``InvalidRow: <problem>``."""

    id: int
    queue: str
    taskscript: str
    param: str
    status: Status
    priority: int
    ctime: datetime | None  # None only for a hand-written value that is not a time
    run_at: datetime | None
    attempts: int
    max_attempts: int | None
    timeout: int | None
    unique_key: str | None
    active_key: str | None
    worker_host: str | None
    worker_pid: int | None
    worker_pid_start: int | None
    claim_token: str | None
    lease_until: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str | None
    output: str | None
    secret: str | None = field(default=None, repr=False)  # never shown: see as_dict()
    problem: str | None = None  # why the row cannot be run as stored (not a column)
    bad_columns: frozenset[str] = frozenset()  # the columns ``problem`` is about (not one)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Task:
        """Never raises for what a row holds. Every column is required, except the optional
        ones added later (``secret``)."""
        v = dict(row)
        p = decode.Problems()
        status = status_of(v["status"])
        if (bad_status := status_problem(v["status"])) is not None:
            p.add("status", bad_status)
        queue = decode.text("queue", v["queue"], p)
        if "\x00" in queue:  # (other odd names run: the log shows them as repr)
            p.add("queue", f"queue name {decode.show(queue)} holds a NUL byte, which the "
                  "script's environment cannot carry")
        return cls(
            id=v["id"],
            queue=queue,
            taskscript=decode.text("taskscript", v["taskscript"], p),
            param=decode.text("param", v["param"], p),
            status=status,
            priority=decode.integer("priority", v["priority"], p),
            ctime=decode.required_time("ctime", v["ctime"], p),
            run_at=decode.required_time("run_at", v["run_at"], p),
            # attempts + 1 must still fit (MariaDB refuses the start mark past INT_MAX).
            attempts=decode.integer("attempts", v["attempts"], p, low=0,
                                    high=decode.INT_MAX - 1),
            max_attempts=decode.optional_integer("max_attempts", v["max_attempts"], p, low=1),
            timeout=decode.optional_integer("timeout", v["timeout"], p, low=1),
            unique_key=decode.optional_text("unique_key", v["unique_key"], p),
            active_key=decode.optional_text("active_key", v["active_key"], p),
            worker_host=decode.optional_text("worker_host", v["worker_host"], p),
            worker_pid=decode.optional_integer("worker_pid", v["worker_pid"], p),
            worker_pid_start=decode.optional_integer("worker_pid_start", v["worker_pid_start"],
                                                     p, low=0, high=decode.BIGINT_MAX),
            claim_token=decode.optional_text("claim_token", v["claim_token"], p),
            lease_until=decode.time("lease_until", v["lease_until"], p),
            started_at=decode.time("started_at", v["started_at"], p),
            finished_at=decode.time("finished_at", v["finished_at"], p),
            exit_code=decode.optional_integer("exit_code", v["exit_code"], p),
            error=decode.optional_text("error", v["error"], p),
            output=decode.optional_text("output", v["output"], p),
            secret=decode.optional_text("secret", v.get("secret"), p),
            problem="; ".join(p) if p else None,  # evaluated last: after every converter
            bad_columns=frozenset(p.columns),
        )

    @property
    def args(self) -> Any:
        """The decoded param (raises ``ValueError`` for a hand-inserted row with bad JSON)."""
        return json.loads(self.param)

    def as_dict(self) -> dict[str, Any]:
        out = _as_dict(self)
        out["secret"] = None if self.secret is None else "***"
        return out


@dataclass(frozen=True, slots=True)
class Worker:
    """A running (or vanished) shard: one row of ``cronqueue_workers``."""

    id: int
    host: str
    pid: int
    pid_start: int | None
    entry: str | None
    shard: int
    total: int
    queues: str
    started_at: datetime
    heartbeat_at: datetime
    current_task: int | None
    tasks_done: int
    stop_requested: int
    alive: bool = True  # judged by the reader: pid check on its host, heartbeat age elsewhere

    @classmethod
    def from_row(cls, row: Mapping[Any, Any], alive: bool = True) -> Worker:
        values = {f.name: row[f.name] for f in fields(cls) if f.name != "alive"}
        return cls(**values, alive=alive)

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _as_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name == "bad_columns":
            continue  # ``problem`` names them, with the values
        value = getattr(obj, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Status):
            value = status_name(value)
        out[f.name] = value
    return out
