"""Precedence, through the command line: flag > ``CRONQUEUE_*`` > config file > default, each
level beating the next, for a setting of each type; an empty variable is unset; a bad one is
named; how the config file is found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cronqueue.cli.main import build_parser, config_from_args
from cronqueue.config import DEFAULT_DB_URL, Config
from tests.conftest import run_main

pytestmark = pytest.mark.usefixtures("clean_env")


@dataclass(frozen=True)
class Layered:
    """A setting the file holds: its flag, variable, file line and value, per level."""

    flag: list[str]
    env: tuple[str, str]
    file: str
    read: Callable[[Config], Any]
    values: tuple[Any, Any, Any, Any]  # what the flag, env, file and default give


LAYERED = {
    "str": Layered(["--db", "sqlite:///flag.db"], ("CRONQUEUE_DB_URL", "sqlite:///env.db"),
                   'db_url = "sqlite:///file.db"', lambda c: c.db_url,
                   ("sqlite:///flag.db", "sqlite:///env.db", "sqlite:///file.db",
                    DEFAULT_DB_URL)),
    "path": Layered(["--task-dir", "flag"], ("CRONQUEUE_TASK_DIR", "env"), 'task_dir = "file"',
                    lambda c: c.task_dir.name, ("flag", "env", "file", "tasks")),
    "int": Layered(["--batch", "7"], ("CRONQUEUE_BATCH", "8"), "[worker]\nbatch = 9",
                   lambda c: c.worker.batch, (7, 8, 9, 100)),
    "bool": Layered(["--python-fork", "false"], ("CRONQUEUE_PYTHON_FORK", "true"),
                    "[worker]\npython_fork = false", lambda c: c.worker.python_fork,
                    (False, True, False, False)),
}


def _config(argv: list[str]) -> Config:
    return config_from_args(build_parser().parse_args(["work", *argv]))


@pytest.mark.parametrize("kind", sorted(LAYERED))
@pytest.mark.parametrize("levels", [4, 3, 2, 1], ids=["flag", "env", "file", "default"])
def test_each_level_beats_the_next(kind: str, levels: int, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With the ``levels`` lowest levels present, the highest of them wins."""
    s = LAYERED[kind]
    if levels >= 2:
        (tmp_path / "cronqueue.toml").write_text(s.file + "\n")
    if levels >= 3:
        monkeypatch.setenv(*s.env)
    argv = s.flag if levels >= 4 else []
    assert s.read(_config(argv)) == s.values[4 - levels]


def test_the_bool_levels_are_not_the_defaults(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The bool's file (true) and env (false) values differ from their neighbours too."""
    (tmp_path / "cronqueue.toml").write_text("[worker]\npython_fork = true\n")
    assert _config([]).worker.python_fork is True
    monkeypatch.setenv("CRONQUEUE_PYTHON_FORK", "off")
    assert _config([]).worker.python_fork is False
    assert _config(["--python-fork"]).worker.python_fork is True


@pytest.mark.parametrize(("argv", "var", "env", "read", "values"), [
    (["--total", "4"], "CRONQUEUE_TOTAL", "3", lambda a: a.total, (4, 3, 1)),
    (["--queue", "q"], "CRONQUEUE_QUEUES", "a,b", lambda a: a.queues, (["q"], ["a", "b"], None)),
    (["--max-seconds", "2m"], "CRONQUEUE_MAX_SECONDS", "30", lambda a: a.max_seconds,
     (120.0, 30.0, None)),
])
def test_flag_only_settings_flag_beats_env_beats_default(
        argv: list[str], var: str, env: str, read: Callable[[Any], Any],
        values: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert read(parse(["work"])) == values[2]
    monkeypatch.setenv(var, env)
    assert read(build_parser().parse_args(["work"])) == values[1]
    assert read(build_parser().parse_args(["work", *argv])) == values[0]


@pytest.mark.parametrize("var", ["CRONQUEUE_DB_URL", "CRONQUEUE_BATCH", "CRONQUEUE_TOTAL",
                                 "CRONQUEUE_PYTHON_FORK", "CRONQUEUE_CONFIG"])
def test_an_empty_variable_is_unset(var: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cronqueue.toml").write_text(
        'db_url = "sqlite:///file.db"\n[worker]\nbatch = 9\npython_fork = true\n')
    monkeypatch.setenv(var, "")
    args = build_parser().parse_args(["work"])
    cfg = config_from_args(args)
    assert (cfg.db_url, cfg.worker.batch, cfg.worker.python_fork, args.total) == (
        "sqlite:///file.db", 9, True, 1)


@pytest.mark.parametrize(("var", "value", "reason"), [
    ("CRONQUEUE_BATCH", "many", "CRONQUEUE_BATCH: expected an integer, got 'many'"),
    ("CRONQUEUE_BATCH", "0", "worker.batch: must be a number > 0 and <= 10000, got 0 "
                             "(from CRONQUEUE_BATCH)"),
    ("CRONQUEUE_PYTHON_FORK", "maybe", "CRONQUEUE_PYTHON_FORK: expected true or false"),
    ("CRONQUEUE_CONFIG", "nowhere.toml", "config file 'nowhere.toml' not found "
                                         "(from CRONQUEUE_CONFIG)"),
])
def test_a_bad_variable_is_one_line_naming_it_exit_2(
        var: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(var, value)
    assert run_main(["stats"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reason in err[0], err


# -- the config file: --config > CRONQUEUE_CONFIG > ./cronqueue.toml > none ---------------------


def _write(path: Path, name: str) -> Path:
    path.write_text(f'db_url = "sqlite:///{name}.db"\n')
    return path


@pytest.mark.parametrize(("levels", "file", "found_by", "db_url"), [
    (3, "flag.toml", "argument", "sqlite:///flag.db"),
    (2, "env.toml", "CRONQUEUE_CONFIG", "sqlite:///env.db"),
    (1, "cronqueue.toml", "./cronqueue.toml", "sqlite:///cwd.db"),
    (0, None, "none", DEFAULT_DB_URL),
], ids=["flag", "env", "cwd", "none"])
def test_the_config_file_each_place_beats_the_next(
        levels: int, file: str | None, found_by: str, db_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if levels >= 1:
        _write(tmp_path / "cronqueue.toml", "cwd")
    if levels >= 2:
        monkeypatch.setenv("CRONQUEUE_CONFIG", str(_write(tmp_path / "env.toml", "env")))
    argv = ["--config", str(_write(tmp_path / "flag.toml", "flag"))] if levels >= 3 else []
    cfg = _config(argv)
    assert cfg.source == (tmp_path / file if file else None)
    assert (cfg.origin.file, cfg.db_url) == (found_by, db_url)
