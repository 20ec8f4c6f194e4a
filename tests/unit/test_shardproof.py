"""A shard's proof on its host (shardproof.py): the lock it holds, and what it proves."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from cronqueue.process.identity import pid_start_ticks
from cronqueue.shard.proof import (
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


# -- the lock path is ours or nothing: never a link, never another user's file ---------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_the_lock_directories_and_file_are_created_owner_only(tmp_path: Path) -> None:
    """They were created 0755 and 0644."""
    lock = WorkerLock(tmp_path, URL, 7)
    assert lock.acquire()
    try:
        assert _mode(tmp_path / "locks") == 0o700
        assert _mode(tmp_path / "locks" / "workers") == 0o700
        assert _mode(lock.path) == 0o600
    finally:
        lock.release()


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside log_dir that an unrelated process (here: this test) holds an flock on."""
    target = tmp_path / "victim.lock"
    target.write_text("precious\n")
    target.chmod(0o640)
    return target


def _untouched(target: Path) -> None:
    assert target.read_text() == "precious\n" and _mode(target) == 0o640


def test_a_link_planted_at_the_lock_path_is_no_proof_and_stays_untouched(
        tmp_path: Path, victim: Path) -> None:
    """flock_holders stat'ed the lock path following links: a link planted there to a file
    an unrelated process flocks, plus a forged row naming that process, proved it to be the
    shard, and `workers stop` signalled it."""
    log_dir = tmp_path / "logs"
    planted = lock_path(log_dir, URL, 7)
    planted.parent.mkdir(parents=True)
    planted.symlink_to(victim)
    holder = os.open(victim, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    me, started = os.getpid(), pid_start_ticks(os.getpid())
    try:
        assert flock_holders(victim) == {me}
        assert not is_that_shard(log_dir, URL, 7, me, started)
        assert flock_holders(planted) == set()
        assert not WorkerLock(log_dir, URL, 7).acquire()  # refused, not locked through it
        other = WorkerLock(log_dir, URL, 9)  # its sweep passes the link by
        assert other.acquire()
        other.release()
    finally:
        os.close(holder)
    assert planted.is_symlink()
    _untouched(victim)


def test_a_link_planted_for_the_lock_directory_is_no_proof(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / lock_path(log_dir, URL, 7).name  # flocked by an unrelated process
    target.write_text("precious\n")
    target.chmod(0o640)
    (log_dir / "locks").mkdir(parents=True)
    (log_dir / "locks" / "workers").symlink_to(elsewhere)
    holder = os.open(target, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert not is_that_shard(log_dir, URL, 7, os.getpid(), pid_start_ticks(os.getpid()))
        assert not WorkerLock(log_dir, URL, 8).acquire()
    finally:
        os.close(holder)
    assert [p.name for p in elsewhere.iterdir()] == [target.name]
    _untouched(target)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_lock_file_of_another_user_is_refused_and_no_proof(tmp_path: Path) -> None:
    path = lock_path(tmp_path, URL, 7)
    path.parent.mkdir(parents=True)
    path.write_text("")
    os.chown(path, 65534, 65534)  # nobody's
    holder = os.open(path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert not is_that_shard(tmp_path, URL, 7, os.getpid(), pid_start_ticks(os.getpid()))
    finally:
        os.close(holder)
    assert not WorkerLock(tmp_path, URL, 7).acquire()
    assert path.stat().st_uid == 65534
