"""docs/state_machine.md and cronqueue.states describe the same edges; the one retry decision."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronqueue import states
from cronqueue.config import WorkerConfig
from cronqueue.model import Status
from cronqueue.retry import RetryPolicy
from cronqueue.states import Attempts, Transition

DOC = Path(__file__).resolve().parents[2] / "docs" / "state_machine.md"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
_ARROW = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\s*:\s*(\w+)\s*$")


def _name(status: Status | None) -> str:
    return "[*]" if status is None else status.name.lower()


def _diagram(text: str) -> set[tuple[str, str, str]]:
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    assert "stateDiagram-v2" in block
    edges: set[tuple[str, str, str]] = set()
    for line in block.splitlines():
        if line.strip() and line.strip() != "stateDiagram-v2":
            match = _ARROW.match(line)
            assert match, f"not an edge: {line!r}"
            edges.add((match[1], match[2], match[3]))
    return edges


def _table(text: str) -> dict[str, dict[str, str]]:
    rows = [line for line in text.split("## The edges", 1)[1].splitlines()
            if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out: dict[str, dict[str, str]] = {}
    for row in rows[2:]:
        cells = dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True))
        name = cells["edge"].strip("`")
        assert name not in out, f"{name} twice in the table"
        out[name] = cells
    return out


def _check_diagram(text: str) -> None:
    drawn = _diagram(text)
    table = {(_name(s), _name(t.edge.target), t.value)
             for t in Transition for s in (t.edge.sources or (None,))}
    assert drawn - table == set(), "in the doc's diagram, not in cronqueue.states"
    assert table - drawn == set(), "in cronqueue.states, not in the doc's diagram"


def _check_table(text: str) -> None:
    doc = _table(text)
    assert set(doc) == {t.value for t in Transition}
    for t in Transition:
        row, edge = doc[t.value], t.edge
        assert row["from"] == (", ".join(_name(s) for s in edge.sources) or "-"), t
        assert row["to"] == ("-" if edge.target is None else _name(edge.target)), t
        assert row["by"] == edge.by, t
        assert row["attempts"] == edge.attempts.value, t
        assert row["writes"] == states.describe(t), t
        assert row["rule"], f"{t}: no rule"


def test_the_diagram_draws_exactly_the_modules_edges() -> None:
    _check_diagram(DOC.read_text(encoding="utf-8"))


def test_the_table_states_exactly_the_modules_edges() -> None:
    _check_table(DOC.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("old", "new", "check"), [
    ("    running --> running : started\n", "", _check_diagram),  # an edge not drawn
    ("    pending --> cancelled : cancelled\n",
     "    pending --> cancelled : cancelled\n    running --> cancelled : cancelled\n",
     _check_diagram),  # an edge drawn that the module does not have
    ("| `returned` | running | pending | shard | -1 |",
     "| `returned` | running | pending | shard | = |", _check_table),
    ("| `cancelled` | pending | cancelled | operator | = | finished_at=now, active_key=null, ",
     "| `cancelled` | pending | cancelled | operator | = | finished_at=now, ", _check_table),
])
def test_the_doc_check_fails_on_a_doc_that_differs(old: str, new: str, check: object) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert old in text
    assert callable(check)
    with pytest.raises(AssertionError):
        check(text.replace(old, new))


# -- the table's own rules --------------------------------------------------------------------


def test_only_started_counts_an_attempt() -> None:
    counted = [t for t in Transition if t.edge.attempts is Attempts.COUNTED]
    assert counted == [Transition.STARTED]
    given_back = {t for t in Transition if t.edge.attempts is Attempts.GIVEN_BACK}
    assert given_back == {Transition.RETURNED, Transition.GIVEN_BACK}


@pytest.mark.parametrize("transition", list(Transition))
def test_the_unique_key_is_held_exactly_while_pending_or_running(transition: Transition) -> None:
    edge = transition.edge
    key = edge.writes.get("active_key")
    if edge.target in states.FINISHED:
        assert key is states.Write.NULL
        assert edge.writes.get("secret") is states.Write.NULL
    elif not edge.sources or set(edge.sources) <= set(states.FINISHED):
        assert key is states.Write.UNIQUE_KEY or edge.target is None
    else:
        assert key is None  # pending <-> running: the key stays held


@pytest.mark.parametrize("transition", list(Transition))
def test_every_edge_leaving_running_for_pending_clears_the_claim(transition: Transition) -> None:
    edge = transition.edge
    if edge.sources == (Status.RUNNING,) and edge.target is Status.PENDING:
        assert edge.writes["claim_token"] is states.Write.NULL
        assert edge.writes["lease_until"] is states.Write.NULL


def test_values_are_exactly_the_edges_columns() -> None:
    got = states.values(Transition.RETURNED, NOW, exit_code=-9, output="x", error="E")
    assert got == {"status": int(Status.PENDING), "run_at": NOW, "exit_code": -9,
                   "output": "x", "error": "E", "claim_token": None, "lease_until": None}
    assert "attempts" not in got  # relative: the statement's (sql_values)
    with pytest.raises(ValueError, match="needs error"):
        states.values(Transition.REJECTED, NOW)
    with pytest.raises(ValueError, match="does not write attempts"):
        states.values(Transition.RELEASED, attempts=0)
    with pytest.raises(ValueError, match="needs now"):
        states.values(Transition.CANCELLED)
    assert states.values(Transition.STARTED, NOW, lease_until=NOW) == {
        "started_at": NOW, "lease_until": NOW}  # no status write: running stays running
    assert states.values(Transition.REQUEUED, NOW)["attempts"] == 0


def test_sql_values_write_relative_attempts_and_the_key() -> None:
    from cronqueue.store.schema import queue_table as q

    started = states.sql_values(Transition.STARTED, q, NOW, lease_until=NOW)
    assert str(started["attempts"]) == "queue.attempts + :attempts_1"
    assert str(states.sql_values(Transition.GIVEN_BACK, q)["attempts"]).startswith(
        "queue.attempts -")
    requeued = states.sql_values(Transition.REQUEUED, q, NOW)
    assert requeued["attempts"] == 0 and requeued["active_key"] is q.c.unique_key


# -- the decision -------------------------------------------------------------------------------


POLICY = RetryPolicy(max_attempts=3, backoff=10, backoff_max=100)


@pytest.mark.parametrize("rescue", [False, True])
def test_retry_while_attempts_remain_then_fail_at_the_last(rescue: bool) -> None:
    retry, fail = ((Transition.RESCUED, Transition.RESCUE_FAILED) if rescue
                   else (Transition.RETRY, Transition.FAILED))
    for attempt in (1, 2):
        verdict = states.after_failure(POLICY, attempt=attempt, max_attempts=None, now=NOW,
                                       rescue=rescue)
        assert verdict.transition is retry
        assert verdict.run_at is not None
        base = 10 * 2 ** (attempt - 1)
        assert NOW + timedelta(seconds=base) <= verdict.run_at
        assert verdict.run_at <= NOW + timedelta(seconds=base * 1.25)
    last = states.after_failure(POLICY, attempt=3, max_attempts=None, now=NOW, rescue=rescue)
    assert last == states.Verdict(fail, None)


def test_the_rows_max_attempts_wins_over_the_policys() -> None:
    assert states.after_failure(POLICY, attempt=3, max_attempts=5,
                                now=NOW).transition is Transition.RETRY
    assert states.after_failure(POLICY, attempt=1, max_attempts=1,
                                now=NOW).transition is Transition.FAILED


def test_a_permanent_failure_is_not_retried() -> None:
    verdict = states.after_failure(POLICY, attempt=1, max_attempts=None, now=NOW,
                                   permanent=True)
    assert verdict == states.Verdict(Transition.FAILED, None)


def test_the_rescue_retries_a_started_row_on_its_counted_attempt() -> None:
    """The rescue passes the row's attempts (its lost run already counted): a row on its
    2nd of 3 attempts is retried after the 2nd backoff, on its 3rd it fails."""
    second = states.after_failure(POLICY, attempt=2, max_attempts=None, now=NOW, rescue=True)
    assert second.run_at is not None and second.run_at >= NOW + timedelta(seconds=20)
    third = states.after_failure(POLICY, attempt=3, max_attempts=None, now=NOW, rescue=True)
    assert third.transition is Transition.RESCUE_FAILED


@pytest.mark.parametrize(("attempt", "base"), [(0, 10), (1, 10), (2, 20), (3, 40), (5, 100),
                                               (2000, 100)])
def test_backoff_doubles_is_capped_and_jittered(monkeypatch: pytest.MonkeyPatch, attempt: int,
                                               base: float) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert POLICY.delay(attempt) == pytest.approx(base)
    monkeypatch.setattr(random, "random", lambda: 0.999_999_9)
    assert POLICY.delay(attempt) == pytest.approx(base * 1.25)


def test_the_policy_is_built_from_the_worker_settings() -> None:
    assert WorkerConfig().retry == RetryPolicy(3, 10.0, 3600.0)
    assert WorkerConfig(max_attempts=7, backoff=2, backoff_max=9).retry == RetryPolicy(7, 2, 9)
