"""``cronqueue_workers``: the shards alive now (or that died without deregistering) — what
``cronqueue workers`` shows, how a shard's heartbeat proves it alive and keeps its rows leased,
how a web application or an operator on another host asks a shard to stop — and the server's
named lock that keeps a shard from running twice across hosts (``shard/guard.py``).

A heartbeat also carries the running task's output tail when it grew (``LiveOutput``): the row's
``output`` then follows the task while it runs, for the dashboard, in the beat's own
transaction (no statement of its own, nothing when the output did not change)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Update, delete, select, update

from cronqueue.process.identity import Owner, owner_gone, pid_alive
from cronqueue.store.backends import backend_for
from cronqueue.store.engine import transaction
from cronqueue.store.outcomes import extend_lease
from cronqueue.store.rows import bind, fence
from cronqueue.store.schema import queue_table as q
from cronqueue.store.schema import workers_table as w


class LiveOutput(NamedTuple):
    """A running task's output tail as it stood at one moment (immutable: the shard's main
    thread publishes a new one, the heartbeat thread writes the one it reads)."""

    token: str  # the claim holding the task: the write is fenced by it
    task_id: int
    output: str  # what the row's ``output`` would be if the task ended now


@functools.cache
def _live_output() -> Update:
    """The output tail of a task still running under claim ``token``: never a row the claim no
    longer holds (rescued) nor one whose outcome is already written (its outcome's ``output``
    wins)."""
    return (update(q).where(q.c.id == bind("task_id", "id"), *fence())
            .values(output=bind("output")))


def worker_gone(row: Mapping[str, Any], lease: timedelta | None, *, me: Owner, now: datetime,
                alive: Callable[[int, int | None], bool] = pid_alive) -> bool:
    """Is the shard of a registered row gone? Its process, if it ran in our pid space, is
    dead; else its last heartbeat is more than ``lease`` old (None: leases not trusted now,
    so only a provably dead process counts). ``Queue.workers`` and the rescue both ask."""
    return owner_gone(row["host"], row["pid"], row["pid_start"],
                      row["heartbeat_at"] + lease if lease is not None else None,
                      me=me, now=now, alive=alive)


class Workers:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def register(self, **values: Any) -> int:
        def work(conn: Connection) -> int:
            key = conn.execute(w.insert(), values).inserted_primary_key
            assert key is not None
            return int(key[0])

        return transaction(self.engine, work)

    def heartbeat(self, worker_id: int, now: datetime, current_task: int | None,
                  tasks_done: int, *, token: str | None = None,
                  lease_until: datetime | None = None, live: LiveOutput | None = None) -> bool:
        """Record that the shard lives and extend the lease of the rows it holds (``token``),
        write ``live`` (the running task's output tail, fenced by its claim); returns whether
        it has been asked to stop."""
        beat = (update(w).where(w.c.id == worker_id)
                .values(heartbeat_at=now, current_task=current_task, tasks_done=tasks_done))
        asked = select(w.c.stop_requested).where(w.c.id == worker_id)

        def work(conn: Connection) -> bool:
            conn.execute(beat)
            if token is not None and lease_until is not None:
                extend_lease(conn, token, lease_until)
            if live is not None:  # after the lease: its rows are already locked by now
                conn.execute(_live_output(), {"token": live.token, "task_id": live.task_id,
                                              "output": live.output})
            return bool(conn.execute(asked).scalar())

        return transaction(self.engine, work)

    def forget(self, ids: Sequence[int]) -> None:
        if ids:
            stmt = delete(w).where(w.c.id.in_(ids))
            transaction(self.engine, lambda conn: conn.execute(stmt))

    def rows(self) -> list[dict[str, Any]]:
        stmt = select(w).order_by(w.c.entry, w.c.shard, w.c.id)
        return transaction(
            self.engine,
            lambda conn: [dict(r) for r in conn.execute(stmt).mappings()],
            readonly=True)

    def request_stop(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        stmt = update(w).where(w.c.id.in_(ids)).values(stop_requested=1)
        return transaction(self.engine, lambda conn: conn.execute(stmt).rowcount)


# -- the server's named lock of a shard -------------------------------------------------------

def lock_name(engine: Engine, entry: str, shard: int) -> str:
    """A shard's named lock: names are server-wide and short (``max_lock_name``), so the
    host and database name are hashed in."""
    key = f"{engine.url.host}:{engine.url.database}:{entry}:{shard}"
    name = "cronqueue:" + hashlib.sha256(key.encode()).hexdigest()[:40]
    assert len(name) <= backend_for(engine).max_lock_name
    return name


def lock_held(engine: Engine, name: str) -> bool:
    """Does any connection hold the named lock? False on a backend without named locks."""
    backend = backend_for(engine)
    if not backend.named_locks:
        return False
    with engine.connect() as conn:
        return backend.lock_held(conn, name)


class ServerLock:
    """A named lock held by a connection kept open for the holder's life: the server frees it
    the moment that connection dies (the holder killed, the server restarted). On a backend
    without named locks (``available`` false) there is none to take: ``acquire`` and
    ``verify`` say True."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.backend = backend_for(engine)
        self._conn: Connection | None = None

    @property
    def available(self) -> bool:
        return self.backend.named_locks

    @property
    def held(self) -> bool:
        return self._conn is not None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another connection holds it."""
        if not self.available:
            return True
        conn = self.engine.connect()
        try:
            got = self.backend.lock_acquire(conn, self.name)
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def verify(self) -> bool:
        """Do we still hold it? A database restart drops it with the connection: take it
        again, unless another holder got it meanwhile (False)."""
        if self._conn is None:
            return True
        try:
            if self.backend.lock_mine(self._conn, self.name):
                return True
        except Exception:  # the connection died with the server: reconnect below
            with contextlib.suppress(Exception):
                self._conn.invalidate()
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = None
        return self.acquire()

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the server drops it with the connection
                self.backend.lock_release(self._conn, self.name)
            self._conn.close()
            self._conn = None
