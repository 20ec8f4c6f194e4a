"""The shard (do_queue): running tasks, retries with backoff, timeouts, refusals, stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from cronqueue import Queue, Status, Task
from cronqueue.config import load_config
from cronqueue.shard.loop import Shard, ShardReport
from tests.conftest import Clock
from tests.conftest import get_task as get
from tests.helpers import Procs, cronqueue_cmd, holds_for, process_gone, wait_until, write_script

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make_shard(db_url: str, task_dir: Path, log_dir: Path, clock: Any = None, *,
               total: int = 1, shard: int = 0, batch: int | None = None,
               max_seconds: float | None = None, **worker: Any) -> Shard:
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      **worker)
    kwargs = {} if clock is None else {"clock": clock}
    return Shard(cfg, total=total, shard=shard, batch=batch, max_seconds=max_seconds, **kwargs)






FAIL_SH = ('echo "attempt $CRONQUEUE_ATTEMPT" >> attempts.log\n'
           'echo "oops $CRONQUEUE_ATTEMPT" >&2\n'
           "exit 1\n")


# -- retries and backoff ----------------------------------------------------------------------


def test_failure_is_retried_with_backoff_then_failed(db_url: str, task_dir: Path,
                                                     log_dir: Path, cq: Queue,
                                                     clock: Clock) -> None:
    write_script(task_dir, "fail.sh", FAIL_SH)
    task_id = cq.add("fail.sh", {"n": 1}, max_attempts=3)

    def shard() -> ShardReport:
        return make_shard(db_url, task_dir, log_dir, clock, backoff=10).run()

    report = shard()
    assert (report.retried, report.done, report.failed) == (1, 0, 0)
    assert report.outcomes == {task_id: "retried"}
    task = get(cq, task_id)
    assert task.status is Status.PENDING
    assert task.attempts == 1
    assert task.error == "ProcessExitError: exit status 1"
    assert task.exit_code == 1
    assert task.claim_token is None
    assert "oops 1" in (task.output or "")
    first_delay = (task.run_at - clock.now).total_seconds()
    assert 10 <= first_delay <= 12.5

    # Same clock: the backoff is not over, a burst shard leaves it alone.
    report = shard()
    assert report.ran == 0
    assert get(cq, task_id).attempts == 1
    clock.set(task.run_at - timedelta(microseconds=1))
    assert shard().ran == 0

    clock.set(task.run_at + timedelta(seconds=1))
    report = shard()
    assert report.retried == 1
    task = get(cq, task_id)
    assert task.status is Status.PENDING and task.attempts == 2
    second_delay = (task.run_at - clock.now).total_seconds()
    assert 20 <= second_delay <= 25
    assert task.started_at is not None and task.started_at <= clock.now

    clock.set(task.run_at + timedelta(seconds=1))
    report = shard()
    assert report.failed == 1 and report.retried == 0
    task = get(cq, task_id)
    assert task.status is Status.FAILED
    assert task.attempts == 3
    assert task.error == "ProcessExitError: exit status 1"
    assert task.exit_code == 1
    assert task.finished_at == clock.now
    assert "oops 3" in (task.output or "")
    assert (task_dir / "attempts.log").read_text().split("\n")[:-1] == [
        "attempt 1", "attempt 2", "attempt 3"]

    clock.advance(10**6)
    assert shard().ran == 0


def test_backoff_uses_worker_default_max_attempts(db_url: str, task_dir: Path, log_dir: Path,
                                                  cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "fail.sh", FAIL_SH)
    task_id = cq.add("fail.sh")  # max_attempts None: the worker's (here 2)
    for _ in range(2):
        make_shard(db_url, task_dir, log_dir, clock, backoff=1, max_attempts=2).run()
        clock.advance(60)
    task = get(cq, task_id)
    assert task.status is Status.FAILED and task.attempts == 2


def test_succeeds_on_second_attempt(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                                    clock: Clock) -> None:
    write_script(task_dir, "flaky.sh",
                 '[ "$CRONQUEUE_ATTEMPT" -ge 2 ] || { echo first; exit 3; }\necho fine\n')
    task_id = cq.add("flaky.sh", max_attempts=3)
    report = make_shard(db_url, task_dir, log_dir, clock, backoff=10).run()
    assert report.retried == 1
    task = get(cq, task_id)
    assert task.exit_code == 3 and task.error == "ProcessExitError: exit status 3"
    clock.set(task.run_at)
    report = make_shard(db_url, task_dir, log_dir, clock, backoff=10).run()
    assert report.done == 1
    task = get(cq, task_id)
    assert task.status is Status.DONE
    assert task.attempts == 2
    assert task.exit_code == 0
    assert task.error is None
    assert task.finished_at == clock.now
    assert task.lease_until is None
    assert (task.output or "").strip() == "fine"


# -- timeouts ---------------------------------------------------------------------------------


TIMEOUT_SH = """sleep 30 &
echo $! > grandchild.pid
echo "started"
sleep 30
"""


@pytest.mark.any_backend  # the runner's kill; the row as for any failure
def test_timeout_kills_the_process_group(db_url: str, task_dir: Path, log_dir: Path,
                                         cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "slow.sh", TIMEOUT_SH)
    task_id = cq.add("slow.sh", timeout=1, max_attempts=2)
    report = make_shard(db_url, task_dir, log_dir, clock, kill_grace=0.5, backoff=5).run()
    assert report.retried == 1
    task = get(cq, task_id)
    assert task.status is Status.PENDING and task.attempts == 1
    assert (task.error or "").startswith("ProcessTimeoutError")
    assert task.exit_code != 0
    assert "started" in (task.output or "")
    grandchild = int((task_dir / "grandchild.pid").read_text())
    assert process_gone(grandchild)

    clock.set(task.run_at)
    report = make_shard(db_url, task_dir, log_dir, clock, kill_grace=0.5).run()
    assert report.failed == 1
    task = get(cq, task_id)
    assert task.status is Status.FAILED and task.attempts == 2
    assert (task.error or "").startswith("ProcessTimeoutError")
    assert process_gone(int((task_dir / "grandchild.pid").read_text()))


@pytest.mark.any_backend  # the runner's kill
def test_timeout_kills_a_script_that_ignores_term(db_url: str, task_dir: Path, log_dir: Path,
                                                  cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "stubborn.sh",
                 "trap '' TERM\nsleep 30 &\necho $! > grandchild.pid\nwait\nsleep 30\n")
    task_id = cq.add("stubborn.sh", timeout=1, max_attempts=1)
    report = make_shard(db_url, task_dir, log_dir, clock, kill_grace=0.3).run()
    assert report.failed == 1
    task = get(cq, task_id)
    assert task.status is Status.FAILED
    assert (task.error or "").startswith("ProcessTimeoutError")
    assert process_gone(int((task_dir / "grandchild.pid").read_text()))


# -- output -----------------------------------------------------------------------------------


def test_output_tail_in_row_and_whole_in_log(db_url: str, task_dir: Path, log_dir: Path,
                                             cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "talk.sh",
                 'i=1\nwhile [ $i -le 500 ]; do printf "line %04d\\n" $i; i=$((i+1)); done\n'
                 'echo "to stderr" >&2\n')
    task_id = cq.add("talk.sh")
    report = make_shard(db_url, task_dir, log_dir, clock, output_tail=64).run()
    assert report.done == 1
    task = get(cq, task_id)
    output = task.output or ""
    assert output.endswith("line 0500\nto stderr\n")
    assert 0 < len(output.encode()) <= 64
    assert "line 0001" not in output
    logs = list(log_dir.glob("*.log"))
    assert len(logs) == 1
    whole = logs[0].read_text()
    assert f"task={task_id}" in whole
    assert "line 0001\n" in whole and "line 0500\n" in whole and "to stderr" in whole


def test_script_sees_param_env_and_cwd(db_url: str, task_dir: Path, log_dir: Path,
                                       cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "sub/dump.py", (
        "import json, os, sys\n"
        "from cronqueue.task import args\n"
        "with open(os.path.join(os.getcwd(), 'seen.json'), 'w', encoding='utf-8') as fh:\n"
        "    json.dump({'argv': sys.argv[1:], 'args': args(), 'cwd': os.getcwd(),\n"
        "               'env': {k: v for k, v in os.environ.items()\n"
        "                       if k.startswith('CRONQUEUE_')}}, fh)\n"))
    param = {"q": "'; DROP TABLE queue; --", "e": "\U0001f600", "b": "\\", "n": "\u0000"}
    task_id = cq.add("sub/dump.py", param, queue="mail:x-1")
    report = make_shard(db_url, task_dir, log_dir, clock).run()
    assert report.done == 1, get(cq, task_id).output
    seen = json.loads((task_dir / "seen.json").read_text(encoding="utf-8"))
    assert seen["argv"] == [get(cq, task_id).param]
    assert seen["args"] == param
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(task_dir)
    assert seen["env"]["CRONQUEUE_TASK_ID"] == str(task_id)
    assert seen["env"]["CRONQUEUE_ATTEMPT"] == "1"
    assert seen["env"]["CRONQUEUE_QUEUE"] == "mail:x-1"


# -- scripts that cannot run ------------------------------------------------------------------


@pytest.mark.any_backend  # the runner's refusal
def test_symlink_out_of_task_dir_fails_at_once(db_url: str, task_dir: Path, log_dir: Path,
                                               tmp_path: Path, cq: Queue, clock: Clock) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write_script(outside, "evil.sh", "touch ran-evil\n", mode=0o755)
    (task_dir / "evil.sh").symlink_to(outside / "evil.sh")
    task_id = cq.add("evil.sh", max_attempts=3)
    report = make_shard(db_url, task_dir, log_dir, clock).run()
    assert report.failed == 1 and report.retried == 0
    task = get(cq, task_id)
    assert task.status is Status.FAILED
    assert task.attempts == 1
    assert (task.error or "").startswith("ScriptNotRunnable")
    assert not (task_dir / "ran-evil").exists()
    assert not (outside / "ran-evil").exists()


def test_missing_script_is_retried(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                                   clock: Clock) -> None:
    task_id = cq.add("later.sh", max_attempts=3)
    report = make_shard(db_url, task_dir, log_dir, clock, backoff=10).run()
    assert report.retried == 1 and report.failed == 0
    task = get(cq, task_id)
    assert task.status is Status.PENDING
    assert task.attempts == 1
    assert (task.error or "").startswith("ScriptNotRunnable")
    assert "not found" in (task.error or "")
    assert task.run_at > clock.now
    # Deployed in the meantime: the retry runs it.
    write_script(task_dir, "later.sh", "exit 0\n")
    clock.set(task.run_at)
    assert make_shard(db_url, task_dir, log_dir, clock).run().done == 1
    assert get(cq, task_id).status is Status.DONE


@pytest.mark.any_backend  # the runner's
def test_how_scripts_are_started(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                                 clock: Clock) -> None:
    write_script(task_dir, "direct.job", "#!/bin/sh\necho direct\n", mode=0o755)
    write_script(task_dir, "by_ext.sh", "echo by-ext\n")
    write_script(task_dir, "notes.txt", "echo never\n")
    write_script(task_dir, "shared.sh", "echo shared\n", mode=0o666)
    direct = cq.add("direct.job")
    by_ext = cq.add("by_ext.sh")
    unknown = cq.add("notes.txt", max_attempts=3)
    writable = cq.add("shared.sh", max_attempts=3)
    report = make_shard(db_url, task_dir, log_dir, clock).run()
    assert report.outcomes == {direct: "done", by_ext: "done", unknown: "failed",
                               writable: "failed"}
    assert (get(cq, direct).output or "").strip() == "direct"
    assert (get(cq, by_ext).output or "").strip() == "by-ext"
    for refused in (unknown, writable):
        task = get(cq, refused)
        assert task.attempts == 1
        assert (task.error or "").startswith("ScriptNotRunnable")


def test_killed_by_signal_and_binary_output(db_url: str, task_dir: Path, log_dir: Path,
                                            cq: Queue, clock: Clock) -> None:
    write_script(task_dir, "die.sh", "echo dying\nkill -KILL $$\n")
    write_script(task_dir, "binary.sh", "printf 'a\\377\\000b\\n'\n")
    died = cq.add("die.sh", max_attempts=1)
    binary = cq.add("binary.sh")
    report = make_shard(db_url, task_dir, log_dir, clock).run()
    assert report.outcomes == {died: "failed", binary: "done"}
    task = get(cq, died)
    assert task.status is Status.FAILED
    assert task.error == "ProcessSignaledError: killed by SIGKILL"
    assert "dying" in (task.output or "")
    task = get(cq, binary)
    assert task.status is Status.DONE
    assert (task.output or "").startswith("a") and (task.output or "").endswith("b\n")


def test_hand_inserted_bad_json_param_fails_at_once(db_url: str, task_dir: Path,
                                                     log_dir: Path, cq: Queue,
                                                     clock: Clock) -> None:
    write_script(task_dir, "ok.sh", "touch ran\n")
    with cq.engine.begin() as conn:
        conn.execute(text("INSERT INTO queue (taskscript, param, max_attempts) "
                          "VALUES (:t, :p, 3)"), {"t": "ok.sh", "p": "{not json"})
    [task] = cq.list()
    report = make_shard(db_url, task_dir, log_dir).run()  # real clock: the DB-side run_at
    assert report.failed == 1
    task = get(cq, task.id)
    assert task.status is Status.FAILED and task.attempts == 1
    assert (task.error or "").startswith("ScriptNotRunnable")
    assert not (task_dir / "ran").exists()


# -- order, sharding, delays -----------------------------------------------------------------


ORDER_SH = 'echo "$CRONQUEUE_TASK_ID" >> order.log\n'


@pytest.mark.parametrize("batch", [100, 2])
def test_execution_order_is_priority_then_id(db_url: str, task_dir: Path, log_dir: Path,
                                             cq: Queue, clock: Clock, batch: int) -> None:
    write_script(task_dir, "order.sh", ORDER_SH)
    priorities = [0, 5, -1, 5, 10, 0, -7, 3]
    ids = [cq.add("order.sh", priority=p) for p in priorities]
    by_id = dict(zip(ids, priorities, strict=True))
    report = make_shard(db_url, task_dir, log_dir, clock, batch=batch).run()
    assert report.done == len(ids)
    ran = [int(x) for x in (task_dir / "order.log").read_text().split()]
    assert ran == sorted(ids, key=lambda i: (-by_id[i], i))


def test_shard_runs_only_its_ids(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                                 clock: Clock) -> None:
    write_script(task_dir, "order.sh", ORDER_SH)
    ids = [cq.add("order.sh") for _ in range(7)]
    report = make_shard(db_url, task_dir, log_dir, clock, total=3, shard=2).run()
    mine = [i for i in ids if i % 3 == 2]
    assert report.done == len(mine)
    assert [int(x) for x in (task_dir / "order.log").read_text().split()] == mine
    for i in ids:
        assert get(cq, i).status is (Status.DONE if i in mine else Status.PENDING)


def test_delayed_tasks_wait(db_url: str, task_dir: Path, log_dir: Path, cq: Queue,
                            clock: Clock) -> None:
    write_script(task_dir, "order.sh", ORDER_SH)
    later = cq.add("order.sh", delay=3600)
    now_id = cq.add("order.sh")
    report = make_shard(db_url, task_dir, log_dir, clock).run()
    assert report.outcomes == {now_id: "done"}
    task = get(cq, later)
    assert task.status is Status.PENDING and task.attempts == 0 and task.claim_token is None
    clock.advance(3599)
    assert make_shard(db_url, task_dir, log_dir, clock).run().ran == 0
    clock.advance(1)
    assert make_shard(db_url, task_dir, log_dir, clock).run().outcomes == {later: "done"}


# -- the real command: stopping and time budgets ----------------------------------------------


def start_worker(procs: Procs, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
                 *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / "worker.stderr"
    proc = procs.start(cronqueue_cmd("work", "--db", db_url, "--task-dir", str(task_dir),
                                     "--log-dir", str(log_dir), "--batch", "10", *extra),
                       log=err, cwd=tmp_path)
    return proc, err


STARTED = 'echo "$CRONQUEUE_TASK_ID" >> started.txt\n'  # scripts say when they really start


def wait_for_running(q: Queue, proc: subprocess.Popen[bytes], err: Path, task_dir: Path,
                     limit: float = 60) -> Task:
    """The task whose script is running now (``started_at`` is set for a whole window of
    tasks before the first one runs: the scripts themselves tell)."""
    marker = task_dir / "started.txt"

    def started() -> list[str]:
        if proc.poll() is not None:
            pytest.fail(f"worker exited early ({proc.returncode}): {err.read_text()}")
        return marker.read_text().split() if marker.exists() else []

    lines = wait_until(started, limit, lambda: f"a task started: {err.read_text()}")
    task = q.get(int(lines[-1]))
    assert task is not None and task.status is Status.RUNNING
    return task


def test_sigterm_finishes_current_task_and_releases_the_rest(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue,
        procs: Procs) -> None:
    write_script(task_dir, "nap.sh", STARTED + "sleep 2\n")
    ids = [queue.add("nap.sh", i) for i in range(4)]
    proc, err = start_worker(procs, db_url, task_dir, log_dir, tmp_path)
    running = wait_for_running(queue, proc, err, task_dir)
    assert running.id == ids[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, err.read_text()
    task = get(queue, running.id)
    assert task.status is Status.DONE, err.read_text()
    assert task.attempts == 1
    for i in ids[1:]:
        task = get(queue, i)
        assert task.status is Status.PENDING
        assert task.claim_token is None
        assert task.attempts == 0
        assert task.started_at is None
    # Nothing was lost: a new shard drains the rest.
    write_script(task_dir, "nap.sh", "exit 0\n")
    report = make_shard(db_url, task_dir, log_dir).run()
    assert report.done == 3


def test_second_sigterm_kills_and_returns_the_task(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue,
        procs: Procs) -> None:
    write_script(task_dir, "long.sh", STARTED + "sleep 30 &\necho $! > sleep.pid\nwait\n")
    task_id = queue.add("long.sh", max_attempts=3)
    other = queue.add("long.sh")
    proc, err = start_worker(procs, db_url, task_dir, log_dir, tmp_path)
    running = wait_for_running(queue, proc, err, task_dir)
    assert running.id == task_id
    proc.send_signal(signal.SIGTERM)
    # Two signals delivered at once would be handled as one, and the first TERM shows nothing
    # to wait for: it waits for the task, so nothing may happen for a while.
    holds_for(lambda: proc.poll() is None, 0.3, err.read_text)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    task = get(queue, task_id)
    assert task.status is Status.PENDING, err.read_text()
    assert task.attempts == 0
    assert task.claim_token is None
    assert (task.error or "").startswith("ProcessInterruptedError")
    assert process_gone(int((task_dir / "sleep.pid").read_text()))
    task = get(queue, other)
    assert task.status is Status.PENDING and task.attempts == 0 and task.claim_token is None


def test_sigterm_while_idle_polling_exits_cleanly(
        db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, queue: Queue,
        procs: Procs) -> None:
    write_script(task_dir, "ok.sh", "echo ok\n")
    proc, err = start_worker(procs, db_url, task_dir, log_dir, tmp_path, "--max-seconds", "120")
    # Wait until the shard is up and polling: it runs a first task.
    first = queue.add("ok.sh")
    assert queue.wait(first, timeout=60).status is Status.DONE  # type: ignore[union-attr]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, err.read_text()
    later = queue.add("ok.sh")
    assert get(queue, later).status is Status.PENDING


def test_max_seconds_keeps_polling(db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
                                   queue: Queue, procs: Procs) -> None:
    write_script(task_dir, "ok.sh", "echo ok\n")
    started = time.monotonic()
    proc, err = start_worker(procs, db_url, task_dir, log_dir, tmp_path, "--max-seconds", "3")
    # Idle, it keeps polling: nothing may happen for a while.
    holds_for(lambda: proc.poll() is None, 1.0, err.read_text)
    task_id = queue.add("ok.sh")
    assert proc.wait(timeout=30) == 0, err.read_text()
    elapsed = time.monotonic() - started
    assert elapsed >= 3, "the shard left before its time budget was spent"
    task = get(queue, task_id)
    assert task.status is Status.DONE, err.read_text()
    assert task.finished_at is not None
