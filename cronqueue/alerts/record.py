"""The tick's alert step: evaluate the rules, record each change of state (once, whatever the
number of hosts ticking), and send what is unsent — each alert's current state once per sink,
under the hourly cap, with one claim per send (``store/alerts.py``).

A sink that fails is logged with one line and not tried again in this tick; the alert stays
unsent for it and the next tick tries again. Nothing here fails the tick: the mission runs this
step isolated like the others (a database error is logged and counted in the tick's errors).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from cronqueue.alerts.message import Message
from cronqueue.alerts.rules import Facts, evaluate
from cronqueue.alerts.sinks import SinkError, send_email, send_webhook
from cronqueue.config import Config
from cronqueue.config.alerts import AlertsConfig
from cronqueue.errors import one_line
from cronqueue.store.alerts import FIRING, RESOLVED, AlertRow, Alerts
from cronqueue.store.pauses import Pauses
from cronqueue.store.runs import Runs
from cronqueue.store.ticks import Ticks
from cronqueue.store.watch import Watch
from cronqueue.store.workers import Workers
from cronqueue.text import visible

log = logging.getLogger("cronqueue.alerts")
LEASE = timedelta(minutes=5)  # a claimed send not finished by then is sent again
KEEP = timedelta(days=30)  # resolved and sent alerts are forgotten after this
MARGIN = timedelta(minutes=2)  # looked back before the previous tick (late commits)
MAX_LOOKBACK = timedelta(days=1)
SENDERS: dict[str, Callable[[Any, Message], None]] = {
    "webhook": send_webhook, "email": send_email}


@dataclass
class AlertsReport:
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # kind, subject, state
    sent: list[tuple[str, str, str, str]] = field(default_factory=list)  # ... and the sink
    failed: list[str] = field(default_factory=list)  # sink failures, one line each
    held: list[tuple[str, str]] = field(default_factory=list)  # held back by the cap


def run_alerts(config: Config, engine: Engine, *, now: datetime, host: str,
               fired: Mapping[str, datetime], missed: Mapping[str, int]) -> AlertsReport:
    """Evaluate, record, send: the alert step of one tick (``now``: the real time)."""
    report = AlertsReport()
    alerts = Alerts(engine)
    last = Ticks(engine).last_start()
    since = max(now - MAX_LOOKBACK, min(now, last or now) - MARGIN)
    current = alerts.rows()
    paused = frozenset(Pauses(engine).active("queue", now)) if config.alerts.backlog \
        else frozenset()
    facts = Facts(config, Watch(engine), now, since, current, Runs(engine).latest(),
                  Workers(engine).rows(), fired, missed, paused)
    for seen_now in evaluate(facts):
        state = FIRING if seen_now.firing else RESOLVED
        seen = current.get((seen_now.kind, seen_now.subject))
        if (seen.state if seen is not None else RESOLVED) == state:
            continue  # no change: nothing to record, nothing to send
        detail = json.dumps(seen_now.detail, ensure_ascii=False, default=str)
        if alerts.change(seen_now.kind, seen_now.subject, state, summary=seen_now.summary,
                         detail=detail, sinks=config.alerts.sinks, now=now, seen=seen):
            report.changed.append((seen_now.kind, seen_now.subject, state))
            log.info("alert %s %s: %s: %s", seen_now.kind, visible(seen_now.subject), state,
                     visible(seen_now.summary))
    deliver(alerts, config.alerts, now=now, host=host, report=report)
    alerts.purge(now - KEEP)
    return report


def deliver(alerts: Alerts, cfg: AlertsConfig, *, now: datetime, host: str,
            report: AlertsReport) -> None:
    """Send every alert whose current state some sink still lacks, when this host can claim
    it (another host may be sending it) and the hourly cap lets it go."""
    sinks: dict[str, Any] = {"webhook": cfg.webhook, "email": cfg.email}
    down: set[str] = set()  # sinks that failed in this tick: not tried again until the next
    for row in alerts.rows().values():
        if not row.unsent or (row.claim_until is not None and row.claim_until >= now):
            continue
        held = row.held_back(now, cfg.max_per_hour)
        if held is not None:
            report.held.append(row.key)
            log.info("alert %s %s: %s held back by the cap (%d per hour) until %s",
                     row.kind, visible(row.subject), row.state, cfg.max_per_hour,
                     f"{held:%H:%M:%S}Z")
            continue
        token = secrets.token_hex(16)
        if not alerts.claim(row, token, now, LEASE, cfg.max_per_hour):
            continue  # another host sends it, or it changed since it was read
        if row.state == row.sent_state:  # back to what every sink last heard: nothing new
            alerts.finish(row, token, now, unsent=(), sent=False)
            continue
        message = Message(row, _detail(row), host, now)
        unsent: list[str] = []
        sent = False
        for name in row.unsent:
            sink = sinks.get(name)
            if sink is None:
                continue  # no longer configured
            if name in down:
                unsent.append(name)
                continue
            try:
                SENDERS[name](sink, message)
            except Exception as exc:  # a sink never fails the tick
                reason = str(exc) if isinstance(exc, SinkError) else one_line(exc)
                log.error("alert %s %s (%s) not sent: %s; tried again next tick", row.kind,
                          visible(row.subject), row.state, reason)
                report.failed.append(reason)
                down.add(name)
                unsent.append(name)
                continue
            sent = True
            report.sent.append((row.kind, row.subject, row.state, name))
            log.info("alert %s %s (%s) sent to %s", row.kind, visible(row.subject), row.state,
                     name)
        alerts.finish(row, token, now, unsent=unsent, sent=sent)


def _detail(row: AlertRow) -> dict[str, Any]:
    """The stored detail (a row is untrusted: what is not a JSON object is shown as text)."""
    try:
        value = json.loads(row.detail or "{}")
    except ValueError:
        return {"detail": row.detail}
    return value if isinstance(value, dict) else {"detail": value}
