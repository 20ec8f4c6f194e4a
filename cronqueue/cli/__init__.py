"""The ``cronqueue`` command, one module per role:

* ``main`` — ``main()``: parse, load the configuration, run the command, exit codes;
* ``parser`` — ``build_parser()`` from the command modules listed in ``parser.COMMANDS``;
* ``args`` — the shared flags (``CRONQUEUE_*`` defaults), argument types, signatures;
* command modules: ``setup`` (init-db, crontab, check, demo), ``tasks`` (add, status, list,
  stats, retry, cancel, purge), ``ops`` (work, mission, schedule, workers);
* ``display`` (human output), ``checks`` (``check``'s checks), ``demo`` (the quickstart).

Adding a command is one module and one line. The module (say ``cli/migrate.py``) defines the
command, ``def cmd_migrate(args: argparse.Namespace, cfg: Config) -> int`` (its exit code;
raise ``ConfigError`` for exit 2 with a one-line reason), and ``def register(add:
AddCommand) -> None``, which calls ``p = add("migrate", "help text", cmd_migrate)`` (the
subcommand, with the common options ``--db``/``--config``/... already on it) and adds its own
arguments to ``p`` (``args.env_option`` for a flag with a ``CRONQUEUE_*`` variable). The line:
``migrate.register`` in ``parser.COMMANDS``. Import heavy modules (SQLAlchemy's engine, the
shard) inside the command function: every command pays for what ``parser`` imports.

This package imports nothing at its top, so that ``cli.display`` (which ``demo`` uses) does
not load the whole command line (``cli`` -> ``main`` -> ``demo`` -> ``cli`` was a cycle).
``cronqueue.cli.main`` is the function, as before (the console script ``cronqueue.cli:main``
and ``from cronqueue.cli import main``); its module is ``sys.modules["cronqueue.cli.main"]``,
reached with ``from cronqueue.cli.main import ...``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cronqueue`` command (``cronqueue.cli.main.main``)."""
    from cronqueue.cli.main import main as run

    return run(argv)


class _Package(types.ModuleType):
    """Importing the submodule ``main`` sets the package's attribute ``main`` to it; the
    function stays (the console script, and any ``from cronqueue.cli import main`` after the
    submodule was imported, must get the function)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "main" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
