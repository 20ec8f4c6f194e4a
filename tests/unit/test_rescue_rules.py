"""When is a running row's owner gone? Same host: by its pid; another host: by its lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cronqueue.process.identity import Owner, owner_gone, pid_start_ticks

ME = Owner(host="web1", pid=1000, pid_start=555)
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
PAST = NOW - timedelta(seconds=1)
FUTURE = NOW + timedelta(minutes=5)


class Alive:
    """A fake ``pid_alive`` that records what it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, pid: int, start: int | None) -> bool:
        self.calls.append((pid, start))
        return self.answer


@pytest.mark.parametrize("lease", [None, PAST, FUTURE])
def test_same_host_dead_pid_is_gone_whatever_the_lease(lease: datetime | None) -> None:
    alive = Alive(False)
    assert owner_gone("web1", 4242, 777, lease, me=ME, now=NOW, alive=alive) is True
    assert alive.calls == [(4242, 777)]


@pytest.mark.parametrize("lease", [None, PAST, FUTURE, NOW - timedelta(days=30)])
def test_same_host_alive_pid_is_not_gone_even_with_an_expired_lease(
        lease: datetime | None) -> None:
    alive = Alive(True)
    assert owner_gone("web1", 4242, 777, lease, me=ME, now=NOW, alive=alive) is False
    assert alive.calls == [(4242, 777)]


def test_same_host_unknown_pid_start_is_passed_on() -> None:
    alive = Alive(True)
    assert owner_gone("web1", 4242, None, None, me=ME, now=NOW, alive=alive) is False
    assert alive.calls == [(4242, None)]


def test_other_host_expired_lease_is_gone() -> None:
    alive = Alive(True)
    assert owner_gone("web2", 4242, 777, PAST, me=ME, now=NOW, alive=alive) is True
    assert alive.calls == []  # a pid on another host means nothing here


def test_other_host_live_lease_is_not_gone() -> None:
    alive = Alive(False)
    assert owner_gone("web2", 4242, 777, FUTURE, me=ME, now=NOW, alive=alive) is False
    assert alive.calls == []


def test_other_host_without_lease_is_not_gone() -> None:
    alive = Alive(False)
    assert owner_gone("web2", 4242, 777, None, me=ME, now=NOW, alive=alive) is False
    assert alive.calls == []


def test_other_host_lease_just_expired_is_gone() -> None:
    assert owner_gone("web2", 4242, 777, NOW - timedelta(microseconds=1), me=ME, now=NOW,
                      alive=Alive(True)) is True


def test_host_comparison_is_exact() -> None:
    """``web1.example`` is not ``web1``: judged by the lease, not by a local pid."""
    alive = Alive(False)
    assert owner_gone("web1.example", 4242, 777, FUTURE, me=ME, now=NOW, alive=alive) is False
    assert alive.calls == []


def test_same_host_without_pid_falls_back_to_the_lease() -> None:
    alive = Alive(False)
    assert owner_gone("web1", None, None, FUTURE, me=ME, now=NOW, alive=alive) is False
    assert owner_gone("web1", None, None, PAST, me=ME, now=NOW, alive=alive) is True
    assert alive.calls == []


def test_no_owner_at_all_with_expired_lease_is_gone() -> None:
    assert owner_gone(None, None, None, PAST, me=ME, now=NOW, alive=Alive(True)) is True
    assert owner_gone(None, None, None, None, me=ME, now=NOW, alive=Alive(True)) is False


def test_real_pid_alive_is_the_default() -> None:
    """Without ``alive=``, this very process is alive and a dead child is gone."""
    import os
    import subprocess
    import sys

    me = Owner.me()
    assert owner_gone(me.host, me.pid, me.pid_start, None, me=me, now=NOW) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = pid_start_ticks(child.pid)
        assert owner_gone(me.host, child.pid, start, None, me=me, now=NOW) is False
    finally:
        child.kill()
        child.wait(timeout=10)
    assert owner_gone(me.host, child.pid, start, FUTURE, me=me, now=NOW) is True
    # Our own pid with another start time is a reused pid: gone.
    if me.pid_start is not None:
        assert owner_gone(me.host, os.getpid(), me.pid_start + 1, FUTURE, me=me,
                          now=NOW) is True


@pytest.mark.parametrize("row_host", ["web1", "web1#b0b0b0b0b0b0", "web1#", "web1#x" + "7" * 16])
def test_same_hostname_another_pid_namespace_is_judged_by_the_lease(row_host: str) -> None:
    """Issue 12.1: a neighbour container under our hostname (its own pid namespace), or a row
    naming the bare hostname (written before host ids, or by hand), is not provably ours: its
    pid means nothing here, so a live lease keeps it and an expired one rescues it."""
    me = Owner(host="web1#a1a1a1a1a1a1", pid=1000, pid_start=555)
    alive = Alive(True)  # even a live pid here with that start tick proves nothing
    assert owner_gone(row_host, 1, 777, FUTURE, me=me, now=NOW, alive=alive) is False
    assert owner_gone(row_host, 1, 777, PAST, me=me, now=NOW, alive=alive) is True
    assert alive.calls == []
    assert owner_gone("web1#a1a1a1a1a1a1", 1, 777, PAST, me=me, now=NOW, alive=alive) is False
    assert alive.calls == [(1, 777)]
