"""Rendering of bench.py's results: the machine, min/median/max tables, the targets (judged on
the median), as console text and as Markdown."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_lib import NO_DB, Backend, Sample, SectionResult, spread

ROOT = Path(__file__).resolve().parents[1]
BOTH = ("sqlite", "mariadb")

TITLES = {
    "drain": "drain — throughput against the process limit and a naive table queue",
    "enqueue": "enqueue — add() and add_many()",
    "backlog": "backlog — claim time and drain rate, small vs big backlog",
    "latency": "latency — enqueue to start, one polling shard",
    "python": "python — exec path vs the fork fast path",
    "resources": "resources — shard memory and CPU, mission tick CPU",
    "floors": "floors — what the missed targets are up against",
}

# metric -> (what it is, format)
METRICS = {
    "tasks_per_s": ("tasks/s", "{:,.0f}"),
    "seconds": ("seconds", "{:.2f}"),
    "steady_per_s": ("tasks/s steady", "{:,.0f}"),
    "steady_ratio": ("steady ratio", "{:.3f}"),
    "ratio": ("ratio", "{:.3f}"),
    "calls_per_s": ("calls/s", "{:,.0f}"),
    "rows_per_s": ("rows/s", "{:,.0f}"),
    "claim_ms": ("claim ms (median)", "{:.2f}"),
    "drain_per_s": ("drain tasks/s", "{:,.0f}"),
    "claim_ratio": ("claim time ratio", "{:.3f}"),
    "drain_ratio": ("drain rate ratio", "{:.3f}"),
    "p50_s": ("p50 s", "{:.3f}"),
    "p99_s": ("p99 s", "{:.3f}"),
    "max_s": ("max s", "{:.3f}"),
    "rss_mb": ("peak RSS MiB (wait4)", "{:.1f}"),
    "own_hwm_mb": ("own VmHWM MiB (sampled)", "{:.1f}"),
    "cpu_ms_per_task": ("CPU ms/task (shard+task)", "{:.2f}"),
    "faults_per_task": ("minor page faults/task", "{:,.0f}"),
    "cpu_s": ("CPU s per tick", "{:.3f}"),
    "wall_s": ("wall s per tick", "{:.3f}"),
    "startup_cpu_s": ("CPU s (user+sys), median of runs", "{:.3f}"),
    "startup_wall_s": ("wall s, median of runs", "{:.3f}"),
    "ms_per_task": ("ms per task", "{:.3f}"),
    "server_us_per_row": ("server+driver µs/row", "{:.2f}"),
    "client_us_per_row": ("client µs/row", "{:.2f}"),
    "server_rows_per_s": ("server+driver rows/s", "{:,.0f}"),
    "client_rows_per_s": ("client rows/s", "{:,.0f}"),
    "ceiling_rows_per_s": ("ceiling rows/s (1e6 / sum µs)", "{:,.0f}"),
}


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


def fmt(metric: str, value: float) -> str:
    return METRICS.get(metric, (metric, "{:.4g}"))[1].format(value)


# -- the machine ------------------------------------------------------------------------------

def machine(backends: dict[str, Backend]) -> dict[str, str]:
    import sqlalchemy

    import cronqueue

    info = {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "RAM": _meminfo("MemTotal"),
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "OS": _os_release(),
        "Python": f"{platform.python_version()} ({sys.executable})",
        "SQLAlchemy": sqlalchemy.__version__,
        "cronqueue": f"{cronqueue.__version__} (git {_git_describe()})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for name in BOTH:
        if name in backends:
            try:
                info[name] = backends[name].version()
            except Exception as exc:  # an unreachable server is reported by the run itself
                info[name] = f"unreachable: {exc}"
        else:
            info[name] = "not used in this run"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo(key: str) -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "unknown"


def _git_describe() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


# -- tables -----------------------------------------------------------------------------------

def summary_rows(samples: Sequence[Sample], labels: dict[str, str],
                 backend_order: Sequence[str]) -> list[list[str]]:
    """backend | variant | metric | min | median | max | n, in a stable order."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for s in samples:
        for metric, value in s.metrics.items():
            groups.setdefault((s.backend, s.variant, metric), []).append(value)
    order = {NO_DB: -1} | {b: i for i, b in enumerate(backend_order)}  # no-database rows first
    keys = sorted(groups, key=lambda k: order.get(k[0], len(order)))
    rows = []
    for backend, variant, metric in keys:
        low, mid, high = spread(groups[(backend, variant, metric)])
        rows.append([backend, labels.get(variant, variant), METRICS.get(metric, (metric,))[0],
                     fmt(metric, low), fmt(metric, mid), fmt(metric, high),
                     str(len(groups[(backend, variant, metric)]))])
    return rows


HEADER = ["backend", "variant", "metric", "min", "median", "max", "n"]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


# -- targets ----------------------------------------------------------------------------------

def judge(results: dict[str, SectionResult], errors: dict[str, str],
          backends: Sequence[str]) -> list[dict[str, str]]:
    """Each target on each backend it names that this run measured: met / missed / n/a."""
    out = []
    for t in TARGETS:
        for backend in (b for b in t.backends if b in backends):
            row = {"target": t.text, "backend": backend, "threshold": f"{t.op} {t.bound:g}"}
            section = results.get(t.section)
            if section is None:
                if t.section in errors:
                    out.append({**row, "measured": "—", "status": "ERROR (section failed)"})
                continue
            values = [s.metrics[t.metric] for s in section.samples
                      if s.backend == backend and s.variant == t.variant and t.metric in s.metrics]
            if not values:
                out.append({**row, "measured": "—", "status": "not measured"})
                continue
            low, mid, high = spread(values)
            measured = f"{fmt(t.metric, mid)} ({fmt(t.metric, low)}-{fmt(t.metric, high)})"
            if t.needs_flag and not section.flags.get(t.needs_flag, False):
                status = "n/a (not available)"
            else:
                met = mid >= t.bound if t.op == ">=" else mid <= t.bound
                status = "met" if met else "MISSED"
            out.append({**row, "measured": measured, "status": status})
    return out


# -- whole reports ----------------------------------------------------------------------------

NO_MISSES = "No target measured in this run was missed."


def console(report: dict[str, Any]) -> str:
    parts = []
    for name in report["order"]:
        parts.append(f"\n== {TITLES.get(name, name)}")
        if name in report["errors"]:
            parts.append(f"ERROR: {report['errors'][name]}")
        else:
            parts.append(text_table(HEADER, report["sections"][name]["rows"]))
    if report["targets"]:
        parts.append("\n== targets (judged on the median; min-max in parentheses)")
        parts.append(text_table(["target", "backend", "threshold", "measured", "status"],
                                [list(t.values()) for t in report["targets"]]))
    if report.get("blockers") is not None:
        parts.append("\n== what blocks the missed targets (medians; floors section of this run)")
        if not report["blockers"]:
            parts.append(NO_MISSES)
        for item in report["blockers"]:
            parts.append(f"{item['target']}, {item['backend']}: {item['gap']}")
            parts += [f"  - {line}" for line in item["lines"]]
    parts.append(f"\nrun took {report['elapsed_s']:.0f}s; {report['repeat']} repetition(s)"
                 f"{' (quick sizes)' if report['quick'] else ''}")
    return "\n".join(parts)


def markdown(report: dict[str, Any]) -> str:
    out = [
        "# cronqueue benchmarks",
        "",
        f"Generated by `bench/bench.py` on {report['date']} in {report['elapsed_s']:.0f} s, "
        f"{report['repeat']} repetition(s) of every variant, run interleaved (each repetition "
        "starts with a different variant). Tables give min / median / max over the "
        "repetitions; targets are judged on the median."
        + (" **Quick sizes (`--quick`): a smoke run, not a measurement.**"
           if report["quick"] else ""),
        "",
        "Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "Sizes: " + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}"
                              for k, v in report["sizes"].items()) + ".",
        "",
        "## Machine",
        "",
        md_table(["", ""], [[k, v] for k, v in report["machine"].items()]),
        "",
    ]
    if report["targets"]:
        out += ["## Targets", "",
                md_table(["target", "backend", "threshold", "measured: median (min-max)",
                          "status"], [list(t.values()) for t in report["targets"]]), ""]
    if report.get("blockers") is not None:
        out += ["## What blocks the missed targets", "",
                "For each target missed above: its gap, and the floors it is up against as the "
                "floors section of this run measured them (medians; min/max in that section's "
                "table), with the arithmetic spelled out. The derivations are estimates from "
                "these numbers, no more.", ""]
        if not report["blockers"]:
            out += [NO_MISSES, ""]
        for item in report["blockers"]:
            out.append(f"- **{item['target']}** ({item['backend']}): {item['gap']}")
            out += [f"  - {line}" for line in item["lines"]]
        out.append("")
    for name in report["order"]:
        out += [f"## {TITLES.get(name, name)}", ""]
        if name in report["errors"]:
            out += ["**ERROR**: the section did not complete:", "", "```",
                    report["errors"][name].rstrip(), "```", ""]
            continue
        sec = report["sections"][name]
        out += [f"- {note}" for note in sec["notes"]]
        out += ["", md_table(HEADER, sec["rows"]), ""]
        for title, body in sec["extras"].items():
            out += [f"### {title}", "", "```", body.rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"
