"""Database outages: shards wait and retry, never lose an outcome, never run a task twice; the
heartbeat extends leases, and stops a shard that cannot renew its lease before it runs out.

The outage is staged with a TCP proxy between the shard and MariaDB: ``pause()`` drops every
connection and refuses new ones, ``resume()`` forwards again. The test itself watches the
database on the real port."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cronqueue import DatabaseError, Queue, Status, Task
from tests.conftest import BACKENDS
from tests.conftest import get_task as get
from tests.helpers import Procs, cronqueue_cmd, holds_for, process_gone, wait_until, write_script

NEEDS_MARIADB = pytest.mark.skipif("mariadb" not in BACKENDS,
                                   reason="CRONQUEUE_TEST_BACKENDS excludes it")
ON_MARIADB = pytest.mark.parametrize("backend", ["mariadb"], indirect=True)


class Proxy:
    """A TCP forwarder to ``upstream`` on 127.0.0.1, port ``self.port``, that can be cut."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._paused = False
        self._closed = False
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def url(self, db_url: str) -> str:
        return make_url(db_url).set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False)

    def pause(self) -> None:
        with self._lock:
            self._paused = True
            socks, self._socks = self._socks, set()
        for sock in socks:
            _kill(sock)

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def close(self) -> None:
        self._closed = True
        self.pause()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                paused = self._paused
            if paused:
                self.refused += 1
                _kill(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _kill(client)
                continue
            with self._lock:
                if self._paused:
                    _kill(client)
                    _kill(server)
                    continue
                self._socks.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(src)
                self._socks.discard(dst)
            _kill(src)
            _kill(dst)


def _kill(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@pytest.fixture
def proxy(db_url: str) -> Iterator[Proxy]:
    url = make_url(db_url)
    p = Proxy((url.host or "127.0.0.1", url.port or 3306))
    yield p
    p.close()


def write_config(tmp_path: Path, **worker: float) -> Path:
    path = tmp_path / "cronqueue.toml"
    path.write_text("[worker]\n" + "".join(f"{k} = {v!r}\n" for k, v in worker.items()))
    return path


def start_work(url: str, task_dir: Path, log_dir: Path, tmp_path: Path, config: Path,
               procs: Procs, *extra: str,
               name: str = "work") -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / f"{name}.stderr"
    proc = procs.start(cronqueue_cmd("work", "--db", url, "--task-dir", str(task_dir),
                                     "--log-dir", str(log_dir), "--config", str(config), *extra),
                       log=err, cwd=tmp_path)
    return proc, err


def wait_running(q: Queue, task_id: int, proc: subprocess.Popen[bytes], err: Path) -> Task:
    def started() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"worker exited early ({proc.returncode}): {err.read_text()}")
        task = get(q, task_id)
        return task.status is Status.RUNNING and task.started_at is not None

    wait_until(started, 60, lambda: f"task {task_id} running: {err.read_text()}")
    return get(q, task_id)


def lines_with(err: Path, words: str) -> list[str]:
    return [line for line in err.read_text().splitlines() if words in line]


# -- an outage while a task runs --------------------------------------------------------------


@NEEDS_MARIADB
@ON_MARIADB
def test_outcome_written_once_the_database_is_back(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        proxy: Proxy, procs: Procs) -> None:
    write_script(task_dir, "nap.sh", "echo ran >> ledger.log\nsleep 2\ntouch finished\n")
    task_id = queue.add("nap.sh", max_attempts=3)
    config = write_config(tmp_path, outage_wait=60)
    proc, err = start_work(proxy.url(db_url), task_dir, log_dir, tmp_path, config, procs)
    wait_running(queue, task_id, proc, err)
    proxy.pause()
    # The task finishes during the outage; the shard cannot write its outcome.
    wait_until(lambda: (task_dir / "finished").exists(), 30, "the task finished")
    wait_until(lambda: lines_with(err, "database unavailable"), 30, err.read_text)
    # Waiting, not giving up: nothing may happen for a while.
    holds_for(lambda: proc.poll() is None, 1.0, err.read_text)
    assert get(queue, task_id).status is Status.RUNNING
    proxy.resume()
    assert proc.wait(timeout=60) == 0, err.read_text()
    task = get(queue, task_id)
    assert task.status is Status.DONE, (task, err.read_text())
    assert task.attempts == 1
    assert task.exit_code == 0
    assert (task_dir / "ledger.log").read_text() == "ran\n"  # ran exactly once
    assert len(lines_with(err, "database unavailable")) == 1, err.read_text()
    assert len(lines_with(err, "database back")) == 1, err.read_text()


# -- an outage before a burst shard starts ----------------------------------------------------


@NEEDS_MARIADB
@ON_MARIADB
def test_burst_shard_gives_up_after_outage_wait_and_loses_nothing(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        proxy: Proxy, procs: Procs) -> None:
    write_script(task_dir, "ok.sh", 'echo "$CRONQUEUE_TASK_ID" >> ledger.log\n')
    ids = [queue.add("ok.sh", i) for i in range(3)]
    config = write_config(tmp_path, outage_wait=2)
    proxy.pause()
    proc, err = start_work(proxy.url(db_url), task_dir, log_dir, tmp_path, config, procs)
    # Default outage_wait is 300 s: ending well within 60 s shows it honoured outage_wait=2.
    assert proc.wait(timeout=60) == 1, err.read_text()
    assert proxy.refused >= 2  # it did retry
    last = err.read_text().strip().splitlines()[-1]
    assert last.startswith("cronqueue: ") and "database" in last, err.read_text()
    assert len(lines_with(err, "database unavailable")) == 1, err.read_text()
    for task_id in ids:
        task = get(queue, task_id)
        assert task.status is Status.PENDING and task.attempts == 0
    assert not (task_dir / "ledger.log").exists()

    proxy.resume()
    proc, err = start_work(proxy.url(db_url), task_dir, log_dir, tmp_path, config, procs,
                           name="again")
    assert proc.wait(timeout=60) == 0, err.read_text()
    for task_id in ids:
        assert get(queue, task_id).status is Status.DONE
    assert sorted(map(int, (task_dir / "ledger.log").read_text().split())) == ids


# -- heartbeat: lease extension and self-stop -------------------------------------------------


@NEEDS_MARIADB
@ON_MARIADB
def test_heartbeat_extends_the_lease_and_stops_the_task_before_it_runs_out(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        proxy: Proxy, procs: Procs) -> None:
    lease, heartbeat = 3, 0.5
    write_script(task_dir, "long.sh", "echo ran >> ledger.log\nsleep 30 &\n"
                                      "echo $! > sleep.pid\nwait\n")
    task_id = queue.add("long.sh", max_attempts=3)
    config = write_config(tmp_path, heartbeat=heartbeat, lease=lease, outage_wait=60)
    proc, err = start_work(proxy.url(db_url), task_dir, log_dir, tmp_path, config, procs)
    running = wait_running(queue, task_id, proc, err)
    assert running.started_at is not None and running.lease_until is not None
    wait_until(lambda: (task_dir / "sleep.pid").exists(), 30, "sleep.pid written")
    sleep_pid = int((task_dir / "sleep.pid").read_text())
    procs.track(sleep_pid)

    # The lease keeps moving forward, past what the claim alone gave.
    first = get(queue, task_id).lease_until
    assert first is not None
    wait_until(lambda: get(queue, task_id).lease_until > first,  # type: ignore[operator]
               10, "the lease extended")
    initial_end = running.started_at + timedelta(seconds=lease)
    wait_until(lambda: get(queue, task_id).lease_until  # type: ignore[operator]
               > initial_end + timedelta(seconds=1), 10, "the lease past the claim's")
    assert not process_gone(sleep_pid)

    # The database goes away: the shard kills its task before its lease can run out.
    proxy.pause()
    wait_until(lambda: process_gone(sleep_pid), 30, err.read_text)
    killed_at = datetime.now(UTC)
    # Before the lease the row shows (its last extension) ran out, so before anyone else could
    # rescue the task: it never runs in two places.
    task = get(queue, task_id)
    assert task.status is Status.RUNNING
    assert task.lease_until is not None and killed_at < task.lease_until, \
        (killed_at, task.lease_until, err.read_text())

    # The outcome (killed, back to pending) waits for the database, however long it is away:
    # nothing may happen for a while.
    holds_for(lambda: proc.poll() is None, 2.0, err.read_text)
    proxy.resume()
    assert proc.wait(timeout=60) == 0, err.read_text()
    task = get(queue, task_id)
    assert task.status is Status.PENDING, (task, err.read_text())
    assert (task.error or "").startswith("ProcessInterruptedError"), (task, err.read_text())
    assert task.attempts == 0
    assert task.claim_token is None
    assert (task_dir / "ledger.log").read_text() == "ran\n"
    assert lines_with(err, "lease at risk"), err.read_text()


# -- enqueueing during an outage --------------------------------------------------------------


@NEEDS_MARIADB
@ON_MARIADB
def test_add_through_an_outage_raises_database_error_and_inserts_nothing(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, proxy: Proxy) -> None:
    # The proxy never lets the connection reach authentication, so a made-up password does
    # no harm and shows whether it leaks.
    url = make_url(proxy.url(db_url)).set(password="s3cr3t-pw").render_as_string(
        hide_password=False)
    proxy.pause()
    app = Queue(url, task_dir=str(task_dir), log_dir=str(log_dir))
    try:
        with pytest.raises(DatabaseError) as info:
            app.add("ok.sh", {"n": 1})
    finally:
        app.close()
    message = str(info.value)
    assert "\n" not in message
    assert "s3cr3t-pw" not in message and "***" in message
    assert proxy.refused >= 1
    proxy.resume()
    assert queue.stats()["total"] == 0


# -- stop_grace -------------------------------------------------------------------------------


def test_stop_grace_kills_and_returns_the_task(
        queue: Queue, db_url: str, task_dir: Path, log_dir: Path, tmp_path: Path,
        procs: Procs) -> None:
    write_script(task_dir, "long.sh", "echo ran >> ledger.log\nsleep 30 &\n"
                                      "echo $! > sleep.pid\nwait\n")
    task_id = queue.add("long.sh", max_attempts=3)
    other = queue.add("long.sh")
    config = write_config(tmp_path, stop_grace=1)
    proc, err = start_work(db_url, task_dir, log_dir, tmp_path, config, procs)
    wait_running(queue, task_id, proc, err)
    wait_until(lambda: (task_dir / "sleep.pid").exists(), 30, "sleep.pid written")
    sleep_pid = int((task_dir / "sleep.pid").read_text())
    procs.track(sleep_pid)
    proc.send_signal(signal.SIGTERM)  # once
    # stop_grace is 1 s; the task would need 30 s: the shard does not wait for it.
    assert proc.wait(timeout=20) == 0, err.read_text()
    assert process_gone(sleep_pid)
    task = get(queue, task_id)
    assert task.status is Status.PENDING, (task, err.read_text())
    assert task.attempts == 0
    assert task.claim_token is None
    assert (task.error or "").startswith("ProcessInterruptedError")
    task = get(queue, other)  # never started: released untouched
    assert task.status is Status.PENDING and task.attempts == 0 and task.claim_token is None
    assert (task_dir / "ledger.log").read_text() == "ran\n"
