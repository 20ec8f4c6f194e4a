"""The command line as an operator meets it: real processes, both backends, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import text

from cronqueue import Queue, Status
from tests.conftest import run_cli
from tests.helpers import clean_env, cronqueue_cmd, write_script


def test_add_work_status_round_trip(db_url: str, task_dir: Path, log_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)

    write_script(task_dir, "echo.py",
                 "import sys\nfrom cronqueue.task import args\nprint('got', args()['x'])\n")
    write_script(task_dir, "fail.sh", "echo boom >&2\nexit 4\n")
    assert cli("init-db").returncode == 0
    assert cli("init-db").returncode == 0  # idempotent

    added = cli("add", "echo.py", '{"x": "héllo"}', "--priority", "3")
    assert added.returncode == 0, added.stderr
    ok_id = int(added.stdout)
    bad_id = int(cli("add", "fail.sh", "[]", "--max-attempts", "1").stdout)

    work = cli("work", "--total", "1", "--shard", "0")
    assert work.returncode == 0, work.stderr
    assert f"task={ok_id} shard=0/1 outcome=done" in work.stderr
    assert f"task={bad_id} shard=0/1 outcome=failed" in work.stderr

    status = cli("status", str(ok_id), "--wait", "--json")
    assert status.returncode == 0
    info = json.loads(status.stdout)
    assert info["status"] == "done" and "got héllo" in info["output"]
    failed = cli("status", str(bad_id), "--wait")
    assert failed.returncode == 1
    assert "ProcessExitError: exit status 4" in failed.stdout and "boom" in failed.stdout

    listed = json.loads(cli("list", "--status", "failed", "--json").stdout)
    assert [t["id"] for t in listed] == [bad_id]
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["done"] == 1 and stats["failed"] == 1
    assert cli("retry", str(bad_id)).returncode == 0
    assert cli("cancel", str(bad_id)).returncode == 0
    assert cli("cancel", str(bad_id)).returncode == 1  # not pending any more: command failed
    assert cli("status", "999999").returncode == 1
    assert cli("purge", "--older-than", "0").returncode == 0
    assert cli("stats", "--json").returncode == 0
    assert json.loads(cli("stats", "--json").stdout)["total"] == 0


@pytest.mark.any_backend  # refused before any statement
def test_bad_usage_exits_2_with_one_line(db_url: str, task_dir: Path, log_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)

    assert cli("init-db").returncode == 0
    for args, culprit in [
        (("add", "/bin/sh"), "absolute"),
        (("add", "../../bin/sh"), ".."),
        (("add", "x.sh", "{not json"), "PARAM_JSON"),
        (("add", "x.sh", "1", "--queue", "bad queue"), "queue name"),
        (("work", "--total", "2", "--shard", "2"), "--shard"),
    ]:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and culprit in lines[0], (args, res.stderr)
    assert Queue(db_url).stats()["total"] == 0  # nothing half-written


def test_password_never_printed(tmp_path: Path, task_dir: Path, log_dir: Path) -> None:
    url = "mysql+pymysql://cq:s3cr3t-pw@127.0.0.1:1/nodb"  # nothing listens on port 1
    res = run_cli("stats", db_url=url, task_dir=task_dir, log_dir=log_dir)
    assert res.returncode == 1
    assert "s3cr3t-pw" not in res.stdout + res.stderr
    assert "***" in res.stderr


def test_hand_inserted_row_runs(queue: Queue, db_url: str, task_dir: Path,
                                log_dir: Path) -> None:
    """What a PHP or Node application does: plain SQL with only taskscript and param."""
    write_script(task_dir, "php_style.sh", 'echo "from sql: $1"\n')
    with queue.engine.begin() as conn:
        conn.execute(text("INSERT INTO queue (taskscript, param) VALUES (:t, :p)"),
                     {"t": "php_style.sh", "p": '{"uid": 7}'})
    task_id = queue.list()[0].id
    res = run_cli("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert res.returncode == 0, res.stderr
    task = queue.get(task_id)
    assert task is not None and task.status is Status.DONE
    assert task.output == 'from sql: {"uid": 7}\n'


def test_demo_runs_offline(tmp_path: Path) -> None:
    res = subprocess.run(cronqueue_cmd("demo", "--dir", str(tmp_path / "demo")),
                         capture_output=True, text=True, timeout=120, env=clean_env(),
                         cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\d+ done, 1 failed, 0 pending, 0 running", res.stdout)
    assert (tmp_path / "demo" / "demo.db").exists()


# -- issue 15 item 4: the rough edges a new user hit -------------------------------------------


def test_a_database_without_tables_names_init_db(db_url: str, task_dir: Path, log_dir: Path,
                                                 tmp_path: Path) -> None:
    """Every command but check/init-db/migrate printed the raw error (MariaDB: 1146) and
    exited 1; the mission says the same one line at each tick."""
    config = tmp_path / "cronqueue.toml"
    config.write_text('[[mission]]\nname = "nightly"\ncron = "* * * * *"\n'
                      'add = { taskscript = "ok.sh" }\n'
                      '[[mission]]\nname = "drain"\ncron = "* * * * *"\n'
                      'do_queue = { total = 2 }\n')
    line = "cronqueue: error: the database has no cronqueue tables: run `cronqueue init-db`"
    for args in [("add", "ok.sh"), ("status", "1"), ("status", "1", "--wait"), ("list",),
                 ("stats",), ("retry", "1"), ("retry", "--failed"), ("cancel", "1"),
                 ("purge", "--older-than", "1d"), ("schedule",), ("workers",),
                 ("workers", "stop", "--all"), ("work",), ("mission",)]:
        res = run_cli(*args, "--config", str(config), db_url=db_url, task_dir=task_dir,
                      log_dir=log_dir)
        assert (res.returncode, res.stderr, res.stdout) == (2, line + "\n", ""), args
    check = run_cli("check", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert check.returncode == 1 and "no queue table: run `cronqueue init-db`" in check.stdout


def test_status_wait_timeout_has_its_own_exit_code_and_line(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    """`status --wait --timeout 5` on a pending task exited 1, as a failed task, silently."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)

    pending = queue.add("ok.sh")
    for json_flag in ((), ("--json",)):
        res = cli("status", str(pending), "--wait", "--timeout", "0.5", *json_flag)
        assert res.returncode == 3, res.stderr
        assert res.stderr == (f"cronqueue: timed out after 0.5s waiting for task {pending}: "
                              "still pending\n")
        assert f"task {pending}" in res.stdout or json.loads(res.stdout)["id"] == pending
    write_script(task_dir, "fail.sh", "exit 4\n")
    failed = queue.add("fail.sh", max_attempts=1)
    assert cli("work").returncode == 0
    done = cli("status", str(failed), "--wait", "--timeout", "5")
    assert (done.returncode, done.stderr) == (1, "")  # a failed task: 1, as before
    queue.cancel(queue.add("ok.sh"))
    assert cli("status", str(pending + 2), "--wait", "--timeout", "5").returncode == 1
    assert "exit 0 if done, 1 if failed or cancelled, 3 if --timeout passed first" in " ".join(
        cli("status", "--help").stdout.split())


def test_add_says_when_it_returns_an_existing_task_and_warns_of_a_missing_script(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    """A duplicate unique_key returned the old id without a word; a script that does not exist
    was accepted silently."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)

    write_script(task_dir, "ok.sh", "echo ok\n")
    first = cli("add", "ok.sh", "--unique-key", "nightly-1")
    assert (first.returncode, first.stderr) == (0, "")
    task_id = int(first.stdout)
    again = cli("add", "ok.sh", "--unique-key", "nightly-1")
    assert (again.returncode, int(again.stdout)) == (0, task_id)
    assert again.stderr == (f"cronqueue: task {task_id} (pending) holds unique_key nightly-1: "
                            "its id is returned, nothing was added\n")
    as_json = cli("add", "ok.sh", "--unique-key", "nightly-1", "--json")
    assert json.loads(as_json.stdout) == {"id": task_id, "existing": True}
    fresh = cli("add", "ok.sh", "--unique-key", "nightly-2", "--json")
    assert json.loads(fresh.stdout)["existing"] is False and fresh.stderr == ""
    assert queue.stats()["total"] == 2

    missing = cli("add", "later.sh", "[1]")
    assert missing.returncode == 0, missing.stderr
    assert missing.stderr == (
        f"cronqueue: warning: taskscript 'later.sh' not found ({task_dir.resolve()}/later.sh "
        "does not exist); added anyway (it may be deployed before a shard runs it; --no-check "
        "skips this check)\n")
    assert queue.get(int(missing.stdout)) is not None  # still added
    unchecked = cli("add", "later.sh", "--no-check")
    assert (unchecked.returncode, unchecked.stderr) == (0, "")


def test_check_fails_for_a_recurring_task_whose_script_is_missing(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    """`check` passed when an `add` entry's script did not exist in task_dir."""
    log_dir.mkdir()
    write_script(task_dir, "there.sh", "echo ok\n")
    config = tmp_path / "cronqueue.toml"
    config.write_text('[[mission]]\nname = "nightly"\ncron = "0 3 * * *"\n'
                      'add = { taskscript = "report.py" }\n'
                      '[[mission]]\nname = "hourly"\ncron = "0 * * * *"\n'
                      'add = { taskscript = "there.sh" }\n')
    res = run_cli("check", "--config", str(config), db_url=db_url, task_dir=task_dir,
                  log_dir=log_dir)
    assert res.returncode == 1, res.stdout
    assert (f"FAIL script    mission 'nightly': taskscript 'report.py' not found "
            f"({task_dir.resolve()}/report.py does not exist)\n") in res.stdout
    assert "ok   script    mission 'hourly': there.sh found\n" in res.stdout
    write_script(task_dir, "report.py", "print('ok')\n")
    res = run_cli("check", "--config", str(config), db_url=db_url, task_dir=task_dir,
                  log_dir=log_dir)
    assert res.returncode == 0 and "FAIL" not in res.stdout, res.stdout


def test_retry_of_a_cancelled_task_keeps_a_run_at_still_ahead(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    """`retry` of a cancelled task added for later ran it at once."""
    from datetime import UTC, datetime, timedelta

    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    ahead = queue.add("ok.sh", run_at=later)
    past = queue.add("ok.sh", run_at=datetime.now(UTC) - timedelta(hours=1))
    for task_id in (ahead, past):
        queue.cancel(task_id)
        res = run_cli("retry", str(task_id), db_url=db_url, task_dir=task_dir, log_dir=log_dir)
        assert res.returncode == 0, res.stderr
    kept, due = queue.get(ahead), queue.get(past)
    assert kept is not None and kept.status is Status.PENDING and kept.run_at == later
    assert due is not None and due.run_at is not None
    assert abs((due.run_at - datetime.now(UTC)).total_seconds()) < 60  # due now, as before


def test_purge_counts_first_narrows_by_status_and_keeps_unfinished_tasks(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    """`purge --older-than 1m` deleted 979 tasks at once: no dry run, no --status, and nothing
    kept pending or running tasks out of it when asked for them."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("purge", "--older-than", "1m", *args, db_url=db_url, task_dir=task_dir,
                       log_dir=log_dir)

    ids = queue.add_many([{"taskscript": "ok.sh"}] * 12)
    with queue.engine.begin() as conn:  # 6 done, 3 failed an hour ago; 3 pending, 1 running
        old = "2000-01-01 00:00:00"
        conn.execute(text("UPDATE queue SET status = 1, finished_at = :t, ctime = :t "
                          "WHERE id <= :i"), {"t": old, "i": ids[5]})
        conn.execute(text("UPDATE queue SET status = 3, finished_at = :t, ctime = :t "
                          "WHERE id > :a AND id <= :b"), {"t": old, "a": ids[5], "b": ids[8]})
        conn.execute(text("UPDATE queue SET ctime = :t WHERE id > :i"), {"t": old, "i": ids[8]})
        conn.execute(text("UPDATE queue SET status = 2 WHERE id = :i"), {"i": ids[11]})
    fresh = queue.add("ok.sh")  # pending, created now: never older than 1m

    dry = cli("--dry-run")
    assert dry.returncode == 0 and dry.stdout == (
        "would purge 9 task(s) older than 60s: done 6, failed 3, cancelled 0 "
        "(dry run: nothing deleted)\n")
    assert "pending 2, done 6, running 1, failed 3" in cli("--dry-run", "--include-pending").stdout
    assert queue.stats()["total"] == 13

    for refused in (("--status", "pending"), ("--include-pending",),
                    ("--status", "running", "--yes")):
        res = cli(*refused)
        assert res.returncode == 2 and res.stdout == "", refused
        assert res.stderr.count("\n") == 1 and "--include-pending --yes" in res.stderr, refused
    assert queue.stats()["total"] == 13

    assert cli("--status", "failed").stdout == "purged 3 task(s) older than 60s (failed)\n"
    assert cli().stdout == "purged 6 task(s) older than 60s (done, failed, cancelled)\n"
    res = cli("--status", "pending", "--include-pending", "--yes")
    assert res.stdout == "purged 2 task(s) older than 60s (pending)\n"
    left = {t.id: t.status for t in queue.list()}
    assert left == {ids[11]: Status.RUNNING, fresh: Status.PENDING}
    assert cli("--include-pending", "--yes").stdout.startswith("purged 1 task(s)")
    assert [t.id for t in queue.list()] == [fresh]


def test_a_missing_task_dir_is_the_shards_fault_not_the_tasks(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    """Each task of a shard whose task_dir was missing failed an attempt ("task_dir ... does
    not exist"), retried until its attempts were spent. Now the shard logs one line, claims
    nothing, leaves the tasks pending with their attempts, and exits 2."""
    ids = queue.add_many([{"taskscript": "ok.sh"}] * 3)
    gone = tmp_path / "not-deployed-yet"
    res = run_cli("work", db_url=db_url, task_dir=gone, log_dir=log_dir)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and (f"task_dir {gone} does not exist or is not a directory: the "
                                 "shard stops; its tasks stay pending, no attempt charged"
                                 ) in errors[0]
    assert "Traceback" not in res.stderr and "outcome=" not in res.stderr
    for task in map(queue.get, ids):
        assert task is not None and task.status is Status.PENDING and task.attempts == 0
        assert task.worker_host is None and task.error is None

    # task_dir moved away while the shard runs (a deploy): the task that finds it gone is
    # returned with its attempt given back, the shard stops, the rest stay as they were.
    write_script(task_dir, "ok.sh", "echo ok\n")
    write_script(task_dir, "deploy.sh", 'mv "$PWD" "$PWD.old"\n')
    queue.purge(0, statuses=[Status.PENDING])
    first = queue.add("deploy.sh", priority=9)
    rest = queue.add_many([{"taskscript": "ok.sh"}] * 3)
    res = run_cli("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert res.returncode == 2, res.stderr
    assert sum(" ERROR " in line for line in res.stderr.splitlines()) == 1, res.stderr
    done = queue.get(first)
    assert done is not None and done.status is Status.DONE
    returned = queue.get(rest[0])  # equal priority: the oldest is tried first
    assert returned is not None and returned.status is Status.PENDING
    assert returned.attempts == 0 and "does not exist" in (returned.error or "")
    for task in map(queue.get, rest):
        assert task is not None and task.status is Status.PENDING and task.attempts == 0
