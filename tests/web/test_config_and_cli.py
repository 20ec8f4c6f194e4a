"""``[web]`` in the config file, its hashes, and ``cronqueue web``: the helpers that make the
hashes, the refusal to bind an open dashboard beyond loopback, and a real server answering."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cronqueue.config import load_config
from cronqueue.config.web import (
    hash_password,
    hash_token,
    new_token,
    token_matches,
    verify_password,
)
from cronqueue.errors import ConfigError
from tests.conftest import run_main
from tests.helpers import Procs, clean_env, cronqueue_cmd, wait_until

pytestmark = pytest.mark.any_backend


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cronqueue.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("method", ["scrypt", "pbkdf2_sha256"])
def test_password_hashes(method: str) -> None:
    stored = hash_password("s3cret pass", method=method)
    assert stored.startswith(method + "$") and "s3cret" not in stored
    assert verify_password("s3cret pass", stored)
    assert not verify_password("s3cret pas", stored)
    assert not verify_password("", stored)
    assert hash_password("s3cret pass", method=method) != stored  # salted
    assert not verify_password("s3cret pass", stored[:-4] + "AAAA")
    assert not verify_password("x", "scrypt$1$1$1$AA$AA")  # malformed: no match, no error


def test_tokens_hash() -> None:
    token, stored = new_token()
    assert len(token) >= 40 and token not in stored
    assert token_matches(token, stored) and not token_matches(token + "x", stored)
    assert stored == hash_token(token)


def test_the_web_table(tmp_path: Path) -> None:
    stored = hash_password("pw", method="pbkdf2_sha256")
    token = hash_token("tok")
    cfg = load_config(_config(tmp_path, f"""
[web]
max_bulk = 50
trusted_origins = ["https://ops.example.com"]
cookie_secure = true
secret_key = "{"k" * 40}"

[[web.user]]
name = "ops"
password_hash = "{stored}"
role = "admin"

[[web.token]]
name = "prom"
token_hash = "{token}"
"""))
    web = cfg.web
    assert web.authenticated and web.max_bulk == 50 and web.cookie_secure
    assert [(u.name, u.role) for u in web.users] == [("ops", "admin")]
    assert [(t.name, t.role) for t in web.tokens] == [("prom", "read")]
    assert stored not in repr(cfg) and "k" * 40 not in repr(cfg)
    assert not load_config(_config(tmp_path, "")).web.authenticated


@pytest.mark.parametrize(("table", "says"), [
    ('[web]\npassword = "hunter2"', "web.password"),
    ('[[web.user]]\nname = "a"\npassword = "hunter2"', "never a clear password"),
    ('[[web.user]]\nname = "a"\npassword_hash = "hunter2"', "password_hash"),
    ('[[web.user]]\nname = "a"\npassword_hash = "scrypt$16$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA"',
     "out of range"),
    ('[[web.token]]\nname = "a"\ntoken_hash = "abc"', "sha256$"),
    ('[[web.token]]\nname = "a b"\ntoken_hash = "sha256$' + "0" * 64 + '"', "'name'"),
    ('[[web.token]]\nname = "a"\nrole = "root"\ntoken_hash = "sha256$' + "0" * 64 + '"',
     "role must be"),
    ("[web]\nmax_bulk = 0", "web.max_bulk"),
    ("[web]\nsecret_key = 'short'", "web.secret_key"),
    ("[web]\ntrusted_origins = ['https://x.example/path']", "trusted_origins"),
    ("[web]\nhost = '0.0.0.0'", "unknown key"),
])
def test_bad_web_tables(tmp_path: Path, table: str, says: str) -> None:
    with pytest.raises(ConfigError, match="web") as info:
        load_config(_config(tmp_path, table))
    assert says in str(info.value)


def test_hash_password_reads_stdin(tmp_path: Path) -> None:
    run = {"capture_output": True, "text": True, "env": clean_env(), "cwd": tmp_path}
    out = subprocess.run(cronqueue_cmd("web", "--hash-password"), input="pa ss\n", check=True,
                         **run).stdout.strip()
    assert verify_password("pa ss", out)
    empty = subprocess.run(cronqueue_cmd("web", "--hash-password"), input="\n", **run)
    assert empty.returncode == 2 and "empty password" in empty.stderr


def test_new_token_prints_both(tmp_path: Path) -> None:
    out = subprocess.run(cronqueue_cmd("web", "--new-token"), capture_output=True, text=True,
                         env=clean_env(), cwd=tmp_path, check=True).stdout
    token = out.split(": ", 1)[1].splitlines()[0]
    stored = out.split('token_hash = "', 1)[1].split('"', 1)[0]
    assert token_matches(token, stored)


def test_an_open_dashboard_binds_loopback_only(clean_env: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "::"):
        assert run_main(["web", "--host", host]) == 2
        assert "not a loopback address" in capsys.readouterr().err


def test_a_database_without_tables_is_refused(clean_env: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["web", "--db", f"sqlite:///{clean_env / 'empty.db'}"]) == 2
    assert "cronqueue init-db" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cronqueue_web_serves(tmp_path: Path, procs: Procs) -> None:
    db = f"sqlite:///{tmp_path / 'q.db'}"
    assert run_main(["init-db", "--db", db]) == 0
    port = _free_port()
    log = tmp_path / "web.log"
    proc = procs.start(cronqueue_cmd("web", "--db", db, "--port", str(port)), log=log,
                       cwd=tmp_path)

    def answers() -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks", timeout=2) as r:
                return bytes(r.read())
        except (urllib.error.URLError, ConnectionError):
            return None

    body = wait_until(answers, 30, lambda: f"cronqueue web answering: {log.read_text()}")
    assert b"<h1>Tasks</h1>" in body
    assert f"serving the dashboard on http://127.0.0.1:{port}/" in log.read_text()
    proc.terminate()
    proc.wait(10)
