"""The retry policy: how many attempts a task gets and how long a retry waits.

Built from the ``[worker]`` settings in one place, ``WorkerConfig.retry`` (keys, environment
variables and defaults stay the config's: ``max_attempts`` 3, ``backoff`` 10 s,
``backoff_max`` 3600 s). A task's own ``max_attempts`` (the column; NULL = the policy's) wins.

The decision it serves — retry or fail after an attempt that did not succeed — is taken in one
place, ``cronqueue.states.after_failure``, by the shard (a run that failed) and by the rescue
(a run whose shard was lost) alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_MAX_EXPONENT = 64  # 10.0 * 2 ** 1100 overflows a float; 2 ** 64 is past any cap anyway


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3  # attempts a task gets when its row says NULL
    backoff: float = 10.0  # the first retry's delay, seconds; doubles per attempt
    backoff_max: float = 3600.0  # the cap of that delay (before jitter)

    def attempts_for(self, task_max_attempts: int | None) -> int:
        """The attempts a task gets: its own ``max_attempts``, else the policy's."""
        return task_max_attempts or self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds before the retry that follows attempt number ``attempt`` (1 = the first
        run): ``backoff`` doubling per attempt, capped at ``backoff_max``, plus 0-25 % jitter
        so that a burst of failures does not come back all at once."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        delay = min(self.backoff_max, self.backoff * 2 ** exponent)
        return float(delay * (1 + random.random() / 4))

    def retries(self, attempt: int, task_max_attempts: int | None, *,
                permanent: bool = False) -> bool:
        """After attempt number ``attempt`` did not succeed: is there another? Not for a
        permanent failure (one that no retry can mend), nor once ``attempt`` reaches the
        task's attempts."""
        return not permanent and attempt < self.attempts_for(task_max_attempts)
