"""The ``cronqueue`` argument parser, built from the command modules in :data:`COMMANDS`."""

from __future__ import annotations

import argparse

from cronqueue.cli import metrics, migrate, ops, pause, setup, tasks, web
from cronqueue.cli.args import Command, Parser, Register, common_options

COMMANDS: tuple[Register, ...] = (
    setup.register,  # init-db, crontab, check, demo
    tasks.register,  # add, status, list, stats, retry, cancel, purge
    ops.register,  # work, mission, schedule, workers
    pause.register,  # pause, resume
    migrate.register,  # migrate
    metrics.register,  # metrics
    web.register,  # web
)
"""Each command module's ``register``, in the order ``--help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cronqueue",
        description="A cron-driven, database-backed batch queue.",
        epilog="Exit codes: 0 ok, 1 a task or command failed, 2 bad usage or config, 3 "
               "`status --wait --timeout` timed out, 141 the output's reader left (| head).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, func: Command) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help.replace("%%", "%"))
        p.set_defaults(func=func)
        common_options(p)
        return p

    for register in COMMANDS:
        register(add)
    return parser


def _version() -> str:
    from cronqueue import __version__

    return f"cronqueue {__version__}"
