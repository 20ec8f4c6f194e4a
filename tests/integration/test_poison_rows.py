"""Issue 11, item 1: poison rows. One row, whatever it holds, never stops a shard.

On 0.1.0 each row below crashed the shard before an attempt was charged: the row stayed pending
with 0 attempts, every later run of that shard died on it, and the tasks behind it (same
``id % N``) never ran. Now a row the shard cannot decode or use ends ``failed`` with
``InvalidRow: <the column and value>`` (by id, without running, no attempt charged), an
unexpected error while preparing or running a task is recorded on that task (``InternalError``
or the runner's named error) under the retry policy, and the read commands show odd values
instead of raising. Each test queues a normal task behind the poison row, in the same shard.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cronqueue import InvalidTask, Queue, Status, Task
from cronqueue.config import load_config
from cronqueue.process.runner import Runner
from cronqueue.shard.loop import Shard, ShardReport
from tests.conftest import AsText, insert_raw, run_cli
from tests.helpers import write_script

INT_MAX = 2**31 - 1
DEEP = "[" * 60000 + "]" * 60000  # 120,000 bytes: fits argv, but 60,000 levels deep


def insert(q: Queue, **columns: Any) -> int:
    """A hand-written row: every value bound; column names are this test's own."""
    return insert_raw(q, columns)


def shard(q: Queue, task_dir: Path, log_dir: Path, **kw: Any) -> ShardReport:
    """One burst shard (shard 0 of 1: every row is in it), in this process: an exception
    that escaped it on 0.1.0 fails the test."""
    queues = kw.pop("queues", None)
    cfg = load_config(None, db_url=q.config.db_url, task_dir=str(task_dir),
                      log_dir=str(log_dir), **kw)
    return Shard(cfg, queues=queues).run()


def get(q: Queue, task_id: int) -> Task:
    task = q.get(task_id)
    assert task is not None
    return task


@pytest.fixture
def ok(task_dir: Path) -> Path:
    return write_script(task_dir, "ok.sh", "#!/bin/sh\necho ok\n", 0o755)


def assert_failed_by_id(q: Queue, poison: int, reason: str, *, attempts: int) -> None:
    task = get(q, poison)
    assert task.status is Status.FAILED, (task.status, task.error)
    assert task.error is not None
    assert task.error.startswith("InvalidRow: "), task.error
    assert re.search(reason, task.error), task.error
    assert task.attempts == attempts  # not run, nothing charged
    assert task.started_at is None
    assert task.finished_at is not None


# -- values the databases accept: failed by id with the reason, the task behind runs --------

BOTH: list[tuple[dict[str, Any], str, int]] = [
    ({"attempts": -1}, r"attempts -1 is out of range", -1),
    ({"attempts": INT_MAX}, r"attempts 2147483647 is out of range", INT_MAX),
    ({"timeout": 0}, r"timeout 0 is out of range \(1\.\.", 0),
    ({"timeout": -5}, r"timeout -5 is out of range", 0),
    ({"max_attempts": 0}, r"max_attempts 0 is out of range \(1\.\.", 0),
    ({"max_attempts": -3}, r"max_attempts -3 is out of range", 0),
    ({"queue": "bad\x00queue"}, r"queue name 'bad\\x00queue' holds a NUL byte", 0),
]
SQLITE_ONLY: list[tuple[dict[str, Any], str, int]] = [
    ({"param": AsText(b'"{\xff}"')}, re.escape("param is not valid UTF-8 (b'\"{\\xff}\"')"), 0),
    ({"taskscript": AsText(b"ok\xff.sh")}, r"taskscript is not valid UTF-8", 0),
    ({"queue": AsText(b"default\xff")}, r"queue is not valid UTF-8", 0),
    ({"param": b"\xff\xfe"}, r"param is not valid UTF-8", 0),  # a BLOB
    ({"taskscript": b"\x80ok.sh"}, r"taskscript is not valid UTF-8", 0),
    ({"run_at": "1"}, r"run_at is not a valid time: 1", 0),  # NUMERIC affinity: integer 1
    ({"run_at": "2020-13-45 00:00:00"}, r"run_at is not a valid time: '2020-13-45", 0),
    # Text and BLOBs SQLite sorts after every time: due at once (else never due, pending forever).
    ({"run_at": "zzz"}, r"run_at is not a valid time: 'zzz'", 0),
    ({"run_at": b"\x00"}, r"run_at is not a valid time", 0),
    ({"ctime": "yesterday"}, r"ctime is not a valid time: 'yesterday'", 0),
    ({"priority": "high"}, r"priority is not an integer: 'high'", 0),
    ({"priority": 1.5}, r"priority is not an integer: 1\.5", 0),
    ({"attempts": "x"}, r"attempts is not an integer: 'x'", 0),
    ({"attempts": 2**40}, r"attempts 1099511627776 is out of range", 2**40),
    ({"timeout": b"\x01"}, r"timeout is not an integer: b'\\x01'", 0),
]
MARIADB_ONLY: list[tuple[dict[str, Any], str, int]] = [
    ({"run_at": "0000-00-00 00:00:00"}, r"run_at is not a valid time: '0000-00-00 00:00:00",
     0),
    ({"run_at": "2020-00-15 00:00:00"}, r"run_at is not a valid time: '2020-00-15", 0),
]


def _cases(backend: str) -> list[tuple[dict[str, Any], str, int]]:
    return BOTH + (SQLITE_ONLY if backend == "sqlite" else MARIADB_ONLY)


CASES = ([pytest.param("any", *c, id=repr(c[0])) for c in BOTH]
         + [pytest.param("sqlite", *c, id=repr(c[0])) for c in SQLITE_ONLY]
         + [pytest.param("mariadb", *c, id=repr(c[0])) for c in MARIADB_ONLY])


@pytest.mark.parametrize(("only", "values", "reason", "attempts"), CASES)
def test_poison_row_is_failed_by_id_and_the_task_behind_it_runs(
        queue: Queue, backend: str, ok: Path, task_dir: Path, log_dir: Path, only: str,
        values: dict[str, Any], reason: str, attempts: int) -> None:
    if only not in ("any", backend):
        pytest.skip(f"{only} only: {backend} refuses or never stores this value")
    row = {"taskscript": "ok.sh", "param": "{}", **values}
    poison = insert(queue, **row)
    behind = queue.add("ok.sh", {})
    report = shard(queue, task_dir, log_dir)
    assert_failed_by_id(queue, poison, reason, attempts=attempts)
    assert get(queue, behind).status is Status.DONE
    assert report.outcomes == {poison: "failed", behind: "done"}
    # The read side shows the row, with its problem, instead of raising.
    assert get(queue, poison).problem is not None
    assert poison in [t.id for t in queue.list()]
    assert queue.stats()["failed"] == 1


def test_a_row_of_every_poison_at_once_fails_each_alone(
        queue: Queue, backend: str, ok: Path, task_dir: Path, log_dir: Path) -> None:
    """One claim holding all of them (batch 100): each fails by id, none fails the claim."""
    poisons = {insert(queue, **{"taskscript": "ok.sh", "param": "{}", **values}): reason
               for values, reason, _ in _cases(backend)}
    behind = [queue.add("ok.sh", {"n": i}) for i in range(3)]
    report = shard(queue, task_dir, log_dir)
    for task_id, reason in poisons.items():
        task = get(queue, task_id)
        assert task.status is Status.FAILED and task.error is not None, task_id
        assert re.search(reason, task.error), task.error
    assert all(get(queue, i).status is Status.DONE for i in behind)
    assert report.done == 3
    assert report.failed == len(poisons)


def test_a_secret_that_is_not_text_fails_its_task(queue: Queue, backend: str, ok: Path,
                                                   task_dir: Path, log_dir: Path) -> None:
    """The secret is read when the task starts (not with the claim): refused then, by name,
    with the attempt charged (its start was committed), not retried."""
    if backend != "sqlite":
        pytest.skip("MariaDB refuses text that is not UTF-8")
    poison = insert(queue, taskscript="ok.sh", param="{}", secret=AsText(b'"\xff"'))
    behind = queue.add("ok.sh", {}, secret={"k": 1})
    report = shard(queue, task_dir, log_dir)
    task = get(queue, poison)
    assert (task.status, task.attempts) == (Status.FAILED, 1)
    assert task.error == "InvalidRow: secret is not valid UTF-8 (b'\"\\xff\"')"
    assert get(queue, behind).status is Status.DONE
    assert report.outcomes == {poison: "failed", behind: "done"}


def test_a_blob_holding_utf8_text_is_that_text(queue: Queue, backend: str, ok: Path,
                                                task_dir: Path, log_dir: Path) -> None:
    """A BLOB (e.g. bound as binary by a PHP application) whose bytes are UTF-8 is read as
    that text, as a TEXT column would be (0.1.0: AttributeError/TypeError killed the shard)."""
    if backend != "sqlite":
        pytest.skip("MariaDB stores a binary string sent to a TEXT column as that text")
    task_id = insert(queue, taskscript=b"ok.sh", param=b"{}")
    shard(queue, task_dir, log_dir)
    task = get(queue, task_id)
    assert (task.status, task.taskscript, task.param, task.problem) == (
        Status.DONE, "ok.sh", "{}", None)


def test_text_priority_in_a_multi_queue_shard(queue: Queue, backend: str, ok: Path,
                                              task_dir: Path, log_dir: Path) -> None:
    """0.1.0: the merge of several queues' candidates raised TypeError on every claim."""
    if backend != "sqlite":
        pytest.skip("MariaDB refuses text in an INT column (strict mode)")
    poison = insert(queue, taskscript="ok.sh", param="{}", priority="high", queue="other")
    behind = [queue.add("ok.sh", {}, queue="default", priority=5),
              queue.add("ok.sh", {}, queue="other")]
    report = shard(queue, task_dir, log_dir, queues=["default", "other"])
    assert_failed_by_id(queue, poison, r"priority is not an integer: 'high'", attempts=0)
    assert all(get(queue, i).status is Status.DONE for i in behind)
    assert report.done == 2


# -- rows that cannot be run: the runner's named error, or InternalError; never a crash -----


def test_script_path_through_a_file(queue: Queue, ok: Path, task_dir: Path,
                                    log_dir: Path) -> None:
    """``ok.sh/x`` where ok.sh is a file: NotADirectoryError killed every run of the shard."""
    poison = queue.add("ok.sh/x", {})
    behind = queue.add("ok.sh", {})
    shard(queue, task_dir, log_dir, max_attempts=1)
    task = get(queue, poison)
    assert task.status is Status.FAILED, (task.status, task.error)
    assert task.error is not None
    assert "directory" in task.error.lower(), task.error
    assert get(queue, behind).status is Status.DONE


def test_symlink_loop_in_task_dir(queue: Queue, ok: Path, task_dir: Path,
                                  log_dir: Path) -> None:
    (task_dir / "a.sh").symlink_to("b.sh")
    (task_dir / "b.sh").symlink_to("a.sh")
    poison = queue.add("a.sh", {})
    behind = queue.add("ok.sh", {})
    shard(queue, task_dir, log_dir, max_attempts=1)
    task = get(queue, poison)
    assert task.status is Status.FAILED, (task.status, task.error)
    assert task.error is not None
    assert re.search(r"loop|levels of symbolic links|ELOOP", task.error, re.I), task.error
    assert get(queue, behind).status is Status.DONE


def test_param_nested_60000_deep(queue: Queue, ok: Path, task_dir: Path,
                                 log_dir: Path) -> None:
    poison = insert(queue, taskscript="ok.sh", param=DEEP)
    behind = queue.add("ok.sh", {})
    shard(queue, task_dir, log_dir)
    task = get(queue, poison)
    assert task.status is Status.FAILED, (task.status, task.error)
    assert task.error is not None
    assert "nested too deeply" in task.error, task.error
    assert task.attempts == 1  # refused by the runner: the attempt is charged, not retried
    assert get(queue, behind).status is Status.DONE


def test_add_refuses_a_param_nested_too_deeply(queue: Queue, ok: Path, task_dir: Path,
                                               log_dir: Path, db_url: str) -> None:
    deep: list[Any] = []
    for _ in range(60000):
        deep = [deep]
    with pytest.raises(InvalidTask, match="param is nested too deeply"):
        queue.add("ok.sh", deep)
    with pytest.raises(InvalidTask, match="secret is nested too deeply"):
        queue.add("ok.sh", {}, secret=deep)
    with pytest.raises(InvalidTask, match="add_many item 1: param is nested too deeply"):
        queue.add_many([("ok.sh", {}), ("ok.sh", deep)])
    assert queue.list() == []
    # The CLI: exit 2 and one line naming the culprit, no traceback.
    proc = run_cli("add", "ok.sh", DEEP, db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "Traceback" not in proc.stderr
    assert "nested too deeply" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-500:]
    assert queue.list() == []


def test_an_unexpected_error_fails_that_task_only(queue: Queue, ok: Path, task_dir: Path,
                                                  log_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-all around one task: whatever preparing or running it raises is recorded on
    it by name (``InternalError: <type>: <message>``), its attempt is charged, the retry
    policy applies, and the shard goes on with the next task."""
    real_run = Runner.run
    unlucky = queue.add("ok.sh", {"unlucky": True}, max_attempts=2)
    behind = queue.add("ok.sh", {})

    def run(self: Runner, task: Task, **kw: Any) -> Any:
        if task.id == unlucky:
            raise RuntimeError("disk on fire")
        return real_run(self, task, **kw)

    monkeypatch.setattr(Runner, "run", run)
    report = shard(queue, task_dir, log_dir)
    task = get(queue, unlucky)
    assert (task.status, task.attempts) == (Status.PENDING, 1)
    assert task.error == "InternalError: RuntimeError: disk on fire"
    assert get(queue, behind).status is Status.DONE
    assert report.outcomes == {unlucky: "retried", behind: "done"}


# -- a status outside 0..4: read commands show it -------------------------------------------


def test_unknown_status_is_shown_not_raised(queue: Queue, db_url: str, task_dir: Path,
                                            log_dir: Path, ok: Path) -> None:
    odd = insert(queue, taskscript="ok.sh", param="{}", status=7)
    normal = queue.add("ok.sh", {})
    task = get(queue, odd)
    assert int(task.status) == 7 and task.status.name == "UNKNOWN(7)"
    assert {t.id: int(t.status) for t in queue.list()} == {odd: 7, normal: 0}
    stats = queue.stats()
    assert (stats["total"], stats["pending"], stats["unknown(7)"]) == (2, 1, 1)
    assert stats["queues"]["default"]["unknown(7)"] == 1
    with pytest.raises(Exception, match=r"task \d+ is unknown\(7\); only pending"):
        queue.cancel(odd)
    with pytest.raises(Exception, match=r"is unknown\(7\); only failed or cancelled"):
        queue.retry(odd)

    def cli(*args: str) -> Any:
        proc = run_cli(*args, db_url=db_url, task_dir=task_dir, log_dir=log_dir)
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        return proc

    assert cli("list").returncode == 0
    listed = json.loads(cli("list", "--json").stdout)
    assert {t["id"]: t["status"] for t in listed} == {odd: "unknown(7)", normal: "pending"}
    assert json.loads(cli("stats", "--json").stdout)["unknown(7)"] == 1
    assert cli("stats").returncode == 0
    status = cli("status", str(odd))
    assert "unknown(7)" in status.stdout
    for command in ("retry", "cancel"):
        proc = cli(command, str(odd))
        assert proc.returncode != 0
        assert "unknown(7)" in proc.stderr
    # And a shard leaves it alone (it is not pending) and runs the rest.
    shard(queue, task_dir, log_dir)
    assert int(get(queue, odd).status) == 7
    assert get(queue, normal).status is Status.DONE


def test_a_status_that_is_no_code_is_named_and_no_command_moves_it(
        queue: Queue, backend: str, db_url: str, task_dir: Path, log_dir: Path,
        ok: Path) -> None:
    """A status that is not an integer 0..4 is a problem of that column (the REAL and BLOB
    ones were not, and ``status --wait`` waited for them forever). Shards, the rescue and
    purge never select it; cancel and retry refuse it; the read commands show it with the
    reason, as stored; ``status --wait`` returns at once (exit 1)."""
    import time
    from datetime import UTC, datetime

    from cronqueue.mission.rescue import rescue

    stored: dict[object, str] = {7: "status 7 is out of range (0..4)",
                                 -1: "status -1 is out of range (0..4)"}
    if backend == "sqlite":  # (MariaDB's integer column refuses the rest)
        stored.update({0.5: "status is not an integer: 0.5",
                       2.5: "status is not an integer: 2.5",
                       b"\x00": "status is not an integer: b'\\x00'",
                       "pending": "status is not an integer: 'pending'"})
    odd = {insert(queue, taskscript="ok.sh", param="{}", status=value,
                  finished_at="2020-01-01 00:00:00",
                  worker_host="otherhost", lease_until="2020-01-01 00:00:00"): (value, why)
           for value, why in stored.items()}
    normal = queue.add("ok.sh", {})
    for task_id, (value, why) in odd.items():
        task = get(queue, task_id)
        assert (task.problem, task.bad_columns) == (why, {"status"}), value
    before = {task_id: get(queue, task_id) for task_id in odd}

    shard(queue, task_dir, log_dir)
    report = rescue(queue.store, queue.config.worker, datetime.now(UTC),
                    server_uptime=lambda: 10.0**9)
    assert not set(odd) & set(report.retried + report.failed + report.released)
    assert queue.purge(older_than=0) == 1  # the done normal task only
    assert {task_id: get(queue, task_id) for task_id in odd} == before
    for task_id in odd:
        for act in (queue.cancel, queue.retry):
            with pytest.raises(Exception, match=rf"task {task_id} is unknown\("):
                act(task_id)

    task_id, (value, why) = next(iter(odd.items()))
    started = time.monotonic()
    proc = run_cli("status", str(task_id), "--wait", "--timeout", "60", db_url=db_url,
                   task_dir=task_dir, log_dir=log_dir)
    assert proc.returncode == 1 and time.monotonic() - started < 30
    assert f"problem   {why}" in proc.stdout
    listed = json.loads(run_cli("list", "--json", db_url=db_url, task_dir=task_dir,
                                log_dir=log_dir).stdout)
    assert {t["id"]: t["problem"] for t in listed} == {i: w for i, (_, w) in odd.items()}
    assert normal not in {t["id"] for t in listed}


def test_the_cli_shard_survives_a_poison_row(queue: Queue, backend: str, db_url: str,
                                             task_dir: Path, log_dir: Path, ok: Path) -> None:
    """The reproduction of findings-0.1.0.md with the real command: ``cronqueue work`` ends
    0, the row is failed with its reason, the task behind it is done."""
    if backend == "sqlite":
        poison = insert(queue, taskscript="ok.sh", param=AsText(b'"{\xff}"'))
    else:
        poison = insert(queue, taskscript="ok.sh", param="{}", run_at="0000-00-00 00:00:00")
    behind = queue.add("ok.sh", {})
    proc = run_cli("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert get(queue, poison).status is Status.FAILED
    assert get(queue, behind).status is Status.DONE
    assert f"task={poison}" in proc.stderr and "InvalidRow" in proc.stderr
