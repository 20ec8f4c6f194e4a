"""``Queue``: the API an application uses to enqueue and inspect tasks."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:  # sqlalchemy.orm is a heavy import the queue does not need at run time
    from sqlalchemy.orm import Session

from cronqueue.config import MISSION_NAME_RE, Config, describe, load_config
from cronqueue.errors import CronqueueError, InvalidTask
from cronqueue.model import Status, Task, Worker
from cronqueue.process.identity import Owner
from cronqueue.shard.proof import signal_shard
from cronqueue.spec import build_spec, check_queue, spec_from_item
from cronqueue.store.database import Store
from cronqueue.store.engine import make_engine
from cronqueue.store.pauses import MAX_REASON, Pause
from cronqueue.store.workers import worker_gone

log = logging.getLogger("cronqueue.queue")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Queue:
    """A handle on one cronqueue database.

    Without ``config=``, the configuration is looked up as the command line does
    (``cronqueue.config.layers``). The config file: ``config_file``, else the file
    ``CRONQUEUE_CONFIG`` names, else ``cronqueue.toml`` in the working directory if there is
    one, else none; a file named by either must exist. Each setting: the argument (``url``,
    ``options``: any config key such as ``task_dir``, ``log_dir``, ``timeout``,
    ``max_attempts``), else its ``CRONQUEUE_*`` variable if it has one (``CRONQUEUE_DB_URL``,
    ``_TASK_DIR``, ``_LOG_DIR``, ``_BATCH``, ``_PYTHON_FORK``), else the file, else the
    default. Without any of them the database is ``sqlite:///cronqueue.db``: a file in the
    working directory, created on first use. One INFO line on the ``cronqueue.queue`` logger
    says which file was read and how it was found, which database (password hidden) and from
    which layer, and when the default database file does not exist yet. With ``config=`` a
    ready :class:`Config` (``url`` still wins), nothing is looked up.
    The engine is created on first use, in the process that uses it.
    """

    def __init__(self, url: str | None = None, *, config: Config | None = None,
                 config_file: str | None = None, clock: Callable[[], datetime] = _utcnow,
                 **options: Any) -> None:
        if config is None:
            config = load_config(config_file, db_url=url, **options)
            log.info("%s", describe(config))
        elif url is not None:
            config = replace(config, db_url=url).validate()
        self.config = config
        self.clock = clock
        self._engine: Engine | None = None
        self._store: Store | None = None
        self._pid = 0

    @property
    def url(self) -> str:
        """The database URL with its password hidden."""
        return self.config.safe_db_url

    @property
    def store(self) -> Store:
        """The database's tables (``store.tasks``, ``store.workers``...), on an engine of
        this process."""
        if self._store is None or self._pid != os.getpid():
            # A fork must not reuse the parent's connections: start a fresh engine.
            if self._engine is not None and self._pid != os.getpid():
                self._engine.dispose(close=False)
            self._engine = make_engine(self.config.db_url)
            self._store = Store(self._engine)
            self._pid = os.getpid()
        return self._store

    @property
    def engine(self) -> Engine:
        return self.store.engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self._engine = self._store = None

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def init_db(self) -> None:
        """Create the tables, or bring an existing database to this version's schema: the
        pending migrations, as ``cronqueue migrate`` runs them (a no-op when up to date)."""
        self.store.init_db()

    # -- enqueue ------------------------------------------------------------------------------

    def add(self, taskscript: str, param: Any = None, *, priority: int = 0,
            queue: str = "default", run_at: datetime | None = None,
            delay: float | timedelta | None = None, max_attempts: int | None = None,
            timeout: int | None = None, unique_key: str | None = None,
            secret: Any = None, connection: Connection | Session | None = None) -> int:
        """Enqueue one task and return its id. Raises ``InvalidTask`` (nothing inserted) on bad
        input. ``max_attempts``/``timeout`` left as None follow the worker's configuration.
        With ``unique_key``, while a task with that key is pending or running its id is
        returned instead. With ``connection``, the row is written in the caller's transaction.
        ``secret`` (any JSON value, up to 8 MiB) reaches the script on stdin instead of argv:
        for credentials, which argv would show in ``ps``, and for data too large for argv.
        """
        now = self.clock()
        spec = build_spec(taskscript, param, priority=priority, queue=queue, run_at=run_at,
                          delay=delay, max_attempts=max_attempts, timeout=timeout,
                          unique_key=unique_key, secret=secret, now=now)
        with self._schema_named():
            store = self.store
            if connection is None:
                return store.tasks.inserter.add_one(store.engine, spec, now)
            return store.tasks.add([spec], now, connection)[0]

    def add_many(self, specs: Iterable[Any], *,
                 connection: Connection | Session | None = None) -> list[int]:
        """Enqueue many tasks in one transaction (batched round trips); ids in input order.
        Each item is a mapping of ``add()`` arguments or a ``(taskscript, param)`` tuple. All
        items are validated first: one bad item raises ``InvalidTask`` and nothing is inserted.
        """
        now = self.clock()
        built = [spec_from_item(item, now, i) for i, item in enumerate(specs)]
        if not built:
            return []
        with self._schema_named():
            return self.store.tasks.add(built, now, connection)

    @contextlib.contextmanager
    def _schema_named(self) -> Iterator[None]:
        """A write that failed on a column or table a database behind this cronqueue lacks
        raises ``SchemaVersionError`` naming ``cronqueue migrate``, not the SQL error."""
        try:
            yield
        except (CronqueueError, DBAPIError) as exc:
            from cronqueue.store.migrate import explain_failed_write

            explain_failed_write(self.engine, exc)
            raise

    # -- shards and the schedule (what a web application can show and control) ---------------

    def workers(self) -> list[Worker]:
        """Registered shards on every host, each judged alive (pid check on this host,
        heartbeat age elsewhere) or not."""
        me = Owner.me()
        now = self.clock()
        lease = timedelta(seconds=self.config.worker.lease)
        return [Worker.from_row(row, alive=not worker_gone(row, lease, me=me, now=now))
                for row in self.store.workers.rows()]

    def stop_workers(self, ids: Iterable[int] | None = None, *, entry: str | None = None,
                     shard: int | None = None) -> list[StoppedWorker]:
        """Ask shards to stop gracefully (finish the current task, release the rest): by id,
        or by mission entry (and shard index), or all when nothing is given. Works across
        hosts through the database (seen within ``worker.heartbeat`` seconds). A process on
        this host also gets SIGTERM at once, but only if it proves to be that shard (see
        shardproof.py): a row naming an unrelated pid gets it no signal. Returns the shards
        asked, each with ``signalled`` and, when it was not, ``no_signal_reason``."""
        wanted = set(ids) if ids is not None else None
        chosen = [w for w in self.workers() if w.alive
                  and (wanted is None or w.id in wanted)
                  and (entry is None or w.entry == entry)
                  and (shard is None or w.shard == shard)]
        self.store.workers.request_stop([w.id for w in chosen])
        here = Owner.me()
        return [StoppedWorker(**{f.name: getattr(w, f.name) for f in fields(Worker)},
                              no_signal_reason=self._signal_stop(w, here))
                for w in chosen]

    def _signal_stop(self, w: Worker, here: Owner) -> str | None:
        """SIGTERM to the shard of row ``w`` if it proves to be here; None if sent, else why
        not."""
        if not here.same_host(w.host):
            return "a process on another host"
        if signal_shard(self.config.log_dir, self.config.db_url, w.id, w.pid, w.pid_start):
            return None
        return f"pid {w.pid} did not prove to be that shard here, so no signal"

    def schedule(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """The mission entries of the configuration: next runs, last run and outcome, and the
        pause in force (``paused``: None, or since, until, by, reason)."""
        from cronqueue.mission.tick import overview

        now = now or self.clock()
        return overview(self.config, self.store.runs, now,
                        paused=self.store.pauses.active("entry", now))

    # -- pause and resume ---------------------------------------------------------------------

    def pause(self, queue: str, until: datetime | None = None, *, reason: str = "",
              by: str | None = None) -> Pause:
        """Pause a queue: shards claim none of its tasks until ``resume(queue)`` or until
        ``until`` passes (an aware datetime; None: until resumed). Tasks running now finish;
        ``add()`` still enqueues. Any well-formed name may be paused (a queue exists by its name
        only). ``by``: who (default ``user@host``). Pausing a paused queue sets its end, author
        and reason anew. Raises ``InvalidTask`` on bad input."""
        return self._pause("queue", check_queue(_not_long("queue", queue)), until, reason, by)

    def resume(self, queue: str) -> Pause | None:
        """End a queue's pause now; the pause that was in force, None if it was not paused."""
        return self.store.pauses.resume("queue", check_queue(_not_long("queue", queue)),
                                        now=self.clock())

    def pause_entry(self, name: str, until: datetime | None = None, *, reason: str = "",
                    by: str | None = None) -> Pause:
        """Pause a ``[[mission]]`` entry of the configuration: the mission does not fire it
        (records no run for the times it skips, and does not catch them up when it resumes)
        until ``resume_entry(name)`` or until ``until`` passes."""
        name = _entry_name(name)
        if name not in {e.name for e in self.config.missions}:
            known = ", ".join(e.name for e in self.config.missions) or "none"
            raise InvalidTask(f"no [[mission]] entry named {name!r} in "
                              f"{self.config.source or 'the configuration (no config file)'} "
                              f"(entries: {known})")
        return self._pause("entry", name, until, reason, by)

    def resume_entry(self, name: str) -> Pause | None:
        """End an entry's pause now (whether or not the configuration still has the entry)."""
        return self.store.pauses.resume("entry", _entry_name(name), now=self.clock())

    def pauses(self, kind: str = "queue") -> list[Pause]:
        """The pauses in force of ``kind`` (``queue`` or ``entry``), by name."""
        if kind not in ("queue", "entry"):
            raise InvalidTask(f"kind must be 'queue' or 'entry', got {kind!r}")
        return list(self.store.pauses.active(kind, self.clock()).values())

    def _pause(self, kind: str, name: str, until: datetime | None, reason: str,
               by: str | None) -> Pause:
        now = self.clock()
        if until is not None:
            if not isinstance(until, datetime) or until.tzinfo is None:
                raise InvalidTask(f"until must be an aware datetime (with its UTC offset), got "
                                  f"{until!r}")
            if until <= now:
                raise InvalidTask(f"until {until.isoformat()} is not in the future (now "
                                  f"{now.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z)")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise InvalidTask(f"reason must be text of at most {MAX_REASON} characters")
        return self.store.pauses.pause(kind, name, now=now, until=until, reason=reason,
                                       by=by if by is not None else _who())

    # -- inspect and control ------------------------------------------------------------------

    def get(self, task_id: int) -> Task | None:
        return self.store.tasks.get(_task_id(task_id))

    def list(self, *, status: Status | None = None, queue: str | None = None,
             limit: int = 50) -> list[Task]:
        return self.store.tasks.list_tasks(status=status, queue=queue, limit=limit)

    def count(self, *, status: Status | None = None, queue: str | None = None,
              cap: int = 10_000) -> int:
        """How many tasks ``list()`` would find without its limit, counted up to ``cap``:
        ``cap + 1`` means more than ``cap`` (a bounded read, whatever the table's size)."""
        return self.store.tasks.count_tasks(status=status, queue=queue, cap=cap)

    def cancel(self, task_id: int) -> None:
        """Cancel a pending task. Raises ``TaskNotFound`` or ``InvalidTransition``."""
        self.store.tasks.cancel(_task_id(task_id), self.clock())

    def retry(self, task_id: int) -> None:
        """Run a failed or cancelled task again, with fresh attempts."""
        self.store.tasks.retry(_task_id(task_id), self.clock())

    def retry_failed(self) -> int:
        """Retry every failed task; returns how many."""
        return self.store.tasks.retry_failed(self.clock())

    def stats(self) -> dict[str, Any]:
        """Counts by status (overall and per queue), due backlog and its oldest age, and the
        paused queues (``paused``: queue name -> since, until, by, reason; times ISO-8601)."""
        stats = self.store.tasks.stats(self.clock())
        stats["paused"] = {p.name: p.as_dict() for p in self.pauses("queue")}
        return stats

    def purge(self, older_than: timedelta | float, *,
              statuses: Iterable[Status | int] | None = None) -> int:
        """Delete done, failed and cancelled tasks finished more than ``older_than`` ago
        (seconds or a timedelta). Returns the number deleted. ``statuses``: only these;
        pending and running tasks are deleted only when named here, aged by their ``ctime``
        (a running task's script runs on; its shard's writes find no row)."""
        from cronqueue.store.purging import FINISHED, UNFINISHED, discard

        before, wanted = self._purge_args(older_than, statuses)
        total = self.store.tasks.purge(before, sorted(wanted & FINISHED)) \
            if wanted & FINISHED else 0
        return total + discard(self.engine, before, sorted(wanted & UNFINISHED))

    def purgeable(self, older_than: timedelta | float, *,
                  statuses: Iterable[Status | int] | None = None,
                  cap: int = 1_000_000) -> dict[Status, int]:
        """What ``purge`` with the same arguments would delete, per status, deleting nothing:
        each count up to ``cap``, ``cap + 1`` meaning more."""
        from cronqueue.store.purging import purgeable

        before, wanted = self._purge_args(older_than, statuses)
        return {Status(s): n for s, n in purgeable(self.engine, before, wanted, cap).items()}

    def _purge_args(self, older_than: timedelta | float,
                    statuses: Iterable[Status | int] | None) -> tuple[datetime, set[int]]:
        if isinstance(older_than, int | float) and not isinstance(older_than, bool):
            older_than = timedelta(seconds=older_than)
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidTask(f"older_than must be a non-negative timedelta, got {older_than!r}")
        wanted = {int(Status.DONE), int(Status.FAILED), int(Status.CANCELLED)}
        if statuses is not None:
            wanted = set()
            for s in statuses:
                if isinstance(s, bool) or not isinstance(s, int) or \
                        int(s) not in {int(code) for code in Status}:
                    raise InvalidTask(f"statuses: not a status code, got {s!r}")
                wanted.add(int(s))
        return self.clock() - older_than, wanted

    def wait(self, task_id: int, timeout: float | None = None,
             interval: float = 0.2) -> Task | None:
        """Poll until the task is finished (done, failed, cancelled) or ``timeout`` passes;
        at once for a stored status that is none of the codes (no command ever moves it)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task is None or task.status.finished or "status" in task.bad_columns:
                return task
            if end is not None and time.monotonic() >= end:
                return task
            time.sleep(interval)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoppedWorker(Worker):
    """A shard asked to stop: ``signalled`` if it also got SIGTERM at once (a process on this
    host that proved to be that shard), else it stops at its next heartbeat, and
    ``no_signal_reason`` says why it got no signal."""

    no_signal_reason: str | None  # None: it was signalled

    @property
    def signalled(self) -> bool:
        return self.no_signal_reason is None


def _not_long(what: str, value: object) -> object:
    """A name far too long is refused by its length, not quoted whole in the message."""
    if isinstance(value, str) and len(value) > 64:
        raise InvalidTask(f"{what} name of {len(value):,} characters is too long (at most 64)")
    return value


def _entry_name(value: object) -> str:
    _not_long("entry", value)
    if not isinstance(value, str) or not MISSION_NAME_RE.fullmatch(value):
        raise InvalidTask(f"entry name {value!r} is malformed (1-64 of letters, digits and "
                          "_.-, starting with a letter or digit)")
    return value


def _who() -> str:
    """``user@host``: who paused, as the operator knows them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _task_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidTask(f"task id must be a positive integer, got {value!r}")
    return value
