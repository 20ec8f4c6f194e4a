"""The configuration: ``load_config()`` builds one :class:`Config`, validated.

* ``settings`` — the values: ``Config``, ``WorkerConfig``, the mission entries, defaults,
  bounds and ``validate()``;
* ``parse`` — the TOML config file's shape (unknown keys and bad values are ``ConfigError``s
  naming the key and the entry);
* ``layers`` — where each value comes from, in one place: argument (flag) > ``CRONQUEUE_*``
  environment variable > config file > default, and how the file is found (``--config`` /
  ``config_file``, else ``CRONQUEUE_CONFIG``, else ``./cronqueue.toml``, else none).
"""

from cronqueue.config.layers import (
    CONFIG_VARIABLE,
    FILE_VARIABLES,
    describe,
    env_value,
    find_config_file,
    load_config,
    parse_bool,
)
from cronqueue.config.settings import (
    CATCH_UP_POLICIES,
    DEFAULT_CONFIG_NAME,
    DEFAULT_DB_FILE,
    DEFAULT_DB_URL,
    DEFAULT_INTERPRETERS,
    MAX_AGE,
    MAX_BATCH,
    MAX_SECONDS,
    MAX_SHARDS,
    MISSION_NAME_RE,
    WORKER_MAXIMA,
    WORKER_MINIMA,
    AddAction,
    Config,
    DoQueue,
    MissionEntry,
    Origin,
    Retention,
    WorkerConfig,
    check_bounds,
    parse_age,
)

__all__ = [
    "CATCH_UP_POLICIES",
    "CONFIG_VARIABLE",
    "DEFAULT_CONFIG_NAME",
    "DEFAULT_DB_FILE",
    "DEFAULT_DB_URL",
    "DEFAULT_INTERPRETERS",
    "FILE_VARIABLES",
    "MAX_AGE",
    "MAX_BATCH",
    "MAX_SECONDS",
    "MAX_SHARDS",
    "MISSION_NAME_RE",
    "WORKER_MAXIMA",
    "WORKER_MINIMA",
    "AddAction",
    "Config",
    "DoQueue",
    "MissionEntry",
    "Origin",
    "Retention",
    "WorkerConfig",
    "check_bounds",
    "describe",
    "env_value",
    "find_config_file",
    "load_config",
    "parse_age",
    "parse_bool",
]
