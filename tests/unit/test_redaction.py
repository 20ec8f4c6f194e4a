"""Issue 11, item 4: database passwords in every URL form are hidden (redact, the normalized
URL, the config's repr, a process's /proc files); statements are cut to the server's packet."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cronqueue.config import Config, load_config
from cronqueue.errors import ConfigError, InvalidTask
from cronqueue.store import packet
from cronqueue.store.engine import normalize_url, redact
from tests.helpers import clean_env

PW = "Qv7Wk3pJx"  # (a word no repr holds otherwise)
FORMS = {
    "userinfo": f"mysql+pymysql://cq:{PW}@db:3306/app",
    "percent-encoded": f"mysql+pymysql://cq:Zq9%40{PW}%2F%3F@db/app",
    "unencoded-at": f"mysql+pymysql://cq:Zq@9@{PW}@db/app",
    "unencoded-at-colon-slash": f"mysql://cq:a:b/c@{PW}@db/app",
    "query-password": f"mysql+pymysql://cq@db/app?charset=utf8mb4&password={PW}",
    "query-passwd": f"mysql://cq@db/app?passwd={PW}",
    "query-upper": f"mysql://cq@db/app?PASSWORD={PW}&x=1",
    # a percent-encoded key: SQLAlchemy decodes it and connects with that password, so
    # `check` printed it in clear until the redaction decoded keys too
    "query-encoded-key": f"mysql://cq@db/app?x=1&pass%77ord={PW}",
    "query-encoded-passwd": f"mysql://cq@db/app?%50ASSWD={PW}",
}


@pytest.mark.parametrize("form", FORMS)
def test_redact_hides_every_password_form(form: str) -> None:
    """0.1.0: ``?password=`` shown as is; after an unencoded '@', the password's tail shown."""
    shown = redact(FORMS[form])
    assert PW not in shown and "***" in shown
    assert "db" in shown and "app" in shown


@pytest.mark.parametrize("form", [f for f in FORMS if f != "unencoded-at-colon-slash"])
def test_normalized_url_keeps_the_password_where_sqlalchemy_hides_it(form: str) -> None:
    url = normalize_url(FORMS[form])
    parsed = make_url(url)
    assert parsed.host == "db" and parsed.database == "app"
    assert parsed.password is not None and PW in parsed.password
    assert not {"password", "passwd", "PASSWORD"} & set(parsed.query)
    for shown in (repr(parsed), str(parsed), redact(url)):
        assert PW not in shown, shown


def test_unencoded_at_is_part_of_the_password() -> None:
    parsed = make_url(normalize_url(f"mysql://cq:p@ss@{PW}@127.0.0.1:3307/app"))
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == (
        "cq", f"p@ss@{PW}", "127.0.0.1", 3307)
    parsed = make_url(normalize_url(f"mysql://cq@db/app?password=p%26%40{PW}&charset=utf8mb4"))
    assert (parsed.password, dict(parsed.query)) == (f"p&@{PW}", {"charset": "utf8mb4"})


@pytest.mark.parametrize("url", [f"mysql://cq:{PW}@db/app?password={PW}",
                                 f"mysql://cq@db/app?password={PW}&passwd={PW}",
                                 f"mysql://cq@db/app?password={PW}&password={PW}"])
def test_a_password_given_twice_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"db_url: .*twice") as info:
        normalize_url(url)
    assert PW not in str(info.value)


def test_sqlite_urls_are_left_alone() -> None:
    assert make_url(normalize_url("sqlite:////tmp/a:b@c/q.db")).database == "/tmp/a:b@c/q.db"
    assert redact("sqlite:///queue.db") == "sqlite:///queue.db"


@pytest.mark.parametrize("form", FORMS)
def test_config_repr_hides_the_password(form: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """0.1.0: ``repr(Queue(url).config)`` (a traceback's locals, a debug log) showed it."""
    monkeypatch.delenv("CRONQUEUE_DB_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, db_url=FORMS[form])
    for shown in (repr(cfg), str(cfg), cfg.safe_db_url, repr(Config(db_url=FORMS[form]))):
        assert PW not in shown and "@db" in shown, shown


CONCEAL = """\
import os, sys
from cronqueue.process.conceal import conceal_db_url
conceal_db_url((sys.argv[2],))
out = [open(f"/proc/{os.getpid()}/environ", "rb").read(),
       open(f"/proc/{os.getpid()}/cmdline", "rb").read()]
import subprocess  # a child, as a task: inherits nothing, reads its parent's files
child = subprocess.run(["sh", "-c", "env; cat /proc/$PPID/environ /proc/$PPID/cmdline"],
                       capture_output=True)
sys.stdout.buffer.write(b"\\n".join(out) + b"\\n" + child.stdout)
import hashlib  # sys.argv is untouched: the URL is still usable in the process
same = hashlib.sha256(sys.argv[2].encode()).hexdigest() == os.environ["URL_SHA256"]
print("still-usable" if same else "")
"""


def test_conceal_overwrites_the_url_in_the_process_start_memory(tmp_path: Path) -> None:
    """What /proc/PID/environ and /proc/PID/cmdline show (to a task reading its parent's)."""
    url = f"mysql://cq:p@ss@{PW}@db/app?passwd={PW}"
    env = clean_env(CRONQUEUE_DB_URL=f"mysql://cq:{PW}@db/app",
                    URL_SHA256=hashlib.sha256(url.encode()).hexdigest())
    res = subprocess.run([sys.executable, "-c", CONCEAL, "--db", url], env=env,
                         capture_output=True, timeout=60, check=True)
    out = res.stdout.decode("utf-8", "replace")
    assert PW not in out
    assert "CRONQUEUE_DB_URL=**" in out  # overwritten in place (same length)
    assert "mysql://cq:*" in out and "@db/app?passwd=*" in out
    assert "still-usable" in out


def test_sent_bytes_counts_escapes_and_utf8() -> None:
    assert packet.sent_bytes("abc") == 3
    assert packet.sent_bytes("a'b\\c\"\n\0\r\x1a") == 10 + 7
    assert packet.sent_bytes("\u00e9\U0001f600") == 6
    assert packet.sent_bytes(None) == 4


def test_split_respects_budget_and_row_count() -> None:
    sizes = {0: 5, 1: 5, 2: 5, 3: 20, 4: 1, 5: 1}
    assert packet.split(range(6), sizes, 10, 100) == [[0, 1], [2], [3], [4, 5]]
    assert packet.split(range(6), sizes, 100, 2) == [[0, 1], [2, 3], [4, 5]]
    assert packet.split([], sizes, 10, 10) == []


def test_a_row_too_large_for_any_statement_is_refused() -> None:
    packet.check_fits(None, 1000, 1 << 20)
    with pytest.raises(InvalidTask, match=r"add_many item 3: its row is about 2000000 bytes.*"
                                          r"max_allowed_packet \(1048576 bytes\)"):
        packet.check_fits(3, 2_000_000, 1 << 20)
    with pytest.raises(InvalidTask, match=r"^the task's row"):
        packet.check_fits(None, 2_000_000, 1 << 20)
