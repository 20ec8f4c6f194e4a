"""The ``cronqueue`` argument parser, built from the command modules in :data:`COMMANDS`.

A run imports and registers only the module of the command it runs (``cronqueue work`` builds
no parser for ``web`` or ``add`` and imports neither module); ``--help``, no command or an
unknown one builds them all, so that the list and argparse's "invalid choice" name every
command.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from cronqueue.cli.args import Command, Parser, Register, common_options

COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("setup", ("init-db", "crontab", "check", "demo")),
    ("tasks", ("add", "status", "list", "stats", "retry", "cancel", "purge")),
    ("ops", ("work", "mission", "schedule", "workers")),
    ("pause", ("pause", "resume")),
    ("migrate", ("migrate",)),
    ("metrics", ("metrics",)),
    ("web", ("web",)),
)
"""Each command module of ``cronqueue.cli`` and the commands its ``register`` adds, in the
order ``--help`` lists them (``tests/unit/test_cli_lazy.py`` checks the names)."""


def register_of(module: str) -> Register:
    """The ``register`` function of the command module ``cronqueue.cli.<module>``."""
    register: Register = importlib.import_module(f"cronqueue.cli.{module}").register
    return register


def modules_for(argv: Sequence[str] | None) -> list[str]:
    """The command modules to register for ``argv``: the one whose command it runs, else
    all of them (no command, ``--help``, ``--version``, a mistyped command)."""
    word = argv[0] if argv else None
    for module, names in COMMANDS:
        if word in names:
            return [module]
    return [module for module, _ in COMMANDS]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser: of every command, or (given ``argv``) of the command module ``argv`` runs
    a command of, with the top-level help and options unchanged."""
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

    for module in modules_for(argv):
        register_of(module)(add)
    return parser


def _version() -> str:
    from cronqueue import __version__

    return f"cronqueue {__version__}"
