"""Issue 11, item 6: every number a shard or the mission computes with is bounded at load, with
a one-line ConfigError naming the key; a cron expression that never fires is refused."""

from __future__ import annotations

import os
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue.config import (
    MAX_BATCH,
    MAX_SECONDS,
    MAX_SHARDS,
    WORKER_MAXIMA,
    WorkerConfig,
    load_config,
)
from cronqueue.errors import ConfigError
from cronqueue.mission.schedule import never_fires
from tests.conftest import run_main

NUMERIC = [f.name for f in fields(WorkerConfig)
           if f.name not in ("python_fork", "python_preload")]
HUGE = "9223372036854775807"  # the largest TOML integer


@pytest.fixture(autouse=True)
def clean_env(clean_env: Path) -> Path:
    return clean_env


def config_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "cq.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_numeric_worker_key_has_a_bound() -> None:
    assert set(WORKER_MAXIMA) == set(NUMERIC)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", HUGE, "0", "-1"])
@pytest.mark.parametrize("key", NUMERIC)
def test_worker_numbers_out_of_bounds_name_the_key(tmp_path: Path, key: str,
                                                   value: str) -> None:
    """0.1.0 loaded backoff = 1e300 (a failing task then re-ran forever at 0 attempts), inf,
    nan and lease = 2**63-1, and the shards crashed on them."""
    if WorkerConfig.__dataclass_fields__[key].type == "int" and value in (
            "inf", "-inf", "nan", "1e300"):
        value = HUGE  # a float is refused as "not an integer" already
    message = config_error(tmp_path, f"[worker]\n{key} = {value}\n")
    assert message.startswith(f"worker.{key}:"), message


@pytest.mark.parametrize("key", ["heartbeat", "poll_interval"])
def test_database_loop_intervals_have_a_floor(tmp_path: Path, key: str) -> None:
    """heartbeat = 1e-7 passed check; the shard's heartbeat then wrote in a busy loop."""
    message = config_error(tmp_path, f"[worker]\n{key} = 1e-7\n")
    assert message == f"worker.{key}: must be at least 0.01, got 1e-07"
    load_config(_write(tmp_path, f"[worker]\n{key} = 0.01\n"))


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "ok.toml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize("key", NUMERIC)
def test_worker_numbers_at_their_bound_are_accepted(tmp_path: Path, key: str) -> None:
    extra = "heartbeat = 1\n" if key == "lease" else ""
    if key == "backoff":
        extra = f"backoff_max = {MAX_SECONDS}\n"
    if key == "heartbeat":
        extra = f"lease = {MAX_SECONDS}\n"
    maximum = WORKER_MAXIMA[key]
    path = tmp_path / "cq.toml"
    path.write_text(f"[worker]\n{key} = {int(maximum)}\n{extra}", encoding="utf-8")
    cfg = load_config(path)
    assert getattr(cfg.worker, key) == maximum


def test_largest_backoff_still_gives_a_retry_time() -> None:
    worker = WorkerConfig(backoff=MAX_SECONDS, backoff_max=MAX_SECONDS)
    delay = worker.retry.delay(10**6)
    assert MAX_SECONDS <= delay <= MAX_SECONDS * 1.25
    assert datetime.now(UTC) + timedelta(seconds=delay) > datetime.now(UTC)


@pytest.mark.parametrize(("field", "value"), [
    ("total", HUGE), ("total", str(MAX_SHARDS + 1)), ("batch", HUGE),
    ("batch", str(MAX_BATCH + 1)), ("max_seconds", "inf"), ("max_seconds", "1e300"),
    ("max_seconds", "nan")])
def test_do_queue_numbers_out_of_bounds_name_the_entry_and_key(tmp_path: Path, field: str,
                                                              value: str) -> None:
    extra = "" if field == "total" else ", total = 1"
    message = config_error(tmp_path, f'[[mission]]\nname = "m"\ncron = "* * * * *"\n'
                                     f'do_queue = {{ {field} = {value}{extra} }}\n')
    assert message.startswith(f"mission 'm'.do_queue.{field}:"), message


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_never_firing_cron_is_refused_naming_the_entry(tmp_path: Path, cron: str) -> None:
    """0.1.0 accepted it; then every mission tick failed with CroniterBadDateError."""
    message = config_error(tmp_path, f'[[mission]]\nname = "leapday"\ncron = "{cron}"\n'
                                     'add = { taskscript = "ok.sh" }\n')
    assert message == f"mission 'leapday': cron expression '{cron}' never fires (no such date)"


@pytest.mark.parametrize("cron", ["0 * * * * 30", "* * * * * * *", "0 3 * * * 0 2027"])
def test_a_cron_with_seconds_or_years_is_refused_naming_the_entry(tmp_path: Path,
                                                                  cron: str) -> None:
    """croniter reads a 6th field as seconds: "0 * * * * 30" (hourly at :00:30) passed check
    and schedule showed its next runs, but a mission ticking in the first seconds of each
    minute never fired it with catch_up = "skip" (and a minute late otherwise)."""
    message = config_error(tmp_path, f'[[mission]]\nname = "secs"\ncron = "{cron}"\n'
                                     'add = { taskscript = "ok.sh" }\n')
    assert message.startswith(f"mission 'secs': cron expression '{cron}' has ")
    assert "give 5" in message


def test_cron_macros_are_still_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cq.toml"
    path.write_text('[[mission]]\nname = "h"\ncron = "@hourly"\n'
                    'add = { taskscript = "ok.sh" }\n', encoding="utf-8")
    assert run_main(["check", "--config", str(path)]) in (0, 1)  # no config error (2)


@pytest.mark.parametrize("cron", ["0 0 29 2 *", "0 0 30 2 1", "* * * * *", "0 0 31 * *"])
def test_rare_but_real_dates_are_accepted(cron: str) -> None:
    assert not never_fires(cron)


def test_check_refuses_a_never_firing_entry_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cq.toml"
    path.write_text('[[mission]]\nname = "every"\ncron = "* * * * *"\n'
                    'add = { taskscript = "ok.sh" }\n'
                    '[[mission]]\nname = "leapday"\ncron = "0 0 30 2 *"\n'
                    'add = { taskscript = "ok.sh" }\n', encoding="utf-8")
    for command in ("check", "mission", "schedule"):
        assert run_main([command, "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "'leapday'" in err[0] and "never fires" in err[0], err


@pytest.mark.parametrize("argv", [
    ["--total", str(10**20)], ["--total", str(MAX_SHARDS + 1)],
    ["--batch", str(10**20)], ["--batch", str(MAX_BATCH + 1)]])
def test_work_total_and_batch_flags_are_bounded(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """0.1.0 accepted --total/--batch 10**20 and the shard crashed."""
    assert run_main(["work", *argv]) == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: must be <=" in err


@pytest.mark.parametrize("value", [str(MAX_SECONDS + 1), "367d", "53w", "100000d"])
def test_work_max_seconds_has_the_configs_bound(value: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`work --max-seconds` allowed up to 100 years (parse_age's bound for ages) while the
    config's do_queue.max_seconds, which the mission passes as that very flag, allows 366
    days: one bound for both."""
    assert run_main(["work", "--max-seconds", value]) == 2
    err = capsys.readouterr().err
    assert (f"argument --max-seconds: age {value!r} is too large (at most {MAX_SECONDS} "
            "seconds)") in err, err
    message = config_error(tmp_path, '[[mission]]\nname = "m"\ncron = "* * * * *"\n'
                                     f'do_queue = {{ max_seconds = {MAX_SECONDS + 1}, '
                                     'total = 1 }\n')
    assert message == (f"mission 'm'.do_queue.max_seconds: must be a number > 0 and "
                       f"<= {MAX_SECONDS}, got {MAX_SECONDS + 1}")


def test_work_max_seconds_must_be_positive_like_the_configs(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["work", "--max-seconds", "0"]) == 2
    assert "argument --max-seconds: must be > 0, got '0'" in capsys.readouterr().err


def test_work_max_seconds_accepts_the_configs_maximum() -> None:
    from cronqueue.cli.main import build_parser

    for value in (str(MAX_SECONDS), "366d", "0.5"):
        assert build_parser().parse_args(["work", "--max-seconds", value]).max_seconds == (
            MAX_SECONDS if value != "0.5" else 0.5)


def test_work_batch_env_is_bounded(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRONQUEUE_BATCH", str(10**20))
    assert run_main(["work"]) == 2
    err = capsys.readouterr().err
    assert "worker.batch: must be a number > 0 and <= 10000" in err
    assert "(from CRONQUEUE_BATCH)" in err
    assert os.environ["CRONQUEUE_BATCH"] == str(10**20)


@pytest.mark.parametrize("argv", [
    ["status", str(10**20)], ["cancel", str(10**20)], ["retry", str(10**20)],
    ["list", "--limit", str(10**20)], ["workers", "stop", str(10**20)],
    ["demo", "--tasks", str(10**20)]])
def test_id_and_count_flags_are_bounded(argv: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """0.1.0: `cronqueue status 10**20` ended in an OverflowError traceback (SQLite)."""
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert ": must be <=" in err and "Traceback" not in err


def test_check_shows_control_characters_in_paths_visibly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TOML escape put an ESC sequence or a newline (a forged "ok" line) into check's
    output through task_dir/log_dir."""
    path = tmp_path / "cq.toml"
    path.write_text('task_dir = "t\\u001b]0;pwn\\u0007"\nlog_dir = "l\\nok   forged"\n'
                    f'db_url = "sqlite:///{tmp_path}/q.db"\n', encoding="utf-8")
    run_main(["check", "--config", str(path)])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "t\\x1b]0;pwn\\x07 does not exist" in out
    assert not any(line.startswith("ok   forged") for line in out.splitlines()), out


def test_check_fails_a_log_dir_that_is_not_a_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cq.toml"
    path.write_text(f'log_dir = "/dev/null"\ndb_url = "sqlite:///{tmp_path}/q.db"\n',
                    encoding="utf-8")
    assert run_main(["check", "--config", str(path)]) == 1
    assert "FAIL log_dir   /dev/null: /dev/null is not a directory" in capsys.readouterr().out


def test_check_fails_a_loose_task_dir_and_warns_about_a_loose_log_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The runner refuses every script of a group/world-writable task_dir (StrictModes), so
    `check` must not say ok for it; a world-writable log_dir (1777) gets a warning."""
    tasks, logs = tmp_path / "tasks", tmp_path / "logs"
    tasks.mkdir(mode=0o755)
    logs.mkdir()
    logs.chmod(0o1777)
    path = tmp_path / "cq.toml"
    path.write_text(f'task_dir = "{tasks}"\nlog_dir = "{logs}"\n'
                    f'db_url = "sqlite:///{tmp_path}/q.db"\n', encoding="utf-8")
    run_main(["check", "--config", str(path)])
    out = capsys.readouterr().out
    assert f"ok   task_dir  {tasks}\n" in out
    assert f"WARN log_dir   {logs} is group- or world-writable (mode 1777)" in out
    tasks.chmod(0o777)
    assert run_main(["check", "--config", str(path)]) == 1
    assert (f"FAIL task_dir  {tasks} is group- or world-writable (mode 777): every task would "
            "be refused") in capsys.readouterr().out
