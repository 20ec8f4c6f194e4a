"""bench.py's output: the run's date, command and machine, then one table per section (a row per
backend and variant, a column per metric: median, and min-max over the repetitions) and the
targets judged on the median. Markdown that also reads as plain text; no prose."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench_lib import NO_DB, Sample, SectionResult
from common import spread, table

TITLES = {
    "drain": "drain: 2 burst shards vs xargs -P 2 vs a naive table queue",
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
    "first_task_s": ("first task s", "{:.3f}"),
    "cpu_ms_per_task": ("CPU ms/task (tree)", "{:.2f}"),
    "machine_cpu_ms_per_task": ("machine CPU ms/task", "{:.2f}"),
    "faults_per_task": ("minor faults/task", "{:,.0f}"),
    "ratio": ("ratio", "{:.3f}"),
    "steady_ratio": ("steady ratio", "{:.3f}"),
    "calls_per_s": ("calls/s", "{:,.0f}"),
    "driver_ms_per_call": ("driver ms/call", "{:.3f}"),
    "client_ms_per_call": ("client ms/call", "{:.3f}"),
    "statements_per_call": ("statements/call", "{:.1f}"),
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
class Target:
    text: str
    section: str
    backends: tuple[str, ...]
    variant: str
    metric: str
    op: str  # ">=" or "<="
    bound: float
    needs_flag: str | None = None  # a section flag that must be true to judge at all


BOTH = ("sqlite", "mariadb")
TARGETS = (
    Target("drain ≥ 0.90x limit", "drain", ("mariadb",), "cronqueue/limit", "ratio", ">=",
           0.90),
    Target("drain ≥ 0.85x limit", "drain", ("sqlite",), "cronqueue/limit", "ratio", ">=", 0.85),
    Target("add() ≥ 3,000 calls/s", "enqueue", ("mariadb",), "add", "calls_per_s", ">=", 3000),
    Target("add_many ≥ 100,000 rows/s", "enqueue", ("mariadb",), "add_many", "rows_per_s",
           ">=", 100_000),
    Target("big-backlog claim time within 1.25x of small", "backlog", BOTH, "big/small",
           "claim_ratio", "<=", 1.25),
    Target("big-backlog drain rate within 1.25x of small", "backlog", BOTH, "big/small",
           "drain_ratio", ">=", 0.8),
    Target("enqueue-to-start p50 ≤ 0.5 s", "latency", BOTH, "one shard", "p50_s", "<=", 0.5),
    Target("enqueue-to-start p99 ≤ 1.5 s", "latency", BOTH, "one shard", "p99_s", "<=", 1.5),
    Target("Python fast path ≥ 10x exec path (steady)", "python", BOTH, "fork/exec",
           "steady_ratio", ">=", 10, needs_flag="fork_active"),
    Target("shard peak RSS ≤ 60 MB (MiB, own VmHWM)", "resources", BOTH, "shard", "own_hwm_mb",
           "<=", 60),
    Target("mission tick ≤ 0.3 s CPU", "resources", BOTH, "mission", "cpu_s", "<=", 0.3),
)


def judge(results: dict[str, SectionResult], errors: dict[str, str],
          backends: Sequence[str]) -> list[list[str]]:
    """Each target on each backend it names that this run measured: met / MISSED / n/a."""
    out = []
    for t in TARGETS:
        for backend in (b for b in t.backends if b in backends):
            row = [t.text, backend, f"{t.op} {t.bound:g}"]
            section = results.get(t.section)
            if section is None:
                if t.section in errors:
                    out.append([*row, "—", "ERROR (section failed)"])
                continue
            values = [s.metrics[t.metric] for s in section.samples
                      if s.backend == backend and s.variant == t.variant and t.metric in s.metrics]
            if not values:
                out.append([*row, "—", "not measured"])
                continue
            low, mid, high = spread(values)
            if t.needs_flag and not section.flags.get(t.needs_flag, False):
                status = "n/a (not available)"
            else:
                status = "met" if (mid >= t.bound if t.op == ">=" else mid <= t.bound) \
                    else "MISSED"
            measured = f"{fmt(t.metric, mid)} ({fmt(t.metric, low)}-{fmt(t.metric, high)})"
            out.append([*row, measured, status])
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


def render(report: dict[str, Any]) -> str:
    out = [f"# cronqueue benchmarks, {report['date']}", "",
           f"`{report['command']}`: {report['repeat']} repetition(s), interleaved; "
           f"cells are median (min-max); {report['elapsed_s']:.0f} s"
           + ("; QUICK SIZES: a smoke run" if report["quick"] else "") + ".", "",
           "Sizes: " + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}"
                                 for k, v in report["sizes"].items()), "",
           "## Machine", "", table(["", ""], list(report["machine"].items())), ""]
    if report["targets"]:
        out += ["## Targets", "", table(["target", "backend", "threshold",
                                         "median (min-max)", "status"], report["targets"]), ""]
    for name in report["order"]:
        out += [f"## {TITLES.get(name, name)}", ""]
        if name in report["errors"]:
            out += ["ERROR:", "", "```", report["errors"][name].rstrip(), "```", ""]
            continue
        section = report["sections"][name]
        out += [table(section["header"], section["rows"]), ""]
        for title, body in section["extras"].items():
            out += [f"### {title}", "", "```", body.rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"
