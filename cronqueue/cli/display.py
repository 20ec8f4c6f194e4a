"""Human output of the CLI: what reaches the operator's terminal.

Task output, scripts, params, queue names, hosts and errors come from rows anyone who can write
to the database may have filled by hand, or from task scripts. Shown raw, an ANSI/OSC escape
would drive the operator's terminal (retitle it, hide text, write to the clipboard) and a
newline in a queue name would forge table rows. So every value is shown with its control and
other non-printable characters visible: a single-line value that has any is shown as its
Python ``repr`` (quoted, unambiguous, as in the logs); output lines keep their text with each
such character as an escape (``\\x1b``, ``\\r``, ``\\u202e``). ``--json`` output is exact and
needs none of this (JSON escapes control characters itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronqueue.model import Status, Task, Worker
from cronqueue.model import status_name as model_status_name
from cronqueue.text import visible, visible_line

__all__ = ["visible", "visible_line"]  # re-exported for the CLI's formatting

FAR_AHEAD = timedelta(days=1)  # a pending task's run_at further ahead than this is flagged
AHEAD_HINT = ("run_at is UTC: a producer that wrote local time (NOW() in a session time zone) "
              "delays its tasks; write UTC_TIMESTAMP() or leave run_at to its default")


def status_name(value: object) -> str:
    """``pending`` ... ``cancelled``; a code outside 0..4 (a hand-written row) as
    ``unknown(7)``, whether it comes as a ``Status`` stand-in or a plain int (the model's
    ``status_name``, as ``--json`` and ``stats`` name it), shown visibly."""
    return visible(model_status_name(value))


def when(value: datetime | None, zone: bool = True) -> str:
    """A stored time, in UTC, labelled ``UTC`` (``zone=False``: in a column whose header says
    it). A naive value is UTC already (the columns hold naive UTC)."""
    if not value:
        return "-"
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if zone else "")


def far_ahead(task: Task, now: datetime | None = None) -> timedelta | None:
    """How far ahead a pending task's ``run_at`` is, if more than ``FAR_AHEAD`` (issue 12 #5:
    a hand-written row in local time, a mistyped year); else None."""
    if task.status != Status.PENDING or not isinstance(task.run_at, datetime):
        return None
    ahead = task.run_at - (now or datetime.now(UTC))
    return ahead if ahead > FAR_AHEAD else None


def _ahead(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f} days ahead"


def format_task(task: Task, now: datetime | None = None, *, max_attempts: int | None = None,
                timeout: float | None = None) -> str:
    """``max_attempts``/``timeout``: the configuration's (``worker.*``), for a task whose own
    column is NULL: the attempts line shows the effective limits, as a shard applies them."""
    param = task.param if len(task.param) < 200 else task.param[:197] + "..."
    most = task.max_attempts or max_attempts
    limit = task.timeout or timeout
    lines = [
        f"task {task.id}: {status_name(task.status)}",
        f"  script    {visible(task.taskscript)}  (queue {visible(task.queue)}, "
        f"priority {task.priority})",
        f"  param     {visible(param)}",
        f"  attempts  {task.attempts}/{most or 'default'}"
        f"  timeout {f'{limit:g}s' if limit else 'default'}",
        f"  created   {when(task.ctime)}   run at {when(task.run_at)}",
        f"  started   {when(task.started_at)}   finished {when(task.finished_at)}",
    ]
    ahead = far_ahead(task, now)
    if ahead is not None:
        lines.append(f"  WARNING   pending, run at {_ahead(ahead)}; {AHEAD_HINT}")
    if task.worker_host:
        lines.append(f"  worker    {visible(task.worker_host)}:{task.worker_pid}")
    if task.exit_code is not None:
        lines.append(f"  exit code {task.exit_code}")
    if task.error:
        lines.append(f"  error     {visible(task.error)}")
    if task.problem:  # a hand-written value that is not of its column's type (decode.py)
        lines.append(f"  problem   {visible(task.problem)}")
    if task.output:
        lines.append("  output (tail):")
        lines.extend("    " + visible_line(line)
                     for line in task.output.rstrip("\n").split("\n")[-20:])
    return "\n".join(lines)


def format_table(tasks: Sequence[Task], now: datetime | None = None, *,
                 paused: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """One line per task; a pending task whose run_at is more than a day ahead has its RUN AT
    marked ``(!)`` and a note below the table; one of a ``paused`` queue (name -> the pause as
    ``Pause.as_dict()`` gives it) is ``pending (paused)``, with a line per such queue below."""
    now = now or datetime.now(UTC)
    paused = paused or {}
    held: dict[str, Mapping[str, Any]] = {}
    rows = [("ID", "STATUS", "QUEUE", "PRIO", "TRIES", "SCRIPT", "RUN AT (UTC)", "EXIT",
             "ERROR")]
    flagged = 0
    for t in tasks:
        ahead = far_ahead(t, now) is not None
        flagged += ahead
        waits = t.status == Status.PENDING and t.queue in paused
        if waits:
            held[t.queue] = paused[t.queue]
        rows.append((str(t.id), status_name(t.status) + (" (paused)" if waits else ""),
                     t.queue, str(t.priority),
                     str(t.attempts), t.taskscript,
                     when(t.run_at, zone=False) + (" (!)" if ahead else ""),
                     "" if t.exit_code is None else str(t.exit_code),
                     (t.error or "")[:50]))
    table = format_columns(rows)
    if flagged:
        table += (f"\n(!) {flagged} pending task(s) to run more than a day ahead; "
                  f"{AHEAD_HINT}")
    for name, pause in sorted(held.items()):
        table += (f"\n(paused) queue {visible(name)} is {paused_text(pause)}: its pending tasks "
                  "wait; `cronqueue resume` it to run them")
    return table


def paused_text(pause: Mapping[str, Any]) -> str:
    """``paused since 2026-12-02 10:00:00 UTC by ops@web1 until 2026-12-02 12:00:00 UTC
    (deploy)``: a pause as ``Pause.as_dict()`` gives it (times ISO-8601)."""
    since = f" since {when(_iso(pause.get('since')))}" if pause.get("since") else ""
    until = f"until {when(_iso(pause.get('until')))}" if pause.get("until") else "until resumed"
    why = f" ({visible(pause['reason'])})" if pause.get("reason") else ""
    return f"paused{since} by {visible(pause.get('by') or '?')} {until}{why}"


def _iso(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def format_columns(rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; every cell shown with its non-printable characters visible."""
    cells = [[visible(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def format_stats(stats: Mapping[str, Any]) -> str:
    """Counts per queue and status, the totals and the due backlog."""
    names = [s.name.lower() for s in Status]
    queues: Mapping[str, Mapping[str, int]] = stats["queues"]
    extra = sorted({k for counts in queues.values() for k in counts} - set(names))
    columns = names + extra
    paused: Mapping[str, Mapping[str, Any]] = stats.get("paused") or {}
    rows = [("queue", *columns)]
    rows += [(queue + (" (paused)" if queue in paused else ""),
              *(str(counts.get(n, 0)) for n in columns))
             for queue, counts in sorted(queues.items())]
    rows.append(("(all)", *(str(stats.get(n, sum(c.get(n, 0) for c in queues.values())))
                            for n in columns)))
    cells = [[visible(c) for c in r] for r in rows]
    first = max(20, *(len(r[0]) + 1 for r in cells))
    widths = [max(10, *(len(r[i]) + 1 for r in cells)) for i in range(1, len(columns) + 1)]
    lines = [f"{r[0]:<{first}}" + "".join(f"{c:>{w}}" for c, w in zip(r[1:], widths,
                                                                      strict=True))
             for r in cells]
    lines.append(f"due now: {stats['due']}, oldest due waiting "
                 f"{stats['oldest_due_seconds']:.1f}s")
    lines += [f"queue {visible(name)} {paused_text(pause)}: shards claim none of its tasks"
              for name, pause in sorted(paused.items())]
    return "\n".join(lines)


def format_workers(workers: Iterable[Worker]) -> str:
    rows = [("ID", "HOST", "PID", "ENTRY", "SHARD", "QUEUES", "STARTED (UTC)", "TASK", "DONE",
             "HEARTBEAT (UTC)", "STATE")]
    for w in workers:
        state = ("stopping" if w.stop_requested else "running") if w.alive else "gone"
        rows.append((str(w.id), w.host, str(w.pid), w.entry or "-", f"{w.shard}/{w.total}",
                     w.queues or "*", when(w.started_at, zone=False),
                     str(w.current_task or "-"), str(w.tasks_done),
                     when(w.heartbeat_at, zone=False), state))
    return format_columns(rows) if len(rows) > 1 else "no shard is running"


def format_schedule(entries: Iterable[Mapping[str, Any]]) -> str:
    """The mission entries as ``Queue.schedule()`` gives them: cron, action, next runs, last
    run, and a warning if there is one. Times are in the schedule's zone (``timezone``),
    each labelled with its abbreviation there (``CET``, ``CEST``, ``UTC``)."""
    lines = []
    for e in entries:
        lines.append(f"{visible(e['name'])}  [{visible(e['cron'])}]  "
                     f"{visible(e['description'])} ({visible(e['timezone'])})")
        lines.append(f"  action  {visible(e['action'])}")
        lines.append(f"  next    {', '.join(_short(t, e['timezone']) for t in e['next'])}")
        if e["last_scheduled"]:
            task = f" (task {e['last_task']})" if e["last_task"] else ""
            lines.append(f"  last    {_short(e['last_scheduled'], e['timezone'])} on "
                         f"{visible(e['last_host'])}: {visible(e['last_outcome'])}{task}")
        else:
            lines.append("  last    never")
        if e.get("paused"):
            lines.append(f"  paused  {paused_text(e['paused']).removeprefix('paused ')}: not "
                         "fired, its skipped times not caught up")
        if e.get("warning"):
            lines.append(f"  WARNING {visible(e['warning'])}")
    return "\n".join(lines)


def _short(iso: str, zone: str) -> str:
    """``2026-12-03 03:00 CET``: an ISO time of ``Queue.schedule()`` to the minute, in
    ``zone`` and named by its abbreviation there (the offset if the zone cannot be loaded)."""
    value = datetime.fromisoformat(iso)
    with contextlib.suppress(ValueError, ZoneInfoNotFoundError):
        value = value.astimezone(ZoneInfo(zone))
    return value.strftime("%Y-%m-%d %H:%M ") + (value.tzname() or value.strftime("%z"))
