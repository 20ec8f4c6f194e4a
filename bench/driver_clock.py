"""Where a call's time goes, from outside cronqueue: the time spent in the driver and the
server, the rest of the call being the client (cronqueue and SQLAlchemy in this process).

Two clocks:

* :class:`DbapiClock` times inside the DBAPI (sqlite3, PyMySQL): statements, BEGIN, commit,
  rollback and ping, with no SQLAlchemy event. It is the one that times cronqueue's calls:
  ``Queue.add()`` of a plain task takes a direct path on a pooled driver connection that it
  turns off when the engine has statement listeners or ``echo`` (cronqueue/store/enqueue.py,
  ``Inserter.add_one``), so a clock made of engine events would time the general path, which
  no user's ``Queue()`` runs. The split is still measured in a pass of its own: the wrappers
  cost a little per call, so the rates are timed without any clock.
* :class:`DriverClock` times with SQLAlchemy's engine events (``before/after_cursor_execute``)
  and can keep the statements and their parameters: the backlog section captures the claim's
  this way (the claim takes the same path with or without listeners). Never use it to time
  ``add()``: its listeners switch add() to the general path.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event

# The dialect's calls that wait on the driver and the server besides statements: the commit,
# the pool's rollback when a connection is returned, and its liveness ping.
_ROUND_TRIPS = ("do_commit", "do_rollback", "do_ping")


def statement_listeners(engine: Engine) -> bool:
    """Does anything listen to the engine's statements, or echo them? (The condition under
    which cronqueue's add() leaves its direct path: enqueue.py ``_has_statement_listeners``.)
    """
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute or engine.echo)


class DbapiClock:
    """Driver + server time measured inside the DBAPI, without engine events.

    ``clock.attach(engine)`` before the engine's first connection (PyMySQL: its classes are
    patched while attached, whatever the engine; sqlite3: the engine's connections are made
    with timed subclasses), ``with clock: ...`` around what is timed, ``clock.detach()`` at
    the end. ``seconds``: time inside the driver's execute/executemany (statements, BEGIN
    included), commit, rollback and ping, the outermost call only; ``count``: statements;
    ``commits``: commits."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0
        self.commits = 0
        self._running = False
        self._depth = 0  # executemany calls execute: the outer call is timed
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> DbapiClock:
        self._running = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._running = False

    def _timed(self, method: Callable[..., Any], kind: str) -> Callable[..., Any]:
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not clock._running or clock._depth:
                return method(*args, **kwargs)
            clock._depth += 1
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - began
                clock._depth -= 1
                if kind == "statement":
                    clock.count += 1
                elif kind == "commit":
                    clock.commits += 1

        return timed

    def attach(self, engine: Engine) -> None:
        if self._undo:
            raise RuntimeError("DbapiClock is attached already")
        driver = engine.dialect.driver
        if driver == "pymysql":
            self._patch_pymysql()
        elif driver == "pysqlite":
            self._hook_sqlite(engine)
        else:
            raise ValueError(f"DbapiClock: no hook for the {driver} driver")

    def detach(self) -> None:
        self._running = False
        while self._undo:
            self._undo.pop()()

    def _patch(self, cls: type[Any], kinds: dict[str, str]) -> None:
        for name, kind in kinds.items():
            original = cls.__dict__[name]
            setattr(cls, name, self._timed(original, kind))
            self._undo.append(functools.partial(setattr, cls, name, original))

    def _patch_pymysql(self) -> None:
        """PyMySQL is pure Python: its methods are wrapped on the classes themselves (cronqueue
        connects with a subclass of ``Connection``, pymysql_tls.py, which inherits them)."""
        from pymysql.connections import Connection
        from pymysql.cursors import Cursor

        self._patch(Cursor, {"execute": "statement", "executemany": "statement"})
        self._patch(Connection, {"commit": "commit", "rollback": "other", "ping": "other",
                                 "begin": "other"})

    def _hook_sqlite(self, engine: Engine) -> None:
        """sqlite3's types are C types: the engine's new connections are made with timed
        subclasses (a ``do_connect`` listener: a dialect event, not a statement listener).
        Connections already in the pool are dropped first."""
        timed = self._timed

        class TimedCursor(sqlite3.Cursor):
            execute = timed(sqlite3.Cursor.execute, "statement")
            executemany = timed(sqlite3.Cursor.executemany, "statement")

        class TimedConnection(sqlite3.Connection):
            # cronqueue's BEGIN IMMEDIATE goes through Connection.execute (sqlite.py do_begin)
            execute = timed(sqlite3.Connection.execute, "statement")
            commit = timed(sqlite3.Connection.commit, "commit")
            rollback = timed(sqlite3.Connection.rollback, "other")

            def cursor(self, factory: Any = TimedCursor) -> Any:
                return super().cursor(factory)

        def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
            return sqlite3.connect(*cargs, **{**cparams, "factory": TimedConnection})

        engine.dispose()
        event.listen(engine, "do_connect", connect)
        self._undo.append(lambda: event.remove(engine, "do_connect", connect))


class DriverClock:
    """``with DriverClock(engine) as clock: ...``: ``clock.seconds`` is the time spent in the
    driver and the server (statements, commit, rollback, ping: the round trips and the
    server's work, fsync included); ``clock.count`` the statements executed;
    ``clock.statements`` the (SQL, parameters) sent, if ``keep``. It attaches statement
    listeners: add() is then timed on its general path (see the module's docstring)."""

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
