"""The ledger's rules without a database: what each group commit holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cronqueue.shard import ledger as ledger_module
from cronqueue.shard.ledger import Ledger
from cronqueue.store.outcomes import Finish, Flush, Flushed
from tests.unit.test_runner import make_task

NOW = datetime(2026, 11, 23, tzinfo=UTC)


class FakeDb:
    """Holds every row of the claim unless told otherwise; records each flush."""

    def __init__(self, lost: set[int] | None = None, down: bool = False) -> None:
        self.flushes: list[Flush] = []
        self.lost = lost or set()
        self.down = down

    def write(self, flush: Flush) -> Flushed:
        self.flushes.append(flush)
        held = lambda i: i not in self.lost  # noqa: E731
        return Flushed({f.task_id for f in flush.finishes if held(f.task_id)},
                       {i for i in flush.mark if held(i)},
                       len([i for i in flush.unmark if held(i)]))

    def try_write(self, flush: Flush) -> Flushed | None:
        return None if self.down else self.write(flush)


def ledger(db: FakeDb, tasks: list, window: int = 3, interval: float = 600.0,
           lost: list[Finish] | None = None) -> Ledger:
    return Ledger("tok", tasks, window=window, interval=interval,
                  careful=lambda t: t.attempts > 0 or t.max_attempts == 1,
                  write=db.write, try_write=db.try_write, clock=lambda: NOW,
                  lease_until=lambda now: now + timedelta(seconds=60),
                  on_lost=(lost if lost is not None else []).append,
                  held=lambda ids: {i for i in ids if i not in db.lost})


def fresh(i: int, **kw: object) -> object:
    return replace(make_task("t.sh", task_id=i, attempts=0), **kw)  # type: ignore[arg-type]


def done(i: int) -> Finish:
    return Finish(i, "tok", {"status": 1})


def run_all(book: Ledger, tasks: list) -> None:
    for t in tasks:
        assert book.begin(t)
        book.finish(t, done(t.id))
    book.close()


def test_windows_of_fresh_tasks_share_commits() -> None:
    db = FakeDb()
    tasks = [fresh(i) for i in range(1, 8)]
    run_all(ledger(db, tasks), tasks)
    shapes = [([f.task_id for f in x.finishes], list(x.mark), list(x.unmark), x.release)
              for x in db.flushes]
    assert shapes == [([], [1, 2, 3], [], False),
                      ([1, 2, 3], [4, 5, 6], [], False),
                      ([4, 5, 6], [7], [], False),
                      ([7], [], [], True)]


def test_a_careful_task_runs_alone_with_its_start_and_outcome_committed_around_it() -> None:
    db = FakeDb()
    tasks = [fresh(1), fresh(2), fresh(3, attempts=1), fresh(4), fresh(5, max_attempts=1)]
    run_all(ledger(db, tasks), tasks)
    shapes = [([f.task_id for f in x.finishes], list(x.mark)) for x in db.flushes]
    assert shapes == [([], [1, 2]),  # the window stops before the careful task
                      ([1, 2], [3]),  # its start committed alone ...
                      ([3], [4]),  # ... its outcome before anything else starts
                      ([4], [5]),
                      ([5], [])]


def test_close_gives_back_marked_tasks_that_did_not_run() -> None:
    db = FakeDb()
    tasks = [fresh(i) for i in range(1, 6)]
    book = ledger(db, tasks)
    assert book.begin(tasks[0])
    book.finish(tasks[0], done(1))
    assert book.close() == 2  # 2 and 3 were marked, never run
    last = db.flushes[-1]
    assert [f.task_id for f in last.finishes] == [1]
    assert list(last.unmark) == [2, 3] and last.release


def test_a_row_taken_over_is_not_run_and_its_lost_outcome_is_reported() -> None:
    db = FakeDb(lost={2})
    tasks = [fresh(1), fresh(2), fresh(3)]
    lost: list[Finish] = []
    book = ledger(db, tasks, lost=lost)
    assert book.begin(tasks[0])
    assert not book.begin(tasks[1])  # rescued before it started: not ours to run
    assert len(db.flushes) == 1  # known from the window's mark: no second try to mark it
    assert book.begin(tasks[2])
    book.finish(tasks[0], done(1))
    db.lost.add(3)  # rescued while it ran
    book.finish(tasks[2], done(3))
    book.close()
    assert [f.task_id for f in lost] == [3]


def test_a_marked_task_rescued_before_its_start_is_not_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 #2: begin() of an already-marked task reads the fence (for the whole rest of
    the window); the window's first task needs no read (its mark was fenced)."""
    monkeypatch.setattr(ledger_module, "FENCE_FRESH", 0.0)  # tasks longer than the bound
    db = FakeDb()
    tasks = [fresh(i) for i in range(1, 6)]
    asked: list[list[int]] = []
    book = ledger(db, tasks, window=5)
    book.held = lambda ids: (asked.append(list(ids)), {i for i in ids if i not in db.lost})[1]
    assert book.begin(tasks[0])
    assert asked == []  # task 1 was fenced by its mark
    book.finish(tasks[0], done(1))
    assert book.begin(tasks[1])
    assert asked == [[2, 3, 4, 5]]  # the rest of the window, in one read
    db.lost |= {3, 4, 5}  # the rescue takes the window while task 2 runs
    book.finish(tasks[1], done(2))
    count = len(db.flushes)
    assert [book.begin(t) for t in tasks[2:]] == [False, False, False]
    assert asked[1:] == [[3, 4, 5]]  # nothing left marked: no more reads
    assert db.flushes[count:] == []  # nor tries to mark the taken rows again
    assert book.close() == 0
    assert list(db.flushes[-1].unmark) == []  # rescued rows are not ours to give back


def test_the_fence_is_read_at_most_once_per_freshness_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "FENCE_FRESH", 3600.0)  # every start within the bound
    db = FakeDb()
    tasks = [fresh(i) for i in range(1, 6)]
    asked: list[list[int]] = []
    book = ledger(db, tasks, window=5)
    book.held = lambda ids: (asked.append(list(ids)), {i for i in ids if i not in db.lost})[1]
    for t in tasks:
        assert book.begin(t)
        book.finish(t, done(t.id))
    assert asked == []  # the mark itself was fresh for the whole window
    book.close()


def test_overdue_outcomes_go_out_while_a_task_runs_and_survive_an_outage() -> None:
    db = FakeDb(down=True)
    tasks = [fresh(1), fresh(2)]
    book = ledger(db, tasks, interval=0.0)
    assert book.begin(tasks[0])
    book.finish(tasks[0], done(1))
    assert book.begin(tasks[1])  # overdue: written before task 2 runs
    assert [f.task_id for f in db.flushes[-1].finishes] == [1]
    book.finish(tasks[1], done(2))
    count = len(db.flushes)
    book.tick()  # the database is down: nothing written, nothing dropped
    assert len(db.flushes) == count
    db.down = False
    book.tick()
    assert [f.task_id for f in db.flushes[-1].finishes] == [2]
    book.close()
    assert not db.flushes[-1].finishes


def test_the_freshness_bound_is_a_hundredth_of_the_backoff_within_its_limits() -> None:
    assert ledger_module.fence_fresh(10.0) == pytest.approx(0.1)  # the default backoff
    assert ledger_module.fence_fresh(0.5) == ledger_module.FENCE_FRESH  # never below 20 ms
    assert ledger_module.fence_fresh(3600.0) == ledger_module.FENCE_STALEST  # nor above 0.25 s


def test_a_ledger_reads_the_fence_again_once_its_own_bound_has_passed() -> None:
    """The bound the shard passes (``fresh``) decides, not the module's floor."""
    db = FakeDb()
    tasks = [fresh(i) for i in range(1, 4)]
    asked: list[list[int]] = []
    book = ledger(db, tasks, window=3)
    book.fresh = 3600.0
    book.held = lambda ids: (asked.append(list(ids)), {i for i in ids if i not in db.lost})[1]
    assert book.begin(tasks[0])
    book.finish(tasks[0], done(1))
    assert book.begin(tasks[1])
    assert asked == []  # within the bound: the mark is still good
    book.finish(tasks[1], done(2))
    book.fresh = 0.0
    db.lost.add(3)
    assert not book.begin(tasks[2])  # past it: read, and the rescued row is not started
    assert asked == [[3]]
    book.close()
