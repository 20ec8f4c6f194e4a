"""The watchdog helper, with real processes: what it kills when its shard dies."""

from __future__ import annotations

import os
import subprocess

from cronqueue.process.identity import pid_start_ticks
from cronqueue.process.watchdog import _GROUP, RUN_VAR, Watchdog
from tests.helpers import Procs, wait_until


def _run(task_id: int, attempt: int, token: bytes | None = None) -> subprocess.Popen[bytes]:
    """A stand-in for a task script: its own session, the run's identity in its environment
    (``token``: the one the runner adds, from ``Watchdog.arm()``)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CRONQUEUE_TASK_ID": str(task_id),
           "CRONQUEUE_ATTEMPT": str(attempt), "CRONQUEUE_QUEUE": "default"}
    if token is not None:
        env[RUN_VAR.decode()] = token.decode()
    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


def _shard_dies(wd: Watchdog) -> None:
    """What the helper sees when its shard is killed: the end of its pipe. Then it has acted."""
    assert wd._fd is not None and wd._proc is not None
    os.close(wd._fd)
    wd._fd = None
    wd._proc.wait(timeout=10)


def _gone(proc: subprocess.Popen[bytes]) -> bool:
    """It exits (reaped here, its parent), within 5 s."""
    return wait_until(lambda: proc.poll() is not None, 5, f"pid {proc.pid} gone")


def test_a_run_started_but_not_yet_watched_dies_with_the_shard(
        procs: Procs) -> None:
    """The shard died between spawning the script and writing its group to the slot: the
    processes carrying the run's token die, and only they."""
    wd = Watchdog()
    assert wd.start()
    token = wd.arm()
    run = _run(4242, 3, token)
    earlier = _run(4242, 2)  # an older run of the same task (e.g. orphaned elsewhere): not ours
    other = _run(4243, 3)
    procs.track(run)
    procs.track(earlier)
    procs.track(other)
    _shard_dies(wd)
    assert _gone(run)
    assert run.returncode == -9
    assert earlier.poll() is None and other.poll() is None


def test_a_neighbours_run_with_the_same_task_id_and_attempt_survives(
        procs: Procs) -> None:
    """Another installation on the host runs its own task 4242, attempt 3 (0.1.0 killed it:
    it matched on CRONQUEUE_TASK_ID and CRONQUEUE_ATTEMPT)."""
    wd, theirs = Watchdog(), Watchdog()
    assert wd.start() and theirs.start()
    token = wd.arm()
    run = _run(4242, 3, token)
    neighbour = _run(4242, 3, theirs.arm())
    bare = _run(4242, 3)
    procs.track(run)
    procs.track(neighbour)
    procs.track(bare)
    wd.watch(run.pid)
    _shard_dies(wd)
    assert _gone(run)
    assert neighbour.poll() is None and bare.poll() is None
    theirs.close()  # its slot still names its run: closing it as a dying shard would kill it
    assert _gone(neighbour)


def test_a_watched_group_dies_with_the_shard(procs: Procs) -> None:
    wd = Watchdog()
    assert wd.start()
    wd.arm()
    run = subprocess.Popen(["sleep", "60"], start_new_session=True)  # no token to find
    procs.track(run)
    wd.watch(run.pid)
    _shard_dies(wd)
    assert _gone(run)


def test_a_group_whose_leader_started_in_the_window_dies_without_its_token(
        procs: Procs) -> None:
    """What the window itself decides: the leader lacks the token (a script may exec with a
    clean environment) and is alive; it started between arm() and watch(), so it is ours."""
    wd = Watchdog()
    assert wd.start()
    wd.arm()
    run = subprocess.Popen(["sleep", "60"], start_new_session=True, env={})
    procs.track(run)
    wd.watch(run.pid)
    ticks = pid_start_ticks(run.pid)
    assert wd._slot is not None and ticks is not None
    assert _GROUP.unpack_from(wd._slot, 0)[1] <= ticks <= _GROUP.unpack_from(wd._slot, 0)[2]
    _shard_dies(wd)
    assert _gone(run)


def test_a_reused_group_id_is_left_alone(procs: Procs) -> None:
    """The slot names a group whose leader is now another process (its pid was reused: it
    started after the window the run was spawned in) and which does not carry the token: not
    ours."""
    wd = Watchdog()
    assert wd.start()
    wd.arm()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    procs.track(stranger)
    ticks = pid_start_ticks(stranger.pid)
    assert ticks is not None and wd._slot is not None
    _GROUP.pack_into(wd._slot, 0, stranger.pid, ticks - 3, ticks - 1)
    _shard_dies(wd)
    assert stranger.poll() is None


def test_nothing_is_killed_once_the_run_is_over(procs: Procs) -> None:
    wd = Watchdog()
    assert wd.start()
    token = wd.arm()
    run = _run(99, 1, token)
    procs.track(run)
    wd.watch(run.pid)
    wd.watch(0)  # reaped, as far as the shard knows: the slot is cleared
    _shard_dies(wd)
    assert run.poll() is None
