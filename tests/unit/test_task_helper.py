"""``cronqueue.task``: the light helper imported by Python task scripts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cronqueue import task


def test_args_decodes_argv1() -> None:
    assert task.args(["x", '{"a":1}']) == {"a": 1}
    assert task.args(["x", '["é", null, 2.5]']) == ["é", None, 2.5]
    assert task.args(["x", "null"]) is None


def test_args_without_param_is_none() -> None:
    assert task.args(["x"]) is None
    assert task.args([]) is None


def test_args_defaults_to_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["script.py", '{"day":"yesterday"}'])
    assert task.args() == {"day": "yesterday"}


def test_args_of_bad_json_raises() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json.JSONDecodeError is a ValueError
        task.args(["x", "{bad"])


def test_env_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRONQUEUE_TASK_ID", "12")
    monkeypatch.setenv("CRONQUEUE_ATTEMPT", "3")
    monkeypatch.setenv("CRONQUEUE_QUEUE", "emails")
    assert (task.task_id(), task.attempt(), task.queue()) == (12, 3, "emails")
    for var in ("CRONQUEUE_TASK_ID", "CRONQUEUE_ATTEMPT", "CRONQUEUE_QUEUE"):
        monkeypatch.delenv(var)
    assert (task.task_id(), task.attempt(), task.queue()) == (None, 1, "default")


def test_importing_the_helper_does_not_load_sqlalchemy() -> None:
    code = ("import sys, cronqueue.task\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'pymysql', 'croniter'))\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_importing_the_package_does_not_load_sqlalchemy_until_queue_is_used() -> None:
    code = ("import sys, cronqueue\n"
            "assert 'sqlalchemy' not in sys.modules\n"
            "cronqueue.Queue\n"
            "assert 'sqlalchemy' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
