"""Hand-over between ticks: no shard number sits idle while a tick could not start it.

A tick does not start a shard that still holds its guard (guard.py). Without more, a shard
whose last task crossed its ``max_seconds`` and finished just after that tick exits, and its
shard number waits for the tick after, a whole interval, while its rows are due.

So a budgeted shard of a mission entry, when its budget is spent, looks at the entry's newest
run in ``cronqueue_runs``: if a tick fired since it last looked (a tick that found it running,
since it held its guard all along), it takes that tick's budget over — it keeps claiming until
``fired_at + max_seconds`` — and looks again then. To close the window between its last look
and the release of its guard (a tick that found the guard still held but whose run the shard
did not see yet), it looks once more after releasing the guard and, if a tick came in that
window, takes the guard again (if a shard that tick started was faster, that one works).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from cronqueue.store.runs import Runs

log = logging.getLogger("cronqueue.handover")


class Handover:
    """The ticks of ``entry`` a running shard covers: ``newer()`` returns the budget (seconds
    from now) of a tick fired since the previous look, else None."""

    def __init__(self, runs: Runs, entry: str, max_seconds: float,
                 clock: Callable[[], datetime]) -> None:
        self.runs = runs
        self.entry = entry
        self.max_seconds = max_seconds
        self.clock = clock
        self.seen = runs.newest(entry)  # our own tick (or none: started by hand)

    def newer(self) -> tuple[datetime, float] | None:
        """(scheduled time, seconds of its budget left) of a tick fired since the last look."""
        run = self.runs.newest(self.entry)
        if run is None or run == self.seen:
            return None
        self.seen = run
        scheduled, fired = run
        left = (fired - self.clock()).total_seconds() + self.max_seconds
        return scheduled, min(left, self.max_seconds)  # a mission clock ahead gives no more
