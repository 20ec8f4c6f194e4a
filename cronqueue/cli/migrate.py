"""``cronqueue migrate``: bring the database's tables to this version's schema (the engine is
``store/migrate.py``), show where it stands, show the SQL, or export it for another tool."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cronqueue.cli.args import AddCommand, env_option, flag, positive_int
from cronqueue.config import Config
from cronqueue.errors import ConfigError

if TYPE_CHECKING:
    from cronqueue.store.migrate import State


def register(add: AddCommand) -> None:
    p = add("migrate", "bring the tables to this version's schema (ordered migrations, "
            "recorded in cronqueue_migrations; forward only)", cmd_migrate)
    mode = p.add_mutually_exclusive_group()
    env_option(mode, "--status", env="CRONQUEUE_MIGRATE_STATUS", type=flag, nargs="?",
               const=True, default=False,
               help="show the version and each migration (applied, pending); change nothing")
    env_option(mode, "--dry-run", env="CRONQUEUE_MIGRATE_DRY_RUN", type=flag, nargs="?",
               const=True, default=False,
               help="print the SQL it would run; change nothing")
    env_option(mode, "--export", env="CRONQUEUE_MIGRATE_EXPORT", metavar="DIR|-",
               help="write the numbered migration files into DIR (or all to stdout with -), "
                    "for Flyway, Alembic, Django...; needs no database with --dialect")
    env_option(p, "--to", env="CRONQUEUE_MIGRATE_TO", type=positive_int, metavar="N",
               help="stop at version N (default: the newest); never below the database's")
    env_option(p, "--dialect", env="CRONQUEUE_MIGRATE_DIALECT", choices=["sqlite", "mysql"],
               help="with --export: which dialect (default: the database's)")
    env_option(p, "--flyway", env="CRONQUEUE_MIGRATE_FLYWAY", type=flag, nargs="?",
               const=True, default=False,
               help="with --export: Flyway's file names (V2__queue_secret.sql)")


def cmd_migrate(args: argparse.Namespace, cfg: Config) -> int:
    if args.export is not None:
        return _export(args, cfg)
    from cronqueue.store import migrate
    from cronqueue.store.engine import make_engine

    engine = make_engine(cfg.db_url)
    try:
        if args.status:
            state = migrate.status(engine)
            print(format_status(state, cfg.safe_db_url))
            problem = state.problem()
            if problem is not None:
                raise migrate.SchemaVersionError(problem)
            return 0
        if args.dry_run:
            print("\n".join(migrate.plan(engine, args.to)))
            return 0
        outcome = migrate.upgrade(engine, args.to)
    finally:
        engine.dispose()
    if outcome.baseline:
        print(f"recorded versions 1..{outcome.baseline} as applied: the tables had them "
              f"(made before cronqueue recorded its schema version)")
    for m in outcome.applied:
        print(f"applied {m.name} (version {m.version})")
    newest = _newest(cfg)
    if not outcome.applied and not outcome.baseline:
        print(f"nothing to do: {cfg.safe_db_url} is at version {outcome.after}")
    else:
        print(f"{cfg.safe_db_url} is at version {outcome.after}"
              + (" (the newest)" if outcome.after == newest else f" of {newest}"))
    return 0


def format_status(state: State, url: str) -> str:
    from cronqueue.cli.display import visible

    records = state.records or {}
    lines = [f"database  {url}", f"schema    {_summary(state)}"]
    for m in state.migrations:
        r = records.get(m.version)
        if r is None:
            matched = not records and (state.current or 0) >= m.version
            what = "matched by its tables, not recorded yet" if matched else (
                "pending" if m.version > (state.current or 0) else "not recorded")
        elif not r.complete:
            what = f"interrupted after statement {r.statements_done} of {len(m.statements)}"
        else:
            when = r.applied_at.strftime("%Y-%m-%d %H:%M:%S UTC") if r.applied_at else "?"
            what = f"applied {when} by {visible(r.applied_by)}"
            if (r.name, r.checksum) != (m.name, m.checksum):
                what += " - CHANGED since (checksum)"
        lines.append(f"{m.version:>4}  {m.name:<24} {what}")
    lines += [f"{v:>4}  {visible(r.name):<24} applied by a newer cronqueue"
              for v, r in sorted(records.items()) if v > state.newest]
    return "\n".join(lines)


def _summary(state: State) -> str:
    from cronqueue.store.migrate import describe

    current = state.current
    if current is None or state.problem() is not None:
        return describe(state)
    if current == 0:
        return f"no cronqueue tables: `cronqueue init-db` creates version {state.newest}"
    if current < state.newest or state.interrupted is not None:
        return f"{describe(state)}: run `cronqueue migrate`"
    return f"{describe(state)}: up to date"


def _newest(cfg: Config) -> int:
    from sqlalchemy.engine import make_url

    from cronqueue.store.migrations import newest, set_for

    return newest(set_for(make_url(cfg.db_url).get_backend_name()))


def _export(args: argparse.Namespace, cfg: Config) -> int:
    from sqlalchemy.engine import make_url

    from cronqueue.store.migrations import newest, set_for
    from cronqueue.store.migrations.export import export

    if args.status or args.dry_run:
        raise ConfigError("--export goes alone (not with --status or --dry-run)")
    try:
        set_name = set_for(args.dialect or make_url(cfg.db_url).get_backend_name())
    except ValueError as exc:
        raise ConfigError(f"--dialect: {exc}") from None
    if args.to is not None and args.to > newest(set_name):
        raise ConfigError(f"--to {args.to}: there is no migration {args.to}; this cronqueue's "
                          f"newest is {newest(set_name)}")
    files = export(set_name, args.to, flyway=args.flyway)
    if args.export == "-":
        sys.stdout.write("\n".join(text for _, text in files))
        return 0
    target = Path(args.export)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in files:
            (target / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--export {target}: {exc.strerror or exc}") from None
    for name, _ in files:
        print(target / name)
    return 0
