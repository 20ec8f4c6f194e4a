"""``cronqueue.proc``: process identity that survives pid reuse."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from cronqueue.process.identity import Owner, host_identity, pid_alive, pid_start_ticks


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
    assert me.host == host_identity()
    assert me.host.startswith(socket.gethostname() + "#")
    assert me.pid_start == pid_start_ticks(os.getpid())
    assert str(me) == f"{me.host}:{me.pid}"


def _identity_in(*unshare: str) -> tuple[str, str]:
    """(Owner.me().host, hostname) of a python started under ``unshare ARGS``."""
    code = ("import socket; from cronqueue.process.identity import Owner; "
            "print(Owner.me().host); print(socket.gethostname())")
    out = subprocess.run(["unshare", *unshare, sys.executable, "-c", code], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split("\n")
    return out[0], out[1]


def test_host_identity_is_hostname_plus_boot_and_pid_namespace() -> None:
    """Issue 12.1: containers sharing a hostname (network_mode: host, hostNetwork) have their
    own pid namespaces; the bare hostname made each judge the other's pids. The identity now
    names the pid namespace: stable within it, different in another one under one hostname."""
    me = host_identity()
    assert me == host_identity() == Owner.me().host
    name, _, hid = me.rpartition("#")
    assert name == socket.gethostname() and len(hid) == 12 and int(hid, 16) >= 0
    # A child in the same pid namespace is the same host.
    code = "from cronqueue.process.identity import host_identity; print(host_identity())"
    same = subprocess.run([sys.executable, "-c", code],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    assert same == me
    # Two pid namespaces (each with its own /proc) under our hostname: two identities.
    first, first_name = _identity_in("--pid", "--fork", "--mount-proc")
    second, second_name = _identity_in("--pid", "--fork", "--mount-proc")
    assert first_name == second_name == socket.gethostname()
    assert len({me, first, second}) == 3, (me, first, second)
    assert Owner(first, 1, None).same_host(first)
    assert not Owner(first, 1, None).same_host(second)
    assert not Owner(first, 1, None).same_host(first_name)  # a bare hostname (older rows)


def test_a_proc_of_another_pid_namespace_gives_no_host_id() -> None:
    """A new pid namespace that kept the parent's /proc sees other pids there than its own:
    /proc/<pid> would judge someone else's process. No id then, and an identity no other
    process shares, so rows are judged by their lease only."""
    ident, name = _identity_in("--pid", "--fork")
    assert ident.startswith(name + "#x") and ident != host_identity()
