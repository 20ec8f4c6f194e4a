"""Config for cron_mission: entry policy keys, names, [retention], [worker], time zone,
``parse_age`` and the retry backoff."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest

from cronqueue.config import (
    Config,
    MissionEntry,
    Retention,
    WorkerConfig,
    load_config,
    parse_age,
)
from cronqueue.errors import ConfigError

ENV_VARS = ("CRONQUEUE_DB_URL", "CRONQUEUE_CONFIG", "CRONQUEUE_TASK_DIR", "CRONQUEUE_LOG_DIR")
DAY = 86400


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_body(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "cq.toml"
    path.write_text(body, encoding="utf-8")
    return load_config(path)


def config_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_body(tmp_path, body)
    return str(info.value)


def entry(extra: str = "", name: str = "drain") -> str:
    return f"""
[[mission]]
name = "{name}"
cron = "* * * * *"
do_queue = {{ total = 2 }}
{extra}
"""


def only_entry(tmp_path: Path, extra: str) -> MissionEntry:
    cfg = load_body(tmp_path, entry(extra))
    assert len(cfg.missions) == 1
    return cfg.missions[0]


# -- catch_up and catch_up_window --------------------------------------------------------------


def test_entry_policy_defaults(tmp_path: Path) -> None:
    e = only_entry(tmp_path, "")
    assert e.catch_up == "latest"
    assert e.catch_up_window == 3600


@pytest.mark.parametrize("policy", ["latest", "skip"])
def test_catch_up_accepts_the_policies(tmp_path: Path, policy: str) -> None:
    assert only_entry(tmp_path, f'catch_up = "{policy}"').catch_up == policy


@pytest.mark.parametrize("value", ['"all"', '"Latest"', '""', "1", "true", '["latest"]'])
def test_catch_up_rejects_anything_else(tmp_path: Path, value: str) -> None:
    msg = config_error(tmp_path, entry(f"catch_up = {value}"))
    assert "drain" in msg
    assert "catch_up" in msg


@pytest.mark.parametrize(
    ("value", "seconds"),
    [('"90m"', 5400), ("3600", 3600), ('"2h"', 7200), ('"45s"', 45), ("0", 0), ("1.5", 1.5),
     ('"1d"', DAY)],
)
def test_catch_up_window_accepts_ages(tmp_path: Path, value: str, seconds: float) -> None:
    window = only_entry(tmp_path, f"catch_up_window = {value}").catch_up_window
    assert window == seconds
    assert isinstance(window, float | int)


@pytest.mark.parametrize("value", ['"soon"', '"-5m"', "-1", "true", '"90x"', '""', "[60]",
                                   "nan", "inf", '"99999999999w"'])
def test_catch_up_window_rejects_bad_values(tmp_path: Path, value: str) -> None:
    msg = config_error(tmp_path, entry(f"catch_up_window = {value}"))
    assert "drain" in msg
    assert "catch_up_window" in msg


def test_unknown_entry_key_names_entry_and_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, entry('catchup = "skip"'))
    assert "drain" in msg
    assert "catchup" in msg


# -- entry names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "drain-default", "nightly.report_2", "A" * 64, "0x"])
def test_good_entry_names(tmp_path: Path, name: str) -> None:
    cfg = load_body(tmp_path, entry(name=name))
    assert cfg.missions[0].name == name


@pytest.mark.parametrize("name", ["a b", "a/b", "A" * 65, "..", ".hidden", "-x", "_x", "a:b",
                                  "naïve", "tab\\there"])
def test_bad_entry_names_are_errors_naming_the_entry(tmp_path: Path, name: str) -> None:
    msg = config_error(tmp_path, entry(name=name))
    shown = name.replace("\\t", "\t")
    assert repr(shown) in msg or shown in msg
    assert "name" in msg


def test_missing_entry_name_names_the_entry_by_position(tmp_path: Path) -> None:
    body = entry() + '\n[[mission]]\ncron = "* * * * *"\ndo_queue = { total = 1 }\n'
    msg = config_error(tmp_path, body)
    assert "#2" in msg
    assert "name" in msg


def test_duplicate_entry_names_are_an_error(tmp_path: Path) -> None:
    msg = config_error(tmp_path, entry() + entry())
    assert "drain" in msg
    assert "duplicate" in msg


# -- [retention] -------------------------------------------------------------------------------


def test_retention_defaults() -> None:
    r = Retention()
    assert (r.done, r.failed, r.cancelled, r.runs) == (7 * DAY, 30 * DAY, 7 * DAY, 7 * DAY)


def test_retention_defaults_without_the_section(tmp_path: Path) -> None:
    assert load_body(tmp_path, entry()).retention == Retention()
    assert load_config().retention == Retention()


def test_retention_values(tmp_path: Path) -> None:
    cfg = load_body(tmp_path, """
[retention]
done = "7d"
failed = 3600
cancelled = "never"
runs = "12h"
""")
    assert cfg.retention == Retention(done=7 * DAY, failed=3600, cancelled=None, runs=43200)


def test_retention_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load_body(tmp_path, "[retention]\nruns = 1\n")
    assert cfg.retention.runs == 1
    assert cfg.retention.done == Retention().done
    assert cfg.retention.failed == Retention().failed


@pytest.mark.parametrize("key", ["done", "failed", "cancelled", "runs"])
def test_retention_never_is_none(tmp_path: Path, key: str) -> None:
    cfg = load_body(tmp_path, f'[retention]\n{key} = "never"\n')
    assert getattr(cfg.retention, key) is None


@pytest.mark.parametrize("key", ["pending", "running", "Done", "never"])
def test_retention_unknown_key_is_named(tmp_path: Path, key: str) -> None:
    msg = config_error(tmp_path, f'[retention]\n{key} = "1d"\n')
    assert f"retention.{key!r}" in msg or f"retention.{key}" in msg


@pytest.mark.parametrize("value", ['"soon"', "-1", "true", '"Never"', '"forever"', "[1]",
                                   "inf", '"99999999999w"'])
def test_retention_bad_value_is_named(tmp_path: Path, value: str) -> None:
    msg = config_error(tmp_path, f"[retention]\nfailed = {value}\n")
    assert "retention.failed" in msg


def test_retention_must_be_a_table(tmp_path: Path) -> None:
    assert "retention" in config_error(tmp_path, 'retention = "7d"\n')


# -- [worker] heartbeat, timezone --------------------------------------------------------------


def test_worker_heartbeat(tmp_path: Path) -> None:
    assert load_config().worker.heartbeat == WorkerConfig().heartbeat > 0
    cfg = load_body(tmp_path, "[worker]\nheartbeat = 2.5\n")
    assert cfg.worker.heartbeat == 2.5


@pytest.mark.parametrize("value", ["0", "-1", '"5s"', "true"])
def test_worker_heartbeat_bad_values(tmp_path: Path, value: str) -> None:
    assert "worker.heartbeat" in config_error(tmp_path, f"[worker]\nheartbeat = {value}\n")


def test_timezone(tmp_path: Path) -> None:
    assert load_config().timezone == "UTC"
    assert load_body(tmp_path, 'timezone = "Europe/Berlin"\n').timezone == "Europe/Berlin"


@pytest.mark.parametrize("value", ['"Mars/Olympus"', '"../../etc/passwd"', '""', "1"])
def test_bad_timezone_is_an_error(tmp_path: Path, value: str) -> None:
    assert "timezone" in config_error(tmp_path, f"timezone = {value}\n")


# -- parse_age ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(0, 0), (90, 90), (1.5, 1.5), ("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200),
     ("7d", 7 * DAY), ("2w", 14 * DAY), ("1.5h", 5400), (" 3H ", 10800), ("0", 0)],
)
def test_parse_age_accepts(value: str | int | float, seconds: float) -> None:
    assert parse_age(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["", "soon", "7 days", "1e3", "h", "-5", "--5m", "5m5s",
                                   -1, -0.5, True, False, None, [60], float("nan"),
                                   float("inf"), "99999999999w"])
def test_parse_age_rejects_junk_with_value_error(value: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked below
        parse_age(value)  # type: ignore[arg-type]


def test_parse_age_error_is_readable() -> None:
    with pytest.raises(ValueError, match="soon"):
        parse_age("soon")


# -- backoff -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base"),
    [(0, 10), (1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (6, 100), (30, 100), (2000, 100)],
)
def test_retry_delay_doubles_with_jitter_and_is_capped(monkeypatch: pytest.MonkeyPatch,
                                                         attempt: int, base: float) -> None:
    cfg = WorkerConfig(backoff=10, backoff_max=100)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert cfg.retry.delay(attempt) == pytest.approx(base)
    monkeypatch.setattr(random, "random", lambda: 0.999_999_9)
    assert cfg.retry.delay(attempt) == pytest.approx(base * 1.25)
    monkeypatch.setattr(random, "random", lambda: 0.5)
    assert cfg.retry.delay(attempt) == pytest.approx(base * 1.125)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8])
def test_retry_delay_stays_in_its_band(attempt: int) -> None:
    cfg = WorkerConfig(backoff=10, backoff_max=100)
    low = min(100, 10 * 2 ** (attempt - 1))
    delays = [cfg.retry.delay(attempt) for _ in range(200)]
    assert all(low <= d <= low * 1.25 for d in delays)
    assert len(set(delays)) > 1, "jitter spreads a burst of retries"


def test_retry_delay_is_a_float() -> None:
    assert isinstance(WorkerConfig().retry.delay(1), float)


@pytest.mark.parametrize("attempt", [1025, 1100, 10_000])
def test_retry_delay_of_a_very_late_attempt_is_the_cap(attempt: int) -> None:
    """``max_attempts`` has no upper bound: attempt 1100 of a float backoff (the default,
    10.0) must still be the cap, not an OverflowError from ``10.0 * 2 ** 1099``."""
    cfg = WorkerConfig(backoff=10.0, backoff_max=3600.0)
    assert 3600.0 <= cfg.retry.delay(attempt) <= 3600.0 * 1.25
    assert 3600.0 <= WorkerConfig().retry.delay(attempt) <= WorkerConfig().backoff_max * 1.25
