"""Prometheus metrics: ``cronqueue metrics`` prints them (for node_exporter's textfile
collector, run from cron) and the dashboard serves them on ``/metrics``.

They are read from the database at each scrape (``store/scrape.py``): a shard lives a minute or
less, so no process could hold them. A custom collector over a registry of its own (no state of
the process, nothing global): each scrape is one read-only transaction.

==================================================  =========  ================================
``cronqueue_tasks{queue,status}``                   gauge      rows of the queue table
``cronqueue_oldest_due_age_seconds{queue}``         gauge      how long the oldest due pending
                                                               task has waited (0: none due)
``cronqueue_tasks_finished_total{queue,outcome}``   counter    tasks that ended done, failed or
                                                               cancelled (``cronqueue_rollup``:
                                                               a purge leaves it)
``cronqueue_task_duration_seconds{queue,outcome}``  histogram  run time of the tasks a shard
                                                               ran to done or failed
``cronqueue_mission_last_tick_timestamp_seconds``   gauge      end of each host's last mission
``{host}``                                                     tick (Unix time)
``cronqueue_schedule_last_run_timestamp_seconds``   gauge      when each configured schedule
``{entry}``                                                    entry last ran (Unix time)
``cronqueue_workers{host}``                         gauge      shards registered now
``cronqueue_build_info{version}``                   gauge      1
==================================================  =========  ================================

No label holds an id: a queue, a status, an outcome, a host name (without the boot's id), an
entry. Label values come from rows and are untrusted: prometheus-client escapes them (``\\``,
``"``, a newline) in the exposition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _Collector
from sqlalchemy import Engine

from cronqueue.alerts.health import tick_problem
from cronqueue.alerts.rules import span
from cronqueue.errors import DatabaseError
from cronqueue.model import Status
from cronqueue.store import scrape
from cronqueue.store.engine import is_unavailable
from cronqueue.store.rollup import OUTCOMES, Counters
from cronqueue.store.schema import DURATION_BUCKETS

__all__ = ["CONTENT_TYPE", "Collector", "Health", "exposition", "health"]

log = logging.getLogger("cronqueue.metrics")
# The classic text format, which every Prometheus (2 and 3) and node_exporter read; the body is
# the same in the newer 1.0.0 (all names here are plain), which some older servers refuse.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = tuple(s.name.lower() for s in Status)
TIMED = ("done", "failed")  # the outcomes whose run times the histogram holds
DEFAULT_TICK_AGE = 120.0  # seconds since the last tick /healthz still calls recent


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Collector(_Collector):
    """The metrics of one database, read when collected."""

    def __init__(self, engine: Engine, *, entries: Sequence[str] = (),
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.engine = engine
        self.entries = tuple(entries)
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        s = scrape.read(self.engine, now, self.entries)
        if s.groups_cut:
            log.warning("metrics: more than %d (status, queue) pairs: the rest not shown",
                        scrape.MAX_GROUPS)
        counters = {(c.queue, c.outcome): c for c in s.counters}
        queues = sorted({queue for queue, _ in s.tasks} | {queue for queue, _ in counters})

        tasks = GaugeMetricFamily("cronqueue_tasks", "Tasks in the queue table, by status.",
                                  labels=["queue", "status"])
        for queue in queues:
            seen = [st for qn, st in s.tasks if qn == queue and st not in STATUSES]
            for status in (*STATUSES, *sorted(seen)):
                tasks.add_metric([queue, status], s.tasks.get((queue, status), 0))
        yield tasks

        due = GaugeMetricFamily(
            "cronqueue_oldest_due_age_seconds",
            "How long the oldest due pending task of the queue has waited (0: none is due).",
            labels=["queue"])
        for queue in queues:
            at = s.oldest_due.get(queue)
            due.add_metric([queue], max(0.0, (now - at).total_seconds()) if at else 0.0)
        yield due

        finished = CounterMetricFamily(
            "cronqueue_tasks_finished", "Tasks that ended done, failed or cancelled "
            "(kept in cronqueue_rollup: a purge leaves it).", labels=["queue", "outcome"])
        durations = HistogramMetricFamily(
            "cronqueue_task_duration_seconds",
            "Run time of the tasks a shard ran to done or failed.", labels=["queue", "outcome"])
        for queue in queues:
            for outcome in OUTCOMES.values():
                c = counters.get((queue, outcome))
                finished.add_metric([queue, outcome], c.finished if c else 0)
                if outcome in TIMED:
                    durations.add_metric([queue, outcome], *_histogram(c))
        yield finished
        yield durations

        ticks = GaugeMetricFamily(
            "cronqueue_mission_last_tick_timestamp_seconds",
            "When the last mission tick of the host ended (Unix time).", labels=["host"])
        for host, at in sorted(s.ticks.items()):
            ticks.add_metric([host], at.timestamp())
        yield ticks

        runs = GaugeMetricFamily(
            "cronqueue_schedule_last_run_timestamp_seconds",
            "When the schedule entry last ran (Unix time).", labels=["entry"])
        for entry, at in sorted(s.last_runs.items()):
            runs.add_metric([entry], at.timestamp())
        yield runs

        workers = GaugeMetricFamily("cronqueue_workers", "Shards registered, by host.",
                                    labels=["host"])
        for host, n in sorted(s.workers.items()):
            workers.add_metric([host], n)
        yield workers

        from cronqueue import __version__

        info = GaugeMetricFamily("cronqueue_build_info", "The cronqueue version.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _histogram(c: Counters | None) -> tuple[list[tuple[str, float]], float]:
    """(buckets, sum) of a rollup row; zeros for none."""
    counts = c.buckets if c else (0,) * len(DURATION_BUCKETS)
    buckets = [(f"{bound:g}", float(n)) for bound, n in zip(DURATION_BUCKETS, counts,
                                                              strict=True)]
    buckets.append(("+Inf", float(c.timed if c else 0)))
    return buckets, c.duration_seconds if c else 0.0


def exposition(engine: Engine, *, entries: Sequence[str] = (),
               clock: Callable[[], datetime] = _utcnow) -> bytes:
    """The text exposition (format 0.0.4) of the database's metrics. Raises
    ``DatabaseError`` when the database does not answer."""
    registry = CollectorRegistry(auto_describe=False)  # nothing read until generated
    registry.register(Collector(engine, entries=entries, clock=clock))
    return generate_latest(registry)


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str  # one line


def health(engine: Engine, now: datetime, max_tick_age: float = DEFAULT_TICK_AGE) -> Health:
    """OK when the database answers and a mission tick (of any host) ended at most
    ``max_tick_age`` seconds before ``now``. The reason names neither URL nor password."""
    try:
        last = scrape.last_tick(engine)
    except DatabaseError as exc:
        log.warning("health: %s", exc)
        return Health(False, "database unreachable" if is_unavailable(exc) else
                      "database error (see the log)")
    problem = tick_problem(last, now, max_tick_age)
    if problem or last is None:
        return Health(False, problem or "no mission tick recorded yet")
    return Health(True, f"ok: the last mission tick ended {span((now - last).total_seconds())} ago")
