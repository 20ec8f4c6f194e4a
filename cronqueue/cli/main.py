"""The ``cronqueue`` command. Exit codes: 0 ok, 1 a task or command failed, 2 bad usage/config.

Every flag can also be set by the ``CRONQUEUE_*`` environment variable shown in ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from cronqueue.cli.display import (
    format_schedule,
    format_stats,
    format_table,
    format_task,
    format_workers,
    visible,
)
from cronqueue.config import MAX_BATCH, MAX_SECONDS, MAX_SHARDS, Config, load_config
from cronqueue.config import parse_age as config_parse_age
from cronqueue.decode import BIGINT_MAX, INT_MAX
from cronqueue.errors import ConfigError, CronqueueError, InvalidTask, TaskNotFound
from cronqueue.model import Status
from cronqueue.process.conceal import conceal_db_url
from cronqueue.store.engine import redact

log = logging.getLogger("cronqueue.cli")


# -- argument helpers -------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse quotes a bad argument in its error: ``cronqueue --db URL check`` (the option
    before the command) printed ``invalid choice: 'mysql://cq:PASSWORD@db/app'``, and a URL
    given without ``--db`` ``unrecognized arguments: ...`` (to the terminal, or cron's mail).
    Every argument that holds a URL is shown redacted in those messages."""

    argv: ClassVar[list[str]] = []

    def error(self, message: str) -> NoReturn:
        super().error(_redact_args(message, self.argv))


def _redact_args(message: str, argv: Sequence[str]) -> str:
    for word in sorted({w for w in argv if "://" in w}, key=len, reverse=True):
        flag, eq, value = word.partition("=") if word.startswith("-") else ("", "", word)
        shown = flag + eq + redact(value)
        message = message.replace(repr(word), repr(shown)).replace(word, shown)
    return message


class _EnvAppend(argparse.Action):
    """Repeatable flag; its first use on the command line replaces the env default list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        items.append(values)
        setattr(namespace, self.dest, items)


def _env(parser: argparse._ActionsContainer, *flags: str, env: str, help: str,
         **kw: Any) -> None:
    """A flag whose default comes from ``env``; the variable is shown in --help."""
    fallback = kw.pop("default", None)
    default: Any = os.environ.get(env)
    if kw.get("action") == "append":
        kw["action"] = _EnvAppend
        if default is not None:
            default = [v for v in default.split(",") if v]
    parser.add_argument(*flags, default=default if default is not None else fallback,
                        help=f"{help} [env: {env}]", **kw)


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("common options")
    _env(g, "--db", env="CRONQUEUE_DB_URL", metavar="URL",
         help="database URL (default: config file, else sqlite:///cronqueue.db)")
    _env(g, "--config", env="CRONQUEUE_CONFIG", metavar="FILE",
         help="TOML config file (default: ./cronqueue.toml if present)")
    _env(g, "--task-dir", env="CRONQUEUE_TASK_DIR", metavar="DIR",
         help="directory task scripts are resolved in (default: tasks)")
    _env(g, "--log-dir", env="CRONQUEUE_LOG_DIR", metavar="DIR",
         help="directory for task output logs (default: logs)")
    _env(g, "--log-level", env="CRONQUEUE_LOG_LEVEL", metavar="LEVEL",
         choices=["debug", "info", "warning", "error"], help="logging level")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _upto(maximum: int) -> Callable[[str], int]:
    """An integer from 1 to ``maximum`` (a flag whose value sizes processes or claims)."""

    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


_id = _upto(BIGINT_MAX)  # a task or worker id: what a BIGINT holds


def _flag(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_age(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    try:
        return config_parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    return parse_age(text).total_seconds()


def _max_seconds(text: str) -> float:
    """``work --max-seconds``: the bounds of the config's ``do_queue.max_seconds`` (which the
    mission passes as this flag): > 0 and <= MAX_SECONDS."""
    try:
        seconds = config_parse_age(text, MAX_SECONDS).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return seconds


TIME_YEARS = (1970, 9998)


def parse_time(text: str) -> datetime:
    """ISO-8601; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r} (ISO-8601, e.g. 2026-11-23T15:00:00+01:00)") from None
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    # Year 1 or 9999 overflows once shifted by a time zone or a cron step (each entry of a
    # `mission --now 0001-01-01` tick failed with OverflowError); no real tick is out there.
    try:
        year = value.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not TIME_YEARS[0] <= year <= TIME_YEARS[1]:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r}: the year must be within {TIME_YEARS[0]}..{TIME_YEARS[1]}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cronqueue",
        description="A cron-driven, database-backed batch queue.",
        epilog="Exit codes: 0 ok, 1 a task or command failed, 2 bad usage or config.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str, func: Callable[[argparse.Namespace, Config], int]
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help.replace("%%", "%"))
        p.set_defaults(func=func)
        _common(p)
        return p

    p = cmd("init-db", "create the tables and indexes if absent (idempotent)", cmd_init_db)
    p.add_argument("--print-ddl", action="store_true",
                   help="print the DDL instead of running it (see sql/)")
    p.add_argument("--dialect", choices=["sqlite", "mysql"],
                   help="with --print-ddl: which dialect (default: the database's)")

    p = cmd("add", "enqueue a task; prints its id", cmd_add)
    p.add_argument("taskscript", help="script path relative to task_dir")
    p.add_argument("param", nargs="?", default="null", help="param as JSON text (default null)")
    _env(p, "--priority", env="CRONQUEUE_ADD_PRIORITY", type=_int, default=0,
         help="higher runs sooner (default 0)")
    _env(p, "--queue", env="CRONQUEUE_ADD_QUEUE", default="default", help="queue name")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_seconds, help="run after this long (30, 5m, 2h)")
    when.add_argument("--at", type=parse_time, help="run at this ISO time (UTC if no offset)")
    p.add_argument("--max-attempts", type=_positive_int, help="default: worker.max_attempts")
    p.add_argument("--timeout", type=_positive_int, help="seconds; default: worker.timeout")
    p.add_argument("--unique-key", help="while a task with this key is active, return its id")
    p.add_argument("--secret-stdin", action="store_true",
                   help="read a JSON secret from stdin; the script gets it on its stdin, "
                        "never in argv")

    p = cmd("status", "show one task", cmd_status)
    p.add_argument("id", type=_id)
    p.add_argument("--wait", action="store_true",
                   help="wait until it is finished; exit 0 if done, 1 otherwise")
    p.add_argument("--timeout", type=_seconds, help="with --wait: give up after this long")
    p.add_argument("--json", action="store_true")

    p = cmd("list", "list tasks, newest first", cmd_list)
    p.add_argument("--status", type=_status, help="pending, done, running, failed, cancelled")
    p.add_argument("--queue")
    p.add_argument("--limit", type=_upto(INT_MAX), default=50)
    p.add_argument("--json", action="store_true")

    p = cmd("stats", "counts by status and queue, due backlog", cmd_stats)
    p.add_argument("--json", action="store_true")

    p = cmd("retry", "run a failed or cancelled task again", cmd_retry)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=_id, nargs="?")
    which.add_argument("--failed", action="store_true", help="every failed task")

    p = cmd("cancel", "cancel a pending task", cmd_cancel)
    p.add_argument("id", type=_id)

    p = cmd("purge", "delete finished tasks older than an age", cmd_purge)
    p.add_argument("--older-than", type=parse_age, required=True, metavar="AGE",
                   help="e.g. 7d, 12h, 3600")

    p = cmd("work", "run one do_queue shard: claim and run tasks with id %% TOTAL == SHARD",
            cmd_work)
    _env(p, "--total", env="CRONQUEUE_TOTAL", type=_upto(MAX_SHARDS), default=1,
         help="number of shards N (default 1)")
    _env(p, "--shard", env="CRONQUEUE_SHARD", type=_int, default=0,
         help="this shard's index i, 0 <= i < N (default 0)")
    _env(p, "--queue", env="CRONQUEUE_QUEUES", action="append", dest="queues",
         help="only this queue (repeatable; env: comma-separated; default: all)")
    _env(p, "--batch", env="CRONQUEUE_BATCH", type=_upto(MAX_BATCH),
         help="rows per claim (default: worker.batch)")
    _env(p, "--max-seconds", env="CRONQUEUE_MAX_SECONDS", type=_max_seconds,
         help="keep polling for this long (default: drain what is due and exit)")
    _env(p, "--python-fork", env="CRONQUEUE_PYTHON_FORK", type=_flag, nargs="?", const=True,
         help="run .py task scripts in children forked from a warm interpreter "
              "(default: worker.python_fork)")
    _env(p, "--entry", env="CRONQUEUE_ENTRY", type=_entry_name,
         help="the mission entry this shard belongs to: at most one process per (entry, "
              "shard) runs at a time on all hosts; others exit at once")

    p = cmd("mission", "cron_mission: run the schedule entries due this minute, then return "
            "(the one crontab line)", cmd_mission)
    _env(p, "--now", env="CRONQUEUE_NOW", type=parse_time,
         help="act as if it were this time (ISO-8601; for tests and catch-up drills; "
              "more than a minute ahead of the clock only with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what the tick would do; write, start and purge nothing")

    p = cmd("schedule", "the mission entries: cron, description, next runs, last run",
            cmd_schedule)
    p.add_argument("--json", action="store_true")

    p = cmd("workers", "running shards on every host; `workers stop` asks them to stop",
            cmd_workers)
    p.add_argument("action", nargs="?", choices=["list", "stop"], default="list")
    p.add_argument("ids", nargs="*", type=_id, help="with stop: worker ids")
    p.add_argument("--entry", help="with stop: the shards of this mission entry")
    p.add_argument("--shard", type=_int, help="with stop --entry: only this shard index")
    p.add_argument("--all", action="store_true", help="with stop: every running shard")
    p.add_argument("--json", action="store_true")

    p = cmd("crontab", "print the crontab line to install for this installation", cmd_crontab)

    p = cmd("check", "validate the configuration, the database and task_dir; run nothing",
            cmd_check)

    p = cmd("demo", "the quickstart: a SQLite queue, example tasks, two shards", cmd_demo)
    p.add_argument("--dir", help="where to create the demo (default: a new temporary dir)")
    p.add_argument("--tasks", type=_upto(MAX_BATCH), default=30,
                   help="messages to send (30)")
    return parser


def _entry_name(text: str) -> str:
    from cronqueue.config import MISSION_NAME_RE

    if not MISSION_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"bad entry name {text!r}")
    return text


def _status(text: str) -> Status:
    try:
        return Status.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    from cronqueue import __version__

    return f"cronqueue {__version__}"


# -- commands ---------------------------------------------------------------------------------

def _queue(cfg: Config) -> Any:
    from cronqueue.queue import Queue

    return Queue(config=cfg)


def cmd_init_db(args: argparse.Namespace, cfg: Config) -> int:
    if args.print_ddl:
        from sqlalchemy.engine import make_url

        from cronqueue.store.schema import render_ddl

        dialect = args.dialect or make_url(cfg.db_url).get_backend_name()
        print(render_ddl("mysql" if dialect == "mariadb" else dialect), end="")
        return 0
    _queue(cfg).init_db()
    print(f"initialized {cfg.safe_db_url}")
    return 0


def cmd_add(args: argparse.Namespace, cfg: Config) -> int:
    try:
        param = json.loads(args.param)
    except ValueError as exc:
        raise InvalidTask(f"PARAM_JSON is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidTask("PARAM_JSON is nested too deeply to decode") from None
    secret = None
    if args.secret_stdin:
        try:
            secret = json.loads(sys.stdin.read())
        except ValueError as exc:
            raise InvalidTask(f"--secret-stdin: stdin is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidTask("--secret-stdin: stdin is nested too deeply to decode") from None
    task_id = _queue(cfg).add(args.taskscript, param, priority=args.priority, queue=args.queue,
                              delay=args.delay, run_at=args.at, max_attempts=args.max_attempts,
                              timeout=args.timeout, unique_key=args.unique_key, secret=secret)
    print(task_id)
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    q = _queue(cfg)
    task = q.wait(args.id, timeout=args.timeout) if args.wait else q.get(args.id)
    if task is None:
        raise TaskNotFound(f"no task with id {args.id}")
    if args.json:
        print(json.dumps(task.as_dict(), indent=2))
    else:
        print(format_task(task))
    if args.wait:
        return 0 if task.status is Status.DONE else 1
    return 0


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    tasks = _queue(cfg).list(status=args.status, queue=args.queue, limit=args.limit)
    if args.json:
        print(json.dumps([t.as_dict() for t in tasks], indent=2))
        return 0
    print(format_table(tasks))
    return 0


def cmd_stats(args: argparse.Namespace, cfg: Config) -> int:
    stats = _queue(cfg).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(format_stats(stats))
    return 0


def cmd_retry(args: argparse.Namespace, cfg: Config) -> int:
    q = _queue(cfg)
    if args.failed:
        print(f"retrying {q.retry_failed()} failed task(s)")
    else:
        q.retry(args.id)
        print(f"task {args.id} is pending again")
    return 0


def cmd_cancel(args: argparse.Namespace, cfg: Config) -> int:
    _queue(cfg).cancel(args.id)
    print(f"task {args.id} cancelled")
    return 0


def cmd_purge(args: argparse.Namespace, cfg: Config) -> int:
    print(f"purged {_queue(cfg).purge(args.older_than)} finished task(s)")
    return 0


def cmd_work(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.shard.loop import Shard

    if not 0 <= args.shard < args.total:
        raise ConfigError(f"--shard must be in 0..{args.total - 1} for --total {args.total}, "
                          f"got {args.shard}")
    for name in args.queues or []:
        from cronqueue.spec import check_queue

        check_queue(name)
    if args.python_fork is not None:
        cfg = replace(cfg, worker=replace(cfg.worker, python_fork=args.python_fork))
    Shard(cfg, total=args.total, shard=args.shard, queues=args.queues, batch=args.batch,
          max_seconds=args.max_seconds, entry=args.entry).run()
    return 0


def cmd_mission(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.mission.tick import Mission, refuse_future_drill

    if args.now is not None and not args.dry_run:
        refuse_future_drill(args.now, datetime.now(UTC))
    if not cfg.missions:
        log.warning("no [[mission]] entries in %s: nothing to do",
                    cfg.source or "the configuration (no config file)")
    if args.dry_run:
        report = Mission(cfg).plan(args.now)
        for line in report.plan:
            print(line)
        return 1 if report.errors else 0
    report = Mission(cfg).tick(args.now)
    return 1 if report.errors else 0


def cmd_schedule(args: argparse.Namespace, cfg: Config) -> int:
    entries = _queue(cfg).schedule()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no [[mission]] entries ({cfg.source or 'no config file'})")
    else:
        print(format_schedule(entries))
    return 0


def cmd_workers(args: argparse.Namespace, cfg: Config) -> int:
    q = _queue(cfg)
    if args.action == "stop":
        if not (args.ids or args.entry or args.all):
            raise ConfigError("workers stop: give worker ids, --entry NAME or --all")
        asked = q.stop_workers(args.ids or None, entry=args.entry, shard=args.shard)
        for w in asked:
            who = (f"worker {w.id} ({visible(w.host)}:{w.pid}, {visible(w.entry or '-')} "
                   f"shard {w.shard}/{w.total})")
            if w.signalled:
                print(f"asked {who} to stop: sent SIGTERM")
            else:
                print(f"asked {who} to stop through the database only ({w.no_signal_reason}): "
                      f"it stops at its next heartbeat, within {cfg.worker.heartbeat:g}s")
        if not asked:
            print("no running worker matched")
            return 1
        return 0
    workers = q.workers()
    if args.json:
        print(json.dumps([w.as_dict() for w in workers], indent=2))
        return 0
    print(format_workers(workers))
    return 0


def cmd_crontab(args: argparse.Namespace, cfg: Config) -> int:
    import shlex

    exe = Path(sys.executable).parent / "cronqueue"
    command = shlex.quote(str(exe)) if exe.exists() else \
        f"{shlex.quote(sys.executable)} -m cronqueue"
    where = cfg.source.parent if cfg.source else Path.cwd()
    config = f" --config {shlex.quote(str(cfg.source))}" if cfg.source else ""
    # The shell opens the log before cronqueue runs: the directory must exist already.
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    log_file = shlex.quote(str(cfg.log_dir / "mission.log"))
    if cfg.source is None:
        print("# no config file found: the mission will run with the defaults of "
              f"{where} (write cronqueue.toml first, see README)")
    print(f"* * * * * cd {shlex.quote(str(where))} && {command} mission{config} "
          f">> {log_file} 2>&1")
    return 0


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.cli.checks import run_checks

    return run_checks(cfg)


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.cli.demo import run_demo

    return run_demo(args.dir, messages=args.tasks)


# -- entry point ------------------------------------------------------------------------------

_LOG_LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str | None, default: int) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()) if level else default,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def _exit_now(code: int) -> NoReturn:
    """The mission run as a program, its work done (engine disposed, shards detached): exit
    without the interpreter's teardown, which freed SQLAlchemy's objects for 0.1-0.3 s of
    the mission's wall time (issue 12 #4). Logs and output are flushed first."""
    logging.shutdown()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.log_level is not None and args.log_level.lower() not in _LOG_LEVELS:
        parser.error(f"--log-level/CRONQUEUE_LOG_LEVEL: invalid choice {args.log_level!r} "
                     f"(choose from {', '.join(_LOG_LEVELS)})")
    chatty = args.command in ("work", "demo", "mission")
    setup_logging(args.log_level, logging.INFO if chatty else logging.WARNING)
    try:
        cfg = load_config(args.config, db_url=args.db, task_dir=args.task_dir,
                          log_dir=args.log_dir)
        if args.command in ("work", "mission"):  # ancestors of tasks: see conceal.py
            conceal_db_url((args.db,) if args.db else ())
        code = int(args.func(args, cfg))
        if argv is None and args.command == "mission":
            _exit_now(code)
        return code
    except (ConfigError, InvalidTask) as exc:
        print(f"cronqueue: error: {exc}", file=sys.stderr)
        return 2
    except CronqueueError as exc:
        print(f"cronqueue: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    except BrokenPipeError:  # `cronqueue list | head`: the reader left; no traceback
        with contextlib.suppress(OSError):  # and none again when Python flushes stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
