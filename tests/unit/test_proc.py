"""``cronqueue.proc``: process identity that survives pid reuse."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from cronqueue.proc import Owner, pid_alive, pid_start_ticks


def test_pid_start_ticks_of_self_is_an_int() -> None:
    ticks = pid_start_ticks(os.getpid())
    assert isinstance(ticks, int)
    assert ticks >= 0
    assert pid_start_ticks(os.getpid()) == ticks  # stable for a living process


def test_pid_start_ticks_of_a_later_child_is_not_earlier() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        mine = pid_start_ticks(os.getpid())
        theirs = pid_start_ticks(child.pid)
        assert isinstance(theirs, int)
        assert mine is not None
        assert theirs >= mine
        assert pid_alive(child.pid, theirs)
    finally:
        child.communicate(b"")
    assert not pid_alive(child.pid, theirs)


def test_pid_start_ticks_of_missing_pid_is_none() -> None:
    assert pid_start_ticks(reaped_pid()) is None


def reaped_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_pid_alive_for_self() -> None:
    assert pid_alive(os.getpid(), pid_start_ticks(os.getpid()))
    assert pid_alive(os.getpid(), None)


def test_pid_alive_false_for_reaped_child() -> None:
    pid = reaped_pid()
    assert not pid_alive(pid, None)
    assert not pid_alive(pid, 12345)


def test_pid_alive_false_when_start_ticks_differ() -> None:
    ticks = pid_start_ticks(os.getpid())
    assert ticks is not None
    assert not pid_alive(os.getpid(), ticks + 1)
    assert not pid_alive(os.getpid(), ticks - 1)


def test_comm_with_spaces_and_parens_is_parsed() -> None:
    # comm (field 2) may hold ") (" and digits: the parser must split after the last ')'.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import ctypes, sys\n"
         "ctypes.CDLL(None).prctl(15, b'a) b (c) 1 2', 0, 0, 0)\n"  # PR_SET_NAME
         "print('ready', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        with open(f"/proc/{child.pid}/stat", "rb") as fh:
            raw = fh.read()
        assert b"(a) b (c) 1 2)" in raw
        expected = int(raw.rsplit(b")", 1)[1].split()[19])
        assert pid_start_ticks(child.pid) == expected
        assert pid_alive(child.pid, expected)
    finally:
        child.communicate(b"")


def test_owner_me() -> None:
    me = Owner.me()
    assert me.pid == os.getpid()
    assert me.host == socket.gethostname()
    assert me.pid_start == pid_start_ticks(os.getpid())
    assert str(me) == f"{me.host}:{me.pid}"
