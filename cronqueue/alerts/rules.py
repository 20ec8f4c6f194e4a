"""What is wrong now: each rule looks at the database (and at what this tick saw) and says, for
each alert it has evidence about, whether it fires or is resolved. An alert the rule has no
evidence about this tick (an entry whose task still runs, a group with no finished task) is
left as it is. The record (``record.py``) turns a change of state into a message.

Kinds (the subject in brackets):

* ``task_failed`` [queue/script] — tasks of an opted-in queue or script reached ``failed``
  (their attempts spent), grouped per (queue, script); resolved when later tasks of the group
  are done and none failed;
* ``entry_failed`` [entry] — the last run of a ``[[mission]]`` entry failed: its ``add`` task
  failed, or shards of its ``do_queue`` could not be started; resolved by a run that did not;
* ``entry_missed`` [entry] — the tick found scheduled runs of the entry that never ran (the
  mission was down, or ``catch_up`` skipped them); resolved when it next runs on time;
* ``entry_too_long`` / ``entry_too_short`` [entry] — the run took more than ``max_runtime``
  (an ``add`` task, still running or finished; a shard of a ``do_queue`` entry still running)
  or an ``add`` task was done in less than ``min_runtime``;
* ``queue_backlog`` [queue] — the queue's oldest due task has waited longer than its
  ``alerts.backlog`` age (too few shards, or none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronqueue.config import Config, MissionEntry
from cronqueue.config.alerts import ALL
from cronqueue.mission.schedule import Schedule
from cronqueue.model import Status
from cronqueue.store.alerts import FIRING, AlertRow
from cronqueue.store.watch import TaskSeen, Watch
from cronqueue.text import visible

KINDS = ("task_failed", "entry_failed", "entry_missed", "entry_too_long", "entry_too_short",
         "queue_backlog")
SHOWN_TASKS = 3  # failed tasks (with their output) in one task_failed alert
_COULD_NOT_START = "could not start"  # in a do_queue run's outcome (mission/tick.py)


@dataclass(frozen=True)
class Observed:
    kind: str
    subject: str
    firing: bool
    summary: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Facts:
    """What the tick read and saw, for the rules."""

    config: Config
    watch: Watch
    now: datetime  # the real time
    since: datetime  # finished tasks after this are this tick's evidence
    current: Mapping[tuple[str, str], AlertRow]
    last_runs: Mapping[str, Mapping[str, Any]]  # entry -> its newest cronqueue_runs row
    workers: Sequence[Mapping[str, Any]]  # cronqueue_workers rows
    fired: Mapping[str, datetime]  # entries this tick fired (scheduled time)
    missed: Mapping[str, int]  # entries with scheduled runs that never ran
    paused_queues: frozenset[str] = frozenset()  # queues paused now (their backlog is said so)

    def firing(self, kind: str, subject: str) -> AlertRow | None:
        row = self.current.get((kind, subject))
        return row if row is not None and row.state == FIRING else None


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def span(seconds: float) -> str:
    """``45s``, ``5m``, ``5m 3s``, ``2h 5m``, ``3d 4h``."""
    s = max(0, round(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // sub_size
            return f"{s // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{s}s"


def count(n: int, noun: str) -> str:
    """``1 task``, ``2 tasks``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def task_detail(task: TaskSeen, tail: int) -> dict[str, Any]:
    return {"id": task.id, "status": Status.of(task.status).name.lower(),
            "attempts": task.attempts, "exit_code": task.exit_code,
            "error": task.error[:1000], "started_at": iso(task.started_at),
            "finished_at": iso(task.finished_at),
            "output_tail": task.output[-tail:] if tail else ""}


def evaluate(f: Facts) -> list[Observed]:
    cfg = f.config.alerts
    out: list[Observed] = []
    if cfg.failed_queues or cfg.failed_scripts:
        out += task_failures(f)
    if cfg.entries:
        for entry in f.config.missions:
            out += entry_rules(f, entry)
    if cfg.backlog:
        out += backlog(f)
    return out + unconfigured(f, {(o.kind, o.subject) for o in out})


def task_failures(f: Facts) -> list[Observed]:
    cfg = f.config.alerts
    every = ALL in cfg.failed_queues
    out = []
    for g in f.watch.finished_since(f.since, queues=None if every else cfg.failed_queues,
                                    scripts=cfg.failed_scripts):
        subject = f"{g.queue}/{g.script}"[:191]
        what = {"queue": g.queue, "script": g.script}
        row = f.current.get(("task_failed", subject))
        after = row.changed_at if row is not None else None
        if row is None or row.state != FIRING:
            if g.last_failed is None or (after is not None and g.last_failed <= after):
                continue
            tasks = f.watch.failures(g.queue, g.script, max(f.since, after or f.since),
                                     SHOWN_TASKS)
            out.append(Observed("task_failed", subject, True,
                                f"{count(g.failed, 'task')} of {visible(g.script)} in "
                                f"queue {visible(g.queue)} failed", {
                                    **what, "failed": g.failed,
                                    "tasks": [task_detail(t, cfg.output_tail) for t in tasks]}))
        elif g.last_done is not None and g.last_done > row.changed_at and (
                g.last_failed is None or g.last_done > g.last_failed):
            out.append(Observed("task_failed", subject, False,
                                f"{visible(g.script)} in queue {visible(g.queue)}: "
                                f"{count(g.done, 'task')} done since, none failed",
                                {**what, "done": g.done, "last_done": iso(g.last_done)}))
    return out


def entry_rules(f: Facts, entry: MissionEntry) -> list[Observed]:
    name = entry.name
    out = []
    run = f.last_runs.get(name)
    task = None
    if run is not None and entry.add is not None and isinstance(run.get("task_id"), int):
        task = f.watch.tasks([run["task_id"]]).get(run["task_id"])
    scheduled = iso(run["scheduled_at"]) if run is not None and isinstance(
        run.get("scheduled_at"), datetime) else None
    base = {"entry": name, "scheduled_at": scheduled}
    # failed
    if task is not None and task.status in (Status.FAILED, Status.DONE):
        failed = task.status == Status.FAILED
        error = task.error.splitlines()[0] if task.error.strip() else "no error recorded"
        out.append(Observed("entry_failed", name, failed,
                            f"entry {name}: its task {task.id} of {scheduled} "
                            + (f"failed: {visible(error)}" if failed else "was done"),
                            {**base, "task": task_detail(task, f.config.alerts.output_tail)}))
    elif run is not None and entry.do_queue is not None and isinstance(run.get("outcome"), str) \
            and run["outcome"].startswith("started"):
        failed = _COULD_NOT_START in run["outcome"]
        out.append(Observed("entry_failed", name, failed,
                            f"entry {name}: the run of {scheduled} "
                            + (f"{visible(run['outcome'])}" if failed else "started its shards"),
                            {**base, "outcome": run["outcome"]}))
    # missed
    if f.missed.get(name):
        newest, ran = _newest_missed(f, entry, run)
        out.append(Observed("entry_missed", name, True,
                            f"entry {name}: {count(f.missed[name], 'scheduled run')} did not "
                            f"run, the newest at {iso(newest)} (the mission was not ticking, "
                            "or catch_up skipped them)",
                            {"entry": name, "missed": f.missed[name],
                             "newest_missed": iso(newest), "ran_instead": iso(ran)}))
    elif name in f.fired:
        out.append(Observed("entry_missed", name, False,
                            f"entry {name}: ran on time ({iso(f.fired[name])})",
                            {"entry": name, "scheduled_at": iso(f.fired[name])}))
    # run time
    if entry.max_runtime is not None:
        out += _too_long(f, entry, task, base)
    if entry.min_runtime is not None and task is not None and task.status == Status.DONE \
            and task.started_at is not None and task.finished_at is not None:
        took = (task.finished_at - task.started_at).total_seconds()
        short = took < entry.min_runtime
        out.append(Observed("entry_too_short", name, short,
                            f"entry {name}: task {task.id} was done in {span(took)} ("
                            + ("less than" if short else "at least")
                            + f" min_runtime {span(entry.min_runtime)})",
                            {**base, "task_id": task.id, "runtime_seconds": round(took, 3),
                             "min_runtime_seconds": entry.min_runtime}))
    return out


def _newest_missed(f: Facts, entry: MissionEntry,
                   run: Mapping[str, Any] | None) -> tuple[datetime | None, datetime | None]:
    """(the newest scheduled time that did not run, the run this tick made instead), from the
    entry's newest run — recorded in this tick by whichever mission took it: its scheduled
    time ran, unless it is a run recorded as skipped."""
    at = run.get("scheduled_at") if run is not None else None
    if run is None or not isinstance(at, datetime):
        return None, None
    if str(run.get("outcome", "")).startswith("skipped"):
        return at, None
    return Schedule(entry.cron, ZoneInfo(f.config.timezone)).latest(
        at - timedelta(microseconds=1)), at


def _too_long(f: Facts, entry: MissionEntry, task: TaskSeen | None,
              base: dict[str, Any]) -> list[Observed]:
    limit = entry.max_runtime
    assert limit is not None
    name = entry.name
    detail = {**base, "max_runtime_seconds": limit}
    if entry.do_queue is not None:
        alive_since = f.now - timedelta(seconds=f.config.worker.lease)
        shards = [w for w in f.workers if w.get("entry") == name
                  and isinstance(w.get("started_at"), datetime)
                  and isinstance(w.get("heartbeat_at"), datetime)
                  and w["heartbeat_at"] > alive_since]
        over = [w for w in shards if (f.now - w["started_at"]).total_seconds() > limit]
        if over:
            took = max((f.now - w["started_at"]).total_seconds() for w in over)
            return [Observed("entry_too_long", name, True,
                             f"entry {name}: {count(len(over), 'shard')} running for up to "
                             f"{span(took)} (max_runtime {span(limit)})",
                             {**detail, "runtime_seconds": round(took, 3), "shards": [
                                 {"shard": w.get("shard"), "host": str(w.get("host")),
                                  "pid": w.get("pid"), "started_at": iso(w["started_at"])}
                                 for w in over]})]
        return [Observed("entry_too_long", name, False,
                         f"entry {name}: no shard running longer than {span(limit)}", detail)]
    if task is None or task.started_at is None:
        return []
    if task.status == Status.RUNNING:
        took = (f.now - task.started_at).total_seconds()
        if took <= limit:
            return []
        verb = "has run for"
    elif task.status in (Status.DONE, Status.FAILED) and task.finished_at is not None:
        took = (task.finished_at - task.started_at).total_seconds()
        verb = "ran"
    else:
        return []
    long = took > limit
    return [Observed("entry_too_long", name, long,
                     f"entry {name}: task {task.id} {verb} {span(took)} ("
                     + ("more than" if long else "within") + f" max_runtime {span(limit)})",
                     {**detail, "task_id": task.id, "runtime_seconds": round(took, 3)})]


def backlog(f: Facts) -> list[Observed]:
    ages = f.config.alerts.backlog
    every = ALL in ages
    oldest = f.watch.oldest_due(f.now, None if every else list(ages))
    names = set(oldest) | {n for n in ages if n != ALL} | {
        s for (k, s), r in f.current.items() if k == "queue_backlog" and r.state == FIRING}
    out = []
    for name in sorted(names):
        limit = ages.get(name, ages.get(ALL))
        if limit is None:
            continue  # a firing alert of a queue no longer configured: unconfigured()
        at = oldest.get(name)
        age = (f.now - at).total_seconds() if at is not None else 0.0
        if at is None or age <= limit:
            out.append(Observed("queue_backlog", name, False,
                                f"queue {visible(name)}: no due task waiting longer than "
                                f"{span(limit)}", {"queue": name, "max_age_seconds": limit}))
            continue
        shards = sum(1 for w in f.workers if name in str(w.get("queues", "")).split(",")
                     or not w.get("queues"))
        due = f.watch.due_count(name, f.now)
        paused = name in f.paused_queues
        out.append(Observed("queue_backlog", name, True,
                            f"queue {visible(name)}: its oldest due task has waited "
                            f"{span(age)} (more than {span(limit)}); {due} due, "
                            f"{count(shards, 'shard')} registered for it"
                            + ("; the queue is paused" if paused else ""),
                            {"queue": name, "oldest_run_at": iso(at),
                             "age_seconds": round(age, 3), "max_age_seconds": limit, "due": due,
                             "shards": shards, "paused": paused}))
    return out


def unconfigured(f: Facts, observed: set[tuple[str, str]]) -> list[Observed]:
    """Firing alerts that nothing configures any more (an entry removed, a queue no longer
    watched, a limit dropped): resolved, so that none stays firing for ever."""
    cfg = f.config.alerts
    entries = {e.name: e for e in f.config.missions} if cfg.entries else {}
    out = []
    for (kind, subject), row in f.current.items():
        if row.state != FIRING or (kind, subject) in observed:
            continue
        if kind == "task_failed":
            queue, _, script = subject.partition("/")
            kept = ALL in cfg.failed_queues or queue in cfg.failed_queues \
                or script in cfg.failed_scripts
        elif kind == "queue_backlog":
            kept = subject in cfg.backlog or ALL in cfg.backlog
        elif kind.startswith("entry_"):
            entry = entries.get(subject)
            kept = entry is not None and not (
                (kind == "entry_too_long" and entry.max_runtime is None)
                or (kind == "entry_too_short" and entry.min_runtime is None))
        else:
            kept = True  # a kind this cronqueue does not know (a newer one's): its own
        if not kept:
            out.append(Observed(kind, subject, False,
                                f"{kind} {visible(subject)}: no longer configured",
                                {"reason": "no longer configured"}))
    return out
