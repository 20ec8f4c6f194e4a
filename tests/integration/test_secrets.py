"""Issue 11, item 4: secrets and passwords.

Task secrets: the SQLite files are private, a finished task keeps no secret, a shard holds one
secret at a time, bulk inserts of large secrets fit the server's packet, error texts never carry
them. Database passwords: never printed (``check``, the shard's start line, reprs), never
readable by a task (its ancestors' ``/proc/PID/environ`` and ``cmdline``), in every URL form.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Status
from cronqueue.config import load_config
from cronqueue.errors import DatabaseError, InvalidTask
from cronqueue.mission.rescue import rescue
from cronqueue.process.identity import Owner
from cronqueue.shard.loop import Shard
from cronqueue.store.claims import Claimer
from cronqueue.store.outcomes import Flush
from cronqueue.store.rows import SECRET_ELSEWHERE
from tests.conftest import BACKENDS, MYSQL_ADMIN_URL, get_task, run_cli
from tests.helpers import clean_env, cronqueue_cmd, write_script

MiB = 1 << 20


def burst(db_url: str, task_dir: Path, log_dir: Path, **worker: Any) -> Any:
    cfg = load_config(None, db_url=db_url, task_dir=str(task_dir), log_dir=str(log_dir),
                      **worker)
    return Shard(cfg).run()


STDIN_TO_FILE = """\
import os, sys
data = sys.stdin.buffer.read()
with open("got-" + os.environ["CRONQUEUE_TASK_ID"], "wb") as fh:
    fh.write(data)
sys.exit(int(sys.argv[1]))
"""


# -- SQLite files -----------------------------------------------------------------------------


def test_sqlite_database_wal_and_shm_are_created_owner_only(tmp_path: Path,
                                                            task_dir: Path) -> None:
    """0.1.0: cronqueue.db, -wal and -shm were 0644 (any local user could read the secrets)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "fresh.db"
        q = Queue(f"sqlite:///{path}", task_dir=str(task_dir), log_dir=str(tmp_path / "logs"))
        q.init_db()
        q.add("t.sh", secret={"token": "s3cr3t"})
        # The engine keeps a connection open: the WAL files exist now.
        modes = {p.name: stat.S_IMODE(p.stat().st_mode)
                 for p in (path, tmp_path / "fresh.db-wal", tmp_path / "fresh.db-shm")}
        q.close()
    finally:
        os.umask(old)
    assert modes == {"fresh.db": 0o600, "fresh.db-wal": 0o600, "fresh.db-shm": 0o600}


def test_check_warns_about_a_database_file_others_can_read(tmp_path: Path, task_dir: Path,
                                                          log_dir: Path) -> None:
    """A file created by 0.1.0 keeps its 0644: ``cronqueue check`` says so (and how to fix)."""
    path = tmp_path / "old.db"
    q = Queue(f"sqlite:///{path}", task_dir=str(task_dir), log_dir=str(log_dir))
    q.init_db()
    q.close()
    url = f"sqlite:///{path}"
    ok = run_cli("check", db_url=url, task_dir=task_dir, log_dir=log_dir)
    assert ok.returncode == 0 and "WARN" not in ok.stdout, ok.stdout
    path.chmod(0o644)
    loose = run_cli("check", db_url=url, task_dir=task_dir, log_dir=log_dir)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert f"WARN secrets   {path} (mode 644)" in loose.stdout
    assert "other users may read it, and rows hold task secrets" in loose.stdout
    assert f"chmod 600 {path}*" in loose.stdout


# -- a finished task keeps no secret ----------------------------------------------------------


def test_secret_is_cleared_when_a_task_is_done_failed_or_cancelled(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path) -> None:
    write_script(task_dir, "s.py", STDIN_TO_FILE)
    done = queue.add("s.py", 0, secret={"k": "done-s3cr3t"})
    failed = queue.add("s.py", 1, max_attempts=1, secret={"k": "failed-s3cr3t"})
    retried = queue.add("s.py", 1, max_attempts=3, secret={"k": "retried-s3cr3t"})
    cancelled = queue.add("s.py", 0, secret={"k": "cancelled-s3cr3t"})
    queue.cancel(cancelled)
    report = burst(db_url, task_dir, log_dir)
    assert report.outcomes == {done: "done", failed: "failed", retried: "retried"}
    # Each script got its own secret, read when it started.
    for task_id, word in ((done, "done"), (failed, "failed"), (retried, "retried")):
        assert json.loads((task_dir / f"got-{task_id}").read_text()) == {"k": f"{word}-s3cr3t"}
    assert get_task(queue, done).secret is None
    assert get_task(queue, failed).secret is None
    assert get_task(queue, cancelled).secret is None
    pending = get_task(queue, retried)  # waiting for its retry: it still needs it
    assert pending.status is Status.PENDING and pending.secret == '{"k":"retried-s3cr3t"}'


def test_secret_is_cleared_when_the_rescue_fails_a_task(queue: Queue) -> None:
    task_id = queue.add("t.sh", max_attempts=1, secret={"k": "rescued-s3cr3t"})
    now = datetime.now(UTC)
    dead = Owner("thishost", 999999, 1)
    claimer = Claimer(queue.engine, dead, shard=0, total=1, queues=None,
                      lease=timedelta(seconds=60))
    token = claimer.claim(10, now + timedelta(seconds=1)).token
    assert queue.store.outcomes.flush(Flush(token, mark=[task_id], now=now, lease_until=now
                                            + timedelta(seconds=900))).marked == {task_id}
    report = rescue(queue.store, queue.config.worker, now + timedelta(seconds=3),
                    me=Owner("thishost", 4242, 77), alive=lambda pid, start: False)
    assert report.failed == [task_id]
    task = get_task(queue, task_id)
    assert task.status is Status.FAILED and task.secret is None


# -- a shard holds one secret at a time -------------------------------------------------------


def test_a_claim_leaves_the_secrets_in_the_database(queue: Queue) -> None:
    """0.1.0: the claim read every secret of its batch (40 x 8 MiB: 389 MB of shard RSS)."""
    with_secret = queue.add("t.sh", secret="x" * 100_000)
    without = queue.add("t.sh")
    claimer = Claimer(queue.engine, Owner.me(), shard=0, total=1, queues=None,
                      lease=timedelta(seconds=60))
    tasks = {t.id: t for t in claimer.claim(10, datetime.now(UTC) + timedelta(seconds=1)).tasks}
    assert tasks[with_secret].secret == SECRET_ELSEWHERE
    assert tasks[without].secret is None
    assert queue.store.tasks.secret(with_secret) == json.dumps("x" * 100_000)
    listed = {t.id: t for t in queue.list()}
    assert listed[with_secret].secret == SECRET_ELSEWHERE
    assert listed[with_secret].as_dict()["secret"] == "***"
    assert listed[without].as_dict()["secret"] is None


PARENT_PEAK = """\
import os, sys
sys.stdin.buffer.read()
with open(f"/proc/{os.getppid()}/status") as fh:
    peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
with open("peak-" + os.environ["CRONQUEUE_TASK_ID"], "w") as fh:
    fh.write(str(peak))
"""


def test_shard_memory_does_not_grow_with_the_secrets_of_its_batch(
        queue: Queue, db_url: str, task_dir: Path, tmp_path: Path) -> None:
    """A real shard: its peak memory (VmHWM, read by each task from /proc/$PPID/status) with a
    batch of 12 tasks of 6 MiB secrets stays near its peak with one such task."""
    write_script(task_dir, "peak.py", PARENT_PEAK)
    env = clean_env()

    def shard_peak(count: int) -> int:
        ids = queue.add_many([{"taskscript": "peak.py", "secret": "s" * (6 * MiB)}
                              for _ in range(count)])
        res = subprocess.run(cronqueue_cmd("work", "--db", db_url, "--task-dir", str(task_dir),
                                           "--log-dir", str(tmp_path / "logs"), "--batch", "50"),
                             env=env, capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, res.stderr
        assert all(get_task(queue, i).status is Status.DONE for i in ids), res.stderr
        return max(int((task_dir / f"peak-{i}").read_text()) for i in ids)  # KiB

    one = shard_peak(1)
    twelve = shard_peak(12)
    # 0.1.0: 12 x 6 MiB = 72 MiB of secrets (more with the driver's copies) held at once.
    assert twelve - one < 40 * 1024, (one, twelve)


# -- statements fit the server's max_allowed_packet -------------------------------------------


def test_add_many_of_large_secrets(queue: Queue) -> None:
    """0.1.0 on MariaDB: one multi-row INSERT of all of them, "server has gone away"."""
    items = [{"taskscript": "t.sh", "param": n, "secret": f"{n}-" + "\\'\"" * MiB}
             for n in range(6)]  # 5 MiB each once serialized, 10 MiB once escaped
    ids = queue.add_many(items)
    assert ids == sorted(ids) and len(set(ids)) == 6
    for n, task_id in enumerate(ids):
        task = get_task(queue, task_id)
        assert task.args == n
        assert task.secret is not None and json.loads(task.secret) == items[n]["secret"]


@pytest.fixture
def statements(queue: Queue) -> Iterator[list[int]]:
    """The size of every statement the queue's engine sends (SQL text plus parameters)."""
    sizes: list[int] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        rows = parameters if isinstance(parameters, list) else [parameters]
        values = [v for row in rows for v in (row.values() if isinstance(row, dict) else row)]
        sizes.append(len(statement) + sum(len(v.encode()) for v in values
                                          if isinstance(v, str)))

    event.listen(queue.engine, "before_cursor_execute", record)
    yield sizes
    event.remove(queue.engine, "before_cursor_execute", record)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "mariadb"], indirect=True)
def test_add_many_statements_stay_under_max_allowed_packet(queue: Queue,
                                                           statements: list[int]) -> None:
    """Statements are cut at the server's limit (here made 1 MiB: the shared server's own is
    not changed), for the bulk JSON path (many small rows) and the row path (large rows)."""
    queue.store.tasks.inserter._packet = (1 * MiB,)  # as if read from the server
    small = [{"taskscript": "t.sh", "param": n, "secret": "a" * 2000} for n in range(3000)]
    large = [{"taskscript": "t.sh", "param": n, "secret": "b" * 300_000} for n in range(10)]
    ids = queue.add_many(small + large)
    assert ids == sorted(ids) and len(ids) == 3010
    assert max(statements) < 1 * MiB
    assert get_task(queue, ids[-1]).secret == json.dumps("b" * 300_000)
    with pytest.raises(InvalidTask,
                       match=r"add_many item 1: .*max_allowed_packet \(1048576 bytes\)"):
        queue.add_many([{"taskscript": "t.sh"}, {"taskscript": "t.sh", "secret": "c" * MiB}])
    with pytest.raises(InvalidTask, match="max_allowed_packet"):
        queue.add("t.sh", secret="c" * MiB)


# -- error texts ------------------------------------------------------------------------------


def test_a_failed_insert_does_not_show_the_secret(db_url: str, task_dir: Path,
                                                  log_dir: Path) -> None:
    """0.1.0: SQLAlchemy's ``[parameters: ...]`` in the exception carried the secret."""
    q = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir))  # no tables: insert fails
    token = "tok-" + secrets.token_hex(8)  # (not in the source: tracebacks quote it)
    for add in (lambda: q.add("t.sh", {"p": 1}, secret={"token": token}),
                lambda: q.add("t.sh", secret={"token": token}, unique_key="k"),
                lambda: q.add_many([{"taskscript": "t.sh", "secret": token}] * 3)):
        with pytest.raises(DatabaseError) as info:
            add()
        shown = "".join(traceback.format_exception(info.value))
        assert "queue" in shown and token not in shown
    q.close()


# -- database passwords -----------------------------------------------------------------------


PEEK = """\
import os, sys
def read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<{exc}>"
seen, pid = [], os.getpid()
while pid > 1:  # every ancestor's environment and command line, and our own
    seen += [read(f"/proc/{pid}/environ"), read(f"/proc/{pid}/cmdline")]
    with open(f"/proc/{pid}/stat") as fh:
        pid = int(fh.read().rsplit(")", 1)[1].split()[1])
with open("peek-" + os.environ["CRONQUEUE_TASK_ID"], "w") as fh:
    fh.write("\\n".join(seen))
"""


@pytest.fixture
def mysql_user(db_url: str, backend: str) -> Iterator[tuple[str, str] | None]:
    """On MariaDB: an account whose password holds an '@', allowed on the test database.
    (user, password)."""
    if backend != "mariadb":
        yield None
        return
    user = "cq_u_" + secrets.token_hex(4)
    password = f"Pw@tail{secrets.token_hex(4)}X"
    admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database = make_url(db_url).database
    with admin.connect() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :pw"), {"pw": password})
        conn.execute(text(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'"))
    try:
        yield user, password
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def password_urls(db_url: str, user: str, password: str) -> dict[str, str]:
    """The same account in every form a URL can carry its password."""
    base = make_url(db_url)
    where = f"{base.host}:{base.port or 3306}/{base.database}"
    encoded = quote(password, safe="")
    return {
        "encoded": f"mysql+pymysql://{user}:{encoded}@{where}",
        "unencoded-at": f"mysql+pymysql://{user}:{password}@{where}",
        "query": f"mysql+pymysql://{user}@{where}?password={encoded}&charset=utf8mb4",
        "query-passwd": f"mysql://{user}@{where}?passwd={encoded}",
    }


def leaks(text: str, password: str) -> bool:
    """Any part of the password that identifies it (the tail after its '@' too)."""
    return any(part in text for part in (password, quote(password, safe=""),
                                         password.split("@", 1)[1]))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "mariadb"], indirect=True)
def test_no_password_form_is_printed(queue: Queue, db_url: str, task_dir: Path,
                                     log_dir: Path, mysql_user: tuple[str, str] | None) -> None:
    """0.1.0: ``?password=X`` was printed by ``check`` (and the shard's start line), the tail
    of a password after an unencoded '@' was printed (and the connection failed), and
    ``repr(Queue(url).config)`` showed the password."""
    assert mysql_user is not None
    user, password = mysql_user
    write_script(task_dir, "ok.sh", "exit 0\n")
    for form, url in password_urls(db_url, user, password).items():
        q = Queue(url, task_dir=str(task_dir), log_dir=str(log_dir))
        shown = [repr(q.config), str(q.config), q.url, repr(q.engine.url), str(q.engine.url)]
        # It connects, as that account, to the test's database.
        assert q.stats()["total"] == queue.stats()["total"], form
        q.close()
        check = subprocess.run(cronqueue_cmd("check", "--db", url, "--task-dir", str(task_dir),
                                             "--log-dir", str(log_dir)),
                               capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, (form, check.stdout, check.stderr)
        queue.add("ok.sh")
        env = clean_env()
        work = subprocess.run(cronqueue_cmd("work", "--task-dir", str(task_dir), "--log-dir",
                                            str(log_dir), "--log-level", "debug"),
                              env={**env, "CRONQUEUE_DB_URL": url}, capture_output=True,
                              text=True, timeout=120, check=False)
        assert work.returncode == 0 and "outcome=done" in work.stderr, (form, work.stderr)
        shown += [check.stdout, check.stderr, work.stdout, work.stderr]
        assert "start" in work.stderr and user in work.stderr
        assert not any(leaks(s, password) for s in shown), (form, shown)


@pytest.mark.parametrize("mode", ["exec", "fork"])
def test_a_task_cannot_read_the_url_from_its_ancestors(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path, mode: str,
        mysql_user: tuple[str, str] | None) -> None:
    """0.1.0: the shard (the task's parent in exec mode, the fork server's in fork mode) had
    ``CRONQUEUE_DB_URL`` in /proc/PID/environ and ``--db URL`` in /proc/PID/cmdline."""
    url, password = db_url, None
    if mysql_user is not None:
        user, password = mysql_user
        url = password_urls(db_url, user, password)["unencoded-at"]
    write_script(task_dir, "peek.py", PEEK)
    config = tmp_path / "cq.toml"
    config.write_text(f"[worker]\npython_fork = {'true' if mode == 'fork' else 'false'}\n")
    env = clean_env()
    runs = {"env": ([], {"CRONQUEUE_DB_URL": url}), "argv": (["--db", url], {})}
    for how, (args, extra) in runs.items():
        task_id = queue.add("peek.py")
        res = subprocess.run(cronqueue_cmd("work", "--config", str(config), "--task-dir",
                                           str(task_dir), "--log-dir", str(log_dir), *args),
                             env={**env, **extra}, capture_output=True, text=True, timeout=120,
                             check=False)
        assert res.returncode == 0, res.stderr
        assert get_task(queue, task_id).status is Status.DONE, (how, res.stderr)
        seen = (task_dir / f"peek-{task_id}").read_text()
        assert "cronqueue\x00work" in seen.replace("\0", "\x00")  # it did see the shard
        assert "CRONQUEUE_DB_URL=" + url not in seen, how
        if password is not None:
            assert not leaks(seen, password), (how, seen)
