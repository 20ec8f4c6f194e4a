"""Helpers for task scripts written in Python::

    from cronqueue.task import args, task_id, attempt

    p = args()          # the decoded param (argv[1] is its JSON text)

Deliberately light: importing it loads neither SQLAlchemy nor a database driver.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def args(argv: list[str] | None = None) -> Any:
    """The task's param, decoded from the JSON text in ``argv[1]`` (None if absent)."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2:
        return None
    return json.loads(argv[1])


_NO_SECRET = object()
_secret: Any = _NO_SECRET


def secret() -> Any:
    """The task's secret (``Queue.add(..., secret=...)``), read once from stdin; None if the
    task has none."""
    global _secret
    if _secret is _NO_SECRET:
        data = sys.stdin.read() if sys.stdin is not None and not sys.stdin.isatty() else ""
        _secret = json.loads(data) if data else None
    return _secret


def task_id() -> int | None:
    value = os.environ.get("CRONQUEUE_TASK_ID")
    return int(value) if value else None


def attempt() -> int:
    """1 on the first run, 2 on the first retry, ..."""
    return int(os.environ.get("CRONQUEUE_ATTEMPT", "1"))


def queue() -> str:
    return os.environ.get("CRONQUEUE_QUEUE", "default")
