"""Issue 11 item 3 end to end (findings-0.1.0.md): a script that swaps itself for a link out of
task_dir, run by ``cronqueue work`` (on one backend: the database plays no part). 0.1.0 ran
tasks 2 and 3 from outside task_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from cronqueue import Queue, Status
from tests.conftest import get_task, run_cli
from tests.helpers import write_script


@pytest.mark.any_backend  # the runner's path walk
def test_self_swapping_script_runs_nothing_outside_task_dir(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_script(out, "evil.sh", f"#!/bin/sh\necho OUTSIDE\ntouch {out}/ran\n", mode=0o755)
    write_script(task_dir, "swap.sh",
                 f"#!/bin/sh\necho first\nln -s {out}/evil.sh swap.sh.new && "
                 "mv -T swap.sh.new swap.sh\n", mode=0o755)
    ids = [queue.add("swap.sh", {}) for _ in range(3)]
    res = run_cli("work", db_url=db_url, task_dir=task_dir, log_dir=log_dir)
    assert res.returncode in (0, 1), res.stderr
    first, *others = (get_task(queue, i) for i in ids)
    assert first.status is Status.DONE and first.output == "first\n", first
    for task in others:
        assert task.status is Status.FAILED, task
        assert task.attempts == 1  # refused for good: not retried
        assert "ScriptNotRunnable" in (task.error or "")
        assert "resolves outside task_dir" in (task.error or "")
        assert "OUTSIDE" not in (task.output or "")
    assert not (out / "ran").exists()
