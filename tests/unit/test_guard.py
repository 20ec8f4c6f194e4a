"""The shard guard: one process per (entry, shard), released the moment its holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from cronqueue.shard.guard import (
    ShardGuard,
    is_locked_here,
    is_locked_in_db,
    legacy_lock_path,
    lock_path,
)
from cronqueue.store.engine import make_engine
from cronqueue.store.workers import lock_name as db_lock_name
from tests.helpers import wait_until


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def guards() -> Iterator[list[ShardGuard]]:
    """Guards made by a test; released at the end whatever happens."""
    made: list[ShardGuard] = []
    yield made
    for guard in made:
        guard.release()


def make(guards: list[ShardGuard], engine: Engine, log_dir: Path, entry: str = "drain",
         shard: int = 0) -> ShardGuard:
    guard = ShardGuard(engine, log_dir, entry, shard)
    guards.append(guard)
    return guard


def test_acquire_release_acquire(engine: Engine, log_dir: Path,
                                 guards: list[ShardGuard]) -> None:
    first = make(guards, engine, log_dir)
    assert first.acquire() is True
    assert first.path == lock_path(log_dir, "drain", 0, engine.url)
    assert first.path.exists()
    second = make(guards, engine, log_dir)
    assert second.acquire() is False
    assert second.holder == "this host"
    assert second.acquire() is False  # still held: asking again changes nothing
    first.release()
    assert second.acquire() is True
    assert make(guards, engine, log_dir).acquire() is False


def test_release_is_idempotent(engine: Engine, log_dir: Path, guards: list[ShardGuard]) -> None:
    guard = make(guards, engine, log_dir)
    guard.release()  # never acquired
    assert guard.acquire()
    guard.release()
    guard.release()
    assert make(guards, engine, log_dir).acquire()


def test_other_shards_and_entries_are_independent(engine: Engine, log_dir: Path,
                                                  guards: list[ShardGuard]) -> None:
    assert make(guards, engine, log_dir, "drain", 0).acquire()
    assert make(guards, engine, log_dir, "drain", 1).acquire()
    assert make(guards, engine, log_dir, "other", 0).acquire()
    assert not make(guards, engine, log_dir, "drain", 0).acquire()
    assert not make(guards, engine, log_dir, "drain", 1).acquire()
    assert make(guards, engine, log_dir, "drain", 2).acquire()


def test_is_locked_here_reflects_the_guard(engine: Engine, log_dir: Path,
                                           guards: list[ShardGuard]) -> None:
    assert not is_locked_here(log_dir, "drain", 0, engine.url)  # no lock file yet
    guard = make(guards, engine, log_dir)
    assert guard.acquire()
    assert is_locked_here(log_dir, "drain", 0, engine.url)
    assert is_locked_here(log_dir, "drain", 0, engine.url)  # the probe does not take the lock away
    assert not is_locked_here(log_dir, "drain", 1, engine.url)
    assert not is_locked_here(log_dir, "other", 0, engine.url)
    guard.release()
    assert guard.path.exists()
    assert not is_locked_here(log_dir, "drain", 0, engine.url)  # a stale file is not a lock
    # The probe itself must not leave the shard locked.
    assert make(guards, engine, log_dir).acquire()


def test_is_locked_in_db_is_false_on_sqlite(engine: Engine, log_dir: Path,
                                            guards: list[ShardGuard]) -> None:
    assert make(guards, engine, log_dir).acquire()
    assert is_locked_in_db(engine, "drain", 0) is False


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cronqueue.store.engine import make_engine
    from cronqueue.shard.guard import ShardGuard
    guard = ShardGuard(make_engine(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    print("acquired" if guard.acquire() else "refused", flush=True)
    time.sleep(60)
""")


def test_guard_of_a_killed_process_is_free_at_once(tmp_path: Path, engine: Engine,
                                                   log_dir: Path,
                                                   guards: list[ShardGuard]) -> None:
    url = "sqlite:///" + str(tmp_path / "g.db")
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(log_dir), "drain", "0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acquired"
        assert is_locked_here(log_dir, "drain", 0, engine.url)
        mine = make(guards, engine, log_dir)
        assert mine.acquire() is False
        assert mine.holder == "this host"
        assert make(guards, engine, log_dir, "drain", 1).acquire()  # other shard: free
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=5)
        wait_until(lambda: not is_locked_here(log_dir, "drain", 0, engine.url), 5,
                   "the lock free once its holder is gone")
        assert mine.acquire() is True
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        if child.stdout is not None:
            child.stdout.close()


def test_child_is_refused_while_this_process_holds_the_guard(
        tmp_path: Path, engine: Engine, log_dir: Path, guards: list[ShardGuard]) -> None:
    assert make(guards, engine, log_dir).acquire()
    url = "sqlite:///" + str(tmp_path / "g.db")
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(log_dir), "drain", "0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "refused"
    finally:
        child.kill()
        child.wait(timeout=5)
        if child.stdout is not None:
            child.stdout.close()


# -- db_lock_name --------------------------------------------------------------------------


def mysql(url: str) -> Engine:
    return create_engine(url)  # no connection is made: only the URL is read


def test_db_lock_name_fits_get_lock() -> None:
    eng = mysql("mysql+pymysql://u:p@db.example/" + "d" * 64)
    for entry in ("a", "x" * 64):
        for shard in (0, 7, 999_999):
            name = db_lock_name(eng, entry, shard)
            assert 0 < len(name) <= 64
            assert name.isascii()


def test_db_lock_name_is_stable() -> None:
    a = mysql("mysql+pymysql://u:p@h1/app")
    # Another user of the same database: the same name (so it carries no credentials, not
    # even hashed).
    b = mysql("mysql+pymysql://other:pw@h1/app")
    assert db_lock_name(a, "drain", 0) == db_lock_name(a, "drain", 0)
    assert db_lock_name(a, "drain", 0) == db_lock_name(b, "drain", 0)


def test_db_lock_name_differs() -> None:
    base = mysql("mysql+pymysql://u:p@h1/app")
    names = {
        db_lock_name(base, "drain", 0),
        db_lock_name(base, "drain", 1),
        db_lock_name(base, "drain", 10),
        db_lock_name(base, "drain1", 0),
        db_lock_name(base, "other", 0),
        db_lock_name(mysql("mysql+pymysql://u:p@h1/app2"), "drain", 0),
        db_lock_name(mysql("mysql+pymysql://u:p@h2/app"), "drain", 0),
    }
    assert len(names) == 7


def test_db_lock_name_ambiguous_joins_differ() -> None:
    """(entry "a", shard 11) and (entry "a1", shard 1) must not share a lock."""
    eng = mysql("mysql+pymysql://u:p@h1/app")
    assert db_lock_name(eng, "a", 11) != db_lock_name(eng, "a1", 1)
    assert db_lock_name(eng, "a.1", 1) != db_lock_name(eng, "a", 11)


def test_db_lock_name_differs_between_sqlite_files(tmp_path: Path) -> None:
    one = make_engine("sqlite:///" + str(tmp_path / "one.db"))
    two = make_engine("sqlite:///" + str(tmp_path / "two.db"))
    try:
        assert db_lock_name(one, "drain", 0) != db_lock_name(two, "drain", 0)
    finally:
        one.dispose()
        two.dispose()


def test_two_installations_sharing_a_log_dir_do_not_block_each_other(
        tmp_path: Path, engine: Engine, log_dir: Path, guards: list[ShardGuard]) -> None:
    """Before: the lock was log_dir/locks/<entry>.<shard>.lock whatever the database, so a
    second installation (its own database) with the same log_dir and entry name never started
    its shard while the first one's ran ("already running on this host")."""
    other = make_engine("sqlite:///" + str(tmp_path / "other.db"))
    try:
        assert make(guards, engine, log_dir).acquire()
        assert not is_locked_here(log_dir, "drain", 0, other.url)
        assert make(guards, other, log_dir).acquire()
        assert make(guards, engine, log_dir).acquire() is False  # the same database: held
    finally:
        other.dispose()


def test_a_lock_held_by_an_older_version_is_honoured(engine: Engine, log_dir: Path,
                                                     guards: list[ShardGuard]) -> None:
    """An upgrade while a shard of the older version runs starts no second copy of it."""
    import fcntl

    path = legacy_lock_path(log_dir, "drain", 0)
    path.parent.mkdir(parents=True)
    with open(path, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert is_locked_here(log_dir, "drain", 0, engine.url)
        assert make(guards, engine, log_dir).acquire() is False
    assert not is_locked_here(log_dir, "drain", 0, engine.url)
    assert make(guards, engine, log_dir).acquire()
