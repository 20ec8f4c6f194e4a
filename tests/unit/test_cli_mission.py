"""The cron_mission commands: ``mission``, ``schedule``, ``workers``, ``crontab``, ``work
--entry`` — parsing, exit codes and their output on a SQLite file in tmp_path."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue import Queue
from cronqueue.cli.main import build_parser, main
from cronqueue.config import load_config
from cronqueue.errors import ConfigError
from tests.conftest import run_main as run

pytestmark = pytest.mark.usefixtures("clean_env")

ENV_VARS = ("CRONQUEUE_DB_URL", "CRONQUEUE_CONFIG", "CRONQUEUE_TASK_DIR", "CRONQUEUE_LOG_DIR",
            "CRONQUEUE_LOG_LEVEL", "CRONQUEUE_TOTAL", "CRONQUEUE_SHARD", "CRONQUEUE_QUEUES",
            "CRONQUEUE_BATCH", "CRONQUEUE_MAX_SECONDS", "CRONQUEUE_ENTRY", "CRONQUEUE_NOW",
            "CRONQUEUE_ADD_PRIORITY", "CRONQUEUE_ADD_QUEUE", "CRONQUEUE_QUEUE")
PASSWORD = "s3cr3t-Pa55"







def write_config(directory: Path, body: str, *, db: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cronqueue.toml"
    head = f'db_url = "sqlite:///{directory / "cq.db"}"\n' if db else ""
    path.write_text(head + body, encoding="utf-8")
    return path


ADD_ONLY = """
[[mission]]
name = "add"
cron = "*/5 * * * *"
add = { taskscript = "tick.py", param = { n = 1 } }
"""

TWO_ENTRIES = """
[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = { total = 2, queues = ["default"], max_seconds = 55 }

[[mission]]
name = "nightly-report"
cron = "0 3 * * *"
add = { taskscript = "report.py", param = { day = "yesterday" }, priority = 5 }
"""


def init_db(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-db", "--config", str(cfg)]) == 0
    capsys.readouterr()


def total_tasks(cfg: Path) -> int:
    return int(Queue(config=load_config(cfg)).stats()["total"])


# -- parsing -----------------------------------------------------------------------------------


def test_mission_now_is_aware() -> None:
    args = build_parser().parse_args(["mission", "--now", "2026-11-23T10:00:00+01:00"])
    assert args.now.tzinfo is not None
    assert args.now.utcoffset() == timedelta(hours=1)
    assert args.now == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_mission_now_without_offset_is_utc() -> None:
    args = build_parser().parse_args(["mission", "--now", "2026-11-23T10:00:00"])
    assert args.now == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_mission_now_defaults_to_none() -> None:
    assert build_parser().parse_args(["mission"]).now is None


def test_mission_now_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_NOW", "2026-11-23T10:00:00Z")
    assert build_parser().parse_args(["mission"]).now == datetime(2026, 11, 23, 10, 0,
                                                                 tzinfo=UTC)


def test_mission_bad_now_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["mission", "--now", "yesterday"]) == 2
    assert "yesterday" in capsys.readouterr().err


def test_workers_stop_ids() -> None:
    args = build_parser().parse_args(["workers", "stop", "3", "4"])
    assert (args.action, args.ids, args.entry, args.shard, args.all) == ("stop", [3, 4], None,
                                                                         None, False)


def test_workers_stop_entry_and_shard() -> None:
    args = build_parser().parse_args(["workers", "stop", "--entry", "drain", "--shard", "1"])
    assert (args.action, args.ids, args.entry, args.shard) == ("stop", [], "drain", 1)


def test_workers_list_is_the_default_and_json() -> None:
    args = build_parser().parse_args(["workers", "--json"])
    assert args.action == "list"
    assert args.json is True
    assert build_parser().parse_args(["workers"]).json is False


@pytest.mark.parametrize("argv", [["workers", "stop", "0"], ["workers", "stop", "x"],
                                  ["workers", "halt"], ["workers", "stop", "--shard", "x"]])
def test_workers_bad_arguments_exit_2(argv: list[str]) -> None:
    assert run(argv) == 2


def test_work_entry() -> None:
    args = build_parser().parse_args(["work", "--entry", "drain"])
    assert args.entry == "drain"
    assert build_parser().parse_args(["work"]).entry is None


def test_work_entry_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_ENTRY", "drain-default")
    assert build_parser().parse_args(["work"]).entry == "drain-default"


@pytest.mark.parametrize("name", ["a b", "a/b", "../x", "", "A" * 65, ".x"])
def test_work_bad_entry_name_exits_2(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["work", "--entry", name])
    assert info.value.code == 2
    assert "entry" in capsys.readouterr().err


# -- workers -----------------------------------------------------------------------------------


def test_workers_stop_without_a_target_exits_2_with_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "stop"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("cronqueue: error:")
    assert "--entry" in err[0]
    assert captured.out == ""


def test_workers_stop_shard_alone_is_not_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "stop", "--shard", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_workers_on_a_fresh_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, ADD_ONLY)
    init_db(cfg, capsys)
    assert main(["workers", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["workers", "--config", str(cfg)]) == 0
    assert "no shard" in capsys.readouterr().out
    assert main(["workers", "stop", "--all", "--config", str(cfg)]) == 1
    assert "no running worker" in capsys.readouterr().out


# -- crontab -----------------------------------------------------------------------------------


def crontab_lines(out: str) -> tuple[list[str], list[str]]:
    lines = [line for line in out.splitlines() if line.strip()]
    return [x for x in lines if x.startswith("#")], [x for x in lines if not x.startswith("#")]


def test_crontab_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "app", f'db_url = "mysql+pymysql://cq:{PASSWORD}@127.0.0.1/app"'
                       '\nlog_dir = "var/log"\n', db=False)
    assert main(["crontab", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    comments, lines = crontab_lines(out)
    assert comments == []  # a config file was found: nothing to warn about
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("* * * * * cd ")
    assert f" mission --config {cfg.resolve()}" in line
    log_dir = (tmp_path / "app" / "var" / "log").resolve()
    assert line.endswith(f">> {log_dir}/mission.log 2>&1")
    assert PASSWORD not in out
    assert "mysql" not in line  # the URL stays in the config file, not in the crontab


def test_crontab_line_is_a_valid_shell_command(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Paths with spaces are quoted: the line splits into cd DIR && EXE ... mission ..."""
    app = tmp_path / "my app"
    cfg = write_config(app, 'log_dir = "my logs"\n')
    assert main(["crontab", "--config", str(cfg)]) == 0
    _, lines = crontab_lines(capsys.readouterr().out)
    assert len(lines) == 1
    words = shlex.split(lines[0])
    assert words[:5] == ["*"] * 5
    assert words[5:8] == ["cd", str(app.resolve()), "&&"]
    i = words.index("mission")
    assert words[i + 1:] == ["--config", str(cfg.resolve()), ">>",
                             str((app / "my logs" / "mission.log").resolve()), "2>&1"]
    program = words[8]
    assert Path(program).is_absolute()


def test_crontab_without_a_config_file_warns_first(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crontab"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("#")
    _, commands = crontab_lines(out)
    assert len(commands) == 1
    assert commands[0].startswith(f"* * * * * cd {tmp_path.resolve()} ")
    assert " mission" in commands[0]
    assert "--config" not in commands[0]


def test_crontab_from_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "etc", "")
    monkeypatch.setenv("CRONQUEUE_CONFIG", str(cfg))
    assert main(["crontab"]) == 0
    comments, lines = crontab_lines(capsys.readouterr().out)
    assert comments == []
    assert f" mission --config {cfg.resolve()}" in lines[0]


# -- schedule ----------------------------------------------------------------------------------


def test_schedule_lists_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, TWO_ENTRIES)
    init_db(cfg, capsys)
    assert main(["schedule", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    for name, cron in (("drain", "* * * * *"), ("nightly-report", "0 3 * * *")):
        assert name in out
        assert cron in out
    assert "03:00" in out  # the description of 0 3 * * *
    assert out.count("never") == 2


def test_schedule_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, TWO_ENTRIES)
    init_db(cfg, capsys)
    before = datetime.now(UTC)
    assert main(["schedule", "--config", str(cfg), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in entries] == ["drain", "nightly-report"]
    for e in entries:
        assert {"name", "cron", "description", "next", "last_outcome"} <= set(e)
        assert e["last_outcome"] is None
        assert len(e["next"]) == 3
        times = [datetime.fromisoformat(t) for t in e["next"]]
        assert all(t.tzinfo is not None for t in times)
        assert times == sorted(set(times))
        assert times[0] > before - timedelta(minutes=1)
    assert entries[0]["cron"] == "* * * * *"
    assert "03:00" in entries[1]["description"]


def test_schedule_without_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "")
    init_db(cfg, capsys)
    assert main(["schedule", "--config", str(cfg)]) == 0
    assert "no [[mission]]" in capsys.readouterr().out
    assert main(["schedule", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# -- mission (add entries only: no shard is started) -------------------------------------------


def mission(cfg: Path, now: str) -> int:
    return main(["mission", "--config", str(cfg), "--now", now])


def test_mission_adds_the_recurring_task_once_per_scheduled_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, ADD_ONLY)
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:10Z") == 0
    assert total_tasks(cfg) == 1
    assert mission(cfg, "2026-11-23T10:00:10Z") == 0
    assert total_tasks(cfg) == 1
    # Same minute, other second, other offset.
    assert mission(cfg, "2026-11-23T11:00:59+01:00") == 0
    assert total_tasks(cfg) == 1
    # Not a scheduled minute.
    assert mission(cfg, "2026-11-23T10:03:00Z") == 0
    assert total_tasks(cfg) == 1
    # The next scheduled minute.
    assert mission(cfg, "2026-11-23T10:05:30Z") == 0
    assert total_tasks(cfg) == 2
    assert mission(cfg, "2026-11-23T10:05:31Z") == 0
    assert total_tasks(cfg) == 2


def test_mission_task_is_the_entry_s_task(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, ADD_ONLY)
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:00Z") == 0
    tasks = Queue(config=load_config(cfg)).list()
    assert len(tasks) == 1
    assert tasks[0].taskscript == "tick.py"
    assert json.loads(tasks[0].param) == {"n": 1}
    assert tasks[0].queue == "default"


def test_mission_shows_in_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, ADD_ONLY)
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:00Z") == 0
    capsys.readouterr()
    assert main(["schedule", "--config", str(cfg), "--json"]) == 0
    (e,) = json.loads(capsys.readouterr().out)
    assert e["last_outcome"] == "added"
    assert datetime.fromisoformat(e["last_scheduled"]) == datetime(2026, 11, 23, 10, 0,
                                                                   tzinfo=UTC)
    assert isinstance(e["last_task"], int)
    assert main(["schedule", "--config", str(cfg)]) == 0
    assert "never" not in capsys.readouterr().out


def test_mission_missed_times_are_not_replayed(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """10:00 then 10:23: the catch-up ("latest", 1 h) adds 10:20 only, not 10:05..10:15."""
    cfg = write_config(tmp_path, ADD_ONLY)
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:00Z") == 0
    assert mission(cfg, "2026-11-23T10:23:00Z") == 0
    assert total_tasks(cfg) == 2
    assert mission(cfg, "2026-11-23T10:24:00Z") == 0
    assert total_tasks(cfg) == 2


def test_mission_catch_up_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, ADD_ONLY + 'catch_up = "skip"\n')
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:00Z") == 0
    assert mission(cfg, "2026-11-23T10:23:00Z") == 0
    assert total_tasks(cfg) == 1
    capsys.readouterr()
    assert main(["schedule", "--config", str(cfg), "--json"]) == 0
    (e,) = json.loads(capsys.readouterr().out)
    assert e["last_outcome"].startswith("skipped")


def test_mission_without_entries_does_nothing(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "")
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:00Z") == 0
    assert total_tasks(cfg) == 0


def test_mission_with_huge_retention_does_not_crash(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An age the config accepts must not make every tick fail (``now - 999999 days``
    is before year 1). Either the config refuses it (exit 2) or the tick works."""
    cfg = write_config(tmp_path, ADD_ONLY + '\n[retention]\ndone = "999999d"\n')
    try:
        load_config(cfg)
    except ConfigError:
        assert run(["mission", "--config", str(cfg)]) == 2
        return
    init_db(cfg, capsys)
    assert mission(cfg, "2026-11-23T10:00:00Z") == 0
    assert total_tasks(cfg) == 1


def test_future_drill_is_refused_beyond_one_minute_only() -> None:
    """`mission --now T`: up to a minute ahead is a normal tick (cron starts the mission a
    little before or after the minute); more would record runs that real ticks then skip."""
    from cronqueue.mission.tick import refuse_future_drill

    real = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    for ahead in (timedelta(0), timedelta(seconds=60), -timedelta(days=400)):
        refuse_future_drill(real + ahead, real)
    with pytest.raises(ConfigError, match=r"0:01:01 ahead of the clock .*--dry-run"):
        refuse_future_drill(real + timedelta(seconds=61), real)
