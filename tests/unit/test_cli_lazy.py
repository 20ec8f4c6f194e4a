"""A command imports what it needs, when it needs it (issue 16: a shard's start-up).

Each check runs in a fresh interpreter (``sys.modules`` of this one holds whatever other tests
imported) and looks at which modules a command's path loaded — never at a time."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cronqueue.cli import parser as cli_parser

# Never on the path of a shard or a tick without the feature configured.
OPTIONAL = ("cron_descriptor", "prometheus_client", "flask", "werkzeug", "jinja2", "waitress")
NOT_FOR_A_SHARD = (*OPTIONAL, "croniter", "cronqueue.mission", "cronqueue.alerts",
                   "cronqueue.web", "cronqueue.metrics", "cronqueue.queue", "cronqueue.cli.web",
                   "cronqueue.cli.tasks", "cronqueue.cli.setup", "cronqueue.cli.metrics",
                   "cronqueue.cli.migrate", "cronqueue.store.migrate", "smtplib",
                   "cronqueue.store.migrations.export", "urllib.request", "getpass")
NOT_FOR_A_TICK = (*OPTIONAL, "cronqueue.alerts.record", "cronqueue.alerts.sinks",
                  "cronqueue.alerts.ping", "cronqueue.web", "cronqueue.cli.web", "smtplib",
                  "urllib.request", "cronqueue.store.migrate")


def loaded_after(code: str) -> set[str]:
    """The modules loaded by a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    return set(json.loads(out.stdout.splitlines()[-1]))


def present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_work_imports_no_other_command_and_no_optional_package() -> None:
    """What ``cronqueue work`` imports before its first claim: the CLI, its parser for
    ``work`` only, the configuration and the shard."""
    modules = loaded_after(
        "from cronqueue.cli.main import build_parser, config_from_args\n"
        "args = build_parser(['work']).parse_args(['work'])\n"
        "config_from_args(args)\n"
        "import cronqueue.shard.loop")
    assert "cronqueue.shard.loop" in modules  # the probe did import the shard
    assert present(modules, NOT_FOR_A_SHARD) == []


def test_a_tick_without_alerts_or_ping_imports_neither() -> None:
    modules = loaded_after("from cronqueue.cli.main import build_parser\n"
                           "build_parser(['mission']).parse_args(['mission'])\n"
                           "import cronqueue.mission.tick")
    assert "croniter" in modules  # the schedule needs it
    assert present(modules, NOT_FOR_A_TICK) == []


def test_importing_cronqueue_loads_no_database_layer_and_no_model() -> None:
    """``import cronqueue`` (task scripts: ``cronqueue.task``) loads no SQLAlchemy, and not
    the model either (dataclasses, enum): its names come on first use."""
    modules = loaded_after("import cronqueue, cronqueue.task")
    assert present(modules, ("sqlalchemy", "pymysql", "cronqueue.model", "cronqueue.queue",
                             "dataclasses", *OPTIONAL)) == []
    modules = loaded_after("from cronqueue import Status, Task\nassert Status.DONE == 1")
    assert "cronqueue.model" in modules and present(modules, ("sqlalchemy",)) == []


def test_commands_lists_what_each_module_registers() -> None:
    """``parser.COMMANDS`` names, per module, exactly the commands its ``register`` adds
    (a command missing there would still run, through the parser of every module)."""
    for module, names in cli_parser.COMMANDS:
        added: list[str] = []

        def add(name: str, help: str, func: object, added: list[str] = added
                ) -> argparse.ArgumentParser:
            added.append(name)
            return argparse.ArgumentParser(prog=name)

        cli_parser.register_of(module)(add)
        assert tuple(added) == names, module


@pytest.mark.parametrize("argv", [
    ["work", "--total", "4", "--shard", "3", "--queue", "a", "--batch", "7"],
    ["mission", "--now", "2026-01-01T00:00:00Z", "--dry-run"],
    ["schedule", "pause", "nightly", "--reason", "x"],
    ["add", "x.py", "[1]", "--priority", "2"],
    ["migrate", "--status"],
])
def test_one_command_parser_parses_as_the_whole_parser(argv: list[str]) -> None:
    whole = vars(cli_parser.build_parser().parse_args(argv))
    alone = vars(cli_parser.build_parser(argv).parse_args(argv))
    assert alone == whole


def test_only_the_commands_module_is_registered() -> None:
    sub = next(a for a in cli_parser.build_parser(["work"])._actions
               if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["work", "mission", "schedule", "workers"]
    every = [n for _, names in cli_parser.COMMANDS for n in names]
    for argv in ([], ["--help"], ["--version"], ["wrok"]):
        sub = next(a for a in cli_parser.build_parser(argv)._actions
                   if isinstance(a, argparse._SubParsersAction))
        assert list(sub.choices) == every


GC_PROBE = """
import gc, sys
import cronqueue.shard.loop as loop
def run(self):
    print(gc.isenabled(), gc.get_freeze_count() > 0, flush=True)
    return loop.ShardReport()
loop.Shard.run = run
sys.argv = ["cronqueue", "work", "--db", "sqlite:///unused.db", "--task-dir", "."]
from cronqueue.cli.main import main
main()
print("not reached: a shard run as a program ends with os._exit (cli/main.py)")
"""


def test_the_shard_runs_with_the_collector_and_its_start_up_frozen(tmp_path: Path) -> None:
    """The process's ``main()`` pauses the cyclic GC for the start-up only: the shard itself
    runs with it, the start-up's objects frozen out of its collections."""
    out = subprocess.run([sys.executable, "-c", GC_PROBE], capture_output=True, text=True,
                         check=True, timeout=120, cwd=tmp_path)
    assert out.stdout.split() == ["True", "True"]  # exit status 0: check=True


def test_main_with_argv_leaves_the_collector_alone(tmp_path: Path) -> None:
    """A caller's ``main(argv)`` (a test, ``scripts/``) keeps its own collector as it was."""
    probe = ("import gc\nfrom cronqueue.cli.main import main\n"
             "main(['crontab', '--log-dir', 'logs'])\n"
             "print(gc.isenabled(), gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120, cwd=tmp_path)
    assert out.stdout.split()[-2:] == ["True", "0"]


OTHER_PROBE = """
import gc, sys
sys.argv = ["cronqueue", "crontab", "--log-dir", "logs"]
import cronqueue.cli.setup as setup
def crontab(args, cfg):
    print(gc.isenabled(), gc.get_freeze_count() > 0, flush=True)
    return 0
setup.cmd_crontab = crontab
from cronqueue.cli.main import main
sys.exit(main())
"""


def test_any_other_command_runs_with_the_collector(tmp_path: Path) -> None:
    """A command other than work and mission (a long ``web`` or ``status --wait``) runs with
    the collector: the pause ends before the command's function is called."""
    out = subprocess.run([sys.executable, "-c", OTHER_PROBE], capture_output=True, text=True,
                         check=True, timeout=120, cwd=tmp_path)
    assert out.stdout.split() == ["True", "True"]
