"""Where a call's time goes, from outside cronqueue: SQLAlchemy's engine events time every
statement between the hand-over to the driver and its return, and the dialect's commit; the
rest of the call is the client (cronqueue and SQLAlchemy in this process). Optionally keeps
the statements and their parameters (the backlog section explains the claim's)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event


class DriverClock:
    """``with DriverClock(engine) as clock: ...``: ``clock.seconds`` is the time spent in the
    driver and the server (execute and commit, the round trips and the server's work,
    fsync included); ``clock.statements`` the (SQL, parameters) sent, if ``keep``."""

    def __init__(self, engine: Engine, keep: bool = False) -> None:
        self.engine = engine
        self.keep = keep
        self.seconds = 0.0
        self.statements: list[tuple[str, Any]] = []
        self._began = 0.0
        self._dialect = engine.dialect
        self._commit = self._dialect.do_commit

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                context: Any, executemany: bool) -> None:
        if self.keep:
            self.statements.append((statement, parameters))
        self._began = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any,
               context: Any, executemany: bool) -> None:
        self.seconds += time.perf_counter() - self._began

    def _timed_commit(self, dbapi_connection: Any) -> None:
        began = time.perf_counter()
        try:
            self._commit(dbapi_connection)
        finally:
            self.seconds += time.perf_counter() - began

    def __enter__(self) -> DriverClock:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        self._dialect.do_commit = self._timed_commit  # type: ignore[method-assign]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        self._dialect.do_commit = self._commit  # type: ignore[method-assign]
