"""Fixtures shared by the integration tests: a Queue whose clock the test controls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cronqueue import Queue
from tests.conftest import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cq(db_url: str, task_dir: Path, log_dir: Path, clock: Clock) -> Iterator[Queue]:
    """A Queue on a fresh database whose clock is ``clock``."""
    q = Queue(db_url, task_dir=str(task_dir), log_dir=str(log_dir), clock=clock)
    q.init_db()
    yield q
    q.close()
