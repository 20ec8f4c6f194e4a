"""The tables, defined once: every statement cronqueue runs uses these. ``sql/*.sql`` render
them, and the migrations of ``store/migrations/`` build them (tests keep both equal).

Every column except ``taskscript`` and ``param`` has a database-side default, so a plain
``INSERT INTO queue (taskscript, param) VALUES (...)`` from any language is a valid pending task.
Times are UTC. On SQLite they are ISO-8601 text (``YYYY-MM-DD HH:MM:SS.ffffff``), which sorts
correctly as text; on MySQL/MariaDB ``DATETIME(6)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Dialect,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine, UserDefinedType

if TYPE_CHECKING:
    from cronqueue.store.migrations import Migration


class _SqliteDatetimeText(UserDefinedType[str]):
    """Declared as DATETIME (readable DDL), stored as ISO text; parsing is done by UTCDateTime."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "DATETIME"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in Python, naive UTC in the database."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SqliteDatetimeText())
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC time is required")
        naive = value.astimezone(UTC).replace(tzinfo=None)
        if dialect.name == "sqlite":
            return naive.isoformat(sep=" ", timespec="microseconds")
        return naive

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        """An aware UTC datetime; a stored value that is not a time (hand-written:
        ``'0000-00-00'``, ``'1'``) comes back as it is, for ``Task.from_row`` to name."""
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return value
        if not isinstance(value, datetime):
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except (OverflowError, ValueError):  # '0001-01-01 00:00:00+01:00'
            return value


class LongText(TypeDecorator[str]):
    """TEXT; MEDIUMTEXT on MySQL/MariaDB (TEXT stops at 64 KiB there)."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql  # only where it is the dialect in use

            return dialect.type_descriptor(mysql.MEDIUMTEXT())
        return dialect.type_descriptor(Text())


class ExactKey(TypeDecorator[str]):
    """A key compared byte for byte. MySQL/MariaDB ``utf8mb4_bin`` is a PAD SPACE collation
    (``'k' = 'k '``), so there the column is VARBINARY: no padding, no case folding."""

    impl = String(191)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.VARBINARY(764))  # 191 chars x 4 bytes
        return dialect.type_descriptor(String(191))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name in ("mysql", "mariadb"):
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        # surrogateescape: a hand-written key that is not UTF-8 is named by Task.from_row
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class UtcNow(FunctionElement[datetime]):
    """The database's current UTC time, as a column default (rendered per dialect)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(UtcNow, "sqlite")
def _utcnow_sqlite(element: UtcNow, compiler: Any, **kw: Any) -> str:
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"


@compiles(UtcNow, "mysql")
@compiles(UtcNow, "mariadb")
def _utcnow_mysql(element: UtcNow, compiler: Any, **kw: Any) -> str:
    return "(UTC_TIMESTAMP(6))"


metadata = MetaData()
# SQLite AUTOINCREMENT: ids are never reused after a purge. MySQL: InnoDB, exact (binary) text.
# DDL only: attached by ddl_metadata(), since attaching them loads both dialects' modules
# (~20 ms that the start of every shard and mission tick would otherwise pay).
_TABLE_OPTIONS: dict[str, Any] = {
    "sqlite_autoincrement": True,
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def _id_column() -> Column[int]:
    return Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                  autoincrement=True)

queue_table = Table(
    "queue",
    metadata,
    _id_column(),
    Column("queue", String(64), nullable=False, server_default="default"),
    Column("taskscript", String(255), nullable=False),
    Column("param", LongText(), nullable=False),
    Column("status", SmallInteger, nullable=False, server_default=text("0")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("ctime", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("run_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # NULL = use the worker's configured default (so hand-inserted rows follow the config).
    Column("max_attempts", Integer, nullable=True),
    Column("timeout", Integer, nullable=True),
    Column("unique_key", String(191), nullable=True),
    # = unique_key while the task is pending or running, NULL otherwise (unique index below).
    Column("active_key", ExactKey(), nullable=True),
    Column("worker_host", String(255), nullable=True),
    Column("worker_pid", Integer, nullable=True),
    Column("worker_pid_start", BigInteger, nullable=True),
    Column("claim_token", String(32), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("output", Text, nullable=True),
    # JSON handed to the script on stdin, never in argv (argv is public in `ps`).
    Column("secret", LongText(),
           nullable=True),
)

# The claim query (claim.py) walks one of these two in order: per queue, or across all queues.
Index(
    "ix_queue_claim",
    queue_table.c.status,
    queue_table.c.queue,
    queue_table.c.priority.desc(),
    queue_table.c.id,
)
Index("ix_queue_claim_any", queue_table.c.status, queue_table.c.priority.desc(), queue_table.c.id)
Index("ux_queue_active_key", queue_table.c.active_key, unique=True)
Index("ix_queue_finished", queue_table.c.finished_at)
# The oldest due task of each queue (the overview, cronqueue_oldest_due_age_seconds, the backlog
# alert): one seek per queue, where every pending row was read (100-240 ms on 100,000). The
# claim names its own index to the planner (claims.claim_index): beside this one, MariaDB's
# took ix_queue_claim_any for one queue's claim.
Index("ix_queue_due", queue_table.c.status, queue_table.c.queue, queue_table.c.run_at)

# One row per (mission entry, scheduled time) that fired: the unique key is what makes a
# recurring task or a shard launch happen once per scheduled time, whatever the number of
# missions running (on one host or several). The newest row per entry is its "last run".
runs_table = Table(
    "cronqueue_runs",
    metadata,
    _id_column(),
    Column("entry", String(128), nullable=False),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("fired_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("host", String(255), nullable=False, server_default=""),
    Column("pid", Integer, nullable=True),
    Column("outcome", String(1000), nullable=False, server_default=""),
    Column("task_id", BigInteger, nullable=True),
)
Index("ux_runs_entry_time", runs_table.c.entry, runs_table.c.scheduled_at, unique=True)

# The shards alive now (or that died without deregistering): what `cronqueue workers` shows,
# and how a web application or an operator on another host asks a shard to stop.
workers_table = Table(
    "cronqueue_workers",
    metadata,
    _id_column(),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_start", BigInteger, nullable=True),
    Column("entry", String(128), nullable=True),
    Column("shard", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("queues", String(1000), nullable=False, server_default=""),
    Column("started_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("heartbeat_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("current_task", BigInteger, nullable=True),
    Column("tasks_done", Integer, nullable=False, server_default=text("0")),
    Column("stop_requested", SmallInteger, nullable=False, server_default=text("0")),
)
Index("ix_workers_host_pid", workers_table.c.host, workers_table.c.pid)

# Counters of finished tasks, for the metrics (``cronqueue/metrics.py``): one row per (queue,
# outcome) — done, failed, cancelled — added to in the transaction that records the outcomes
# (``store/rollup.py``: one upsert per group commit), never decremented, so that a purge of
# ``queue`` leaves them as they are. ``finished`` counts every such task; ``timed`` those whose
# run a shard timed (done and failed by a shard: not a rejected row, a rescue's or a cancel),
# ``duration_us`` the sum of their run times and ``le_<s>`` how many ran in at most <s> seconds
# (the buckets of the task duration histogram; ``timed`` is its +Inf).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0, 3600.0)


def bucket_column(bound: float) -> str:
    """``le_0_25`` for 0.25 s, ``le_60`` for 60 s."""
    return "le_" + f"{bound:g}".replace(".", "_")


def _counter(name: str) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default=text("0"))


rollup_table = Table(
    "cronqueue_rollup",
    metadata,
    Column("queue", String(64), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    _counter("finished"),
    _counter("timed"),
    _counter("duration_us"),
    *[_counter(bucket_column(b)) for b in DURATION_BUCKETS],
)

# What `cronqueue migrate` applied (store/migrate.py): one row per migration of
# store/migrations/, version 1 = cronqueue 0.1.0's schema. No migration creates it: migrate does,
# before the first one (a database of 0.1.0 has the other tables and not this one).
migrations_table = Table(
    "cronqueue_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(255), nullable=False),
    Column("checksum", String(64), nullable=False),  # sha256 of the file as applied
    Column("applied_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("applied_by", String(255), nullable=False, server_default=""),
    # MySQL/MariaDB commit each DDL statement: how many of the file's statements ran, and
    # whether all did (0: under way, or interrupted; the next `migrate` resumes it).
    Column("statements_done", Integer, nullable=False, server_default=text("0")),
    Column("complete", SmallInteger, nullable=False, server_default=text("0")),
)
# Keyed by what they count, not by an id: the version; (queue, outcome).
_NO_AUTOINCREMENT = frozenset({"cronqueue_migrations", "cronqueue_rollup"})

# The alerts of the mission tick (cronqueue/alerts/): one row per alert, its key a kind and a
# subject (``entry_failed`` + an entry's name, ``task_failed`` + "queue/script"...). ``seq``
# counts its changes of state; ``unsent`` names the sinks the current state is still to be sent
# to, and a host claims the sending by a conditional UPDATE (``claim_token`` until
# ``claim_until``), so that one host sends it however many tick. ``hour_start`` and
# ``hour_count``: the messages sent in the hour since, for the rate cap.
alerts_table = Table(
    "cronqueue_alerts",
    metadata,
    _id_column(),
    Column("kind", String(32), nullable=False),
    Column("subject", ExactKey(), nullable=False),
    Column("state", String(16), nullable=False, server_default="firing"),
    Column("changed_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("seq", Integer, nullable=False, server_default=text("1")),
    Column("summary", String(1000), nullable=False, server_default=""),
    Column("detail", LongText(), nullable=True),  # JSON: what the current state's message says
    Column("unsent", String(64), nullable=False, server_default=""),
    Column("sent_state", String(16), nullable=True),  # the state last sent
    Column("sent_at", UTCDateTime, nullable=True),
    Column("hour_start", UTCDateTime, nullable=True),
    Column("hour_count", Integer, nullable=False, server_default=text("0")),
    Column("claim_token", String(32), nullable=True),
    Column("claim_until", UTCDateTime, nullable=True),
)
Index("ux_alerts_key", alerts_table.c.kind, alerts_table.c.subject, unique=True)

# Each host's last mission tick: when it started and ended, and its errors. ``check --health``,
# the dashboard's overview and the metrics read it; the alerts take the previous tick's time as
# the start of what they look at.
ticks_table = Table(
    "cronqueue_ticks",
    metadata,
    _id_column(),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("started_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("finished_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("errors", Integer, nullable=False, server_default=text("0")),
    Column("error", String(1000), nullable=False, server_default=""),
)
Index("ux_ticks_host", ticks_table.c.host, unique=True)

# Paused queues and mission entries (``store/pauses.py``): one row per (kind, name), kind
# ``queue`` or ``entry``. A pause is on while ``paused_until`` is NULL or ahead of the clock;
# ``resume`` sets it to the time of the resume, and an expired one ends by itself, so the row
# keeps when the last pause ended (the mission does not catch up an entry's paused times).
# ``paused_until`` and ``paused_by``: UNTIL and BY are reserved words in MySQL and MariaDB.
pauses_table = Table(
    "cronqueue_pauses",
    metadata,
    _id_column(),
    Column("kind", String(16), nullable=False),
    Column("name", String(64), nullable=False),
    Column("paused_at", UTCDateTime, nullable=False, server_default=UtcNow()),
    Column("paused_until", UTCDateTime, nullable=True),
    Column("paused_by", String(255), nullable=False, server_default=""),
    Column("reason", String(1000), nullable=False, server_default=""),
)
Index("ux_pauses_kind_name", pauses_table.c.kind, pauses_table.c.name, unique=True)


def ddl_metadata() -> MetaData:
    """``metadata`` with the tables' dialect options (storage engine, charset, AUTOINCREMENT)
    attached: for creating tables and rendering their DDL."""
    for table in metadata.tables.values():
        if "mysql_engine" not in table.dialect_kwargs:
            table.dialect_kwargs.update(
                {k: v for k, v in _TABLE_OPTIONS.items()
                 if not (k == "sqlite_autoincrement" and table.name in _NO_AUTOINCREMENT)})
    return metadata


def dialect_for(name: str) -> Dialect:
    from sqlalchemy.dialects import mysql, sqlite

    if name == "sqlite":
        return sqlite.dialect()
    if name in ("mysql", "mariadb"):
        return mysql.dialect()
    raise ValueError(f"unsupported dialect {name!r} (sqlite or mysql)")


def record_sql(m: Migration, dialect: Dialect, applied_by: str) -> str:
    """The INSERT that records migration ``m`` as applied, every value a literal (for
    ``sql/`` and the export: no database to bind parameters)."""
    stmt = migrations_table.insert().values(
        version=m.version, name=m.name, checksum=m.checksum, applied_by=applied_by,
        statements_done=len(m.statements), complete=1)
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})).strip()


def render_ddl(dialect_name: str) -> str:
    """The newest schema for a dialect, as the text kept in ``sql/<dialect>.sql``: the tables
    and indexes ``init-db`` creates (by running the migrations), and the rows of
    ``cronqueue_migrations`` that say so (a database made from it is at the newest version)."""
    from cronqueue.store.migrations import load, set_for

    dialect = dialect_for(dialect_name)
    parts = [str(CreateTable(t, if_not_exists=True).compile(dialect=dialect)).strip()
             for t in ddl_metadata().sorted_tables]
    for t in metadata.sorted_tables:
        for ix in sorted(t.indexes, key=lambda i: str(i.name)):
            # MySQL 8 has no CREATE INDEX IF NOT EXISTS: that file is for an empty database.
            create = CreateIndex(ix, if_not_exists=dialect.name == "sqlite")
            parts.append(str(create.compile(dialect=dialect)).strip())
    parts += [record_sql(m, dialect, "sql file") for m in load(set_for(dialect.name))]
    header = (
        f"-- cronqueue schema for {dialect_name}; generated by `cronqueue init-db --print-ddl "
        f"--dialect {dialect_name}`.\n-- Keep in sync: tests/unit/test_schema.py compares them. "
        f"For an empty database; to upgrade one, see\n-- `cronqueue migrate` and sql/migrations/.\n"
    )
    return header + "".join(f"\n{p};\n" for p in parts)
