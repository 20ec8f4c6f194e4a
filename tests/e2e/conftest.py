"""The end-to-end tests' browser: Debian's ``chromium``, headless, driven by Selenium through
``chromedriver`` of the same build (package chromium-driver; ``.ci/run`` installs both).

Without them the tests FAIL under CI (``CI`` set, as ``.ci/run`` runs): a missing browser must
not turn the dashboard's end-to-end test into a skip nobody reads. On a developer's machine
without chromium (``CI`` unset) they skip, saying what to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

INSTALL = "apt-get install chromium chromium-driver, and pip install -e '.[e2e]'"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI: {what} is missing ({INSTALL})", pytrace=False)
    pytest.skip(f"{what} is missing ({INSTALL}); CI fails instead of skipping")


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                   else None)
    if found is None:
        _missing(name)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (1280x900) whose console is readable with ``get_log("browser")``."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the Python package selenium")
    chromium, chromedriver = _binary("chromium"), _binary("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path is given: Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
