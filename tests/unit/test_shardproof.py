"""A shard's proof on its host (shardproof.py): the lock it holds, and what it proves."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from cronqueue.proc import pid_start_ticks
from cronqueue.shardproof import (
    WorkerLock,
    database_key,
    flock_holders,
    is_that_shard,
    lock_path,
)

URL = "mysql+pymysql://cq:secret@db.example:3306/app"


def test_database_key_names_the_database_not_the_credentials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert database_key(URL) == database_key("mysql+pymysql://other:pw@db.example:3306/app")
    assert database_key(URL) != database_key("mysql+pymysql://cq:secret@db.example:3306/app2")
    monkeypatch.chdir(tmp_path)
    assert database_key("sqlite:///q.db") == database_key(f"sqlite:///{tmp_path / 'q.db'}")
    assert database_key("sqlite:///q.db") != database_key(URL)


def test_the_holder_is_proven_and_nobody_else(tmp_path: Path) -> None:
    lock = WorkerLock(tmp_path, URL, 7)
    assert lock.acquire()
    me, started = os.getpid(), pid_start_ticks(os.getpid())
    try:
        assert flock_holders(lock.path) == {me}
        assert is_that_shard(tmp_path, URL, 7, me, started)
        assert started is not None
        assert not is_that_shard(tmp_path, URL, 7, me, started + 1)  # a reused pid
        assert not is_that_shard(tmp_path, URL, 7, me, None)
        assert not is_that_shard(tmp_path, URL, 8, me, started)  # another worker's row
        assert not is_that_shard(tmp_path, "sqlite:///other.db", 7, me, started)
        assert not is_that_shard(tmp_path / "elsewhere", URL, 7, me, started)
        assert not is_that_shard(tmp_path, URL, 7, os.getppid(), pid_start_ticks(os.getppid()))
    finally:
        lock.release()
    assert not lock.path.exists()
    assert not is_that_shard(tmp_path, URL, 7, me, started)


def test_stale_locks_of_dead_shards_are_swept_held_ones_kept(tmp_path: Path) -> None:
    stale, held = lock_path(tmp_path, URL, 1), lock_path(tmp_path, URL, 2)
    other_db = lock_path(tmp_path, "sqlite:///x.db", 3)
    stale.parent.mkdir(parents=True)
    for path in (stale, held, other_db):
        path.touch()
    holder = os.open(held, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a live shard of this database
    lock = WorkerLock(tmp_path, URL, 9)
    try:
        assert lock.acquire()
        assert not stale.exists()
        assert held.exists() and other_db.exists()
    finally:
        lock.release()
        os.close(holder)


def test_an_unwritable_log_dir_means_no_proof_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not WorkerLock(blocker, URL, 1).acquire()
