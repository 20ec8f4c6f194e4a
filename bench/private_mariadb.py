"""A throwaway MariaDB server of our own: its own datadir (in a temp directory), port and
socket, so that a run which kills or restarts "the database" never touches a server it did not
start (a developer's MariaDB on 3306 survives).

    with PrivateMariaDB() as server:
        url = server.url("cq_chaos")   # root, no password, 127.0.0.1:<free port>
        server.restart()               # SIGTERM (or kill -9) of THIS server, same datadir/port

On exit the server is shut down and its directory removed. Raises ``PrivateMariaDBError``
(with the server's error log) if it cannot be initialised or started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pymysql

MARIADBD = os.environ.get("CRONQUEUE_MARIADBD", "/usr/sbin/mariadbd")
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


class PrivateMariaDBError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateMariaDB:
    def __init__(self, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="cq-mariadb-"))
        self.datadir = self.root / "data"
        self.socket = self.root / "sock"
        self.error_log = self.root / "error.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = ["--user=root"] if os.geteuid() == 0 else []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> PrivateMariaDB:
        try:
            self._install()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _install(self) -> None:
        if not Path(MARIADBD).exists():
            raise PrivateMariaDBError(f"{MARIADBD} not found (is mariadb-server installed?)")
        res = subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *self._user],
            capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise PrivateMariaDBError(f"mariadb-install-db failed ({res.returncode}): "
                                      f"{(res.stderr or res.stdout)[-2000:]}")

    def start(self) -> None:
        """Start mariadbd on our datadir/port/socket and wait until root can log in."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.error_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [MARIADBD, "--no-defaults", f"--datadir={self.datadir}",
                 f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                 f"--pid-file={self.root / 'mariadbd.pid'}", f"--log-error={self.error_log}",
                 "--skip-name-resolve", *self._user],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        end = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise PrivateMariaDBError(f"mariadbd exited with {self.proc.returncode}: "
                                          f"{self._log_tail()}")
            if self.ping():
                return
            if time.monotonic() > end:
                raise PrivateMariaDBError(f"mariadbd did not answer in {self.start_timeout} s:"
                                          f" {self._log_tail()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Signal THIS server (SIGTERM: clean shutdown; SIGKILL: crash) and wait for it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, sig: int = signal.SIGTERM, down: float = 1.0) -> None:
        """Stop this server, stay down ``down`` seconds, start it on the same datadir/port."""
        self.stop(sig)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- access ------------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                                   connect_timeout=2)
        except pymysql.MySQLError:
            return False
        conn.close()
        return True

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root:@127.0.0.1:{self.port}/{database}"

    def _log_tail(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no error log)"
