"""cronqueue: a cron-driven, database-backed batch queue. ``from cronqueue import Queue``.

``Queue`` is imported lazily so that task scripts doing ``from cronqueue.task import args``
do not pay for SQLAlchemy at every start.
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
from cronqueue.model import Status, Task

if TYPE_CHECKING:
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
    raise AttributeError(f"module 'cronqueue' has no attribute {name!r}")
