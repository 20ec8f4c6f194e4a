"""Where each setting comes from — the one implementation of the precedence

    argument (a command-line flag, or a keyword of ``Queue()``/``load_config()``)
    > ``CRONQUEUE_*`` environment variable > config file > default,

and of how the config file is found: the ``config_file`` argument (``--config``), else
``CRONQUEUE_CONFIG``, else ``./cronqueue.toml`` in the working directory, else none (every
setting its argument, variable or default). A file named by the argument or the variable must
exist. An environment variable that is empty counts as unset, for every variable.

The command line reads its flags' variables through :func:`env_value` too: a flag whose
setting the file can hold (``FILE_VARIABLES``) is left to :func:`load_config`; the others
(``--total``, ``--queue``...) take the variable as their default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from cronqueue.config.alerts import PING_VARIABLE, health_from_env
from cronqueue.config.parse import from_mapping
from cronqueue.config.settings import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_DB_FILE,
    DEFAULT_DB_URL,
    Config,
    Origin,
    WorkerConfig,
)
from cronqueue.errors import ConfigError

CONFIG_VARIABLE = "CRONQUEUE_CONFIG"
# A setting that the config file holds and an argument or a variable may override: its variable.
FILE_VARIABLES: dict[str, str] = {
    "db_url": "CRONQUEUE_DB_URL",
    "task_dir": "CRONQUEUE_TASK_DIR",
    "log_dir": "CRONQUEUE_LOG_DIR",
    "batch": "CRONQUEUE_BATCH",  # worker.batch
    "python_fork": "CRONQUEUE_PYTHON_FORK",  # worker.python_fork
}
_TOP = ("db_url", "task_dir", "log_dir", "timezone")  # the arguments that are not [worker] keys


def parse_bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case; empty is
    false), else ``ValueError``."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def env_value(variable: str) -> str | None:
    """The environment layer of a setting: its variable's value, None when unset or empty."""
    return os.environ.get(variable) or None


def find_config_file(explicit: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The config file and how it was found (an ``Origin.file``): ``explicit``, else
    ``CRONQUEUE_CONFIG``, else ``./cronqueue.toml`` if it exists, else ``(None, "none")``."""
    for given, how in ((explicit, "argument"), (env_value(CONFIG_VARIABLE), CONFIG_VARIABLE)):
        if given:
            path = Path(given)
            if not path.is_file():
                raise ConfigError(f"config file {str(path)!r} not found"
                                  + (f" (from {how})" if how != "argument" else ""))
            return path.resolve(), how
    local = Path(DEFAULT_CONFIG_NAME)
    return (local.resolve(), f"./{DEFAULT_CONFIG_NAME}") if local.is_file() else (None, "none")


def load_config(config_file: str | os.PathLike[str] | None = None, *, db_url: str | None = None,
                **overrides: Any) -> Config:
    """The configuration: arguments (``db_url``, ``overrides``) > environment > file > default.

    ``overrides`` are top-level keys (``task_dir``, ``log_dir``, ``timezone``) or ``[worker]``
    keys (``timeout``, ``max_attempts``, ``batch``, ``python_fork``...); a ``None`` (a flag not
    given) is no argument. Relative ``task_dir``/``log_dir`` arguments and variables are taken
    from the working directory, the file's from the file's directory.
    """
    path, found_by = find_config_file(config_file)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: invalid TOML: {exc}") from None
    worker_keys = {f.name for f in fields(WorkerConfig)}
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:
        if key not in _TOP and key not in worker_keys:
            raise ConfigError(f"unknown option {key!r}")
    if db_url:
        given["db_url"] = db_url
    layer = dict.fromkeys(given, "argument")
    for key, variable in FILE_VARIABLES.items():
        raw = env_value(variable)
        if key not in given and raw is not None:
            given[key], layer[key] = _from_env(key, variable, raw), variable
    for key in ("task_dir", "log_dir"):
        if key in given:
            given[key] = (Path.cwd() / Path(given[key])).resolve()
    origin = Origin(file=found_by, db_url=layer.get("db_url") or (
        "config file" if "db_url" in data else "default"))
    cfg = from_mapping(data, path.parent if path else Path.cwd(), path, origin)
    cfg = replace(cfg, **{k: v for k, v in given.items() if k in _TOP},
                  worker=replace(cfg.worker, **{k: v for k, v in given.items()
                                                if k in worker_keys}),
                  health=health_from_env(cfg.health, env_value(PING_VARIABLE)))
    try:
        return cfg.validate()
    except ConfigError as exc:  # name the variable a bad value came from
        source = next((v for k, v in layer.items() if v != "argument" and str(exc).startswith(
            (f"{k}:", f"worker.{k}:"))), None)
        if source is None:
            raise
        raise ConfigError(f"{exc} (from {source})") from None


def _from_env(key: str, variable: str, raw: str) -> Any:
    """A variable's text as the setting's type (the file's own types: TOML has them)."""
    if key == "batch":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{variable}: expected an integer, got {raw!r}") from None
    if key == "python_fork":
        try:
            return parse_bool(raw)
        except ValueError as exc:
            raise ConfigError(f"{variable}: {exc}") from None
    return raw


def describe(cfg: Config) -> str:
    """One line: where the configuration and the database came from (the URL redacted), and
    whether the default SQLite file is yet to be created in the working directory."""
    if cfg.source is None:
        where = (f"no config file (none given, {CONFIG_VARIABLE} unset, no "
                 f"{DEFAULT_CONFIG_NAME} in {Path.cwd()})")
    else:
        where = f"config file {cfg.source} (from {cfg.origin.file})"
    line = f"{where}; database {cfg.safe_db_url} (from {cfg.origin.db_url})"
    default_file = Path.cwd() / DEFAULT_DB_FILE
    if cfg.db_url == DEFAULT_DB_URL and cfg.origin.db_url == "default" and \
            not default_file.exists():
        line += f": {default_file} does not exist yet and is created on first use"
    return line
