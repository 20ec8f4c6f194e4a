"""The installation commands: ``init-db``, ``crontab``, ``check`` and ``demo``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cronqueue.cli.args import AddCommand, env_option, open_queue, seconds, upto
from cronqueue.config import MAX_BATCH, Config
from cronqueue.errors import ConfigError


def register(add: AddCommand) -> None:
    p = add("init-db", "create the tables, or bring them to this version's schema (runs the "
            "pending migrations, as `migrate` does; idempotent)", cmd_init_db)
    p.add_argument("--print-ddl", action="store_true",
                   help="print the DDL instead of running it (see sql/)")
    p.add_argument("--dialect", choices=["sqlite", "mysql"],
                   help="with --print-ddl: which dialect (default: the database's)")

    add("crontab", "print the crontab line to install for this installation", cmd_crontab)

    p = add("check", "validate the configuration, the database and task_dir; run nothing",
            cmd_check)
    p.add_argument("--health", action="store_true",
                   help="only whether the mission ticks: exit 0 when the database answers "
                        "and the last tick (any host) ended within --max-age, 1 otherwise "
                        "(one line; for an external monitor)")
    env_option(p, "--max-age", env="CRONQUEUE_HEALTH_MAX_AGE", type=seconds, metavar="AGE",
               help="with --health: how old the last tick may be (default: health.max_age, "
                    "2m)")

    p = add("demo", "the quickstart: a SQLite queue, example tasks, two shards", cmd_demo)
    p.add_argument("--dir", help="where to create the demo (default: a new temporary dir)")
    p.add_argument("--tasks", type=upto(MAX_BATCH), default=30, help="messages to send (30)")


def cmd_init_db(args: argparse.Namespace, cfg: Config) -> int:
    if args.print_ddl:
        from sqlalchemy.engine import make_url

        from cronqueue.store.schema import render_ddl

        dialect = args.dialect or make_url(cfg.db_url).get_backend_name()
        print(render_ddl("mysql" if dialect == "mariadb" else dialect), end="")
        return 0
    open_queue(cfg).init_db()
    print(f"initialized {cfg.safe_db_url}")
    return 0


def cmd_crontab(args: argparse.Namespace, cfg: Config) -> int:
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
    if args.health:
        from cronqueue.alerts.health import check_health

        return check_health(cfg, max_age=args.max_age)
    from cronqueue.cli.checks import run_checks

    return run_checks(cfg)


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    """The demo makes its own SQLite database, config, task and log directories under
    ``--dir``: a ``--db``, ``--config``, ``--task-dir`` or ``--log-dir`` given to it was
    accepted and ignored. Refused now, with one line (exit 2)."""
    from cronqueue.cli.demo import run_demo

    given = [flag for flag, value in (("--db", args.db), ("--config", args.config),
                                      ("--task-dir", args.task_dir),
                                      ("--log-dir", args.log_dir)) if value is not None]
    if given:
        raise ConfigError(f"demo: {', '.join(given)} not used: the demo is the SQLite "
                          "quickstart and makes its own database, config, tasks and logs "
                          "under --dir DIR (for your own database: cronqueue init-db --db URL)")
    return run_demo(args.dir, messages=args.tasks)
