"""The ``cronqueue`` command's entry point: parse, configure, run the command, map its outcome
to the exit code — 0 ok, 1 a task or command failed, 2 bad usage or config (one line); 3
``status --wait --timeout`` timed out (``tasks.WAIT_TIMED_OUT``); 141 the reader of stdout left.

Every flag can also be set by the ``CRONQUEUE_*`` environment variable shown in ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from cronqueue.cli.args import Parser
from cronqueue.cli.parser import build_parser
from cronqueue.config import Config, load_config
from cronqueue.errors import ConfigError, CronqueueError, DatabaseError, InvalidTask

__all__ = ["SIGPIPE_EXIT", "build_parser", "config_from_args", "main", "setup_logging"]

SIGPIPE_EXIT = 128 + signal.SIGPIPE  # 141: the reader of stdout left (`cronqueue list | head`)


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration with the flags as its top layer (``config.layers``: flag >
    ``CRONQUEUE_*`` > file > default); a flag not given is None."""
    return load_config(args.config, db_url=args.db, task_dir=args.task_dir,
                       log_dir=args.log_dir, batch=getattr(args, "batch", None),
                       python_fork=getattr(args, "python_fork", None))


def setup_logging(level: str | None, default: int) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()) if level else default,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def schema_refusal(exc: DatabaseError, db_url: str) -> str | None:
    """A command failed on a table the database lacks (MySQL 1146, SQLite "no such table"):
    the line naming what to run — `cronqueue init-db` for a database without cronqueue's
    tables, `cronqueue migrate` for one behind — as `work` and `mission` say it before they
    start (``migrate.require_current``, asked only now: no query on the way of a command that
    works). None for any other error."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.__cause__
    orig = getattr(cause, "orig", None)
    code = orig.args[0] if orig is not None and orig.args else None
    if not (isinstance(cause, DBAPIError)
            and (code == 1146 or "no such table" in str(orig).lower())):
        return None
    from cronqueue.store.engine import make_engine
    from cronqueue.store.migrate import SchemaVersionError, require_current

    engine = make_engine(db_url)
    try:
        require_current(engine)
    except SchemaVersionError as refusal:
        return str(refusal)
    except CronqueueError:
        return None
    finally:
        engine.dispose()
    return None


def _exit_now(code: int) -> NoReturn:
    """The mission or a shard run as a program, its work done (engine disposed, shards
    detached; the shard's runner, watchdog, fork server, heartbeat and locks closed by
    ``Shard.run``): exit without the interpreter's teardown, which freed SQLAlchemy's objects
    for 0.1-0.3 s of the mission's wall time (issue 12 #4) and ~9 ms of CPU of every shard
    (its start-up frozen out of the last collection: paired median of 14). Logs and output
    are flushed first."""
    logging.shutdown()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


_gc_paused = False  # main() of a process paused the cyclic GC for its start-up


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit code. ``--help`` and usage errors exit through argparse's
    ``SystemExit`` (0, 2). As the process's entry point (``argv`` None), the start-up runs
    without the cyclic garbage collector: see :func:`startup_done`."""
    global _gc_paused
    if argv is None:  # ``python -m cronqueue`` paused it before importing this module
        _gc_paused = True
        gc.disable()
    try:
        try:
            return _main(argv)
        finally:  # buffered output reaches a closed pipe here: caught below, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()
    finally:
        startup_done()


def startup_done() -> None:
    """The command's start-up is over (imports, parser, configuration): collect from now on.
    A start-up allocates objects that live as long as the process — modules, classes, the
    parser, SQLAlchemy's tables: the 120 collections it triggered (7 % of the imports' CPU)
    freed 800 objects of 49,000 (a shard's imports, measured). They are frozen out of every later
    collection (``gc.freeze``), so a long shard's collections do not walk them again either.
    Only when :func:`main` paused the collector (the process's entry point; never in a caller
    of ``main(argv)`` such as a test); later calls do nothing."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def _reader_left() -> int:
    """`cronqueue list | head`: the reader left before the output ended. No traceback (and
    none again when Python flushes stdout at exit: it now writes to /dev/null), and the exit
    status of a Unix tool killed by SIGPIPE, 128 + 13 = 141 — what `cat` or `grep` give in
    the same place: the output was cut short, which 0 would hide from `set -o pipefail`, and
    which is neither a failed task (1) nor bad usage (2)."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return SIGPIPE_EXIT


def _main(argv: Sequence[str] | None) -> int:
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(Parser.argv)  # the module of this command only: cli/parser.py
    args = parser.parse_args(argv)  # --log-level and CRONQUEUE_LOG_LEVEL: args.log_level
    chatty = args.command in ("work", "demo", "mission")
    setup_logging(args.log_level, logging.INFO if chatty else logging.WARNING)
    try:
        cfg = config_from_args(args)
        if args.command in ("work", "mission"):  # ancestors of tasks: see conceal.py
            from cronqueue.process.conceal import conceal_db_url

            conceal_db_url((args.db,) if args.db else ())
        else:  # work and mission say when their imports are done; the rest (web, status
            startup_done()  # --wait, demo: long-running) collect from the command's start
        code = int(args.func(args, cfg))
        if argv is None and args.command in ("work", "mission"):
            _exit_now(code)
        return code
    except (ConfigError, InvalidTask) as exc:
        print(f"cronqueue: error: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        why = schema_refusal(exc, cfg.db_url)
        if why is not None:  # no tables, or a database behind: one line, exit 2
            print(f"cronqueue: error: {why}", file=sys.stderr)
            return 2
        print(f"cronqueue: {exc}", file=sys.stderr)
        return 1
    except CronqueueError as exc:
        print(f"cronqueue: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1

if __name__ == "__main__":
    raise SystemExit(main())
