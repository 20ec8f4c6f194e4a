"""Hostile input: rows an application (or an attacker with INSERT rights) writes by hand, what
``add()`` refuses, scripts that misbehave (floods of output, binary garbage, daemons), SQL
metacharacters, secrets, broken configuration and database passwords.

Each hostile thing must end with a clear one-line error, run nothing it should not, and leave
the shard going on with the next task."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from cronqueue import InvalidTask, Queue, Status, Task
from cronqueue.config import load_config
from cronqueue.shard.loop import Shard, ShardReport
from cronqueue.store.schema import queue_table
from tests.conftest import run_cli
from tests.helpers import clean_env, cronqueue_cmd, kill_leftovers, process_gone, write_script

GOOD_SH = 'echo "$CRONQUEUE_TASK_ID" >> good.log\necho good\n'


def get(q: Queue, task_id: int) -> Task:
    task = q.get(task_id)
    assert task is not None
    return task


def count_rows(q: Queue) -> int:
    with q.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(queue_table)).scalar_one())


def burst(db_url: str, task_dir: Path, log_dir: Path, **worker: Any) -> ShardReport:
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      **worker)
    return Shard(cfg).run()


def insert_row(q: Queue, taskscript: str, param: str) -> int:
    """What a PHP or Node application does: plain SQL, only taskscript and param."""
    with q.engine.begin() as conn:
        res = conn.execute(text("INSERT INTO queue (taskscript, param) VALUES (:t, :p)"),
                           {"t": taskscript, "p": param})
        return int(res.lastrowid)


# -- hand-inserted rows -----------------------------------------------------------------------


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """Where a would-be payload leaves a trace. Must stay empty."""
    path = tmp_path / "canary"
    path.mkdir()
    return path


def payload(canary: Path, name: str) -> str:
    return f"#!/bin/sh\ntouch {canary / name}\n"


FORGED = "good.sh\n2030-01-01 00:00:00,000 INFO cronqueue.worker[1]: task=1 outcome=done"


def test_hand_inserted_hostile_rows_fail_cleanly_and_the_shard_goes_on(
        queue: Queue, db_url: str, backend: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        canary: Path, caplog: pytest.LogCaptureFixture) -> None:
    if shutil.which("php") is not None:
        pytest.skip("php is installed here: the missing-interpreter case cannot be staged")
    write_script(task_dir, "good.sh", GOOD_SH)
    # Payloads a mis-resolution would run. The param '"canary.sh"' is what `sh` would read as
    # its script if an escaping path reached /bin/sh: argv[1] is the JSON text, quotes and all.
    write_script(task_dir, '"canary.sh"', payload(canary, "sh-ran"))
    write_script(task_dir, "payload.sh", payload(canary, "payload-ran"), mode=0o755)
    for name in ("x;id", "x", "$(id)", "-rf", "a", "b"):
        write_script(task_dir, name, payload(canary, f"ran-{name}"), mode=0o755)
    outside = tmp_path / "outside"
    outside.mkdir()
    write_script(outside, "evil.sh", payload(canary, "evil-ran"), mode=0o755)
    (task_dir / "evil.sh").symlink_to(outside / "evil.sh")
    write_script(task_dir, "group_w.sh", payload(canary, "group-w-ran"), mode=0o775)
    os.chown(task_dir / "group_w.sh", -1, 65534)  # a group with others in it (nobody's)
    write_script(task_dir, "world_w.sh", payload(canary, "world-w-ran"), mode=0o646)
    write_script(task_dir, "hello.php", "<?php touch('x');\n")
    big = json.dumps("p" * 300_000)
    huge = json.dumps("h" * 7_000_000)

    shell = '"canary.sh"'
    # (taskscript, param, words the error must hold, permanent)
    hostile: list[tuple[str, str, list[str], bool]] = [
        ("payload.sh", "{not json", ["param is not valid JSON"], True),
        ("../../bin/sh", shell, ["'../../bin/sh'"], True),
        ("../" * 12 + "bin/sh", shell, ["bin/sh'", ".."], True),
        ("/bin/sh", shell, ["'/bin/sh'", "absolute"], True),
        ("x;id", "null", ["'x;id'"], True),
        ("$(id)", "null", ["'$(id)'"], True),
        ("-rf", "null", ["'-rf'"], True),
        ("a\x00b", "null", [repr("a\x00b")], True),
        (FORGED, "null", [repr(FORGED)], True),  # a log line of its own, were it logged raw
        ("evil.sh", "null", ["'evil.sh'", "outside task_dir"], True),
        ("group_w.sh", "null", ["'group_w.sh'", "writable", "775"], True),
        ("world_w.sh", "null", ["'world_w.sh'", "writable", "646"], True),
        ("missing.sh", "null", ["'missing.sh'", "not found"], False),
        ("hello.php", "null", ["'php'", "not found"], False),
        ("payload.sh", big, ["param is", str(len(big)), "bytes"], True),
        ("payload.sh", huge, ["param is", str(len(huge)), "bytes"], True),
    ]
    bad_ids: dict[int, tuple[str, list[str], bool]] = {}
    good_ids: list[int] = []
    for taskscript, param, words, permanent in hostile:
        bad_ids[insert_row(queue, taskscript, param)] = (taskscript, words, permanent)
        good_ids.append(insert_row(queue, "good.sh", "null"))
    # A queue name add() would refuse, hand-inserted: not a reason to refuse the task, but it
    # must not forge lines in the day log either.
    with queue.engine.begin() as conn:
        conn.execute(text("INSERT INTO queue (taskscript, param, queue) VALUES (:t, :p, :q)"),
                     {"t": "good.sh", "p": "null", "q": "q\nFORGED"})
    good_ids.append(max(t.id for t in queue.list(limit=1000)))
    assert get(queue, next(iter(bad_ids))).status is Status.PENDING
    # The database keeps what was inserted: the NUL byte and the 7 MB param survived.
    stored = {get(queue, i).taskscript for i in bad_ids}
    assert "a\x00b" in stored
    assert len(get(queue, list(bad_ids)[-1]).param) == len(huge)

    caplog.set_level(logging.INFO, logger="cronqueue")
    report = burst(db_url, task_dir, log_dir)

    for task_id in good_ids:
        assert get(queue, task_id).status is Status.DONE, get(queue, task_id)
    assert sorted(map(int, (task_dir / "good.log").read_text().split())) == good_ids
    for task_id, (taskscript, words, permanent) in bad_ids.items():
        task = get(queue, task_id)
        error = task.error or ""
        assert error.startswith("ScriptNotRunnable: "), (taskscript, error)
        assert "\n" not in error, error
        for word in words:
            assert word in error, (taskscript, word, error)
        assert task.attempts == 1, (taskscript, task)
        if permanent:
            assert task.status is Status.FAILED, (taskscript, error)
        else:  # not deployed yet: retried later, like any failure
            assert task.status is Status.PENDING, (taskscript, error)
            assert task.claim_token is None
            assert task.run_at > task.started_at  # type: ignore[operator]
        # One log line per task, one line long.
        lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith(f"task={task_id} ")]
        assert len(lines) == 1 and "\n" not in lines[0], lines
    assert report.done == len(good_ids)
    assert report.failed + report.retried == len(bad_ids)
    assert sorted(p.name for p in canary.iterdir()) == []  # nothing hostile was executed
    # The day log: one header line per task run, then its output ("good"). Nothing forged.
    day_log = [line for p in sorted(log_dir.glob("*.log"))
               for line in p.read_text(errors="replace").splitlines()]
    assert day_log
    forged = [line for line in day_log if not line.startswith("--- ") and line != "good"]
    assert forged == []


# -- what add() refuses -----------------------------------------------------------------------


HOSTILE_TASKSCRIPTS = ["../../bin/sh", "../" * 12 + "bin/sh", "/bin/sh", "x;id", "$(id)", "-rf",
                       "a\x00b", "a/../../b.sh", "./a.sh", ".hidden.sh", "a b.sh", "a\nb.sh",
                       "", "a/", "a//b.sh"]


@pytest.mark.any_backend  # refused before any statement
@pytest.mark.parametrize("taskscript", HOSTILE_TASKSCRIPTS,
                         ids=[repr(t) for t in HOSTILE_TASKSCRIPTS])
def test_add_refuses_hostile_taskscripts(queue: Queue, taskscript: str) -> None:
    with pytest.raises(InvalidTask) as info:
        queue.add(taskscript, {"x": 1})
    message = str(info.value)
    assert "taskscript" in message and "\n" not in message
    if taskscript:
        assert repr(taskscript) in message
    with pytest.raises(InvalidTask):
        queue.add_many([("ok.sh", 1), (taskscript, 2)])
    assert count_rows(queue) == 0


@pytest.mark.any_backend  # refused before any statement
@pytest.mark.parametrize("param", [
    "p" * 300_000, "h" * 7_000_000, {"blob": "x" * 131_070}, float("nan"), {1, 2}, object(),
    "lone \ud800 surrogate",
], ids=["300KB", "7MB", "just-too-big", "nan", "set", "object", "surrogate"])
def test_add_refuses_params_argv_cannot_carry(queue: Queue, param: Any) -> None:
    with pytest.raises(InvalidTask) as info:
        queue.add("ok.sh", param)
    assert "param" in str(info.value) and "\n" not in str(info.value)
    assert count_rows(queue) == 0


# -- scripts that misbehave -------------------------------------------------------------------


FLOOD_PY = """\
import sys
line = b"x" * 1023 + b"\\n"
chunk = line * 1024  # 1 MiB
for _ in range(50):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write(b"END-OF-FLOOD\\n")
"""


def test_fifty_megabytes_of_output(queue: Queue, db_url: str, task_dir: Path,
                                   log_dir: Path) -> None:
    write_script(task_dir, "flood.py", FLOOD_PY)
    write_script(task_dir, "good.sh", GOOD_SH)
    flood = queue.add("flood.py")
    good = queue.add("good.sh")
    limit = 1024 * 1024
    report = burst(db_url, task_dir, log_dir, max_log_bytes=limit)
    assert report.outcomes == {flood: "done", good: "done"}
    task = get(queue, flood)
    assert task.status is Status.DONE
    output = task.output or ""
    assert 0 < len(output.encode("utf-8")) <= 4096
    assert output.endswith("x\nEND-OF-FLOOD\n")
    logs = sorted(log_dir.glob("*.log"))
    assert logs
    data = b"".join(p.read_bytes() for p in logs)
    # The head and the tail of the output, a truncation note, the header lines and the good
    # task: no more.
    assert limit < len(data) <= limit + 4096
    assert b"more bytes not kept; max_log_bytes=1048576" in data
    assert data.count(b"END-OF-FLOOD") == 1
    assert f"task={flood} ".encode() in data


def test_invalid_utf8_and_nul_bytes_in_output(queue: Queue, db_url: str, task_dir: Path,
                                              log_dir: Path) -> None:
    write_script(task_dir, "garbage.py",
                 "import sys\n"
                 "sys.stdout.buffer.write(b'start \\xff\\xfe mid \\x00\\x00 \\xc3( "
                 "\\xe2\\x82 end\\n')\n")
    write_script(task_dir, "good.sh", GOOD_SH)
    garbage = queue.add("garbage.py")
    good = queue.add("good.sh")
    report = burst(db_url, task_dir, log_dir)
    assert report.outcomes == {garbage: "done", good: "done"}
    output = get(queue, garbage).output or ""
    assert output.startswith("start ") and output.endswith(" end\n")
    assert "\x00" not in output
    assert "\ufffd" in output
    assert "mid" in output
    output.encode("utf-8")  # valid text now


DAEMON_PY = """\
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()  # leaves the task's process group: a real daemon
    with open("daemon.pid.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename("daemon.pid.tmp", "daemon.pid")
    print("daemon up", flush=True)  # and it keeps the task's stdout open
    time.sleep(30)
    os._exit(0)
while not os.path.exists("daemon.pid"):
    time.sleep(0.01)
print("parent exits")
"""


@pytest.fixture
def daemon_pid_file(task_dir: Path) -> Iterator[Path]:
    path = task_dir / "daemon.pid"
    yield path
    if path.exists():
        with contextlib.suppress(ValueError):
            kill_leftovers([int(path.read_text())])


@pytest.mark.any_backend  # the runner's
def test_task_that_leaves_a_daemon_behind(queue: Queue, db_url: str, task_dir: Path,
                                          log_dir: Path, daemon_pid_file: Path) -> None:
    write_script(task_dir, "daemon.py", DAEMON_PY)
    write_script(task_dir, "good.sh", GOOD_SH)
    daemon = queue.add("daemon.py", timeout=120)
    good = queue.add("good.sh")
    report = burst(db_url, task_dir, log_dir)
    # The shard is back before the daemon's 30 s are over: it did not wait for it.
    daemon_pid = int(daemon_pid_file.read_text())
    assert not process_gone(daemon_pid)
    assert report.outcomes == {daemon: "done", good: "done"}
    task = get(queue, daemon)
    assert task.status is Status.DONE and task.exit_code == 0
    assert "parent exits" in (task.output or "")


# -- SQL metacharacters in every field --------------------------------------------------------


SQL_KEYS = ["'; DROP TABLE queue; --", "\\", "%", "_", "a%", "a_", "\\%", "''", '"', "`x`",
            "k\\'; DELETE FROM queue WHERE '1'='1"]


def test_sql_metacharacters_round_trip_in_every_field(queue: Queue) -> None:
    param = {"sql": "'; DROP TABLE queue; --", "bs": "\\", "bs2": "\\\\", "pct": "%",
             "us": "_", "quote": "\"'`", "fmt": "%s %(x)s ? :name $1", "nl": "a\nb\r\n",
             "uni": "\u00fc\u20ac\U0001d11e"}
    secret = {"pw": "'; DROP TABLE queue; --\\%_\"", "n": [1, None]}
    ids = []
    for key in SQL_KEYS:
        ids.append(queue.add("a_b-c.d+e/f.sh", param, queue="a:b.c-d", unique_key=key,
                             secret=secret))
    assert len(set(ids)) == len(SQL_KEYS)  # no key matched another (no LIKE, no escaping)
    expected_param = json.dumps(param, ensure_ascii=False, separators=(",", ":"))
    expected_secret = json.dumps(secret, ensure_ascii=False, separators=(",", ":"))
    for task_id, key in zip(ids, SQL_KEYS, strict=True):
        task = get(queue, task_id)
        assert task.taskscript == "a_b-c.d+e/f.sh"
        assert task.queue == "a:b.c-d"
        assert task.unique_key == key
        assert task.param.encode() == expected_param.encode()
        assert task.args == param
        assert task.secret is not None
        assert task.secret.encode() == expected_secret.encode()
        # The same key again: the same task, byte for byte.
        assert queue.add("a_b-c.d+e/f.sh", None, queue="a:b.c-d", unique_key=key) == task_id
    assert count_rows(queue) == len(SQL_KEYS)  # the table is still there, nothing deleted
    assert sorted(t.id for t in queue.list(queue="a:b.c-d")) == sorted(ids)
    assert queue.list(queue="a:b.c-%") == []
    assert queue.list(queue="a:b_c-d") == []


# -- secrets ----------------------------------------------------------------------------------


SECRET_PY = """\
import json, os, sys
from cronqueue.task import args, secret
tid = os.environ["CRONQUEUE_TASK_ID"]
with open(f"secret-{tid}.json", "w") as fh:
    json.dump(secret(), fh)
with open(f"argv-{tid}.json", "w") as fh:
    json.dump(sys.argv, fh)
with open(f"env-{tid}.json", "w") as fh:
    json.dump(dict(os.environ), fh)
print("public", json.dumps(args()))
"""


def test_secret_reaches_the_script_on_stdin_only(queue: Queue, db_url: str, task_dir: Path,
                                                 log_dir: Path) -> None:
    write_script(task_dir, "s.py", SECRET_PY)
    task_id = queue.add("s.py", {"public": 1}, secret={"token": "s3cr3t-XYZ"})
    task = get(queue, task_id)
    assert "s3cr3t" not in repr(task)
    assert task.as_dict()["secret"] == "***"
    assert "s3cr3t" not in json.dumps(task.as_dict())

    res = run_cli("status", str(task_id), "--json", db_url=db_url, task_dir=task_dir,
                  log_dir=log_dir)
    assert res.returncode == 0, res.stderr
    assert "s3cr3t" not in res.stdout + res.stderr
    assert json.loads(res.stdout)["secret"] == "***"
    res = run_cli("list", "--json", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert res.returncode == 0, res.stderr
    assert "s3cr3t" not in res.stdout + res.stderr

    report = burst(db_url, task_dir, log_dir)
    assert report.outcomes == {task_id: "done"}
    assert json.loads((task_dir / f"secret-{task_id}.json").read_text()) == \
        {"token": "s3cr3t-XYZ"}
    argv = (task_dir / f"argv-{task_id}.json").read_text()
    assert "s3cr3t" not in argv
    assert json.loads(argv)[1:] == ['{"public":1}']
    assert "s3cr3t" not in (task_dir / f"env-{task_id}.json").read_text()
    task = get(queue, task_id)
    assert task.output == 'public {"public": 1}\n'
    assert "s3cr3t" not in repr(task)
    assert all("s3cr3t" not in p.read_text(errors="replace") for p in log_dir.glob("*.log"))

    # The command line: the secret comes on stdin, never in argv.
    res = run_cli("add", "s.py", "{}", "--secret-stdin", db_url=db_url, task_dir=task_dir,
                  log_dir=log_dir, input='{"token": "stdin-s3cr3t"}')
    assert res.returncode == 0, res.stderr
    cli_id = int(res.stdout.strip())
    assert "s3cr3t" not in res.stdout + res.stderr
    res = run_cli("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert res.returncode == 0, res.stderr
    assert "s3cr3t" not in res.stdout + res.stderr
    assert get(queue, cli_id).status is Status.DONE
    assert json.loads((task_dir / f"secret-{cli_id}.json").read_text()) == \
        {"token": "stdin-s3cr3t"}
    assert "s3cr3t" not in (task_dir / f"argv-{cli_id}.json").read_text()


# -- configuration and credentials (no database needed) ---------------------------------------


BAD_CONFIGS = [
    ("bad cron", '[[mission]]\nname = "nightly"\ncron = "61 * * * *"\n'
                 'add = { taskscript = "r.py" }\n', ["'nightly'", "cron", "61 * * * *"]),
    ("bad url", 'db_url = "nosuchdb://x"\n', ["db_url", "nosuchdb"]),
    ("unknown top key", 'colour = "blue"\n', ["'colour'"]),
    ("unknown worker key", "[worker]\ntimeoutt = 5\n", ["worker", "'timeoutt'"]),
    ("unknown entry key", '[[mission]]\nname = "drain"\ncron = "* * * * *"\n'
                          "do_queue = { total = 2 }\nshards = 3\n", ["'drain'", "'shards'"]),
    ("bad worker value", "[worker]\nlease = -1\n", ["worker.lease"]),
]


@pytest.mark.parametrize(("body", "words"), [(b, w) for _, b, w in BAD_CONFIGS],
                         ids=[name for name, _, _ in BAD_CONFIGS])
def test_bad_config_is_exit_2_with_one_line(tmp_path: Path, body: str,
                                            words: list[str]) -> None:
    config = tmp_path / "cronqueue.toml"
    config.write_text(body)
    res = subprocess.run(cronqueue_cmd("check", "--config", str(config)), capture_output=True,
                         text=True, timeout=60, env=clean_env(), cwd=tmp_path, check=False)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_database_password_never_shown(tmp_path: Path, task_dir: Path, log_dir: Path) -> None:
    url = "mysql+pymysql://cq:s3cr3t-pw@127.0.0.1:1/x"  # nothing listens on port 1
    config = tmp_path / "cronqueue.toml"
    config.write_text("[worker]\noutage_wait = 1\n")
    for command in (["stats"], ["work"], ["add", "ok.sh"], ["check"]):
        res = run_cli(*command, "--config", str(config), db_url=url, task_dir=task_dir,
                      log_dir=log_dir, timeout=90)
        assert res.returncode == 1, (command, res.stderr)
        out = res.stdout + res.stderr
        assert "s3cr3t-pw" not in out, (command, out)
        assert "***" in out, (command, out)
        if command[0] != "check":  # check prints a report on stdout, errors are one line
            last = res.stderr.strip().splitlines()[-1]
            assert last.startswith("cronqueue: ") and "127.0.0.1:1" in last, (command, last)
