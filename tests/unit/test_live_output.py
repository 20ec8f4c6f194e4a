"""A running task's output, followed live: what the runner hands on while the script runs, and
what the heartbeat writes of it (no database: a recording stand-in for ``Workers``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DataError, InterfaceError

from cronqueue.config import WorkerConfig
from cronqueue.errors import DatabaseError
from cronqueue.process.capture import Capture
from cronqueue.process.runner import Runner
from cronqueue.shard.heartbeat import Heartbeat
from cronqueue.store.workers import LiveOutput
from tests.helpers import write_script
from tests.unit.test_runner import make_task

# Prints, then waits (at most 30 s) for the flag file the test creates, then stays silent for
# two of the runner's one-second looks before it exits.
WAITS_SH = ('printf "0123456789abcdef\\n"\n'
            'i=0; while [ ! -e flag ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n'
            'sleep 2.2\n')


def test_the_running_tail_is_handed_on_once_per_growth(task_dir: Path, log_dir: Path) -> None:
    write_script(task_dir, "waits.sh", WAITS_SH)
    runner = Runner(task_dir, log_dir, tail_bytes=8, kill_grace=0.5)
    calls: list[tuple[int, str]] = []

    def live(task_id: int, output: str) -> None:
        calls.append((task_id, output))
        (task_dir / "flag").touch()  # the script goes on only once its output was seen

    try:
        result = runner.run(make_task("waits.sh", task_id=41), attempt=1, timeout=60,
                            live=live)
    finally:
        runner.close()
    assert result.ok
    assert (task_dir / "flag").exists(), "the running task's output was never handed on"
    # the row's tail as the outcome keeps it (the last tail_bytes), once: it did not grow since
    assert calls == [(41, "9abcdef\n")]
    assert result.output == "9abcdef\n"


def test_a_short_task_hands_nothing_on(task_dir: Path, log_dir: Path) -> None:
    write_script(task_dir, "quick.sh", "echo done\n")
    runner = Runner(task_dir, log_dir)
    calls: list[tuple[int, str]] = []
    try:
        result = runner.run(make_task("quick.sh"), attempt=1, timeout=60,
                            live=lambda task_id, output: calls.append((task_id, output)))
    finally:
        runner.close()
    assert result.ok and result.output == "done\n"
    assert calls == []


class Recording:
    """``Workers.heartbeat`` recorded; raises ``fail`` (once) when set."""

    def __init__(self) -> None:
        self.lives: list[LiveOutput | None] = []
        self.fail: Exception | None = None

    def heartbeat(self, *args: Any, live: LiveOutput | None = None, **kwargs: Any) -> bool:
        self.lives.append(live)
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        return False


def make_heartbeat(repo: Recording) -> Heartbeat:
    hb = Heartbeat(repo, WorkerConfig(), label="0/1",  # type: ignore[arg-type]
                   clock=lambda: datetime.now(UTC), on_stop_requested=lambda: None,
                   on_lease_at_risk=lambda: None)
    hb.worker_id = 1
    hb.token = "tok"
    return hb


def test_each_snapshot_is_written_by_one_beat() -> None:
    repo = Recording()
    hb = make_heartbeat(repo)
    hb.beat()
    hb.show(7, "one\n")
    hb.beat()
    hb.beat()  # nothing new: not written again
    hb.show(7, "one\ntwo\n")
    hb.beat()
    hb.live = None  # the task ended (the shard clears it)
    hb.beat()
    assert repo.lives == [None, LiveOutput("tok", 7, "one\n"), None,
                          LiveOutput("tok", 7, "one\ntwo\n"), None]


def test_no_snapshot_without_a_claim() -> None:
    repo = Recording()
    hb = make_heartbeat(repo)
    hb.token = None
    hb.show(7, "one\n")
    hb.beat()
    assert repo.lives == [None]


@pytest.mark.parametrize("outage", [True, False])
def test_a_failed_beat_keeps_its_snapshot_only_through_an_outage(outage: bool) -> None:
    repo = Recording()
    hb = make_heartbeat(repo)
    hb.show(7, "one\n")
    cause = (InterfaceError("UPDATE", {}, Exception("connection lost")) if outage
             else DataError("UPDATE", {}, Exception("data too long")))
    error = DatabaseError("database error")
    error.__cause__ = cause
    repo.fail = error
    with pytest.raises(DatabaseError):
        hb.beat()
    hb.beat()
    # an outage: written by the next beat; refused by the database: dropped, so that the
    # output never costs the shard its lease
    assert repo.lives == [LiveOutput("tok", 7, "one\n"),
                          LiveOutput("tok", 7, "one\n") if outage else None]


def test_the_running_tail_is_what_the_outcome_would_keep(tmp_path: Path) -> None:
    """``Capture.last`` while the script runs equals ``Captured.last`` once it ended: across
    the head in memory, the head in its file, and the tail."""
    files: list[int] = []

    def make_file() -> int:
        fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
        files.append(fd)
        return fd

    capture = Capture(make_file, head=(1 << 16) + 100, tail=300)
    data = bytes(range(256)) * 300  # 76,800 bytes: head in memory, head in a file, tail
    try:
        for start in range(0, len(data), 7000):
            os.write(capture.write_fd, data[start:start + 7000])
            capture.pump()
        capture.started()
        capture.pump()
        assert files, "the head never reached its file"
        sizes = (0, 1, 299, 300, 301, 400, (1 << 16) + 400, len(data))
        running = {n: capture.last(n) for n in sizes}
        captured = capture.finish()
        for n in sizes:
            assert running[n] == captured.last(n), n
        head = (1 << 16) + 100
        assert running[300] == data[-300:]
        assert running[400] == data[head - 100:head] + data[-300:]  # the file's end, tail
        assert running[len(data)] == data[:head] + data[-300:]  # memory, file, tail
        assert captured.not_kept == len(data) - (1 << 16) - 100 - 300
    finally:
        capture.close()
