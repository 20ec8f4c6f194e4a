"""bench.py's output: the run's date, command and machine, then one table per section (a row per
backend and variant, a column per metric: median, and min-max over the repetitions) and the
targets judged on the median. Markdown that also reads as plain text; no prose."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench_lib import NO_DB, Sample, SectionResult
from common import spread, table

TITLES = {
    "drain": "drain: {drain} tasks, cronqueue (work shards, a mission tick) vs xargs -P 2, "
             "the naive table queue and huey",
    "drain_big": "drain_big: the same with {drain_big} tasks",
    "enqueue": "enqueue: add() and add_many() vs the bare driver",
    "backlog": "backlog: claim time and drain rate, small vs big backlog",
    "latency": "latency: enqueue to start, one polling shard",
    "python": "python: exec path vs the fork fast path",
    "resources": "resources: shard memory, mission tick CPU",
    "floors": "floors: process costs without a queue",
}

# metric -> (column header, format)
METRICS = {
    "tasks_per_s": ("tasks/s", "{:,.0f}"),
    "seconds": ("s", "{:.2f}"),
    "steady_per_s": ("steady tasks/s", "{:,.0f}"),
    "first_task_s": ("first task started s", "{:.3f}"),
    "first_done_s": ("first task done s", "{:.3f}"),
    "queue_cpu_ms_per_task": ("queue CPU ms/task (machine - xargs)", "{:.2f}"),
    "queue_tree_cpu_ms_per_task": ("queue CPU ms/task (tree - xargs)", "{:.2f}"),
    "cpu_ms_per_task": ("CPU ms/task (tree)", "{:.2f}"),
    "machine_cpu_ms_per_task": ("machine CPU ms/task", "{:.2f}"),
    "faults_per_task": ("minor faults/task", "{:,.0f}"),
    "ratio": ("ratio", "{:.3f}"),
    "steady_ratio": ("steady ratio", "{:.3f}"),
    "calls_per_s": ("calls/s", "{:,.0f}"),
    "driver_ms_per_call": ("driver ms/call", "{:.3f}"),
    "client_ms_per_call": ("client ms/call", "{:.3f}"),
    "statements_per_call": ("statements/call", "{:.1f}"),
    "commits_per_call": ("commits/call", "{:.1f}"),
    "driver_share": ("driver share", "{:.0%}"),
    "rows_per_s": ("rows/s", "{:,.0f}"),
    "driver_us_per_row": ("driver µs/row", "{:.2f}"),
    "client_us_per_row": ("client µs/row", "{:.2f}"),
    "statements": ("statements", "{:,.0f}"),
    "claim_ms": ("claim ms", "{:.2f}"),
    "drain_per_s": ("drain tasks/s", "{:,.0f}"),
    "claim_ratio": ("claim ratio", "{:.3f}"),
    "drain_ratio": ("drain ratio", "{:.3f}"),
    "p50_s": ("p50 s", "{:.3f}"),
    "p99_s": ("p99 s", "{:.3f}"),
    "max_s": ("max s", "{:.3f}"),
    "rss_mb": ("ru_maxrss MiB", "{:.1f}"),
    "own_hwm_mb": ("own VmHWM MiB", "{:.1f}"),
    "cpu_s": ("CPU s/tick", "{:.3f}"),
    "wall_s": ("wall s/tick", "{:.3f}"),
    "startup_cpu_s": ("CPU s", "{:.3f}"),
    "startup_wall_s": ("wall s", "{:.3f}"),
    "ms_per_task": ("ms/task", "{:.3f}"),
}


def fmt(metric: str, value: float) -> str:
    return METRICS.get(metric, (metric, "{:.4g}"))[1].format(value)


@dataclass(frozen=True)
class Ref:
    """A figure shown beside a target: the median of ``metric`` of ``variant`` in ``section``,
    on the target's backend (or on no database, ``no_db``), measured in the same run."""

    label: str
    section: str
    variant: str
    metric: str
    no_db: bool = False


@dataclass(frozen=True)
class Target:
    text: str
    section: str
    variant: str
    metric: str
    op: str  # ">=" or "<="
    bound: float
    backends: tuple[str, ...] = ("sqlite", "mariadb")
    refs: tuple[Ref, ...] = ()
    # the bound is a multiple of this figure's median (same section and backend)
    relative_to: Ref | None = None
    needs_flag: str | None = None  # a section flag that must be true to judge at all


def _drain_targets(section: str, size: str) -> tuple[Target, ...]:
    cq = f"cronqueue work, {size}"
    mission = f"mission tick, {size}"
    peer = Ref("best peer tasks/s", section, "best peer", "tasks_per_s")
    limit = Ref("xargs -P 2 tasks/s", section, "limit", "tasks_per_s")
    naive_cpu = Ref("naive queue CPU ms/task", section, "naive", "queue_cpu_ms_per_task")
    huey_cpu = Ref("huey queue CPU ms/task", section, "huey", "queue_cpu_ms_per_task")
    return (
        Target(f"drain ≥ 1.25x best peer ({cq})", section, "cronqueue/best peer", "ratio",
               ">=", 1.25, refs=(Ref("cronqueue tasks/s", section, "cronqueue", "tasks_per_s"),
                                 peer)),
        Target(f"drain ≥ 1.25x best peer ({mission})", section, "mission/best peer", "ratio",
               ">=", 1.25, refs=(Ref("mission tasks/s", section, "mission", "tasks_per_s"),
                                 peer)),
        Target(f"steady ≥ 0.80x xargs -P 2 ({cq})", section, "cronqueue/limit",
               "steady_ratio", ">=", 0.80,
               refs=(Ref("cronqueue steady tasks/s", section, "cronqueue", "steady_per_s"),
                     limit)),
        Target(f"steady ≥ 0.80x xargs -P 2 ({mission})", section, "mission/limit",
               "steady_ratio", ">=", 0.80,
               refs=(Ref("mission steady tasks/s", section, "mission", "steady_per_s"),
                     limit)),
        Target(f"queue CPU/task ≤ naive queue's ({cq})", section, "cronqueue",
               "queue_cpu_ms_per_task", "<=", 1.0, relative_to=naive_cpu,
               refs=(Ref("xargs machine CPU ms/task", section, "limit",
                         "machine_cpu_ms_per_task"), naive_cpu, huey_cpu,
                     Ref("cronqueue tree CPU - xargs's", section, "cronqueue",
                         "queue_tree_cpu_ms_per_task"),
                     Ref("naive tree CPU - xargs's", section, "naive",
                         "queue_tree_cpu_ms_per_task"))),
        Target(f"queue CPU/task ≤ naive queue's ({mission})", section, "mission",
               "queue_cpu_ms_per_task", "<=", 1.0, relative_to=naive_cpu,
               refs=(naive_cpu,)),
    )


TARGETS = (
    *_drain_targets("drain", "{drain} tasks"),
    *_drain_targets("drain_big", "{drain_big} tasks"),
    Target("first task done ≤ 0.25 s after the shards start", "drain", "cronqueue",
           "first_done_s", "<=", 0.25,
           refs=(Ref("first task started s", "drain", "cronqueue", "first_task_s"),
                 Ref("after a mission tick's start s", "drain", "mission", "first_done_s"),
                 Ref("import cronqueue.cli.main CPU s", "floors", "cli", "startup_cpu_s",
                     no_db=True),
                 Ref("import sqlalchemy CPU s", "floors", "sqlalchemy", "startup_cpu_s",
                     no_db=True),
                 Ref("python -c pass CPU s", "floors", "pass", "startup_cpu_s", no_db=True))),
    Target("add() ≥ 0.8x bare driver INSERT + COMMIT, same row", "enqueue", "add/raw", "ratio",
           ">=", 0.8, refs=(Ref("add() calls/s", "enqueue", "add", "calls_per_s"),
                            Ref("raw calls/s", "enqueue", "add raw", "calls_per_s"),
                            Ref("add() driver ms/call (split pass)", "enqueue", "add split",
                                "driver_ms_per_call"),
                            Ref("add() client ms/call (split pass)", "enqueue", "add split",
                                "client_ms_per_call"))),
    Target("add_many() ≥ 0.8x bare driver executemany, same rows", "enqueue", "add_many/raw",
           "ratio", ">=", 0.8,
           refs=(Ref("add_many() rows/s", "enqueue", "add_many", "rows_per_s"),
                 Ref("raw rows/s", "enqueue", "add_many raw", "rows_per_s"),
                 Ref("add_many() driver µs/row (split pass)", "enqueue", "add_many split",
                     "driver_us_per_row"),
                 Ref("add_many() client µs/row (split pass)", "enqueue", "add_many split",
                     "client_us_per_row"))),
    Target("Python fast path ≥ 10x exec path (steady)", "python", "fork/exec", "steady_ratio",
           ">=", 10, needs_flag="fork_active",
           refs=(Ref("bare exec/fork ceiling", "floors", "exec/fork", "ratio", no_db=True),)),
    Target("mission tick ≤ 0.3 s CPU", "resources", "mission", "cpu_s", "<=", 0.3,
           refs=(Ref("import cronqueue.cli.main CPU s", "floors", "cli", "startup_cpu_s",
                     no_db=True),)),
    Target("big-backlog claim time within 1.25x of small", "backlog", "big/small",
           "claim_ratio", "<=", 1.25,
           refs=(Ref("small claim ms", "backlog", "small", "claim_ms"),
                 Ref("big claim ms", "backlog", "big", "claim_ms"))),
    Target("big-backlog drain rate within 1.25x of small", "backlog", "big/small",
           "drain_ratio", ">=", 0.8,
           refs=(Ref("small drain tasks/s", "backlog", "small", "drain_per_s"),
                 Ref("big drain tasks/s", "backlog", "big", "drain_per_s"))),
    Target("enqueue-to-start p50 ≤ 0.5 s", "latency", "one shard", "p50_s", "<=", 0.5),
    Target("enqueue-to-start p99 ≤ 1.5 s", "latency", "one shard", "p99_s", "<=", 1.5),
    Target("shard peak RSS ≤ 60 MB (MiB, own VmHWM)", "resources", "shard", "own_hwm_mb",
           "<=", 60),
)

TARGET_HEADER = ["target", "backend", "measured: median (min-max)", "reference, same run",
                 "threshold", "status"]


def _values(results: dict[str, SectionResult], section: str, backend: str, variant: str,
            metric: str) -> list[float]:
    r = results.get(section)
    if r is None:
        return []
    return [s.metrics[metric] for s in r.samples
            if s.backend == backend and s.variant == variant and metric in s.metrics]


def _ref_text(results: dict[str, SectionResult], ref: Ref, backend: str) -> str:
    values = _values(results, ref.section, NO_DB if ref.no_db else backend, ref.variant,
                     ref.metric)
    shown = fmt(ref.metric, spread(values)[1]) if values else "—"
    return f"{ref.label} {shown}"


def judge(results: dict[str, SectionResult], errors: dict[str, str],
          backends: Sequence[str], sizes: dict[str, Any]) -> list[list[str]]:
    """Each target on each backend it names that this run measured: met / MISSED / n/a, with
    the references measured in the same run beside it. Judged on the median."""
    shown_sizes = {k: f"{v:,}" for k, v in sizes.items()}
    out = []
    for t in TARGETS:
        for backend in (b for b in t.backends if b in backends):
            refs = "; ".join(_ref_text(results, r, backend) for r in t.refs)
            bound, threshold = t.bound, f"{t.op} {t.bound:g}"
            if t.relative_to is not None:
                base = _values(results, t.section, backend, t.relative_to.variant,
                               t.relative_to.metric)
                bound = spread(base)[1] * t.bound if base else math.nan
                threshold = (f"{t.op} {t.bound:g}x {t.relative_to.label} "
                             f"({fmt(t.metric, bound) if base else '—'})")
            row = [t.text.format(**shown_sizes), backend]
            if t.section not in results:
                if t.section in errors:
                    out.append([*row, "—", refs, threshold, "ERROR (section failed)"])
                continue  # a section this run left out
            values = _values(results, t.section, backend, t.variant, t.metric)
            if not values or math.isnan(bound):
                out.append([*row, "—", refs, threshold, "not measured"])
                continue
            low, mid, high = spread(values)
            if t.needs_flag and not results[t.section].flags.get(t.needs_flag, False):
                status = "n/a (not available)"
            else:
                status = "met" if (mid >= bound if t.op == ">=" else mid <= bound) \
                    else "MISSED"
            measured = (fmt(t.metric, mid) if len(values) == 1 else
                        f"{fmt(t.metric, mid)} ({fmt(t.metric, low)}-{fmt(t.metric, high)})")
            out.append([*row, measured, refs, threshold, status])
    return out


def section_table(samples: Sequence[Sample], labels: dict[str, str],
                  backend_order: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """A row per (backend, variant) in the order measured, a column per metric: the median,
    and min-max when there is more than one repetition."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for s in samples:
        for metric, value in s.metrics.items():
            groups.setdefault((s.backend, s.variant), {}).setdefault(metric, []).append(value)
    metrics = list(dict.fromkeys(m for s in samples for m in s.metrics))  # as measured
    order = {NO_DB: -1} | {b: i for i, b in enumerate(backend_order)}  # no-database rows first
    rows = []
    for backend, variant in sorted(groups, key=lambda k: order.get(k[0], len(order))):
        cells = [backend, labels.get(variant, variant)]
        for metric in metrics:
            values = groups[(backend, variant)].get(metric)
            if not values:
                cells.append("")
                continue
            low, mid, high = spread(values)
            cells.append(fmt(metric, mid) if len(values) == 1 else
                         f"{fmt(metric, mid)} ({fmt(metric, low)}-{fmt(metric, high)})")
        rows.append(cells)
    return ["backend", "variant", *(METRICS.get(m, (m,))[0] for m in metrics)], rows


def _busy(machine: dict[str, str]) -> bool:
    """A 1-minute load average of 0.5 or more before the run (at its end the run's own load
    is in it)."""
    try:
        return float(machine.get("load average at start", "0").split()[0]) >= 0.5
    except (ValueError, IndexError):
        return True


def render(report: dict[str, Any]) -> str:
    machine = report["machine"]
    out = [f"# cronqueue benchmarks, {report['date']}", "",
           f"`{report['command']}`: {report['repeat']} repetition(s) "
           f"({report.get('big_repeat', report['repeat'])} of drain_big), interleaved; "
           f"cells are median (min-max); {report['elapsed_s']:.0f} s"
           + ("; QUICK SIZES: a smoke run" if report["quick"] else "") + ".", "",
           f"Load average (1, 5, 15 min) before: {machine.get('load average at start', '?')}; "
           f"after: {machine.get('load average at end', '?')}.", ""]
    if report["targets"]:
        out += ["## Targets", "", table(TARGET_HEADER, report["targets"]), ""]
        if _busy(machine):
            out += ["WARNING: the machine was busy before the run (load average above): the "
                    "machine CPU "
                    "figures (queue CPU = machine - xargs) include other processes' load.", ""]
    out += ["## Machine", "", table(["", ""], list(machine.items())), "",
            "Sizes: " + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}"
                                  for k, v in report["sizes"].items()), ""]
    shown_sizes = {k: f"{v:,}" for k, v in report["sizes"].items()}
    for name in report["order"]:
        out += [f"## {TITLES.get(name, name).format(**shown_sizes)}", ""]
        if name in report["errors"]:
            out += ["ERROR:", "", "```", report["errors"][name].rstrip(), "```", ""]
            continue
        section = report["sections"][name]
        out += [table(section["header"], section["rows"]), ""]
        for title, body in section["extras"].items():
            out += [f"### {title}", "", "```", body.rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"
