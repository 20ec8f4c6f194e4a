"""A shard whose log_dir cannot hold its lock file (a full log disk, a read-only one) crashed
with an OSError traceback at every start, so no task of a mission entry ran while the log disk
was full. Now: on MySQL/MariaDB the server's GET_LOCK alone guards the shard (it covers this
host too) and the shard runs; on SQLite, where the file lock is the only guard, the shard
refuses to start with one line naming the lock and why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cronqueue.errors import CronqueueError
from cronqueue.shard.guard import ShardGuard
from cronqueue.store.engine import make_engine


def test_a_log_dir_that_cannot_hold_the_lock_file(db_url: str, backend: str,
                                                  tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "locks").write_text("")  # any OSError on the way to the file will do
    engine = make_engine(db_url)
    first, second = ShardGuard(engine, log_dir, "drain", 0), ShardGuard(engine, log_dir,
                                                                        "drain", 0)
    try:
        if backend == "sqlite":
            with pytest.raises(CronqueueError, match=r"shard lock .*not starting"):
                first.acquire()
            return
        assert first.acquire()  # the server's lock alone
        assert second.acquire() is False  # and it still keeps a second copy out
        assert second.holder == "another host"
    finally:
        first.release()
        second.release()
        engine.dispose()
    assert os.path.isfile(log_dir / "locks")
