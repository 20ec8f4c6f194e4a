"""SKIP LOCKED skips rows of ours that another transaction holds for an instant (a copy of the
same shard claiming them, a cancel; on 0.1.0 also another shard's locking scan). An empty claim
therefore does not mean "nothing due": a burst shard must look again (without locks) before it
exits, or it leaves due tasks behind until the next tick."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from cronqueue import Queue, Status
from cronqueue.config import load_config
from cronqueue.shard.loop import Shard
from cronqueue.store.engine import make_engine
from tests.conftest import BACKENDS
from tests.helpers import write_script


@pytest.mark.skipif("mariadb" not in BACKENDS, reason="CRONQUEUE_TEST_BACKENDS excludes it")
@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
def test_burst_shard_waits_out_a_row_locked_by_another_claimer(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    write_script(task_dir, "ok.sh", "exit 0\n")
    task_id = queue.add("ok.sh")
    other = make_engine(db_url)
    conn = other.connect()
    tx = conn.begin()
    # Another process's claim transaction has this row locked (as a scan would, briefly).
    conn.execute(text("SELECT id FROM queue WHERE id = :id FOR UPDATE"), {"id": task_id})

    def release_soon() -> None:
        # The lock is held for a while (no event to wait for: the shard's first claim must
        # find the row locked and skip it), then released.
        time.sleep(0.3)
        tx.rollback()

    releaser = threading.Thread(target=release_soon)
    releaser.start()
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir))
    report = Shard(cfg, total=1, shard=0).run()  # burst mode
    releaser.join()
    conn.close()
    other.dispose()
    assert report.done == 1
    task = queue.get(task_id)
    assert task is not None and task.status is Status.DONE
