"""``store/browse.py``: keyset pages see every matching row exactly once, also when a page's
window (``SCAN`` rows) ends before a page is full; counts stop at their cap."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from cronqueue import Queue
from cronqueue.model import Status
from cronqueue.store import browse
from cronqueue.store.browse import Browse, TaskFilter
from cronqueue.store.schema import queue_table as q


def _walk(b: Browse, f: TaskFilter, q_: Queue, limit: int) -> tuple[list[int], int]:
    seen: list[int] = []
    after = None
    pages = 0
    while True:
        page = b.tasks(f, q_.clock(), after=after, limit=limit)
        pages += 1
        assert len(page.tasks) <= limit
        seen += [t.id for t in page.tasks]
        if page.after is None:
            return seen, pages
        assert page.after < (after or 2**63)
        after = page.after


@pytest.fixture
def rows(queue: Queue) -> dict[str, set[int]]:
    ids = queue.add_many([{"taskscript": "a.py", "param": {"i": i, "tag": "x" if i % 7 else "y"},
                           "queue": "q1" if i % 3 else "q2"} for i in range(60)])
    failed = set(ids[5:8])
    with queue.engine.begin() as conn:
        conn.execute(update(q).where(q.c.id.in_(failed)).values(status=int(Status.FAILED)))
    return {"all": set(ids), "failed": failed,
            "y": {i for n, i in enumerate(ids) if n % 7 == 0},
            "q2": {i for n, i in enumerate(ids) if n % 3 == 0}}


@pytest.mark.parametrize("scan", [7, 25, 1000])
@pytest.mark.parametrize("limit", [1, 4, 50])
def test_every_row_exactly_once(queue: Queue, rows: dict[str, set[int]], scan: int, limit: int,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browse, "SCAN", scan)
    b = Browse(queue.engine)
    for f, expected in (
            (TaskFilter(), rows["all"]),
            (TaskFilter(status=int(Status.FAILED)), rows["failed"]),
            (TaskFilter(status=int(Status.PENDING)), rows["all"] - rows["failed"]),
            (TaskFilter(param='"tag":"y"'), rows["y"]),
            (TaskFilter(queue="q2", status=int(Status.PENDING)), rows["q2"] - rows["failed"]),
            (TaskFilter(queue="q2"), rows["q2"]),
            (TaskFilter(script="nope.py"), set()),
    ):
        seen, pages = _walk(b, f, queue, limit)
        assert len(seen) == len(set(seen)), f"{f}: a row twice"
        assert set(seen) == expected, f
        assert seen == sorted(seen, reverse=True)
        assert pages <= len(expected) // limit + len(rows["all"]) // scan + 2


def test_matching_ids_stops_at_the_cap(queue: Queue, rows: dict[str, set[int]],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browse, "SCAN", 10)
    b = Browse(queue.engine)
    found, more = b.matching_ids(TaskFilter(param='"tag":"y"'), queue.clock(), cap=3)
    assert found == sorted(rows["y"], reverse=True)[:3] and more
    found, more = b.matching_ids(TaskFilter(param='"tag":"y"'), queue.clock(), cap=100,
                                 max_windows=100)
    assert set(found) == rows["y"] and not more


def test_counts_stop_at_their_cap(queue: Queue, rows: dict[str, set[int]]) -> None:
    b = Browse(queue.engine)
    overview = b.overview(queue.clock(), cap=10)
    q1 = overview.counts["q1"][int(Status.PENDING)]
    assert q1.capped and q1.value == 10 and str(q1) == "10+"
    failed = overview.counts["q1"][int(Status.FAILED)]
    assert not failed.capped and str(failed) == "2"
    exact = b.overview(queue.clock())
    assert sum(c.value for per in exact.counts.values() for c in per.values()) == 60
    assert set(exact.oldest_due) == {"q1", "q2"}


def test_per_minute(queue: Queue) -> None:
    now = queue.clock()
    ids = queue.add_many([("a.py", None)] * 5)
    with queue.engine.begin() as conn:
        for n, task_id in enumerate(ids):
            conn.execute(update(q).where(q.c.id == task_id).values(
                status=int(Status.FAILED if n == 4 else Status.DONE),
                finished_at=now - timedelta(minutes=n // 2)))
    minute = now.replace(second=0, microsecond=0)
    found = Browse(queue.engine).finished_per_minute(now - timedelta(hours=1))
    key = minute.strftime("%Y-%m-%d %H:%M")
    earlier = (minute - timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M")
    assert found[(key, int(Status.DONE))] == 2
    assert found[(earlier, int(Status.FAILED))] == 1
    assert sum(found.values()) == 5


def test_the_chart_counts_at_most_fill_new_minutes_per_page(
        queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    from cronqueue.web import chart
    from cronqueue.web.chart import PerMinute

    few = PerMinute(Browse(queue.engine), fill=10).chart(queue.clock(), 1)
    assert few.uncounted == 0  # few rows: every minute at once
    monkeypatch.setattr(chart, "ROWS", 0)  # any row is "many" from here on

    now = queue.clock()
    ids = queue.add_many([("a.py", None)] * 4)
    with queue.engine.begin() as conn:
        for task_id, status, minutes in zip(ids, (Status.DONE, Status.FAILED, Status.CANCELLED,
                                                   Status.DONE), (0, 7, 7, 40), strict=True):
            conn.execute(update(q).where(q.c.id == task_id).values(
                status=int(status), finished_at=now - timedelta(minutes=minutes)))
    per = PerMinute(Browse(queue.engine), fill=10)
    first = per.chart(now, 1)
    assert first.uncounted == 50 and (first.total_done, first.total_failed) == (1, 1)
    assert len(first.done_points.split()) == 10
    second = per.chart(now, 1)
    assert second.uncounted == 41  # 10 more, less the current minute counted again
    for _ in range(5):
        last = per.chart(now, 1)
    assert last.uncounted == 0 and (last.total_done, last.total_failed) == (2, 1)
    assert len(last.done_points.split()) == 60
