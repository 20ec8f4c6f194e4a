"""What the commands share: the parser class, flags with a ``CRONQUEUE_*`` default, the
argument types, and the signature of a command and of a command module's ``register``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from cronqueue.config import (
    CONFIG_VARIABLE,
    FILE_VARIABLES,
    MAX_SECONDS,
    MISSION_NAME_RE,
    Config,
    env_value,
    parse_bool,
)
from cronqueue.config import parse_age as config_parse_age
from cronqueue.decode import BIGINT_MAX
from cronqueue.model import Status
from cronqueue.store.engine import redact

if TYPE_CHECKING:
    from cronqueue.queue import Queue

Command = Callable[[argparse.Namespace, Config], int]
"""A command: the parsed arguments and the configuration in, the exit code out."""
AddCommand = Callable[[str, str, Command], argparse.ArgumentParser]
"""``add(name, help, command)``: a subcommand with the common options; returns its parser."""
Register = Callable[[AddCommand], None]
"""A command module's ``register(add)``: adds its commands and their arguments."""

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """argparse quotes a bad argument in its error: ``cronqueue --db URL check`` (the option
    before the command) printed ``invalid choice: 'mysql://cq:PASSWORD@db/app'``, and a URL
    given without ``--db`` ``unrecognized arguments: ...`` (to the terminal, or cron's mail).
    Every argument that holds a URL is shown redacted in those messages."""

    argv: ClassVar[list[str]] = []

    def error(self, message: str) -> NoReturn:
        super().error(redact_args(message, self.argv))


def redact_args(message: str, argv: Sequence[str]) -> str:
    for word in sorted({w for w in argv if "://" in w}, key=len, reverse=True):
        flag, eq, value = word.partition("=") if word.startswith("-") else ("", "", word)
        shown = flag + eq + redact(value)
        message = message.replace(repr(word), repr(shown)).replace(word, shown)
    return message


class _EnvAppend(argparse.Action):
    """Repeatable flag; its first use on the command line replaces the env default list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        items.append(values)
        setattr(namespace, self.dest, items)


def env_option(parser: argparse._ActionsContainer, *flags: str, env: str, help: str,
               **kw: Any) -> None:
    """A flag that the ``CRONQUEUE_*`` variable ``env`` also sets (shown in --help). When
    the config file can hold its setting too (``config.FILE_VARIABLES``, and ``--config``
    itself), ``load_config`` layers flag > variable > file > default and the flag's own
    default is None; otherwise the variable (read by ``config.env_value``: empty is unset)
    is the flag's default."""
    fallback = kw.pop("default", None)
    layered = env == CONFIG_VARIABLE or env in FILE_VARIABLES.values()
    default: Any = None if layered else env_value(env)
    if kw.get("action") == "append":
        kw["action"] = _EnvAppend
        if default is not None:
            default = [v for v in default.split(",") if v]
    parser.add_argument(*flags, default=default if default is not None else fallback,
                        help=f"{help} [env: {env}]", **kw)


def open_queue(cfg: Config) -> Queue:
    """The commands' :class:`~cronqueue.queue.Queue` on ``cfg`` (imported here, not by the
    parser: SQLAlchemy's engine only for the commands that use it)."""
    from cronqueue.queue import Queue

    return Queue(config=cfg)


def common_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("common options")
    env_option(g, "--db", env="CRONQUEUE_DB_URL", metavar="URL",
               help="database URL (default: config file, else sqlite:///cronqueue.db)")
    env_option(g, "--config", env=CONFIG_VARIABLE, metavar="FILE",
               help="TOML config file (default: ./cronqueue.toml if present)")
    env_option(g, "--task-dir", env="CRONQUEUE_TASK_DIR", metavar="DIR",
               help="directory task scripts are resolved in (default: tasks)")
    env_option(g, "--log-dir", env="CRONQUEUE_LOG_DIR", metavar="DIR",
               help="directory for task output logs (default: logs)")
    env_option(g, "--log-level", env="CRONQUEUE_LOG_LEVEL", metavar="LEVEL", type=log_level,
               help=f"logging level: {', '.join(LOG_LEVELS)}, in any case (default: warning; "
                    "info for work, mission and demo)")


def json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: ``what`` as JSON instead of text."""
    parser.add_argument("--json", action="store_true",
                        help=f"print {what} as JSON (times ISO-8601 with their UTC offset)")


# -- argument types ----------------------------------------------------------------------------

def log_level(text: str) -> str:
    """``debug`` ... ``error``, in any case (``DEBUG`` as Python's logging spells them)."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid choice {text!r} (choose from {', '.join(LOG_LEVELS)}, in any case; "
            "CRONQUEUE_LOG_LEVEL sets it too)")
    return level


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def upto(maximum: int) -> Callable[[str], int]:
    """An integer from 1 to ``maximum`` (a flag whose value sizes processes or claims)."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    return parse


task_id = upto(BIGINT_MAX)  # a task or worker id: what a BIGINT holds


def flag(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_age(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    try:
        return config_parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    return parse_age(text).total_seconds()


def max_seconds(text: str) -> float:
    """``work --max-seconds``: the bounds of the config's ``do_queue.max_seconds`` (which the
    mission passes as this flag): > 0 and <= MAX_SECONDS."""
    try:
        value = config_parse_age(text, MAX_SECONDS).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


TIME_YEARS = (1970, 9998)


def parse_time(text: str) -> datetime:
    """ISO-8601; without an offset it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r} (ISO-8601, e.g. 2026-11-23T15:00:00+01:00)") from None
    value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    # Year 1 or 9999 overflows once shifted by a time zone or a cron step (each entry of a
    # `mission --now 0001-01-01` tick failed with OverflowError); no real tick is out there.
    try:
        year = value.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not TIME_YEARS[0] <= year <= TIME_YEARS[1]:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r}: the year must be within {TIME_YEARS[0]}..{TIME_YEARS[1]}")
    return value


def entry_name(text: str) -> str:
    if not MISSION_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"bad entry name {text!r}")
    return text


def status(text: str) -> Status:
    try:
        return Status.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
