"""The dashboard end to end, in a real headless Chromium: ``cronqueue web`` and ``cronqueue
work`` as real processes on a real database (SQLite and MariaDB), the pages read and the forms
sent by the browser itself (its CSRF field, its same-origin POST).

The path an operator takes: the overview shows the queues; the task list filtered by status and
by queue; one task; on the Failed page a forged CSRF token refused, then the real retry; a shard
runs the task while its page follows it (the vendored poller), its output as it prints it, until
it shows it done. Along the way the browser's console must hold no error (no inline script or
style blocked by the CSP), an inline script injected on purpose must be blocked and reported (so
the console is read and the policy enforced), and the XSS payloads in a param and in a task's
output must show as text and never run.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cronqueue import Queue, Status
from cronqueue.config import load_config
from tests.conftest import get_task
from tests.helpers import Procs, cronqueue_cmd, wait_until, write_script

pytestmark = pytest.mark.slow  # a browser, a server and shards: ~10 s a backend

# The task script: says what its param asks, fails until the operator "fixed" the cause (a
# file), then waits for the test's go (a file) before it succeeds — so the test can open its
# page while it runs.
JOB = """\
import sys
import time
from pathlib import Path

from cronqueue.task import args

p = args()
print(p.get("say", "working"))
if p.get("fixed") and not Path(p["fixed"]).exists():
    print("mail server unreachable", file=sys.stderr)
    sys.exit(1)
if p.get("release"):
    print("waiting for the release", flush=True)  # a pipe: flushed, so the page can follow it
    end = time.monotonic() + 60
    while not Path(p["release"]).exists() and time.monotonic() < end:
        time.sleep(0.05)
print("sent")
"""

XSS_PARAM = {
    "say": "<script>document.title='xss-param'</script>",
    "img": "\"><img src=x onerror=\"document.title='xss-img'\">",
    "link": "javascript:document.title='xss-link'",
}
XSS_OUTPUT = ("<img src=x onerror=\"document.body.setAttribute('data-xss','output')\">"
              "<script>document.title='xss-output'</script>")
# An inline script put on the page by the test itself: the CSP must block it and say so.
INJECT = ("var s = document.createElement('script');"
          "s.textContent = \"document.title = 'inline-ran'\";"
          "document.body.appendChild(s);")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Site:
    """The server under test, the browser, and what the console said."""

    url: str
    driver: Any
    log: Path
    queue: Queue  # the test's own view of the database
    console: list[dict[str, Any]] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)
        self.read_console()

    def read_console(self) -> list[dict[str, Any]]:
        """The console entries since the last read (the browser forgets them once read)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        self.console += entries
        return entries

    def text(self) -> str:
        return str(self.driver.find_element("tag name", "body").text)

    def css(self, selector: str) -> Any:
        return self.driver.find_element("css selector", selector)

    def all(self, selector: str) -> list[Any]:
        return list(self.driver.find_elements("css selector", selector))

    def listed_ids(self) -> list[int]:
        return [int(a.text) for a in self.all("table.tasks tbody td a")]

    def wait(self, condition: Any, what: str, timeout: float = 30) -> Any:
        """Poll ``condition`` in the page; a page being replaced meanwhile (an element gone
        stale or not there yet) is a "not yet"."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,
        )

        def check() -> Any:
            try:
                return condition()
            except (StaleElementReferenceException, NoSuchElementException):
                return None
            except WebDriverException as exc:
                # Chromium reports a node replaced between lookup and read as an "unknown
                # error" rather than a stale element; it is the same "not yet".
                if "does not belong to the document" in str(exc.msg):
                    return None
                raise

        return wait_until(check, timeout,
                          lambda: f"{what}; page {self.driver.current_url}:\n{self.text()}"
                                  f"\nserver log:\n{self.log.read_text()[-3000:]}")


@pytest.fixture
def site(db_url: str, tmp_path: Path, browser: Any, procs: Procs) -> Iterator[Site]:
    """``cronqueue web`` on a free port, on the test's database, tables created."""
    config = tmp_path / "cronqueue.toml"
    config.write_text(f'db_url = "{db_url}"\ntask_dir = "tasks"\nlog_dir = "logs"\n'
                      "[worker]\nmax_attempts = 1\nheartbeat = 0.5\n")
    (tmp_path / "tasks").mkdir()
    write_script(tmp_path / "tasks", "job.py", JOB)
    init = subprocess.run(cronqueue_cmd("init-db", "--config", str(config)),
                          capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, init.stderr
    port = _free_port()
    log = tmp_path / "web.log"
    procs.start(cronqueue_cmd("web", "--config", str(config), "--port", str(port)), log=log,
                cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(answers, 30, lambda: f"cronqueue web answering: {log.read_text()}")
    browser.get_log("browser")  # a previous test's entries
    q = Queue(config=load_config(config))
    try:
        yield Site(url, browser, log, q)
    finally:
        q.close()


def test_the_operator_path_in_chromium(site: Site, tmp_path: Path, procs: Procs) -> None:
    config, tasks, q = tmp_path / "cronqueue.toml", tmp_path / "tasks", site.queue
    done = q.add("job.py", {"say": "hello"})
    failing = q.add("job.py", {"fixed": "fixed.flag", "release": "release.flag"}, priority=5)
    xss = q.add("job.py", XSS_PARAM)
    # A task whose output carries markup, as a script printing what it was given would.
    write_script(tasks, "echo.py", f"print({XSS_OUTPUT!r})\n")
    echoed = q.add("echo.py")
    pending = q.add("job.py", {"say": "later"}, queue="reports")
    delayed = q.add("job.py", {"say": "in an hour"}, delay=3600)
    first = subprocess.run(
        cronqueue_cmd("work", "--config", str(config), "--total", "1", "--shard", "0",
                      "--queue", "default"),
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert first.returncode in (0, 1), first.stderr
    states = {i: get_task(q, i).status for i in (done, failing, xss, echoed, pending, delayed)}
    assert states == {done: Status.DONE, failing: Status.FAILED, xss: Status.DONE,
                      echoed: Status.DONE, pending: Status.PENDING, delayed: Status.PENDING}

    # The overview: both queues, and their counts link to the filtered lists.
    site.open("/")
    assert site.driver.title == "Overview · cronqueue"
    queues = [a.text for a in site.all("table.counts tbody td:first-child a")]
    assert queues == ["default", "reports"]
    assert "reachable" in site.text()

    # Tasks, filtered by status through the form, then by queue.
    site.css("nav a[href='/tasks']").click()
    assert sorted(site.listed_ids()) == sorted([done, failing, xss, echoed, pending, delayed])
    from selenium.webdriver.support.ui import Select

    Select(site.css("form.filters select[name=status]")).select_by_value("failed")
    site.css("form.filters button[type=submit]").click()
    site.wait(lambda: "status=failed" in site.driver.current_url, "the filtered list")
    assert site.listed_ids() == [failing]
    Select(site.css("form.filters select[name=status]")).select_by_value("")
    site.css("form.filters input[name=queue]").send_keys("reports")
    site.css("form.filters button[type=submit]").click()
    site.wait(lambda: "queue=reports" in site.driver.current_url, "the queue filter")
    assert site.listed_ids() == [pending]
    site.read_console()

    # One task, opened from the list.
    site.open("/tasks?status=failed")
    site.css(f"table.tasks a[href='/tasks/{failing}']").click()
    site.wait(lambda: site.driver.title.startswith(f"Task {failing}"), "the task page")
    assert site.css("#live-status").text == "failed"
    assert "exit status 1" in site.css("#live-error").text
    assert "mail server unreachable" in site.css("#live-output").text
    site.read_console()

    # XSS: the payloads show as text on the list and on their pages, and nothing ran.
    for path in ("/tasks", f"/tasks/{xss}", f"/tasks/{echoed}"):
        site.open(path)
        _nothing_ran(site)
    site.open(f"/tasks/{xss}")
    assert XSS_PARAM["say"] in site.css("pre.param").text
    site.open(f"/tasks/{echoed}")
    assert XSS_OUTPUT in site.css("#live-output").text

    # The policy is enforced and the console is read: an inline script is blocked, reported.
    site.driver.execute_script(INJECT)
    blocked = site.wait(lambda: [e for e in site.read_console()
                                 if "Content Security Policy" in e["message"]],
                        "the CSP violation of the injected inline script", timeout=10)
    assert "inline" in blocked[0]["message"] and site.driver.title != "inline-ran"
    site.console = [e for e in site.console if e not in blocked]

    # Failed: a forged CSRF token is refused, the task stays failed.
    site.open("/")
    site.css("nav a[href='/failed']").click()
    site.wait(lambda: site.driver.title.startswith("Failed"), "the Failed page")
    assert site.listed_ids() == [failing]
    site.driver.execute_script(
        "document.querySelector('#selected input[name=csrf]').value = 'forged';")
    site.css(f"#selected input[name=id][value='{failing}']").click()
    site.css("#selected button[formaction$='/actions/retry']").click()
    site.wait(lambda: "refused" in site.text(), "the refusal of a forged CSRF token")
    assert "wrong CSRF token" in site.text()
    assert get_task(q, failing).status == Status.FAILED
    # (the refusal's 403 is on the console as a failed resource load: expected here)
    site.read_console()
    site.console = [e for e in site.console
                    if not ("/actions/retry" in e["message"] and "status of 403" in e["message"])]

    # The cause fixed, the real retry: the page's own form, token and same-origin POST.
    (tasks / "fixed.flag").write_text("")
    site.open("/failed")
    site.css(f"#selected input[name=id][value='{failing}']").click()
    site.css("#selected button[formaction$='/actions/retry']").click()
    site.wait(lambda: "Retry: 1 of 1 task(s) done" in site.text(), "the retry's message")
    assert site.listed_ids() == []
    retried = get_task(q, failing)
    assert retried.status == Status.PENDING and retried.attempts == 0
    assert f"action=retry user=local role=admin via=local from=127.0.0.1 ids={failing}" \
        in site.log.read_text()

    # A shard runs it; its page, opened while it runs, follows it until it is done.
    shard = procs.start(cronqueue_cmd("work", "--config", str(config), "--total", "1",
                                      "--shard", "0", "--queue", "default"),
                        log=tmp_path / "shard.log", cwd=tmp_path)
    wait_until(lambda: get_task(q, failing).status == Status.RUNNING, 60,
               lambda: f"task {failing} running: {(tmp_path / 'shard.log').read_text()}")
    site.open(f"/tasks/{failing}")
    assert site.css("#live-status").text == "running"
    assert site.all("#follow") and site.all("script[src$='/static/follow.js']")
    # what it printed so far, written to its row by the shard's heartbeat, read by the poller
    site.wait(lambda: "waiting for the release" in site.css("#live-output").text,
              "the running task's output on its page")
    assert site.css("#live-status").text == "running"
    assert "mail server unreachable" not in site.css("#live-output").text  # the failed run's
    (tasks / "release.flag").write_text("")
    site.wait(lambda: not site.all("#follow") and site.css("#live-status").text == "done",
              "the page following the task to done")
    assert site.css("#live-exit").text == "0"
    assert "sent" in site.css("#live-output").text
    assert shard.wait(60) == 0
    assert get_task(q, failing).status == Status.DONE

    # Every page visited, and none logged an error (favicon.ico aside: the app has none).
    site.read_console()
    errors = [e for e in site.console
              if (e["level"] == "SEVERE" and "/favicon.ico" not in e["message"])
              or "Content Security Policy" in e["message"]]
    assert errors == [], errors


def _nothing_ran(site: Site) -> None:
    """No payload ran and none became markup: the title is the page's own, no image or
    ``javascript:`` link was made, no attribute was set, the only scripts are the app's."""
    d = site.driver
    assert "xss" not in d.title and "inline" not in d.title
    found = d.execute_script(
        "return [document.images.length,"
        " document.querySelectorAll('a[href^=\"javascript:\" i]').length,"
        " document.body.getAttribute('data-xss'),"
        " Array.from(document.scripts).filter(s => !s.src.endsWith('/static/follow.js'))"
        "   .length];")
    assert found == [0, 0, None, 0], (d.current_url, found)
    assert "<script>" in site.text()  # shown, as text
