"""``[alerts]`` and ``[health]``: what the mission tick alerts on and where it sends the alerts
(``cronqueue/alerts/``), and the dead-man's switch (a URL each tick pings; ``cronqueue check
--health``). Secrets never sit in the file: the webhook's HMAC key and the SMTP credentials
are read from environment variables the file names::

    [alerts]
    max_per_hour = 6                 # messages per alert (kind + subject) per hour
    failed_queues = ["default"]      # a task's final failure alerts in these queues ("*": all)
    failed_scripts = ["report.py"]   # ... and for these scripts, whatever their queue
    output_tail = 1000               # characters of each failed task's output in the alert
    backlog = { default = "10m", "*" = "1h" }   # oldest due task older than this: alert
    entries = true                   # [[mission]] entries: failed, missed, max/min_runtime

    [alerts.webhook]
    url = "https://hooks.example.com/cronqueue"
    secret_env = "CRONQUEUE_WEBHOOK_SECRET"     # X-Cronqueue-Signature: sha256=<HMAC>
    timeout = 5

    [alerts.email]
    host = "smtp.example.com"
    port = 587
    tls = "auto"                     # auto (STARTTLS when offered), starttls, ssl, none
    from = "cronqueue@example.com"
    to = ["ops@example.com"]
    username_env = "CRONQUEUE_SMTP_USER"
    password_env = "CRONQUEUE_SMTP_PASSWORD"

    [health]
    ping_url = "https://hc-ping.com/<uuid>"     # or CRONQUEUE_PING_URL
    max_age = "2m"                   # check --health fails when the last tick is older
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from cronqueue.errors import ConfigError, InvalidTask
from cronqueue.spec import check_queue

AgeParser = Callable[[Any], timedelta]  # settings.parse_age (settings imports this module)

TLS_MODES = ("auto", "starttls", "ssl", "none")
ALL = "*"  # every queue, in failed_queues and backlog
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ADDRESS_RE = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")
_URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*")
MAX_PER_HOUR = 1000
MAX_TAIL = 64 * 1024
MAX_TIMEOUT = 300.0
PING_VARIABLE = "CRONQUEUE_PING_URL"


@dataclass(frozen=True)
class WebhookSink:
    url: str
    secret_env: str | None = None  # the variable holding the HMAC key
    timeout: float = 5.0

    def __repr__(self) -> str:  # the URL may carry a token (Slack): its host only
        return f"WebhookSink(host={url_host(self.url)!r}, secret_env={self.secret_env!r})"


@dataclass(frozen=True)
class EmailSink:
    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 587
    tls: str = "auto"
    username_env: str | None = None
    password_env: str | None = None
    ca_file: Path | None = None  # a private CA (default: the system's)
    timeout: float = 10.0


@dataclass(frozen=True)
class AlertsConfig:
    enabled: bool = False  # an [alerts] table is present: the tick evaluates the rules
    max_per_hour: int = 6
    failed_queues: tuple[str, ...] = ()
    failed_scripts: tuple[str, ...] = ()
    output_tail: int = 1000
    backlog: Mapping[str, float] = field(default_factory=dict)  # queue or "*" -> seconds
    entries: bool = True
    webhook: WebhookSink | None = None
    email: EmailSink | None = None

    @property
    def sinks(self) -> tuple[str, ...]:
        """The names of the configured sinks, in the order they are sent to."""
        return tuple(n for n, s in (("webhook", self.webhook), ("email", self.email)) if s)


@dataclass(frozen=True)
class HealthConfig:
    ping_url: str | None = None  # success; <url>/start and <url>/fail unless given
    ping_start_url: str | None = None
    ping_fail_url: str | None = None
    ping_timeout: float = 5.0
    max_age: float = 120.0  # seconds: check --health fails past it

    def __repr__(self) -> str:  # a ping URL is a credential (anyone may ping with it)
        return (f"HealthConfig(ping={url_host(self.ping_url) if self.ping_url else None!r}, "
                f"max_age={self.max_age:g})")


def url_host(url: str) -> str:
    """What a log line may show of a URL: its scheme and host (a path or query may be a
    token: healthchecks.io's uuid, a Slack webhook's)."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}"


# -- parsing -------------------------------------------------------------------------------------

def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(f"unknown key {where}.{extra[0]!r}")


def _number(key: str, value: Any, low: float, high: float, *, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float) \
            or not (math.isfinite(value) and low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}: must be {kind} from {low:g} to {high:g}, got {value!r}")
    return value


def _age(key: str, value: Any, age: AgeParser) -> float:
    try:
        seconds = age(value).total_seconds()
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{key}: must be more than 0, got {value!r}")
    return seconds


def _names(key: str, value: Any, *, queues: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of names, got {value!r}")
    if queues:
        for name in value:
            _queue(key, name)
    return tuple(value)


def _queue(key: str, name: str) -> None:
    if name == ALL:
        return
    try:
        check_queue(name)
    except InvalidTask as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _env_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME_RE.fullmatch(value):
        raise ConfigError(f"{key}: expected the name of an environment variable (the secret "
                          f"itself never goes in the file), got {value!r}")
    return value


def _url(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _URL_RE.fullmatch(value):
        raise ConfigError(f"{key}: expected an http:// or https:// URL")
    return value


def alerts_from_mapping(table: Mapping[str, Any], base: Path, age: AgeParser) -> AlertsConfig:
    _unknown(table, {"max_per_hour", "failed_queues", "failed_scripts", "output_tail",
                     "backlog", "entries", "webhook", "email"}, "alerts")
    kw: dict[str, Any] = {"enabled": True}
    if "max_per_hour" in table:
        kw["max_per_hour"] = _number("alerts.max_per_hour", table["max_per_hour"], 1,
                                     MAX_PER_HOUR, integer=True)
    for key in ("failed_queues", "failed_scripts"):
        if key in table:
            kw[key] = _names(f"alerts.{key}", table[key], queues=key == "failed_queues")
    if "output_tail" in table:
        kw["output_tail"] = _number("alerts.output_tail", table["output_tail"], 0, MAX_TAIL,
                                    integer=True)
    if "entries" in table:
        if not isinstance(table["entries"], bool):
            raise ConfigError(f"alerts.entries: expected true or false, got "
                              f"{table['entries']!r}")
        kw["entries"] = table["entries"]
    if "backlog" in table:
        backlog = table["backlog"]
        if not isinstance(backlog, dict):
            raise ConfigError("alerts.backlog: expected a table of queue = age "
                              "(e.g. { default = \"10m\" })")
        for name in backlog:
            _queue("alerts.backlog", name)
        kw["backlog"] = {n: _age(f"alerts.backlog.{n}", v, age) for n, v in backlog.items()}
    if "webhook" in table:
        kw["webhook"] = _webhook(_table("alerts.webhook", table["webhook"]))
    if "email" in table:
        kw["email"] = _email(_table("alerts.email", table["email"]), base)
    return AlertsConfig(**kw)


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    return value


def _no_secret(t: Mapping[str, Any], where: str, keys: tuple[str, ...], instead: str) -> None:
    for key in keys:
        if key in t:
            raise ConfigError(f"{where}.{key}: never a secret in the config file: {instead} "
                              "names the environment variable that holds it")


def _webhook(t: Mapping[str, Any]) -> WebhookSink:
    _no_secret(t, "alerts.webhook", ("secret",), "secret_env")
    _unknown(t, {"url", "secret_env", "timeout"}, "alerts.webhook")
    if "url" not in t:
        raise ConfigError("alerts.webhook.url: required")
    return WebhookSink(
        url=_url("alerts.webhook.url", t["url"]),
        secret_env=_env_name("alerts.webhook.secret_env", t["secret_env"])
        if "secret_env" in t else None,
        timeout=float(_number("alerts.webhook.timeout", t.get("timeout", 5.0), 0.1,
                              MAX_TIMEOUT)))


def _email(t: Mapping[str, Any], base: Path) -> EmailSink:
    where = "alerts.email"
    _no_secret(t, where, ("password", "username"), "password_env (username_env)")
    _unknown(t, {"host", "port", "tls", "from", "to", "username_env", "password_env",
                 "ca_file", "timeout"}, where)
    for key in ("host", "from", "to"):
        if key not in t:
            raise ConfigError(f"{where}.{key}: required")
    host = t["host"]
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,255}", host):
        raise ConfigError(f"{where}.host: expected a host name or address, got {host!r}")
    to = t["to"] if isinstance(t["to"], list) else [t["to"]]
    for address in [t["from"], *to]:
        if not isinstance(address, str) or not _ADDRESS_RE.fullmatch(address):
            raise ConfigError(f"{where}: {address!r} is not an e-mail address")
    tls = t.get("tls", "auto")
    if tls not in TLS_MODES:
        raise ConfigError(f"{where}.tls: must be one of {', '.join(TLS_MODES)}, got {tls!r}")
    user = _env_name(f"{where}.username_env", t["username_env"]) if "username_env" in t \
        else None
    password = _env_name(f"{where}.password_env", t["password_env"]) if "password_env" in t \
        else None
    if (user is None) != (password is None):
        raise ConfigError(f"{where}: username_env and password_env go together")
    ca_file = None
    if "ca_file" in t:
        if not isinstance(t["ca_file"], str):
            raise ConfigError(f"{where}.ca_file: expected a path")
        ca_file = (base / t["ca_file"]).resolve()
    return EmailSink(
        host=host, sender=t["from"], to=tuple(to),
        port=_number(f"{where}.port", t.get("port", 465 if tls == "ssl" else 587), 1, 65535,
                     integer=True),
        tls=tls, username_env=user, password_env=password, ca_file=ca_file,
        timeout=float(_number(f"{where}.timeout", t.get("timeout", 10.0), 0.1, MAX_TIMEOUT)))


def health_from_mapping(t: Mapping[str, Any], age: AgeParser) -> HealthConfig:
    _unknown(t, {"ping_url", "ping_start_url", "ping_fail_url", "ping_timeout", "max_age"},
             "health")
    kw: dict[str, Any] = {}
    for key in ("ping_url", "ping_start_url", "ping_fail_url"):
        if key in t:
            kw[key] = _url(f"health.{key}", t[key])
    if "ping_timeout" in t:
        kw["ping_timeout"] = float(_number("health.ping_timeout", t["ping_timeout"], 0.1, 60))
    if "max_age" in t:
        kw["max_age"] = _age("health.max_age", t["max_age"], age)
    return HealthConfig(**kw)


def health_from_env(health: HealthConfig, raw: str | None) -> HealthConfig:
    """``CRONQUEUE_PING_URL`` over the file's ``health.ping_url``."""
    if raw is None:
        return health
    try:
        return replace(health, ping_url=_url("health.ping_url", raw))
    except ConfigError:
        raise ConfigError(f"{PING_VARIABLE}: expected an http:// or https:// URL") from None
