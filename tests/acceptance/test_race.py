"""Racing shards: real `cronqueue work` processes, including two copies of the same shard,
drain 2,000 tasks. Every task must run exactly once: none twice, none lost."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from cronqueue import Queue, Status
from tests.helpers import clean_env, cronqueue_cmd, write_script

TASKS = 2000
TOTAL = 4
# Shard 0 and shard 3 each run twice at once: the same rows are fought over.
SHARDS = [0, 1, 2, 3, 0, 3]


@pytest.mark.slow
def test_racing_shards_run_every_task_exactly_once(queue: Queue, db_url: str, task_dir: Path,
                                                   log_dir: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ran.txt"
    write_script(task_dir, "record.sh",
                 f'#!/bin/sh\necho "$CRONQUEUE_TASK_ID $CRONQUEUE_ATTEMPT" >> "{ledger}"\n',
                 mode=0o755)
    ids = queue.add_many({"taskscript": "record.sh", "param": {"n": n}, "priority": n % 3}
                         for n in range(TASKS))
    assert len(set(ids)) == TASKS

    started = time.monotonic()
    procs = [
        subprocess.Popen(
            cronqueue_cmd("work", "--total", str(TOTAL), "--shard", str(shard), "--batch", "25",
                          "--db", db_url, "--task-dir", str(task_dir), "--log-dir",
                          str(log_dir)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        for shard in SHARDS
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    elapsed = time.monotonic() - started
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]

    runs = Counter(int(line.split()[0]) for line in ledger.read_text().splitlines())
    duplicates = {i: n for i, n in runs.items() if n > 1}
    lost = set(ids) - set(runs)
    ran_per_process = [int(m.group(1)) for _o, err in outputs
                       for m in [re.search(r"exit ran=(\d+)", err)] if m]
    print(f"{TASKS} tasks, {len(SHARDS)} shard processes (shards {SHARDS}), "
          f"{elapsed:.1f}s wall, ran per process {ran_per_process}, "
          f"duplicates {len(duplicates)}, lost {len(lost)}")
    assert duplicates == {}
    assert lost == set()
    assert sum(ran_per_process) == TASKS
    stats = queue.stats()
    assert stats["done"] == TASKS and stats["pending"] == stats["running"] == 0
    # Every task was claimed on its first attempt: nobody had to take one over.
    assert all(queue.get(i).attempts == 1 for i in (ids[0], ids[TASKS // 2], ids[-1]))
    assert {queue.get(i).status for i in ids[:50]} == {Status.DONE}
