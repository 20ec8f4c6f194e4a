"""cronqueue: a cron-driven, database-backed batch queue. ``from cronqueue import Queue``.

``Queue``, ``Status`` and ``Task`` are imported lazily (on first use of the name) so that task
scripts doing ``from cronqueue.task import args`` pay neither for SQLAlchemy nor for the model
(dataclasses, enum, json) at every start: ``import cronqueue`` loads ``errors`` alone.
"""

from typing import TYPE_CHECKING, Any

from cronqueue.errors import (
    ConfigError,
    CronqueueError,
    DatabaseError,
    InvalidTask,
    InvalidTransition,
    ScriptError,
    TaskNotFound,
)

if TYPE_CHECKING:
    from cronqueue.model import Status, Task
    from cronqueue.queue import Queue

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "CronqueueError",
    "DatabaseError",
    "InvalidTask",
    "InvalidTransition",
    "Queue",
    "ScriptError",
    "Status",
    "Task",
    "TaskNotFound",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Queue":
        from cronqueue.queue import Queue

        return Queue
    if name in ("Status", "Task"):
        from cronqueue import model

        return getattr(model, name)
    raise AttributeError(f"module 'cronqueue' has no attribute {name!r}")
