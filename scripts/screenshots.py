#!/usr/bin/env python3
"""Screenshots of every page of the dashboard, for the README and docs/web.md.

    .venv/bin/python scripts/screenshots.py [--out docs/images] [--keep]

Needs the ``web`` and ``e2e`` extras (``pip install -e '.[dev]'``) and Debian's ``chromium``
and ``chromium-driver``. In a temporary directory it runs ``cronqueue demo`` (its 35 tasks run
by real shards, its mission ticks), then adds what the demo leaves out: three hours of finished
tasks back-filled (so the per-minute chart has a shape; their times are written directly),
pending tasks in a second queue, delayed and cancelled ones, and one long task that a real
``cronqueue work`` shard is running. It serves that with ``cronqueue web`` configured with one
user, signs in through the login form, and saves each page at 1280 px wide, as tall as the page
(at most 1200 px): login, overview, tasks, task, failed, delayed, schedule, workers. It fails if
a page logs a browser console error (the missing favicon aside).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from sqlalchemy import bindparam, select

from cronqueue.config import load_config
from cronqueue.config.web import hash_password
from cronqueue.model import Status
from cronqueue.queue import Queue
from cronqueue.store.schema import queue_table, workers_table

ROOT = Path(__file__).resolve().parents[1]
WIDTH, MIN_HEIGHT, MAX_HEIGHT = 1280, 720, 1200
USER = "ops"
PAGES = ["overview", "tasks", "task", "failed", "delayed", "schedule", "workers"]

REPORT = """\
import sys
import time

from cronqueue.task import args

p = args()
for step in range(int(p.get("seconds", 1))):
    print(f"{p.get('report', 'report')}: step {step + 1}", flush=True)
    time.sleep(1)
print("report written")
"""


def cronqueue(*args: str) -> list[str]:
    return [sys.executable, "-m", "cronqueue", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"screenshots: not within {timeout:g} s: {what}")


def backfill(q: Queue, now: datetime, hours: int = 3, seed: int = 11) -> None:
    """Finished tasks over the last ``hours``, a busy morning's shape: added as tasks, then
    their outcome and times written as a shard would have (status, attempts, times, exit code,
    output)."""
    rng = random.Random(seed)
    spans: list[tuple[datetime, bool]] = []
    for minute in range(hours * 60, 1, -1):
        at = now.replace(second=0, microsecond=0) - timedelta(minutes=minute)
        wave = 4 + 3 * ((minute // 20) % 3) + rng.randint(0, 4)
        spans += [(at + timedelta(seconds=rng.randint(0, 59)), rng.random() < 0.04)
                  for _ in range(wave)]
    ids = q.add_many({"taskscript": "send_msg.py", "priority": rng.choice([0, 0, 5]),
                      "param": {"sender": rng.randint(1, 99),
                                "receivers": rng.sample(range(100, 999), rng.randint(1, 3)),
                                "content": f"Newsletter #{n + 1}"}}
                     for n in range(len(spans)))
    rows = []
    for task_id, (finished, failed) in zip(ids, spans, strict=True):
        started = finished - timedelta(milliseconds=rng.randint(40, 900))
        rows.append({
            "b_id": task_id, "status": int(Status.FAILED if failed else Status.DONE),
            "attempts": 3 if failed else 1, "ctime": started - timedelta(seconds=5),
            "run_at": started - timedelta(seconds=5), "started_at": started,
            "finished_at": finished, "exit_code": 3 if failed else 0,
            "error": "ProcessExitError: exit status 3" if failed else None,
            "output": "send_msg: unknown receiver uid -1\n" if failed else "sent 1 message(s)\n",
        })
    update = queue_table.update().where(queue_table.c.id == bindparam("b_id")).values(
        {name: bindparam(name) for name in rows[0] if name != "b_id"})
    with q.engine.begin() as conn:
        conn.execute(update, rows)


def build(base: Path) -> tuple[Path, Queue, dict[str, int]]:
    """The demo's directory and database, with the extra tasks; ids of the pages' tasks."""
    demo = subprocess.run(cronqueue("demo", "--dir", str(base)), capture_output=True,
                          text=True, timeout=300, check=False)
    if demo.returncode != 0:
        raise SystemExit(f"screenshots: cronqueue demo failed:\n{demo.stdout}{demo.stderr}")
    config = base / "cronqueue.toml"
    (base / "tasks" / "build_report.py").write_text(REPORT)
    q = Queue(config=load_config(config))
    now = datetime.now(UTC)
    backfill(q, now)
    q.add_many([{"taskscript": "build_report.py", "queue": "reports", "priority": p,
                 "param": {"report": name, "day": (now - timedelta(days=1)).date().isoformat()}}
                for name, p in (("sales", 5), ("stock", 0), ("returns", 0), ("churn", -1))])
    for delay, name in ((20 * 60, "reminder"), (3600, "invoice run"), (3 * 3600, "digest")):
        q.add("send_msg.py", {"sender": 1, "receivers": [42, 43], "content": name},
              delay=delay, queue="reports" if name == "invoice run" else "default")
    q.cancel(q.add("send_msg.py", {"sender": 7, "receivers": [8], "content": "never mind"}))
    running = q.add("build_report.py", {"report": "yearly", "seconds": 600}, queue="batch",
                    timeout=900)
    with q.engine.connect() as conn:
        flaky = conn.execute(select(queue_table.c.id).where(
            queue_table.c.taskscript == "flaky.sh").order_by(queue_table.c.id)).scalar()
    assert flaky is not None
    return config, q, {"running": running, "task": int(flaky)}


def browser() -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", f"--window-size={WIDTH},{MIN_HEIGHT}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver), options=options)


def shoot(driver: Any, url: str, out: Path) -> None:
    driver.get(url)
    errors = [e["message"] for e in driver.get_log("browser")
              if e["level"] == "SEVERE" and "/favicon.ico" not in e["message"]]
    if errors:
        raise SystemExit(f"screenshots: {url} logged console errors: {errors}")
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": max(MIN_HEIGHT, min(height, MAX_HEIGHT)),
        "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(str(out))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"  {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images",
                        help="where the PNGs go (default docs/images)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary demo directory (its path is printed)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="cronqueue-screens-"))
    password = secrets.token_urlsafe(18)
    started: list[subprocess.Popen[bytes]] = []
    q: Queue | None = None
    driver: Any = None
    try:
        print(f"demo data in {base}")
        config, q, ids = build(base)
        shard_log = open(base / "shard.log", "wb")  # noqa: SIM115 (the shard's for its life)
        started.append(subprocess.Popen(
            cronqueue("work", "--config", str(config), "--total", "1", "--shard", "0",
                      "--queue", "batch", "--max-seconds", "900"),
            cwd=base, stdin=subprocess.DEVNULL, stdout=shard_log, stderr=subprocess.STDOUT))
        shard_log.close()
        running = ids["running"]

        def shard_on_it() -> bool:  # its heartbeat names the task (every worker.heartbeat s)
            with q.engine.connect() as conn:
                return conn.execute(select(workers_table.c.id).where(
                    workers_table.c.current_task == running)).first() is not None

        wait_for("the shard's heartbeat naming the long task", shard_on_it)
        with config.open("a") as fh:
            fh.write(f'\n[[web.user]]\nname = "{USER}"\n'
                     f'password_hash = "{hash_password(password)}"\nrole = "admin"\n')
        port = free_port()
        web_log = open(base / "web.log", "wb")  # noqa: SIM115
        started.append(subprocess.Popen(
            cronqueue("web", "--config", str(config), "--port", str(port)), cwd=base,
            stdin=subprocess.DEVNULL, stdout=web_log, stderr=subprocess.STDOUT))
        web_log.close()
        site = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(site + "/login", timeout=2) as r:  # noqa: S310
                    return bool(r.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for("cronqueue web answering", answers)
        driver = browser()
        print(f"saving to {out}:")
        shoot(driver, site + "/", out / "login.png")  # redirected to the login form
        driver.find_element(By.NAME, "name").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
        wait_for("signed in", lambda: driver.title.startswith("Overview"))
        paths = {"overview": "/", "tasks": "/tasks", "task": f"/tasks/{ids['task']}",
                 "failed": "/failed", "delayed": "/delayed", "schedule": "/schedule",
                 "workers": "/workers"}
        for name in PAGES:
            shoot(driver, site + paths[name], out / f"{name}.png")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        for proc in reversed(started):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if q is not None:
            q.close()
        if args.keep:
            print(f"kept {base}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(base)


if __name__ == "__main__":
    sys.exit(main())
