"""Issue 15 item 5: README.md's "Your own app, from zero", run as written, on both backends.

The walkthrough's fenced blocks are read FROM README.md (by position and language; a block
missing, added or of another language fails the test, naming what it found), and run in a
temporary application directory standing in for ``/srv/app`` (every ``/srv/app`` replaced):

1. Install: the block must still make the venv, pip-install cronqueue and ``mkdir tasks``;
   only ``mkdir tasks`` runs. The venv and pip are NOT run (minutes, and the network):
   ``.venv/bin/cronqueue`` is a two-line wrapper running this interpreter's ``-m cronqueue``
   (what ``cronqueue_cmd`` runs), so the README's ``.venv/bin/cronqueue ...`` lines run as
   written.
2. On MariaDB the README's SQL runs for real on the admin account, with the test's database
   name (the fixture's empty database, dropped first and re-created by the README's own
   ``CREATE DATABASE``), a user ``cq_w_<random>`` and a random password (dropped at the end):
   every later step connects with that account, so its GRANT must be enough for ``init-db``.
   On SQLite it is not run (MariaDB syntax; the README says so). The README's
   ``cronqueue.toml`` is written with the test's ``db_url``, ``task_dir`` and ``log_dir``
   substituted, then its ``init-db`` line runs.
3. The task script block becomes ``tasks/send_mail.py`` (``report.py`` "alike"), and step
   3's ``.venv/bin/cronqueue check`` must pass.
4. The Python snippet runs in a clean process (its ``config_file=`` pointing to the test's
   file, from another working directory) and must print the README's INFO line. The PHP
   snippet runs for real on MariaDB when ``php`` with pdo_mysql is installed (its DSN, user and
   password substituted); otherwise (SQLite, whose DSN it does not use, or no pdo_mysql) it is
   only syntax-checked with ``php -l`` when ``php`` exists, and left out when it does not.
5. ``cronqueue crontab`` (from the install pipeline) must print the README's line (the
   executable's path aside: this venv's); the line is never installed (no ``crontab``), but its
   command part runs under ``sh`` in a cron-like environment: a real mission tick at the real
   time, which starts the shards detached; the test waits until the added tasks are done.
6. Each "watch it work" command must exit 0 and show the task (``web`` on a free port, until
   it answers); the logs must hold the sample lines' fields. The time-zone paragraph's
   ``mission --dry-run --now ...`` must fire ``nightly-report``; from "When a tick seems to do
   nothing", ``check``, ``mission --dry-run``, ``migrate --status``, ``schedule`` and
   ``workers stop --entry drain`` run (the last stops the shards); ``pgrep`` and ``crontab -l``
   do not (the host's state, not the walkthrough's).
"""

from __future__ import annotations

import functools
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cronqueue import Queue, Status
from cronqueue.store.engine import redact
from tests.conftest import MYSQL_ADMIN_URL
from tests.helpers import Procs, clean_env, wait_until, write_script

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Your own app, from zero"
SRV = "/srv/app"
# The walkthrough's fenced blocks, in order: (name, language).
BLOCKS = [("install", "sh"), ("sql", "sql"), ("toml", "toml"), ("init_db", "sh"),
          ("task_script", "python"), ("enqueue", "python"), ("enqueue_log", ""),
          ("php", "php"), ("crontab_install", "sh"), ("crontab_line", ""), ("watch", "sh"),
          ("watch_log", "")]
VARYING = {"scheduled", "host", "pid", "duration"}  # the sample log lines' fields that vary


def _section() -> str:
    readme = README.read_text(encoding="utf-8")
    start = readme.find("\n" + SECTION + "\n")
    assert start >= 0, f"README.md has no section {SECTION!r}"
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end >= 0 else len(readme)]


def _blocks(section: str) -> dict[str, str]:
    found = re.findall(r"^```([\w-]*)\n(.*?)^```\s*$", section, re.M | re.S)
    langs = [lang for lang, _ in found]
    assert langs == [lang for _, lang in BLOCKS], (
        f"README.md's {SECTION!r}: expected fenced blocks of languages "
        f"{[lang for _, lang in BLOCKS]} (the test reads them by position), found {langs}: "
        "update the test with the walkthrough")
    return {name: body for (name, _), (_, body) in zip(BLOCKS, found, strict=True)}


def _replace(body: str, old: str, new: str, what: str) -> str:
    assert old in body, f"README.md's {what} no longer holds {old!r}:\n{body}"
    return body.replace(old, new)


def _lines(block: str) -> list[str]:
    """A sh block's command lines (no blank or comment-only lines)."""
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def account(backend: str, db_url: str) -> Iterator[tuple[str, str] | None]:
    """MariaDB: the name and password the README's SQL makes its account with (dropped at the
    end whether the SQL ran or not)."""
    if backend != "mariadb":
        yield None
        return
    user, password = "cq_w_" + secrets.token_hex(4), secrets.token_hex(12)
    try:
        yield user, password
    finally:
        admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"))
        admin.dispose()


def test_your_own_app_from_zero(backend: str, db_url: str, account: tuple[str, str] | None,
                                tmp_path: Path, procs: Procs) -> None:
    section = _section()
    blocks = _blocks(section)
    app = tmp_path / "app"
    app.mkdir()
    task_dir, log_dir = app / "tasks", app / "logs"
    env = clean_env()

    def sh(line: str, *, cwd: Path = app, environ: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
        """Run a README line under sh (/srv/app replaced); it must exit 0."""
        res = subprocess.run(["sh", "-c", line.replace(SRV, str(app))], cwd=cwd,
                             env=env if environ is None else environ, capture_output=True,
                             text=True, timeout=180, check=False)
        assert res.returncode == 0, f"{line!r} exited {res.returncode}:\n" \
                                    f"{res.stdout}{res.stderr}"
        return res

    # 1. Install: the venv and pip are stood in for (see the docstring); `mkdir tasks` runs.
    install = blocks["install"]
    for part in ("python3 -m venv .venv", ".venv/bin/pip install", "mkdir tasks"):
        _replace(install, part, part, "install block")
    venv_bin = app / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    write_script(venv_bin, "cronqueue",
                 f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cronqueue "$@"\n', 0o755)
    for line in _lines(install):
        if line.startswith("mkdir"):
            sh(line)
    assert task_dir.is_dir()

    # 2. The account (MariaDB), cronqueue.toml, init-db.
    url = db_url
    if account is not None:
        user, password = account
        base = make_url(db_url)
        name = base.database
        assert name
        sql = _replace(blocks["sql"], "'cq'@", f"'{user}'@", "SQL block")
        sql = _replace(sql, "'secret'", f"'{password}'", "SQL block")
        sql = _replace(sql, "DATABASE app ", f"DATABASE {name} ", "SQL block")
        sql = _replace(sql, " app.*", f" {name}.*", "SQL block")
        admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE {name}"))  # the fixture's, empty: re-made
                statements = [s.strip() for s in re.sub(r"--[^\n]*", "", sql).split(";")]
                for statement in filter(None, statements):
                    conn.execute(text(statement))
        finally:
            admin.dispose()
        url = base.set(username=user, password=password).render_as_string(hide_password=False)
    toml = blocks["toml"]
    toml = re.sub(r'^db_url\s*=\s*"[^"]*"', f'db_url   = "{url}"', toml, count=1, flags=re.M)
    assert f'"{url}"' in toml, f"README.md's cronqueue.toml has no db_url line:\n{toml}"
    toml = _replace(toml, '"tasks"', f'"{task_dir}"', "cronqueue.toml")
    toml = _replace(toml, '"logs"', f'"{log_dir}"', "cronqueue.toml")
    config = app / "cronqueue.toml"
    config.write_text(toml, encoding="utf-8")
    config.chmod(0o600)
    [init_db] = _lines(blocks["init_db"])
    assert "cronqueue init-db" in init_db, blocks["init_db"]
    assert "initialized" in sh(init_db).stdout

    # 3. The task scripts, then `check`.
    write_script(task_dir, "send_mail.py", blocks["task_script"])
    write_script(task_dir, "report.py", "import sys\nfrom cronqueue.task import args\n\n"
                 "print(f\"report for {args()['day']}\")\nsys.exit(0)\n")
    check_line = re.search(r"Then `(\.venv/bin/cronqueue check)`", section)
    assert check_line, "step 3 no longer runs `.venv/bin/cronqueue check`"
    checked = sh(check_line.group(1))
    assert "FAIL" not in checked.stdout, checked.stdout

    # 4. Enqueue from Python, from another working directory: config_file= finds the file.
    snippet = _replace(blocks["enqueue"], f'"{SRV}/cronqueue.toml"', repr(str(config)),
                       "Python snippet")
    enqueued = subprocess.run([sys.executable, "-c", snippet + "\nprint(task_id)\n"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = int(enqueued.stdout)
    [info] = blocks["enqueue_log"].strip().splitlines()
    readme_url = re.search(r"database (\S+) \(from config file\)", info)
    assert readme_url, info
    expected = info.replace(SRV, str(app)).replace(readme_url.group(1), redact(url))
    assert expected in enqueued.stderr.splitlines(), (expected, enqueued.stderr)
    ids = [task_id]

    php = shutil.which("php")
    if php is not None:
        script = tmp_path / "enqueue.php"
        modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=60,
                                 check=False).stdout.split()
        if account is not None and "pdo_mysql" in modules:
            base = make_url(url)
            body = _replace(blocks["php"], "host=127.0.0.1;dbname=app;",
                            f"host={base.host};port={base.port or 3306};dbname={base.database};",
                            "PHP snippet")
            body = _replace(body, "'cq', 'secret'", f"'{account[0]}', '{account[1]}'",
                            "PHP snippet")
            script.write_text(body, encoding="utf-8")
            ran = subprocess.run([php, str(script)], capture_output=True, text=True,
                                 timeout=60, env=env, check=False)
            assert ran.returncode == 0, ran.stdout + ran.stderr
            ids.append(int(ran.stdout))
        else:
            script.write_text(blocks["php"], encoding="utf-8")
            linted = subprocess.run([php, "-l", str(script)], capture_output=True, text=True,
                                    timeout=60, check=False)
            assert linted.returncode == 0, linted.stdout + linted.stderr

    # 5. The crontab line: printed as the README shows it, its command run as cron would.
    crontab_cmd = re.search(r"; (\.venv/bin/cronqueue crontab) \) \| crontab -",
                            blocks["crontab_install"])
    assert crontab_cmd, blocks["crontab_install"]
    printed = sh(crontab_cmd.group(1)).stdout
    [readme_line] = blocks["crontab_line"].strip().splitlines()
    installed = Path(sys.executable).parent / "cronqueue"  # what `cronqueue crontab` names
    exe = shlex.quote(str(installed)) if installed.exists() else \
        f"{shlex.quote(sys.executable)} -m cronqueue"
    expected_line = _replace(readme_line, f"{SRV}/.venv/bin/cronqueue", exe, "crontab line")
    assert printed == expected_line.replace(SRV, str(app)) + "\n", (printed, expected_line)
    schedule, command = printed.split(None, 5)[:5], printed.split(None, 5)[5]
    assert schedule == ["*"] * 5, printed
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh",
                "LANG": "C.UTF-8"}
    queue = Queue(url, task_dir=str(task_dir), log_dir=str(log_dir))
    try:
        sh(command.strip(), cwd=tmp_path, environ=cron_env)

        def done() -> bool:
            return all((t := queue.get(i)) is not None and t.status is Status.DONE
                       for i in ids)

        def logs_so_far() -> str:
            return "\n".join(f"{p.name}:\n{p.read_text()}" for p in sorted(log_dir.glob("*.log")))

        wait_until(done, 90, lambda: f"tasks {ids} done; {logs_so_far()}")
        outs = {i: (t.output, t.priority) for i in ids if (t := queue.get(i)) is not None}
        assert outs[task_id] == ("mail to ann@example.com: Welcome\n", 0), outs
        if len(ids) == 2:  # the PHP snippet's row
            assert outs[ids[1]] == ("mail to bob@example.com: Hi\n", 5), outs

        # 6. Watch it work.
        watch = _lines(blocks["watch"])
        outputs: dict[str, str] = {}
        for line in watch:
            command_only = line.split("#")[0].strip()
            verb = command_only.split()[1] if command_only.startswith(".venv/") else \
                command_only.split()[0]
            if verb == "web":
                port = _free_port()
                procs.start(["sh", "-c", f"cd {shlex.quote(str(app))} && exec {command_only}"
                             f" --port {port}"], log=tmp_path / "web.log")
                home = f"http://127.0.0.1:{port}/"
                page = wait_until(functools.partial(_get, home), 60,
                                  lambda: (tmp_path / "web.log").read_text())
                assert "cronqueue" in page.lower(), page
                outputs[verb] = page
                continue
            if verb == "status":
                command_only = re.sub(r" status 1 ", f" status {task_id} ", command_only)
            outputs[verb] = sh(command_only).stdout
        assert set(outputs) >= {"status", "list", "schedule", "workers", "tail", "web"}, \
            f"the watch block's commands changed: {watch}"
        assert "done" in outputs["status"], outputs["status"]
        assert re.search(rf"^\s*{task_id}\s.*send_mail\.py", outputs["list"], re.M), \
            outputs["list"]
        for word in ("drain", "nightly-report", "Europe/Berlin"):
            assert word in outputs["schedule"], outputs["schedule"]
        logs = outputs["tail"]
        for sample in blocks["watch_log"].strip().splitlines():  # its fields, bar the varying
            message = sample.split("]: ", 1)[1]
            pattern = " ".join(
                rf"{t.split('=')[0]}=\S+" if t.split("=")[0] in VARYING else re.escape(t)
                for t in message.split(" "))
            assert re.search(pattern, logs), (sample, logs)

        # Time zones: the dry runs fire nightly-report at 03:00 Berlin.
        nows = re.findall(r"`mission --dry-run --now (\S+)`|as does `--now (\S+)`", section)
        times = [a or b for a, b in nows]
        assert len(times) == 2, f"the time-zone paragraph's --now examples: {nows}"
        for when in times:
            fired = sh(f".venv/bin/cronqueue mission --dry-run --now {when}").stdout
            assert re.search(r"nightly-report.*would fire|would fire.*nightly-report", fired), \
                (when, fired)

        # When a tick seems to do nothing: the commands that read (and stop the shards).
        tick = section[section.index("### When a tick seems to do nothing"):]
        wanted = ["cronqueue check", "cronqueue mission --dry-run", "cronqueue migrate --status",
                  "cronqueue schedule", "cronqueue workers stop --entry drain"]
        quoted = set(re.findall(r"`(cronqueue [^`]+)`", tick))
        missing = [w for w in wanted if w not in quoted]
        assert not missing, f"'When a tick seems to do nothing' no longer shows {missing}"
        for line in wanted:
            sh(".venv/bin/" + line)
        wait_until(lambda: not [w for w in queue.workers() if w.alive], 60,
                   "the shards stopped by `workers stop --entry drain`")
    finally:
        if any(w.alive for w in queue.workers()):
            queue.stop_workers()
            wait_until(lambda: not [w for w in queue.workers() if w.alive], 60,
                       "every shard stopped")
        queue.close()


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""
