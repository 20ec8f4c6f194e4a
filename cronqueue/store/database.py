"""``Store``: one engine's per-table objects, and the few questions about the database as a
whole (its schema, the server's uptime and id step). Callers use the tables directly:
``store.tasks``, ``store.outcomes``, ``store.runs``, ``store.workers``, ``store.pauses``."""

from __future__ import annotations

from sqlalchemy import Engine, inspect

from cronqueue.store.backends import backend_for
from cronqueue.store.engine import transaction
from cronqueue.store.outcomes import Outcomes
from cronqueue.store.pauses import Pauses
from cronqueue.store.runs import Runs
from cronqueue.store.tasks import Tasks
from cronqueue.store.workers import Workers


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backend = backend_for(engine)
        self.tasks = Tasks(engine)
        self.outcomes = Outcomes(engine)
        self.runs = Runs(engine, self.tasks)
        self.workers = Workers(engine)
        self.pauses = Pauses(engine)

    def init_db(self) -> None:
        """Create the tables, or bring them to this version's schema (``store/migrate.py``,
        imported here: a shard or a tick never migrates)."""
        from cronqueue.store.migrate import upgrade

        upgrade(self.engine)

    def has_schema(self) -> bool:
        return transaction(self.engine, lambda conn: inspect(conn).has_table("queue"),
                           readonly=True)

    def server_uptime(self) -> float | None:
        """Seconds since the database server started; None for an embedded database."""
        if not self.backend.server:
            return None
        return transaction(self.engine, self.backend.server_uptime, readonly=True)

    def auto_increment_step(self) -> int:
        """``auto_increment_increment`` (Galera and multi-primary set it > 1); 1 on SQLite."""
        if not self.backend.server:
            return 1
        return transaction(self.engine, self.backend.auto_increment_step, readonly=True)
