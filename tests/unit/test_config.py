"""The configuration: TOML file, environment, flags; every bad key is a ``ConfigError``."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronqueue.config import DEFAULT_DB_URL, Config, load_config
from cronqueue.errors import ConfigError
from cronqueue.store.engine import normalize_url, redact

ENV_VARS = ("CRONQUEUE_DB_URL", "CRONQUEUE_CONFIG", "CRONQUEUE_TASK_DIR", "CRONQUEUE_LOG_DIR")

SAMPLE = """\
db_url   = "mysql+pymysql://cq:secret@127.0.0.1/app"   # optional; --db and CRONQUEUE_DB_URL win
task_dir = "tasks"                                      # relative to the config file
log_dir  = "logs"

[worker]            # defaults for tasks and shards
timeout = 600       # seconds a task may run
max_attempts = 3
batch = 100

[[mission]]         # one entry of cron_mission's own schedule
name = "drain-default"
cron = "* * * * *"  # croniter syntax, validated at load; the error names the entry
do_queue = { total = 4, queues = ["default"], max_seconds = 55 }

[[mission]]
name = "nightly-report"
cron = "0 3 * * *"
add = { taskscript = "report.py", param = { day = "yesterday" }, priority = 5 }
"""

MISSION_OK = """
[[mission]]
name = "m1"
cron = "* * * * *"
do_queue = { total = 2 }
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def load_body(tmp_path: Path, body: str) -> Config:
    return load_config(write(tmp_path / "cq.toml", body))


def config_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_body(tmp_path, body)
    return str(info.value)


# -- defaults and the sample -------------------------------------------------------------------


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.db_url == DEFAULT_DB_URL == "sqlite:///cronqueue.db"
    assert cfg.task_dir == (tmp_path / "tasks").resolve()
    assert cfg.task_dir.is_absolute()
    assert cfg.log_dir == (tmp_path / "logs").resolve()
    assert cfg.source is None
    assert cfg.missions == ()
    assert cfg.worker.timeout > 0
    assert cfg.worker.max_attempts >= 1


def test_contract_sample_config_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "etc" / "cronqueue.toml", SAMPLE)
    cfg = load_config(path)
    assert cfg.source == path.resolve()
    assert cfg.db_url == "mysql+pymysql://cq:secret@127.0.0.1/app"
    assert cfg.task_dir == (tmp_path / "etc" / "tasks").resolve()
    assert cfg.log_dir == (tmp_path / "etc" / "logs").resolve()
    assert (cfg.worker.timeout, cfg.worker.max_attempts, cfg.worker.batch) == (600, 3, 100)
    assert [m.name for m in cfg.missions] == ["drain-default", "nightly-report"]
    drain, report = cfg.missions
    assert drain.cron == "* * * * *"
    assert drain.add is None
    assert drain.do_queue is not None
    assert drain.do_queue.total == 4
    assert drain.do_queue.queues == ("default",)
    assert drain.do_queue.max_seconds == 55
    assert report.do_queue is None
    assert report.add is not None
    assert report.add.taskscript == "report.py"
    assert report.add.param == {"day": "yesterday"}
    assert report.add.priority == 5


def test_local_cronqueue_toml_is_found_in_cwd(tmp_path: Path) -> None:
    write(tmp_path / "cronqueue.toml", 'db_url = "sqlite:///from-local.db"\n')
    cfg = load_config()
    assert cfg.db_url == "sqlite:///from-local.db"
    assert cfg.source == (tmp_path / "cronqueue.toml").resolve()


def test_relative_task_dir_resolves_against_the_config_file_dir(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = write(tmp_path / "conf" / "cq.toml", 'task_dir = "jobs/scripts"\nlog_dir = "../var"\n')
    cfg = load_config(path)  # cwd is tmp_path, not conf/
    assert cfg.task_dir == (tmp_path / "conf" / "jobs" / "scripts").resolve()
    assert cfg.log_dir == (tmp_path / "var").resolve()


def test_absolute_task_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "tasks"
    cfg = load_body(tmp_path, f'task_dir = "{target}"\n')
    assert cfg.task_dir == target.resolve()


def test_env_task_dir_and_log_dir_win_over_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_TASK_DIR", "envtasks")
    monkeypatch.setenv("CRONQUEUE_LOG_DIR", str(tmp_path / "envlogs"))
    cfg = load_body(tmp_path, 'task_dir = "filetasks"\nlog_dir = "filelogs"\n')
    assert cfg.task_dir == (tmp_path / "envtasks").resolve()
    assert cfg.log_dir == (tmp_path / "envlogs").resolve()


def test_override_task_dir_wins_over_env(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_TASK_DIR", "envtasks")
    cfg = load_config(task_dir="flagtasks")
    assert cfg.task_dir == (tmp_path / "flagtasks").resolve()


def test_worker_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path / "cq.toml", "[worker]\ntimeout = 600\nbatch = 100\n")
    cfg = load_config(path, timeout=30, batch=None)
    assert cfg.worker.timeout == 30
    assert cfg.worker.batch == 100  # None means "not given"


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_config(bogus=1)


# -- db_url precedence ---------------------------------------------------------------------------


def test_db_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "cq.toml", 'db_url = "sqlite:///file.db"\n')
    assert load_config().db_url == DEFAULT_DB_URL
    assert load_config(path).db_url == "sqlite:///file.db"
    monkeypatch.setenv("CRONQUEUE_DB_URL", "sqlite:///env.db")
    assert load_config(path).db_url == "sqlite:///env.db"
    assert load_config().db_url == "sqlite:///env.db"
    assert load_config(path, db_url="sqlite:///arg.db").db_url == "sqlite:///arg.db"


def test_cronqueue_config_env_finds_the_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "sub" / "special.toml", 'db_url = "sqlite:///special.db"\n')
    write(tmp_path / "cronqueue.toml", 'db_url = "sqlite:///local.db"\n')
    monkeypatch.setenv("CRONQUEUE_CONFIG", str(path))
    cfg = load_config()
    assert cfg.db_url == "sqlite:///special.db"
    assert cfg.source == path.resolve()
    assert cfg.task_dir == (tmp_path / "sub" / "tasks").resolve()


def test_explicit_file_wins_over_cronqueue_config_env(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path / "a.toml", 'db_url = "sqlite:///a.db"\n')
    monkeypatch.setenv("CRONQUEUE_CONFIG", str(write(tmp_path / "b.toml",
                                                       'db_url = "sqlite:///b.db"\n')))
    assert load_config(explicit).db_url == "sqlite:///a.db"


def test_explicit_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_cronqueue_config_env_missing_file_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_CONFIG", "/nonexistent/cq.toml")
    with pytest.raises(ConfigError, match=r"/nonexistent/cq\.toml"):
        load_config()


# -- bad keys and values ----------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert "dburl" in config_error(tmp_path, 'dburl = "sqlite:///x.db"\n')


def test_unknown_worker_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[worker]\ntimeout = 5\nretries = 3\n")
    assert "worker" in msg
    assert "retries" in msg


def test_unknown_mission_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, MISSION_OK + 'schedule = "hourly"\n')
    assert "m1" in msg
    assert "schedule" in msg


@pytest.mark.parametrize("cron", ["61 * * * *", "every minute", "* * *", ""])
def test_bad_cron_expression_names_the_mission(tmp_path: Path, cron: str) -> None:
    body = f'[[mission]]\nname = "nightly"\ncron = "{cron}"\ndo_queue = {{ total = 1 }}\n'
    msg = config_error(tmp_path, body)
    assert "'nightly'" in msg
    assert "cron" in msg


def test_mission_with_two_actions(tmp_path: Path) -> None:
    body = MISSION_OK + 'add = { taskscript = "a.py" }\n'
    msg = config_error(tmp_path, body)
    assert "m1" in msg
    assert "one action" in msg


def test_mission_with_no_action(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[[mission]]\nname = "idle"\ncron = "* * * * *"\n')
    assert "idle" in msg
    assert "action" in msg


def test_mission_without_name(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[[mission]]\ncron = "* * * * *"\ndo_queue = { total = 1 }\n')
    assert "mission #1" in msg
    assert "name" in msg


def test_duplicate_mission_names(tmp_path: Path) -> None:
    msg = config_error(tmp_path, MISSION_OK + MISSION_OK)
    assert "m1" in msg
    assert "duplicate" in msg


def test_mission_add_with_bad_taskscript_names_the_mission(tmp_path: Path) -> None:
    body = '[[mission]]\nname = "r"\ncron = "0 3 * * *"\nadd = { taskscript = "../x.py" }\n'
    msg = config_error(tmp_path, body)
    assert "'r'" in msg
    assert "taskscript" in msg


def test_mission_add_with_unknown_key(tmp_path: Path) -> None:
    body = ('[[mission]]\nname = "r"\ncron = "0 3 * * *"\n'
            'add = { taskscript = "x.py", prio = 1 }\n')
    msg = config_error(tmp_path, body)
    assert "'r'" in msg
    assert "prio" in msg


@pytest.mark.parametrize("total", ["0", "-1", "true", '"4"', "1.5"])
def test_do_queue_bad_total(tmp_path: Path, total: str) -> None:
    body = f'[[mission]]\nname = "d"\ncron = "* * * * *"\ndo_queue = {{ total = {total} }}\n'
    msg = config_error(tmp_path, body)
    assert "'d'" in msg
    assert "total" in msg


def test_do_queue_missing_total(tmp_path: Path) -> None:
    body = '[[mission]]\nname = "d"\ncron = "* * * * *"\ndo_queue = { queues = ["a"] }\n'
    msg = config_error(tmp_path, body)
    assert "'d'" in msg
    assert "total" in msg


def test_do_queue_bad_queue_name(tmp_path: Path) -> None:
    body = ('[[mission]]\nname = "d"\ncron = "* * * * *"\n'
            'do_queue = { total = 1, queues = ["bad name"] }\n')
    msg = config_error(tmp_path, body)
    assert "'d'" in msg
    assert "bad name" in msg


def test_do_queue_queues_as_a_string_is_an_error(tmp_path: Path) -> None:
    # Must not silently become the one-letter queues ('d', 'e', 'f', 'a', 'u', 'l', 't').
    body = ('[[mission]]\nname = "d"\ncron = "* * * * *"\n'
            'do_queue = { total = 1, queues = "default" }\n')
    msg = config_error(tmp_path, body)
    assert "queues" in msg


@pytest.mark.parametrize("value", ["-5", "0", '"55"', "true"])
def test_do_queue_bad_max_seconds_is_an_error(tmp_path: Path, value: str) -> None:
    body = ('[[mission]]\nname = "d"\ncron = "* * * * *"\n'
            f'do_queue = {{ total = 1, max_seconds = {value} }}\n')
    msg = config_error(tmp_path, body)
    assert "max_seconds" in msg


@pytest.mark.parametrize("value", ["0", "-1", "true", "2.5", '"10"'])
def test_do_queue_bad_batch_is_an_error(tmp_path: Path, value: str) -> None:
    body = ('[[mission]]\nname = "d"\ncron = "* * * * *"\n'
            f'do_queue = {{ total = 1, batch = {value} }}\n')
    msg = config_error(tmp_path, body)
    assert "batch" in msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout", "-1"),
        ("timeout", "0"),
        ("timeout", "true"),
        ("timeout", "1.5"),
        ("max_attempts", "0"),
        ("max_attempts", "false"),
        ("batch", "-10"),
        ("batch", '"100"'),
        ("backoff", "0"),
        ("kill_grace", "-0.5"),
        ("lease", "0"),
    ],
)
def test_bad_worker_values_name_the_key(tmp_path: Path, key: str, value: str) -> None:
    msg = config_error(tmp_path, f"[worker]\n{key} = {value}\n")
    assert f"worker.{key}" in msg


def test_backoff_max_below_backoff(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[worker]\nbackoff = 60\nbackoff_max = 10\n")
    assert "backoff_max" in msg


def test_float_worker_values_where_floats_are_allowed(tmp_path: Path) -> None:
    cfg = load_body(tmp_path, "[worker]\nbackoff = 2.5\nkill_grace = 1\npoll_interval = 0.5\n")
    assert cfg.worker.backoff == 2.5
    assert cfg.worker.kill_grace == 1
    assert cfg.worker.poll_interval == 0.5


def test_unknown_timezone(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'timezone = "Mars/Olympus_Mons"\n')
    assert "timezone" in msg
    assert "Mars/Olympus_Mons" in msg


def test_known_timezone(tmp_path: Path) -> None:
    assert load_body(tmp_path, 'timezone = "Europe/Warsaw"\n').timezone == "Europe/Warsaw"


@pytest.mark.parametrize("key", ["db_url", "task_dir", "log_dir", "timezone"])
def test_wrong_type_for_string_key(tmp_path: Path, key: str) -> None:
    assert key in config_error(tmp_path, f"{key} = 5\n")


def test_worker_must_be_a_table(tmp_path: Path) -> None:
    assert "worker" in config_error(tmp_path, "worker = 5\n")


def test_mission_must_be_an_array_of_tables(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[mission]\nname = "x"\ncron = "* * * * *"\n')
    assert "mission" in msg


def test_interpreters_table(tmp_path: Path) -> None:
    cfg = load_body(tmp_path, '[interpreters]\n".rb" = "ruby"\n".php" = ["php", "-n"]\n')
    assert cfg.interpreters[".rb"] == ("ruby",)
    assert cfg.interpreters[".php"] == ("php", "-n")
    assert ".py" in cfg.interpreters  # defaults kept


@pytest.mark.parametrize("body", ['[interpreters]\nrb = "ruby"\n',
                                  '[interpreters]\n".rb" = []\n',
                                  '[interpreters]\n".rb" = [1]\n',
                                  '[interpreters]\n".rb" = 5\n'])
def test_bad_interpreters(tmp_path: Path, body: str) -> None:
    assert "interpreters" in config_error(tmp_path, body)


def test_unsupported_db_scheme(tmp_path: Path) -> None:
    msg = config_error(tmp_path, 'db_url = "postgresql://u:hunter2@db/app"\n')
    assert "db_url" in msg
    assert "postgresql" in msg
    assert "hunter2" not in msg


def test_unsupported_db_scheme_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_DB_URL", "postgresql://u:hunter2@db/app")
    with pytest.raises(ConfigError, match="db_url") as info:
        load_config()
    assert "hunter2" not in str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "db_url = \n[worker\n")
    with pytest.raises(ConfigError, match=r"broken\.toml") as info:
        load_config(path)
    assert "TOML" in str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'db_url = "sqlite:///\xe9.db"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load_config(path)


# -- passwords and URLs ------------------------------------------------------------------------


def test_safe_db_url_hides_the_password(tmp_path: Path) -> None:
    cfg = load_body(tmp_path, SAMPLE)
    assert "secret" not in cfg.safe_db_url
    assert "***" in cfg.safe_db_url
    assert cfg.safe_db_url.startswith("mysql+pymysql://cq:***@127.0.0.1")
    assert "secret" not in repr(redact(cfg.db_url))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://cq:s3cr3tpw@db/app",
        "mysql+pymysql://cq:s3cr3tpw@db:notaport/app",
        "mysql://cq:s3cr3tpw@@@:/",
        "not a url cq:s3cr3tpw",
    ],
)
def test_password_never_in_config_errors(tmp_path: Path, url: str) -> None:
    assert "s3cr3tpw" not in config_error(tmp_path, f'db_url = "{url}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(db_url=url)
    assert "s3cr3tpw" not in str(info.value)


def test_redact_of_unparseable_url_hides_everything() -> None:
    assert "s3cr3tpw" not in redact("mysql+pymysql://cq:s3cr3tpw@db:notaport/app")
    assert "s3cr3tpw" not in redact("garbage cq:s3cr3tpw")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u:pw@h/db", "mysql+pymysql://u:pw@h/db"),
        ("mariadb://u:pw@h:3307/db", "mariadb+pymysql://u:pw@h:3307/db"),
        ("mysql+pymysql://u:pw@h/db", "mysql+pymysql://u:pw@h/db"),
        ("sqlite:///cronqueue.db", "sqlite:///cronqueue.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_normalize_url_keeps_special_characters_in_password() -> None:
    url = "mysql://u:p%40ss%2Fw@h/db"
    assert normalize_url(url) == "mysql+pymysql://u:p%40ss%2Fw@h/db"


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "oracle://u@h/db", "nonsense"])
def test_normalize_url_refuses_unsupported(url: str) -> None:
    with pytest.raises(ConfigError, match="db_url"):
        normalize_url(url)
