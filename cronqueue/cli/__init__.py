"""The ``cronqueue`` command, one module per role:

* ``main`` — ``main()``: parse, load the configuration, run the command, exit codes;
* ``parser`` — ``build_parser()`` from the command modules listed in ``parser.COMMANDS`` (a
  run imports only the module of its command);
* ``args`` — the shared flags (``CRONQUEUE_*`` defaults), argument types, signatures;
* command modules: ``setup`` (init-db, crontab, check, demo), ``tasks`` (add, status, list,
  stats, retry, cancel, purge), ``ops`` (work, mission, schedule, workers), ``pause`` (pause,
  resume; schedule pause / resume);
* ``display`` (human output), ``checks`` (``check``'s checks), ``demo`` (the quickstart).

Adding a command is one module and one line. The module (say ``cli/migrate.py``) defines the
command, ``def cmd_migrate(args: argparse.Namespace, cfg: Config) -> int`` (its exit code;
raise ``ConfigError`` for exit 2 with a one-line reason), and ``def register(add:
AddCommand) -> None``, which calls ``p = add("migrate", "help text", cmd_migrate)`` (the
subcommand, with the common options ``--db``/``--config``/... already on it) and adds its own
arguments to ``p`` (``args.env_option`` for a flag with a ``CRONQUEUE_*`` variable). The line:
``("migrate", ("migrate",))`` in ``parser.COMMANDS`` (the module and the commands it adds). A
run imports only its command's module (``--help`` imports them all); import heavy modules
(SQLAlchemy's engine, the shard) inside the command function all the same: the module's other
commands, and every ``--help``, pay for what it imports (``tests/unit/test_cli_lazy.py``).

``cronqueue.cli:main`` (the console script) is ``cronqueue.cli.main.main``.
"""

from cronqueue.cli.main import main

__all__ = ["main"]
