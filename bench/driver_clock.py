"""Where a call's time goes, from outside cronqueue: SQLAlchemy's engine events time every
statement between the hand-over to the driver and its return, and the dialect's commit,
rollback and ping are timed too; the rest of the call is the client (cronqueue and SQLAlchemy
in this process). Optionally keeps the statements and their parameters (the backlog section
explains the claim's)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event

# The dialect's calls that wait on the driver and the server besides statements: the commit,
# the pool's rollback when a connection is returned, and its liveness ping.
_ROUND_TRIPS = ("do_commit", "do_rollback", "do_ping")


class DriverClock:
    """``with DriverClock(engine) as clock: ...``: ``clock.seconds`` is the time spent in the
    driver and the server (statements, commit, rollback, ping: the round trips and the
    server's work, fsync included); ``clock.count`` the statements executed;
    ``clock.statements`` the (SQL, parameters) sent, if ``keep``."""

    def __init__(self, engine: Engine, keep: bool = False) -> None:
        self.engine = engine
        self.keep = keep
        self.seconds = 0.0
        self.count = 0
        self.statements: list[tuple[str, Any]] = []
        self._began = 0.0
        self._dialect = engine.dialect
        self._wrapped = {name: getattr(self._dialect, name) for name in _ROUND_TRIPS}
        self._own = {name for name in _ROUND_TRIPS if name in vars(self._dialect)}

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                context: Any, executemany: bool) -> None:
        self.count += 1
        if self.keep:
            self.statements.append((statement, parameters))
        self._began = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any,
               context: Any, executemany: bool) -> None:
        self.seconds += time.perf_counter() - self._began

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        return timed

    def __enter__(self) -> DriverClock:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        for name, method in self._wrapped.items():
            setattr(self._dialect, name, self._timed(method))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        for name, method in self._wrapped.items():
            if name in self._own:
                setattr(self._dialect, name, method)
            else:  # back to the class's method
                delattr(self._dialect, name)
