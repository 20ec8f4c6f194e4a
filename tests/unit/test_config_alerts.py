"""``[alerts]``, ``[health]`` and the entries' ``max_runtime``/``min_runtime``: parsed, and
every bad value refused with one line naming its key (no secret is ever taken from the file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronqueue.config import Config, load_config
from cronqueue.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_env")

ENTRY = """
[[mission]]
name = "nightly"
cron = "0 3 * * *"
add = { taskscript = "report.py" }
"""


def load(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "cronqueue.toml"
    path.write_text(body)
    return load_config(path)


def test_a_full_configuration(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
[alerts]
max_per_hour = 3
failed_queues = ["default", "*"]
failed_scripts = ["report.py"]
output_tail = 500
backlog = { default = "10m", "*" = 3600 }
entries = false
[alerts.webhook]
url = "https://hooks.example.com/T0/B1/xyz"
secret_env = "HOOK_KEY"
timeout = 2.5
[alerts.email]
host = "smtp.example.com"
tls = "ssl"
from = "cq@example.com"
to = "ops@example.com"
username_env = "SMTP_USER"
password_env = "SMTP_PASSWORD"
ca_file = "ca.pem"
[health]
ping_url = "https://hc-ping.com/uuid"
ping_timeout = 3
max_age = "5m"
[[mission]]
name = "nightly"
cron = "0 3 * * *"
add = { taskscript = "report.py" }
max_runtime = "1h"
min_runtime = 30
""")
    a = cfg.alerts
    assert a.enabled and a.max_per_hour == 3 and a.output_tail == 500 and not a.entries
    assert a.failed_queues == ("default", "*") and a.failed_scripts == ("report.py",)
    assert a.backlog == {"default": 600.0, "*": 3600.0}
    assert a.sinks == ("webhook", "email")
    assert a.email is not None and (a.email.port, a.email.to) == (465, ("ops@example.com",))
    assert a.email.ca_file == (tmp_path / "ca.pem").resolve()
    assert "xyz" not in repr(cfg) and "uuid" not in repr(cfg)  # tokens in URLs stay out
    assert cfg.health.max_age == 300 and cfg.health.ping_timeout == 3
    assert (cfg.missions[0].max_runtime, cfg.missions[0].min_runtime) == (3600.0, 30.0)


def test_without_the_tables_nothing_is_enabled(tmp_path: Path) -> None:
    cfg = load(tmp_path, ENTRY)
    assert not cfg.alerts.enabled and cfg.alerts.sinks == ()
    assert cfg.health.ping_url is None and cfg.health.max_age == 120


@pytest.mark.parametrize(("body", "message"), [
    ("[alerts]\nmax_per_hour = 0\n", "alerts.max_per_hour: must be an integer from 1 to 1000"),
    ("[alerts]\nrate = 1\n", "unknown key alerts.'rate'"),
    ("[alerts]\nfailed_queues = \"default\"\n", "alerts.failed_queues: expected a list"),
    ("[alerts]\nfailed_queues = [\"bad queue!\"]\n", "alerts.failed_queues: "),
    ("[alerts]\nbacklog = { default = \"soon\" }\n", "alerts.backlog.default: bad age"),
    ("[alerts]\nbacklog = { default = 0 }\n", "alerts.backlog.default: must be more than 0"),
    ("[alerts]\nentries = \"yes\"\n", "alerts.entries: expected true or false"),
    ("[alerts.webhook]\nurl = \"ftp://x/y\"\n", "alerts.webhook.url: expected an http://"),
    ("[alerts.webhook]\nurl = \"https://x/y\"\nsecret = \"k\"\n",
     "alerts.webhook.secret: never a secret in the config file: secret_env names"),
    ("[alerts.webhook]\nurl = \"https://x/y\"\nsecret_env = \"not a name\"\n",
     "alerts.webhook.secret_env: expected the name of an environment variable"),
    ("[alerts.webhook]\nsecret_env = \"K\"\n", "alerts.webhook.url: required"),
    ("[alerts.email]\nhost = \"h\"\nfrom = \"a@b.c\"\n", "alerts.email.to: required"),
    ("[alerts.email]\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"x\"]\n",
     "alerts.email: 'x' is not an e-mail address"),
    ("[alerts.email]\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"x@y.z\"]\ntls = \"yes\"\n",
     "alerts.email.tls: must be one of auto, starttls, ssl, none"),
    ("[alerts.email]\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"x@y.z\"]\npassword = \"p\"\n",
     "alerts.email.password: never a secret in the config file"),
    ("[alerts.email]\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"x@y.z\"]\nusername_env = \"U\"\n",
     "alerts.email: username_env and password_env go together"),
    ("[health]\nping_url = \"hc-ping.com/x\"\n", "health.ping_url: expected an http://"),
    ("[health]\nmax_age = \"2 minutes\"\n", "health.max_age: bad age"),
    ("[health]\nping = \"https://x/y\"\n", "unknown key health.'ping'"),
    (ENTRY + "max_runtime = \"long\"\n", "mission 'nightly'.max_runtime: bad age"),
    (ENTRY + "max_runtime = 60\nmin_runtime = 61\n",
     "mission 'nightly'.min_runtime: must not be more than max_runtime"),
    ("[[mission]]\nname = \"d\"\ncron = \"* * * * *\"\ndo_queue = { total = 1 }\n"
     "min_runtime = 5\n", "mission 'd'.min_runtime: only for an 'add' entry"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, body: str,
                                               message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, body)
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_ping_url_variable_wins_and_is_checked(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_PING_URL", "https://hc-ping.com/env-uuid")
    cfg = load(tmp_path, "[health]\nping_url = \"https://hc-ping.com/file\"\n")
    assert cfg.health.ping_url == "https://hc-ping.com/env-uuid"
    monkeypatch.setenv("CRONQUEUE_PING_URL", "hc-ping.com/x")
    with pytest.raises(ConfigError, match=r"^CRONQUEUE_PING_URL: expected an http://"):
        load(tmp_path, "")
