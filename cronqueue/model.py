"""The task model: a frozen dataclass read from a ``queue`` row, and the stable status codes."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any


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

    @property
    def finished(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELLED)


@dataclass(frozen=True, slots=True)
class Task:
    """One row of the ``queue`` table. Attribute names are the column names."""

    id: int
    queue: str
    taskscript: str
    param: str
    status: Status
    priority: int
    ctime: datetime
    run_at: datetime
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

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Task:
        # Every column is required, except the optional ones added later (``secret``).
        values = dict(row)
        for name, default in _TASK_DEFAULTS.items():
            values.setdefault(name, default)
        values["status"] = Status(values["status"])
        return cls(**{name: values[name] for name in _TASK_FIELDS})

    @property
    def args(self) -> Any:
        """The decoded param (raises ``ValueError`` for a hand-inserted row with bad JSON)."""
        return json.loads(self.param)

    def as_dict(self) -> dict[str, Any]:
        out = _as_dict(self)
        out["secret"] = None if self.secret is None else "***"
        return out


_TASK_FIELDS = tuple(f.name for f in fields(Task))
_TASK_DEFAULTS = {f.name: f.default for f in fields(Task) if f.default is not MISSING}


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
        value = getattr(obj, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Status):
            value = value.name.lower()
        out[f.name] = value
    return out
