"""Issue 11, items 3 and 5 (first bullet): what a hostile file system cannot make the runner do.

Real processes throughout: a racer swapping a directory for a link out of task_dir, a script
swapping itself, scripts owned by someone else, planted day-log links, a full log disk.
Every test here fails on 0.1.0 (96e2351).
"""

from __future__ import annotations

import ctypes
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue.errors import ScriptNotRunnable
from cronqueue.process.runner import Runner, RunResult
from tests.helpers import wait_until, write_script
from tests.unit.test_runner import GRACE, make_task

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


@pytest.fixture(params=["exec", "fork"])
def runner(request: pytest.FixtureRequest, task_dir: Path, log_dir: Path) -> Iterator[Runner]:
    r = Runner(task_dir, log_dir, kill_grace=GRACE, python_fork=request.param == "fork")
    yield r
    r.close()


def run(runner: Runner, taskscript: str, param: str = "null", **kw: object) -> RunResult:
    return runner.run(make_task(taskscript, param, **kw), attempt=1, timeout=60)  # type: ignore[arg-type]


def forked(runner: Runner) -> bool:
    """The fork server took the runs (it is started on first use only)."""
    return runner._forkserver is not None and runner._forkserver.running


def refused(result: RunResult, match: str) -> bool:
    return (isinstance(result.failure, ScriptNotRunnable) and result.permanent
            and result.returncode is None and match in str(result.failure))


# -- the check and the exec are one step -----------------------------------------------------


@pytest.mark.parametrize(("name", "mode", "body", "evil"), [
    ("swap.sh", 0o755,
     "#!/bin/sh\necho first\nln -s {out}/evil.sh swap.sh.new && mv -T swap.sh.new swap.sh\n",
     "#!/bin/sh\necho OUTSIDE\ntouch {out}/ran\n"),
    ("swap.py", 0o644,
     "import os\nprint('first')\nos.symlink('{out}/evil.py', 'swap.py.new')\n"
     "os.rename('swap.py.new', 'swap.py')\n",
     "print('OUTSIDE')\nopen('{out}/ran', 'w').close()\n"),
])
def test_script_swapping_itself_for_a_link_out_never_runs_the_outside_file(
        runner: Runner, task_dir: Path, tmp_path: Path, name: str, mode: int, body: str,
        evil: str) -> None:
    # findings-0.1.0.md: 0.1.0 cached the check for 1 s and ran tasks 2 and 3 from outside.
    out = tmp_path / "out"
    out.mkdir()
    write_script(out, "evil" + Path(name).suffix, evil.format(out=out), mode=mode)
    write_script(task_dir, name, body.format(out=out), mode=mode)
    results = [run(runner, name, task_id=i) for i in (1, 2, 3)]
    assert results[0].ok and results[0].output == "first\n", results[0]
    assert forked(runner) == (runner.python_fork and name.endswith(".py"))
    for result in results[1:]:
        assert refused(result, "outside task_dir"), result
    assert not any("OUTSIDE" in r.output for r in results)
    assert not (out / "ran").exists()


RACER = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir(sys.argv[1])
open("racer.started", "w").close()
while True:  # atomically exchange the directory "d" and the link "dl" (to outside)
    if libc.renameat2(-100, b"d", -100, b"dl", 2) != 0:
        sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
"""


@pytest.mark.parametrize(("name", "mode", "inside", "outside"), [
    ("job.sh", 0o755, "#!/bin/sh\necho INSIDE\n", "#!/bin/sh\necho OUTSIDE\n"),  # shebang
    ("job.sh", 0o644, "echo INSIDE\n", "echo OUTSIDE\n"),  # interpreter by extension
    ("job.py", 0o644, "print('INSIDE')\n", "print('OUTSIDE')\n"),  # python (fork server)
])
def test_racer_swapping_a_directory_for_a_link_out_never_wins(
        runner: Runner, task_dir: Path, tmp_path: Path, name: str, mode: int, inside: str,
        outside: str) -> None:
    # 0.1.0 checked the real path, then executed by name: the racer won 31 of 300 runs.
    try:
        ctypes.CDLL(None).renameat2  # noqa: B018 - the racer needs it
    except AttributeError:
        pytest.skip("no renameat2 in libc")
    write_script(task_dir / "d", name, inside, mode=mode)
    write_script(tmp_path / "out" / "d", name, outside, mode=mode)
    (task_dir / "dl").symlink_to(tmp_path / "out" / "d")
    racer = subprocess.Popen([sys.executable, "-c", RACER, str(task_dir)])
    try:
        wait_until(lambda: (task_dir / "racer.started").exists() or racer.poll() is not None,
                   30, "the racer started")
        assert racer.poll() is None, "racer died"
        # 300 runs, and on until each state was met 10 times (most walks meet the link: a
        # refusal is quick, and the racer may sit in one state while the machine is loaded).
        results: list[RunResult] = []
        n_inside = 0
        while len(results) < 300 or (len(results) < 5000
                                     and not 10 <= n_inside <= len(results) - 10):
            results.append(run(runner, f"d/{name}", task_id=len(results)))
            n_inside += results[-1].ok
        assert racer.poll() is None, "racer stopped before the runs ended"
        assert forked(runner) == (runner.python_fork and name.endswith(".py"))
    finally:
        racer.kill()
        racer.wait()
    ran_outside = [r for r in results if "OUTSIDE" in r.output]
    ran_inside = [r for r in results if r.ok and r.output == "INSIDE\n"]
    refusals = [r for r in results if refused(r, "outside task_dir")]
    assert not ran_outside, (f"{len(ran_outside)} of {len(results)} runs ran the file outside "
                             "task_dir")
    # The racer really raced: both states were met; nothing else happened.
    assert ran_inside and refusals, (len(ran_inside), len(refusals))
    assert len(ran_inside) + len(refusals) == len(results), [
        r for r in results if r not in ran_inside and r not in refusals][:3]


def test_absolute_symlink_inside_task_dir_is_followed(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "real/job.sh", "echo real\n")
    (task_dir / "alias.sh").symlink_to(task_dir / "real" / "job.sh")
    (task_dir / "up.sh").symlink_to("real/../real/job.sh")
    assert run(runner, "alias.sh").output == "real\n"
    assert run(runner, "up.sh").output == "real\n"


def test_dotdot_in_a_link_cannot_climb_out(runner: Runner, task_dir: Path,
                                           tmp_path: Path) -> None:
    write_script(tmp_path, "outside.sh", "#!/bin/sh\necho OUTSIDE\n", mode=0o755)
    (task_dir / "sub").mkdir()
    (task_dir / "sub" / "climb.sh").symlink_to("../../outside.sh")
    assert refused(run(runner, "sub/climb.sh"), "outside task_dir")


# -- errors of resolution are the runner's named errors ----------------------------------------


def test_path_through_a_file_is_refused_with_a_reason(runner: Runner, task_dir: Path) -> None:
    # 0.1.0: NotADirectoryError out of run() (findings: the shard died on every run).
    write_script(task_dir, "ok.sh", "echo ok\n", mode=0o755)
    result = run(runner, "ok.sh/x")
    assert refused(result, "is not a directory"), result
    assert "ok.sh" in str(result.failure)


def test_symlink_loop_is_refused_with_a_reason(runner: Runner, task_dir: Path) -> None:
    # 0.1.0: OSError ELOOP out of run().
    (task_dir / "a.sh").symlink_to("b.sh")
    (task_dir / "b.sh").symlink_to("a.sh")
    result = run(runner, "a.sh")
    assert refused(result, "symbolic links"), result


# -- StrictModes: nobody but the shard's user or root may have changed what runs --------------


@needs_root
def test_script_owned_by_another_user_is_refused(runner: Runner, task_dir: Path) -> None:
    path = write_script(task_dir, "theirs.sh", "#!/bin/sh\ntouch ran.out\n", mode=0o755)
    os.chown(path, NOBODY, NOBODY)
    result = run(runner, "theirs.sh")
    assert refused(result, f"owned by uid {NOBODY}"), result
    assert not (task_dir / "ran.out").exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_script_in_a_loose_directory_is_refused(runner: Runner, task_dir: Path,
                                                mode: int) -> None:
    write_script(task_dir, "shared/job.sh", "#!/bin/sh\ntouch ran.out\n", mode=0o755)
    (task_dir / "shared").chmod(mode)
    if mode & 0o020 and not mode & 0o002:  # group-writable for a group with another member
        if os.geteuid() != 0:
            pytest.skip("needs root to give the directory nobody's group")
        os.chown(task_dir / "shared", -1, NOBODY)
    result = run(runner, "shared/job.sh")
    assert refused(result, "group- or world-writable"), result
    assert "shared" in str(result.failure)
    assert not (task_dir / "ran.out").exists()


def test_group_writable_directory_of_a_private_group_runs(runner: Runner, task_dir: Path) -> None:
    """umask 002 (Debian/Ubuntu user accounts) makes directories group-writable for the user's
    own group: nobody else can write there, so the script runs."""
    write_script(task_dir, "mine/job.sh", "#!/bin/sh\ntouch ran.out\n", mode=0o755)
    (task_dir / "mine").chmod(0o775)
    os.chown(task_dir / "mine", -1, os.getegid())
    members = [p.pw_uid for p in pwd.getpwall() if p.pw_gid == os.getegid()]
    members += [pwd.getpwnam(n).pw_uid for n in grp.getgrgid(os.getegid()).gr_mem]
    if set(members) - {0, os.geteuid()}:
        pytest.skip("this user's primary group has other members")
    result = run(runner, "mine/job.sh")
    assert result.failure is None, result
    assert (task_dir / "ran.out").exists()


@needs_root
def test_directory_owned_by_another_user_is_refused(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "theirs/job.sh", "#!/bin/sh\ntouch ran.out\n", mode=0o755)
    os.chown(task_dir / "theirs", NOBODY, NOBODY)
    assert refused(run(runner, "theirs/job.sh"), f"owned by uid {NOBODY}")
    assert not (task_dir / "ran.out").exists()


def test_loose_task_dir_is_refused(runner: Runner, task_dir: Path) -> None:
    write_script(task_dir, "job.sh", "#!/bin/sh\ntouch ran.out\n", mode=0o755)
    task_dir.chmod(0o777)
    try:
        assert refused(run(runner, "job.sh"), "task_dir")
    finally:
        task_dir.chmod(0o755)
    assert not (task_dir / "ran.out").exists()


# -- the day log ---------------------------------------------------------------------------------


def days() -> list[str]:
    today = datetime.now(UTC)
    return [f"{today + timedelta(days=d):%Y-%m-%d}" for d in (-1, 0, 1)]


@pytest.mark.parametrize("plant", ["symlink", "hard link"])
def test_planted_day_log_link_is_not_written_through(task_dir: Path, log_dir: Path,
                                                     tmp_path: Path, plant: str) -> None:
    # 0.1.0 appended the task's output to the link's target.
    target = tmp_path / "victim"
    target.write_text("precious\n")
    log_dir.mkdir()
    for day in days():
        if plant == "symlink":
            (log_dir / f"{day}.log").symlink_to(target)
        else:
            os.link(target, log_dir / f"{day}.log")
    write_script(task_dir, "ok.sh", "echo secret-output\n")
    runner = Runner(task_dir, log_dir, kill_grace=GRACE)
    try:
        result = run(runner, "ok.sh")
    finally:
        runner.close()
    assert result.ok, result
    assert target.read_text() == "precious\n"
    assert "secret-output" in result.output
    assert "not written to the day log" in result.output  # and why: refused


def test_day_log_is_created_0600(task_dir: Path, log_dir: Path) -> None:
    write_script(task_dir, "ok.sh", "echo fine\n")
    runner = Runner(task_dir, log_dir, kill_grace=GRACE)
    try:
        assert run(runner, "ok.sh").ok
    finally:
        runner.close()
    (log,) = log_dir.glob("*.log")
    assert log.stat().st_mode & 0o777 == 0o600
    assert "fine" in log.read_text()


@needs_root
def test_log_dir_link_planted_by_another_user_is_refused(task_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "logs"
    link.symlink_to(elsewhere)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    write_script(task_dir, "ok.sh", "echo fine\n")
    runner = Runner(task_dir, link, kill_grace=GRACE)
    try:
        result = run(runner, "ok.sh")
    finally:
        runner.close()
    assert result.ok and "fine" in result.output
    assert list(elsewhere.iterdir()) == []


# -- output: bounded on disk, a full disk never fails the task ---------------------------------


FLOOD = """\
import sys
out = sys.stdout.buffer
out.write(b"BEGIN\\n")
for i in range({lines}):
    out.write(b"line %07d ..........................................................\\n" % i)
out.write(b"END\\n")
"""


def test_long_output_keeps_head_and_tail_within_max_log_bytes(task_dir: Path,
                                                              log_dir: Path) -> None:
    # 0.1.0 kept only the head in the day log (and the whole output in the capture file).
    limit = 1 << 20
    write_script(task_dir, "flood.py", FLOOD.format(lines=120_000))  # about 8 MB
    runner = Runner(task_dir, log_dir, kill_grace=GRACE, max_log_bytes=limit)
    try:
        result = run(runner, "flood.py")
    finally:
        runner.close()
    assert result.ok, result
    assert result.output.endswith("line 0119999 " + "." * 58 + "\nEND\n")
    (log,) = log_dir.glob("*.log")
    data = log.read_bytes()
    assert len(data) <= limit + 4096
    header, _, body = data.partition(b"\n")
    assert b"bytes=" in header
    assert body.startswith(b"BEGIN\nline 0000000 ")
    assert body.endswith(b"line 0119999 " + b"." * 58 + b"\nEND\n")
    assert b"more bytes not kept; max_log_bytes=1048576" in body


FULL_DISK = """\
import json, sys
sys.path.insert(0, {root!r})
from cronqueue.process.runner import Runner
from tests.unit.test_runner import make_task
runner = Runner({task_dir!r}, {log_dir!r}, kill_grace=0.5)
result = runner.run(make_task("flood.py"), attempt=1, timeout=60)
runner.close()
print(json.dumps({{"ok": result.ok, "failure": str(result.failure), "output": result.output}}))
"""


def test_full_log_disk_never_fails_the_task(task_dir: Path, tmp_path: Path) -> None:
    # 0.1.0: the script wrote straight into a file in log_dir; on a full disk its writes
    # failed and so did the task (burning its attempts). A 1 MiB tmpfs, in a private mount
    # namespace, is log_dir here; the task prints about 8 MB.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private tmpfs)")
    log_dir = tmp_path / "small"
    log_dir.mkdir()
    write_script(task_dir, "flood.py", FLOOD.format(lines=120_000))
    code = FULL_DISK.format(root=str(ROOT), task_dir=str(task_dir), log_dir=str(log_dir))
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot unshare a mount namespace: {probe.stderr.decode().strip()}")
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=1m cqfull "$1" && exec "$2" -c "$3"', "sh",
         str(log_dir), sys.executable, code],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"], report
    output = report["output"]
    assert output.startswith("[cronqueue: "), output[:200]
    assert "bytes of output lost: log_dir failed (No space left on device)" in output
    assert output.endswith("\nEND\n")


def test_runner_reads_output_while_the_script_runs(task_dir: Path, log_dir: Path) -> None:
    # Output goes through a pipe now: the runner reads it while it waits, so a script printing
    # far more than a pipe holds is not blocked (it would time out).
    write_script(task_dir, "chatty.py", textwrap.dedent("""\
        import sys
        sys.stdout.buffer.write(b"x" * 1_000_000)
        sys.stdout.flush()
        print("done")
        """))
    runner = Runner(task_dir, log_dir, kill_grace=GRACE)
    try:
        result = runner.run(make_task("chatty.py"), attempt=1, timeout=30)
    finally:
        runner.close()
    assert result.ok, result
    assert result.output.endswith("x" * 100 + "done\n")
