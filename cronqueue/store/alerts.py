"""``cronqueue_alerts``: one row per alert (a kind and a subject), its state, and whether that
state has been sent — the statements of the alerts' record (``cronqueue/alerts/``).

Every write is conditional, so that any number of hosts ticking at once change and send each
alert once:

* a change of state is ``UPDATE ... WHERE id = :id AND seq = :seq_read`` (``seq`` counts the
  changes; the first ``firing`` is an INSERT that the unique key arbitrates): one host makes it,
  the others find it made;
* a send is claimed by ``UPDATE ... SET claim_token = :mine, claim_until = :lease WHERE
  unsent <> '' AND (no claim, or an expired one) AND (under the hourly cap)``: one host
  sends, and it records what it sent (``finish``) under its token; a host that died while
  sending leaves a claim that expires, and the alert is sent again (at least once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from cronqueue.store.engine import transaction
from cronqueue.store.schema import alerts_table as a

MAX_ROWS = 10_000  # alerts read per tick: one per kind and subject ever seen, purged
HOUR = timedelta(hours=1)
FIRING, RESOLVED = "firing", "resolved"


@dataclass(frozen=True)
class AlertRow:
    id: int
    kind: str
    subject: str
    state: str
    changed_at: datetime
    seq: int
    summary: str
    detail: str | None
    unsent: tuple[str, ...]
    sent_state: str | None
    hour_start: datetime | None
    hour_count: int
    claim_until: datetime | None

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.subject

    def held_back(self, now: datetime, cap: int) -> datetime | None:
        """Until when the hourly cap holds this alert's next message back (None: it may go)."""
        if self.hour_start is None or self.hour_start <= now - HOUR or self.hour_count < cap:
            return None
        return self.hour_start + HOUR


def _row(m: Any) -> AlertRow | None:
    """A row read (untrusted: one written by hand that is not an alert is left out)."""
    try:
        if not isinstance(m["changed_at"], datetime) or m["state"] not in (FIRING, RESOLVED):
            return None
        hour_start, claim = m["hour_start"], m["claim_until"]
        return AlertRow(
            int(m["id"]), str(m["kind"]), str(m["subject"]), str(m["state"]), m["changed_at"],
            int(m["seq"]), str(m["summary"]), m["detail"] if isinstance(m["detail"], str)
            else None, tuple(s for s in str(m["unsent"]).split(",") if s),
            m["sent_state"] if isinstance(m["sent_state"], str) else None,
            hour_start if isinstance(hour_start, datetime) else None, int(m["hour_count"]),
            claim if isinstance(claim, datetime) else None)
    except (TypeError, ValueError):
        return None


class Alerts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def rows(self) -> dict[tuple[str, str], AlertRow]:
        """Every alert, by (kind, subject)."""
        stmt = select(a).order_by(a.c.id).limit(MAX_ROWS)
        found = transaction(self.engine, lambda c: list(c.execute(stmt).mappings()),
                            readonly=True)
        return {r.key: r for r in map(_row, found) if r is not None}

    def change(self, kind: str, subject: str, state: str, *, summary: str, detail: str,
               sinks: Sequence[str], now: datetime, seen: AlertRow | None) -> bool:
        """Move the alert to ``state`` if it is still as ``seen`` (None: absent); False when
        another host changed it first. ``sinks``: where the new state is to be sent."""
        values = {"state": state, "changed_at": now, "summary": summary[:1000],
                  "detail": detail, "unsent": ",".join(sinks)}

        def work(conn: Connection) -> bool:
            if seen is None:
                try:
                    with conn.begin_nested():
                        conn.execute(a.insert().values(kind=kind, subject=subject, seq=1,
                                                       **values))
                except IntegrityError:
                    return False
                return True
            stmt = (update(a).where(a.c.id == seen.id, a.c.seq == seen.seq)
                    .values(seq=a.c.seq + 1, **values))
            return bool(conn.execute(stmt).rowcount)

        return transaction(self.engine, work)

    def claim(self, row: AlertRow, token: str, now: datetime, lease: timedelta,
              cap: int) -> bool:
        """Take the sending of ``row``'s current state for ``lease``; False when another host
        holds it, it changed, it is sent, or the hourly cap is reached."""
        stmt = (update(a).where(
            a.c.id == row.id, a.c.seq == row.seq, a.c.unsent != "",
            or_(a.c.claim_until.is_(None), a.c.claim_until < now),
            or_(a.c.hour_start.is_(None), a.c.hour_start <= now - HOUR, a.c.hour_count < cap))
            .values(claim_token=token, claim_until=now + lease))
        return bool(transaction(self.engine, lambda c: c.execute(stmt).rowcount))

    def finish(self, row: AlertRow, token: str, now: datetime, *, unsent: Sequence[str],
               sent: bool) -> None:
        """Record the claimed send: ``unsent``, the sinks that still lack the state (a failure:
        the next tick tries them again); ``sent``, whether a message went out (it counts in
        the hourly cap). The claim is released whatever happened."""
        values: dict[str, Any] = {"claim_token": None, "claim_until": None,
                                  "unsent": ",".join(unsent)}
        if not unsent:
            values["sent_state"] = row.state
        if sent:
            fresh = row.hour_start is None or row.hour_start <= now - HOUR
            values.update(sent_at=now, hour_start=now if fresh else row.hour_start,
                          hour_count=1 if fresh else a.c.hour_count + 1)
        mine = and_(a.c.id == row.id, a.c.claim_token == token)
        record = update(a).where(mine, a.c.seq == row.seq).values(**values)
        release = update(a).where(mine).values(
            claim_token=None, claim_until=None, **({k: values[k] for k in (
                "sent_at", "hour_start", "hour_count") if k in values}))

        def work(conn: Connection) -> None:
            if not conn.execute(record).rowcount:  # it changed meanwhile: send the new one
                conn.execute(release)

        transaction(self.engine, work)

    def purge(self, before: datetime, limit: int = 100) -> int:
        """Alerts resolved before ``before`` and sent (or never to be): forgotten."""
        old = (select(a.c.id).where(a.c.state == RESOLVED, a.c.unsent == "",
                                    a.c.changed_at < before).limit(limit))

        def work(conn: Connection) -> int:
            ids = [int(i) for i in conn.execute(old).scalars()]
            if not ids:
                return 0
            return int(conn.execute(delete(a).where(a.c.id.in_(ids))).rowcount)

        return transaction(self.engine, work)
