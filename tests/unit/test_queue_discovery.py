"""``Queue()`` finds its configuration as documented (``config_file``, else
``CRONQUEUE_CONFIG``, else ``./cronqueue.toml``, else none) and says where it came from in one
INFO line: the file and how it was found, the database (redacted) and the layer that gave it,
and that the default SQLite file is yet to be created when it does not exist."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cronqueue import Queue
from cronqueue.config import describe, load_config
from cronqueue.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_env")


def _write(path: Path, name: str) -> Path:
    path.write_text(f'db_url = "sqlite:///{name}.db"\n')
    return path


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cronqueue.queue"]


def test_queue_without_a_file_says_the_default_database_is_to_be_created(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cronqueue.queue")
    Queue().close()
    lines = _lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0] == (
        f"no config file (none given, CRONQUEUE_CONFIG unset, no cronqueue.toml in {tmp_path})"
        f"; database sqlite:///cronqueue.db (from default): {tmp_path / 'cronqueue.db'} does "
        "not exist yet and is created on first use")
    assert not (tmp_path / "cronqueue.db").exists()


def test_queue_with_an_existing_default_database_does_not_warn(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "cronqueue.db").touch()
    caplog.set_level(logging.INFO, logger="cronqueue.queue")
    Queue().close()
    [line] = _lines(caplog)
    assert line.endswith("database sqlite:///cronqueue.db (from default)"), line


def test_queue_names_the_file_the_variable_and_hides_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    conf = tmp_path / "etc" / "cq.toml"
    conf.parent.mkdir()
    conf.write_text('db_url = "mysql+pymysql://cq:Sekr1t-pw@db.example/app"\n')
    monkeypatch.setenv("CRONQUEUE_CONFIG", str(conf))
    caplog.set_level(logging.INFO, logger="cronqueue.queue")
    Queue().close()  # no connection is made before first use
    [line] = _lines(caplog)
    assert line == (f"config file {conf} (from CRONQUEUE_CONFIG); database "
                    "mysql+pymysql://cq:***@db.example/app (from config file)")
    monkeypatch.setenv("CRONQUEUE_DB_URL", "sqlite:///env.db")
    assert describe(load_config()).endswith("database sqlite:///env.db (from CRONQUEUE_DB_URL)")
    assert describe(load_config(db_url="sqlite:///a.db")).endswith("(from argument)")


def test_queue_finds_cronqueue_toml_in_the_working_directory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "cronqueue.toml", "here")
    caplog.set_level(logging.INFO, logger="cronqueue.queue")
    q = Queue()
    q.close()
    assert q.config.db_url == "sqlite:///here.db"
    [line] = _lines(caplog)
    assert line == (f"config file {tmp_path / 'cronqueue.toml'} (from ./cronqueue.toml); "
                    "database sqlite:///here.db (from config file)")


def test_queue_given_a_config_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """The caller who passes ``config=`` found it: no discovery to report."""
    caplog.set_level(logging.INFO, logger="cronqueue.queue")
    Queue(config=load_config()).close()
    assert _lines(caplog) == []


def test_a_missing_explicit_file_is_an_error_not_the_default() -> None:
    with pytest.raises(ConfigError, match="not found"):
        Queue(config_file="missing.toml")
