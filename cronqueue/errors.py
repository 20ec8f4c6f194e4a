"""One exception root for the package, and the named causes stored on failed tasks."""

from __future__ import annotations


class CronqueueError(Exception):
    """Root of every exception cronqueue raises on purpose."""


class ConfigError(CronqueueError):
    """The configuration (file, flags, environment) is invalid; the message names the key."""


class InvalidTask(CronqueueError, ValueError):
    """Bad input to ``Queue.add()``: nothing was inserted. The message names the culprit."""


class TaskNotFound(CronqueueError, LookupError):
    """No task with that id."""


class InvalidTransition(CronqueueError):
    """The task is not in a state that allows the requested change (e.g. cancel a done task)."""


class DatabaseError(CronqueueError):
    """The database could not be reached or refused the operation (URL password redacted)."""


class ScriptError(CronqueueError):
    """A task script cannot be run: missing, outside task_dir, not permitted, no interpreter.

    ``permanent`` errors (refused paths, bad params) fail the task at once; the others (a
    script or interpreter not deployed yet) follow the normal retry policy.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


# -- Crash causes. Their class names are what the ``error`` column records. ------------------


class TaskFailure(CronqueueError):
    """Base of the reasons a task attempt did not succeed (stored as ``Name: detail``)."""

    def record(self) -> str:
        return f"{type(self).__name__}: {self}"


class ProcessExitError(TaskFailure):
    """The script exited with a non-zero status."""


class ProcessSignaledError(TaskFailure):
    """The script was killed by a signal it did not expect (not by our timeout)."""


class ProcessTimeoutError(TaskFailure):
    """The script ran past its timeout; its whole process group was killed."""


class ProcessInterruptedError(TaskFailure):
    """The shard was told to stop hard; the script was killed and the task returned."""


class ProcessMissingError(TaskFailure):
    """The shard that ran the task vanished (kill -9, reboot); found by the rescue."""


class ScriptNotRunnable(TaskFailure):
    """The script could not be started (missing, refused, interpreter absent, bad param)."""


class InvalidRow(TaskFailure):
    """The row holds values the shard cannot decode or use (written by hand: bad UTF-8, a
    time that is not one, an integer out of range); failed by id without running."""


class InternalError(TaskFailure):
    """Preparing or running the task raised an unexpected error: recorded under its name,
    the attempt is charged and the retry policy applies; the shard goes on."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of its message``: a failed step, for a log line or a report (the
    mission's steps, the rescue of one row)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
