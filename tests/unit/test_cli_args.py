"""The command line: argument helpers, the parser, env defaults and exit codes of ``main``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cronqueue.cli.args import parse_age, parse_time
from cronqueue.cli.main import build_parser, config_from_args, main
from cronqueue.store.schema import render_ddl
from tests.conftest import run_main as run

pytestmark = pytest.mark.usefixtures("clean_env")

WORK_ENV = {
    "--db": "CRONQUEUE_DB_URL",
    "--config": "CRONQUEUE_CONFIG",
    "--task-dir": "CRONQUEUE_TASK_DIR",
    "--log-dir": "CRONQUEUE_LOG_DIR",
    "--log-level": "CRONQUEUE_LOG_LEVEL",
    "--total": "CRONQUEUE_TOTAL",
    "--shard": "CRONQUEUE_SHARD",
    "--queue": "CRONQUEUE_QUEUES",
    "--batch": "CRONQUEUE_BATCH",
    "--max-seconds": "CRONQUEUE_MAX_SECONDS",
}
ALL_ENV = (*WORK_ENV.values(), "CRONQUEUE_ADD_PRIORITY", "CRONQUEUE_ADD_QUEUE", "CRONQUEUE_QUEUE")






# -- parse_age / parse_time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("12h", 43_200),
        ("7d", 604_800),
        ("2w", 1_209_600),
        ("1.5h", 5_400),
        (" 3H ", 10_800),
        ("0", 0),
    ],
)

def test_parse_age(text: str, seconds: float) -> None:
    assert parse_age(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "abc", "-5", "5x", "m", "5 minutes", "1d2h", "1e3"])
def test_parse_age_rejects_bad_input(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="bad age"):
        parse_age(text)


def test_parse_time_naive_is_utc() -> None:
    value = parse_time("2026-11-23T15:00:00")
    assert value == datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert value.utcoffset() == timedelta(0)


def test_parse_time_keeps_offset() -> None:
    value = parse_time("2026-11-23T15:00:00+01:00")
    assert value.utcoffset() == timedelta(hours=1)
    assert value == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    assert value.tzinfo == timezone(timedelta(hours=1))


@pytest.mark.parametrize("text", ["tomorrow", "2026-13-01T00:00:00", "", "15:00 next day"])
def test_parse_time_rejects_bad_input(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="bad time"):
        parse_time(text)


# -- the parser ---------------------------------------------------------------------------------


def test_work_flags() -> None:
    args = build_parser().parse_args(
        ["work", "--total", "4", "--shard", "1", "--queue", "a", "--queue", "b",
         "--batch", "10", "--max-seconds", "55"])
    assert args.command == "work"
    assert args.total == 4
    assert args.shard == 1
    assert args.queues == ["a", "b"]
    assert args.batch == 10
    assert args.max_seconds == 55.0


def test_work_defaults_without_env() -> None:
    args = build_parser().parse_args(["work"])
    assert (args.total, args.shard, args.queues, args.batch, args.max_seconds) == (
        1, 0, None, None, None)


def test_work_max_seconds_accepts_an_age() -> None:
    assert build_parser().parse_args(["work", "--max-seconds", "2m"]).max_seconds == 120.0


def test_work_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_TOTAL", "4")
    monkeypatch.setenv("CRONQUEUE_SHARD", "3")
    monkeypatch.setenv("CRONQUEUE_QUEUES", "a,b")
    monkeypatch.setenv("CRONQUEUE_BATCH", "10")
    monkeypatch.setenv("CRONQUEUE_MAX_SECONDS", "55")
    monkeypatch.setenv("CRONQUEUE_PYTHON_FORK", "yes")
    monkeypatch.setenv("CRONQUEUE_DB_URL", "sqlite:///env.db")
    monkeypatch.setenv("CRONQUEUE_TASK_DIR", "/srv/tasks")
    args = build_parser().parse_args(["work"])
    assert args.total == 4
    assert args.shard == 3
    assert args.queues == ["a", "b"]
    assert args.max_seconds == 55.0
    # The settings the config file can hold too are layered by the configuration.
    assert (args.db, args.task_dir, args.batch, args.python_fork) == (None, None, None, None)
    cfg = config_from_args(args)
    assert cfg.db_url == "sqlite:///env.db"
    assert cfg.task_dir == Path("/srv/tasks")
    assert (cfg.worker.batch, cfg.worker.python_fork) == (10, True)


@pytest.mark.parametrize(("var", "value"), [("CRONQUEUE_QUEUE", "emails"),
                                            ("CRONQUEUE_ADD_QUEUE", "emails"),
                                            ("CRONQUEUE_ADD_PRIORITY", "5"),
                                            ("CRONQUEUE_TOTAL", "2"),
                                            ("CRONQUEUE_SHARD", "1")])
def test_parser_builds_with_env_defaults_set(monkeypatch: pytest.MonkeyPatch, var: str,
                                             value: str) -> None:
    # The runner sets CRONQUEUE_QUEUE for every task script: a task script calling the CLI
    # must not crash while the parser is being built.
    monkeypatch.setenv(var, value)
    parser = build_parser()
    assert parser.parse_args(["stats"]).command == "stats"


def test_add_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_ADD_PRIORITY", "7")
    monkeypatch.setenv("CRONQUEUE_ADD_QUEUE", "emails")
    args = build_parser().parse_args(["add", "x.py"])
    assert (args.priority, args.queue) == (7, "emails")


def test_task_env_does_not_leak_into_add(monkeypatch: pytest.MonkeyPatch) -> None:
    # A task script runs with CRONQUEUE_QUEUE set to its own queue; `cronqueue add` from inside
    # it must still default to the 'default' queue.
    monkeypatch.setenv("CRONQUEUE_QUEUE", "emails")
    assert build_parser().parse_args(["add", "x.py"]).queue == "default"
    assert build_parser().parse_args(["add", "x.py", "--priority", "1"]).priority == 1


def test_work_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_TOTAL", "4")
    monkeypatch.setenv("CRONQUEUE_BATCH", "10")
    monkeypatch.setenv("CRONQUEUE_DB_URL", "sqlite:///env.db")
    args = build_parser().parse_args(["work", "--total", "8", "--batch", "3",
                                      "--db", "sqlite:///flag.db"])
    assert (args.total, args.batch, args.db) == (8, 3, "sqlite:///flag.db")


def test_work_queue_flag_replaces_env_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flag > environment: --queue c must mean only c, not the env list plus c.
    monkeypatch.setenv("CRONQUEUE_QUEUES", "a,b")
    args = build_parser().parse_args(["work", "--queue", "c"])
    assert args.queues == ["c"]


def test_work_bad_env_value_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRONQUEUE_TOTAL", "many")
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["work"])
    assert info.value.code == 2
    assert "many" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["work", "--total", "0"], ["work", "--total", "x"],
                                  ["work", "--batch", "-1"], ["work", "--max-seconds", "soon"]])
def test_work_bad_flag_values_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2


def test_work_help_mentions_every_env_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["work", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag, var in WORK_ENV.items():
        assert flag in out
        assert var in out, f"work --help does not mention {var} for {flag}"


def test_work_help_description_has_no_doubled_percent(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["work", "--help"])
    out = capsys.readouterr().out
    assert "%%" not in out
    assert "id % TOTAL == SHARD" in out


def test_add_flags() -> None:
    args = build_parser().parse_args(
        ["add", "job.py", '{"a":1}', "--priority", "-5", "--queue", "q", "--delay", "5m"])
    assert (args.taskscript, args.param, args.priority, args.queue) == (
        "job.py", '{"a":1}', -5, "q")
    assert args.delay == 300.0
    assert args.at is None


def test_add_delay_and_at_are_exclusive() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["add", "x.py", "--delay", "5", "--at", "2026-01-01T00:00"])
    assert info.value.code == 2


def test_list_status_accepts_name_and_code() -> None:
    parser = build_parser()
    assert int(parser.parse_args(["list", "--status", "failed"]).status) == 3
    assert int(parser.parse_args(["list", "--status", "0"]).status) == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["list", "--status", "junk"])


# -- main: exit codes ---------------------------------------------------------------------------


def test_add_outside_task_dir_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add", "../x.sh"]) == 2
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1, captured.err
    assert "../x.sh" in err_lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_add_bad_param_json_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add", "x.py", "{bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "JSON" in err[0]


def test_work_shard_out_of_range_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["work", "--total", "2", "--shard", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--shard" in err[0]


def test_work_negative_shard_exits_2() -> None:
    assert main(["work", "--total", "2", "--shard", "-1"]) == 2


def test_work_bad_queue_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["work", "--queue", "bad name"]) == 2
    assert "bad name" in capsys.readouterr().err


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cq.toml").write_text("nonsense_key = 1\n")
    assert main(["stats", "--config", str(tmp_path / "cq.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "nonsense_key" in err[0]


def test_bad_log_level_env_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # An env default bypasses argparse's choices; it must still be exit 2, not a traceback.
    monkeypatch.setenv("CRONQUEUE_LOG_LEVEL", "verbose")
    assert run(["init-db", "--print-ddl", "--dialect", "sqlite"]) == 2


def test_status_of_unknown_id_on_fresh_db_exits_1(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-db"]) == 0
    assert (tmp_path / "cronqueue.db").exists()
    capsys.readouterr()
    assert main(["status", "999"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "999" in err[0]


def test_add_then_status_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init-db"]) == 0
    capsys.readouterr()
    assert main(["add", "job.py", '{"a":"é"}', "--priority", "3"]) == 0
    task_id = int(capsys.readouterr().out.strip())
    assert task_id >= 1
    assert main(["status", str(task_id)]) == 0
    out = capsys.readouterr().out
    assert f"task {task_id}: pending" in out
    assert "job.py" in out


def test_print_ddl_is_the_schema_rendering(capsys: pytest.CaptureFixture[str]) -> None:
    for dialect in ("sqlite", "mysql"):
        assert main(["init-db", "--print-ddl", "--dialect", dialect]) == 0
        assert capsys.readouterr().out == render_ddl(dialect)


@pytest.mark.parametrize("argv", [
    ["--db", "mysql://cq:Zq@9Qv7Wk3pJx@db/app", "check"],  # the option before the command
    ["check", "mysql://cq:Qv7Wk3pJx@db/app"],  # a URL without --db
    ["list", "--limit", "mysql://cq@db/app?password=Qv7Wk3pJx"],  # a value of the wrong type
    ["--db=mysql://cq@db/app?pass%77ord=Qv7Wk3pJx", "list"],
])
def test_a_usage_error_never_shows_a_password(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """0.1.0 and issue 11: argparse quoted the URL, password and all, in its error."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Qv7Wk3pJx" not in err and "***" in err, err


@pytest.fixture(scope="module")
def piped_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite queue of 3,000 tasks (more output than a pipe holds)."""
    import subprocess
    import sys

    from tests.helpers import clean_env

    tmp = tmp_path_factory.mktemp("pipe")
    (tmp / "tasks").mkdir()
    db = f"sqlite:///{tmp}/q.db"
    code = (f"from cronqueue import Queue; q = Queue({db!r}, task_dir={str(tmp / 'tasks')!r})"
            "; q.init_db(); q.add_many([{'taskscript': 'ok.sh'}] * 3000)")
    subprocess.run([sys.executable, "-c", code], check=True, env=clean_env())
    return db


@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("argv", [["list", "--limit", "3000"], ["list", "--json"],
                                  ["status", "1"], ["stats"], ["--help"]])
def test_a_closed_pipe_ends_the_command_quietly_with_141(piped_db: str, argv: list[str],
                                                         buffered: bool) -> None:
    """`cronqueue list | head` / `status N | head -1` printed a BrokenPipeError traceback (a
    write that met the closed pipe), or "Exception ignored ... BrokenPipeError" and exit 120
    (buffered output flushed at exit: the usual case when stdout is a pipe). Now: nothing on
    stderr, exit 141 as a Unix tool killed by SIGPIPE."""
    import os
    import subprocess

    from cronqueue.cli.main import SIGPIPE_EXIT
    from tests.helpers import clean_env, cronqueue_cmd

    env = clean_env()
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)  # the reader has left before the first write: deterministic
    try:
        done = subprocess.run(cronqueue_cmd(*argv, "--db", piped_db) if argv[0] != "--help"
                              else cronqueue_cmd(*argv), stdout=write, stderr=subprocess.PIPE,
                              env=env, timeout=60, check=False)
    finally:
        os.close(write)
    err = done.stderr.decode()
    assert err == "", err
    # (argparse itself ignores a failed write of --help: unbuffered, nothing is left to fail)
    expected = 0 if argv == ["--help"] and not buffered else SIGPIPE_EXIT
    assert done.returncode == expected and SIGPIPE_EXIT == 141


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00", "0001-01-01T00:00:00+01:00",
                                  "1969-12-31T23:59:59", "9999-12-31T23:59:59",
                                  "9999-12-31T23:00:00-05:00"])
def test_parse_time_rejects_years_no_tick_or_run_at_can_have(text: str) -> None:
    """`mission --now 0001-01-01` failed each entry with OverflowError (a time zone or cron
    step past the calendar's end); `add --at 9999-12-31T23:00-05:00` is past the last DATETIME."""
    with pytest.raises(argparse.ArgumentTypeError, match=r"year must be within 1970\.\.9998"):
        parse_time(text)


def test_mission_now_in_year_one_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["mission", "--now", "0001-01-01T00:00"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "year must be within 1970..9998" in err and "Traceback" not in err


# -- issue 15 item 4: --log-level, --json and the positionals in --help ---------------------------


@pytest.mark.parametrize("given", ["DEBUG", "Debug", "debug", "WARNING", " info "])
def test_log_level_is_accepted_in_any_case(given: str) -> None:
    """`--log-level DEBUG` was refused (the choices were lowercase only)."""
    args = build_parser().parse_args(["stats", "--log-level", given])
    assert args.log_level == given.strip().lower()


def test_log_level_from_the_environment_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_LOG_LEVEL", "ERROR")
    assert build_parser().parse_args(["stats"]).log_level == "error"


def test_a_bad_log_level_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["stats", "--log-level", "verbose"]) == 2
    err = capsys.readouterr().err
    assert "'verbose'" in err and "debug, info, warning, error" in err


def _help(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*argv, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's wrapping undone


def test_help_shows_the_log_levels_and_what_json_does(capsys: pytest.CaptureFixture[str]) -> None:
    """The choices were hidden behind LEVEL; --json had no help text."""
    for command in ("status", "list", "stats", "schedule", "workers"):
        out = _help(command, capsys=capsys)
        assert "--log-level LEVEL logging level: debug, info, warning, error, in any case" in out
        assert "--json print " in out and "as JSON" in out, (command, out)


@pytest.mark.parametrize(("argv", "named"), [
    (["add"], "TASKSCRIPT"), (["status"], "ID"), (["cancel"], "ID")])
def test_a_positional_is_named_alike_in_help_and_in_errors(
        argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`add --help` said `param`, its errors `PARAM_JSON` (the contract's name)."""
    out = _help(*argv, capsys=capsys)
    assert f" {named}" in out.split("positional arguments:")[1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert f"required: {named}" in capsys.readouterr().err
    if argv == ["add"]:
        assert "[PARAM_JSON]" in out and "PARAM_JSON param as JSON text" in out
        assert main(["add", "x.sh", "{bad"]) == 2
        assert "PARAM_JSON is not valid JSON" in capsys.readouterr().err


# -- a mistyped driver ------------------------------------------------------------------------


BAD_DRIVERS = [("mysql+pymsql://cq:Qv7Wk3pJx@127.0.0.1/app", "no driver 'pymsql' for mysql"),
               ("mariadb+pymsql://cq:Qv7Wk3pJx@db/app", "no driver 'pymsql' for mariadb"),
               ("sqlite+pysqlit:///q.db?password=Qv7Wk3pJx", "no driver 'pysqlit' for sqlite"),
               ("mysql+mysqldb://cq:Qv7Wk3pJx@db/app", "driver 'mysqldb' in")]


@pytest.mark.parametrize(("url", "said"), BAD_DRIVERS)
@pytest.mark.parametrize("argv", [["add", "x.sh"], ["list"], ["status", "1", "--wait"],
                                  ["work"], ["mission"], ["check"], ["init-db"], ["purge",
                                  "--older-than", "1d"], ["schedule"], ["workers"]])
def test_a_mistyped_driver_is_one_line_exit_2(url: str, said: str, argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`add` with mysql+pymsql:// printed a NoSuchModuleError traceback (exit 1)."""
    if url.startswith("mysql+mysqldb"):
        pytest.importorskip("sqlalchemy.dialects.mysql.mysqldb")
        try:
            __import__("MySQLdb")
            pytest.skip("mysqlclient is installed here")
        except ImportError:
            pass
    assert main([*argv, "--db", url]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and said in err[0] and "***" in err[0], captured.err
    assert "Qv7Wk3pJx" not in captured.err + captured.out


@pytest.mark.parametrize(("url", "said"), BAD_DRIVERS[:3])
def test_queue_with_a_mistyped_driver_raises_a_config_error(url: str, said: str) -> None:
    from cronqueue import Queue
    from cronqueue.errors import ConfigError

    with pytest.raises(ConfigError, match=said) as info:
        Queue(url)
    assert "Qv7Wk3pJx" not in str(info.value)


@pytest.mark.parametrize("flags", [["--db", "mysql+pymysql://cq:Qv7Wk3pJx@127.0.0.1/app"],
                                   ["--task-dir", "/nonexistent"], ["--log-dir", "/tmp/x"],
                                   ["--db", "sqlite:///other.db", "--task-dir", "t"]])
def test_demo_refuses_the_flags_it_would_ignore(flags: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --db mysql+pymysql://...` and `--task-dir /nonexistent` were accepted and
    ignored: the demo ran on its own SQLite file."""
    where = tmp_path / "demo"
    assert main(["demo", "--dir", str(where), *flags]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and "the demo is the SQLite quickstart" in err[0], captured.err
    assert all(f in err[0] for f in flags if f.startswith("--"))
    assert "Qv7Wk3pJx" not in captured.err and captured.out == ""
    assert not where.exists()  # nothing was made
