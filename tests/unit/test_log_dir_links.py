"""Files cronqueue keeps in log_dir besides the day logs (the mission's ``shards.log``, the
shard and worker lock files under ``locks/``) are never opened through a link planted in a
shared log_dir. Before: the mission (root) appended every shard's output to the target of a
``shards.log`` link, a ``locks`` link made root create and flock files where it pointed, and a
dangling ``locks`` link crashed every shard (``FileExistsError`` traceback)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cronqueue.errors import CronqueueError
from cronqueue.mission.tick import detached_launcher
from cronqueue.process.logfiles import LogFileRefused, open_in_log_dir
from cronqueue.shard.guard import ShardGuard
from cronqueue.shard.proof import WorkerLock

URL = "sqlite:////tmp/cq-links-test.db"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    target = tmp_path / "victim"
    target.mkdir()
    (target / "file").write_text("precious\n")
    return target


def test_a_planted_shards_log_link_is_not_written_through(tmp_path: Path, victim: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "shards.log").symlink_to(victim / "file")
    proc = detached_launcher(log_dir)([sys.executable, "-c", "print('shard output')"],
                                      dict(os.environ), tmp_path)
    assert proc.wait(timeout=30) == 0  # the shard still starts
    assert (victim / "file").read_text() == "precious\n"
    assert "shards.log is a symbolic link: refused" in caplog.text


def test_shards_log_is_created_owner_only_and_appended(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    for word in ("one", "two"):
        proc = detached_launcher(log_dir)([sys.executable, "-c", f"print('{word}')"],
                                          dict(os.environ), tmp_path)
        assert proc.wait(timeout=30) == 0
    assert (log_dir / "shards.log").read_text() == "one\ntwo\n"
    assert (log_dir / "shards.log").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("dangling", [True, False])
def test_a_planted_locks_link_is_refused_by_the_shard_guard(
        tmp_path: Path, victim: Path, engine: Engine, dangling: bool) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "locks").symlink_to(victim / ("nowhere" if dangling else ""))
    guard = ShardGuard(engine, log_dir, "drain", 0)
    try:
        with pytest.raises(CronqueueError, match=r"locks is not a directory.*not starting"):
            guard.acquire()
    finally:
        guard.release()
    assert sorted(p.name for p in victim.iterdir()) == ["file"]


def test_a_planted_lock_file_link_is_refused_by_the_shard_guard(
        tmp_path: Path, victim: Path, engine: Engine) -> None:
    log_dir = tmp_path / "logs"
    (log_dir / "locks").mkdir(parents=True)
    guard = ShardGuard(engine, log_dir, "drain", 0)
    guard.path.symlink_to(victim / "created")
    try:
        with pytest.raises(CronqueueError, match=r"symbolic link.*not starting"):
            guard.acquire()
    finally:
        guard.release()
    assert not (victim / "created").exists()


def test_a_planted_worker_lock_link_is_not_created_or_locked(tmp_path: Path,
                                                             victim: Path) -> None:
    log_dir = tmp_path / "logs"
    (log_dir / "locks").mkdir(parents=True)
    (log_dir / "locks" / "workers").symlink_to(victim)
    lock = WorkerLock(log_dir, URL, 3)
    assert not lock.acquire()  # `workers stop` then goes through the database only
    assert sorted(p.name for p in victim.iterdir()) == ["file"]
    (log_dir / "locks" / "workers").unlink()
    (log_dir / "locks" / "workers").mkdir()
    lock.path.symlink_to(victim / "created")
    assert not lock.acquire()
    assert not (victim / "created").exists()


def test_open_in_log_dir_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    os.mkfifo(log_dir / "shards.log")
    with pytest.raises((LogFileRefused, OSError)):
        open_in_log_dir(log_dir, "shards.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
