#!/usr/bin/env python3
"""cronqueue benchmarks: one command, one process tree, SQLite and MariaDB interleaved.

    python bench/bench.py                              # everything, 5 repetitions
    python bench/bench.py --write docs/benchmarks.md --json /tmp/bench.json
    python bench/bench.py --backends sqlite --sections drain --repeat 3
    python bench/bench.py --quick                      # tiny sizes: a smoke test (< 1 min)

Sections (``--sections``, default all):

* drain     2,000 /bin/true tasks drained by two burst shards, against the limit (xargs -P 2
            running the same processes) and a naive table queue (bench/naive_worker.py).
* enqueue   add() one by one (calls/s) and add_many() of 100,000 rows in one call (rows/s).
* backlog   claim time and drain rate on 10k pending rows vs 1M pending + 1M done rows, and
            the claim query's plan (EXPLAIN, ANALYZE FORMAT=JSON on MariaDB).
* latency   enqueue-to-start p50/p99 with one shard polling (--max-seconds).
* python    a trivial .py task via the exec path vs CRONQUEUE_PYTHON_FORK=1.
* resources peak RSS and CPU of a draining shard; CPU of one ``cronqueue mission`` tick.
* floors    what the missed targets are up against, in the same run: interpreter start-up CPU
            (bare, ``import sqlalchemy``, ``import cronqueue.cli.main``); Python's own
            subprocess.run loop in two processes vs xargs; one-row INSERT + COMMIT with the
            bare driver; add_many split into server+driver and client; a fork running the
            trivial task's code vs an exec of ``python -c pass``. The report derives from
            them, for each missed target, its gap and what blocks it ("What blocks the missed
            targets").

Every variant of a section runs ``--repeat`` times, interleaved: repetition r starts at the
r-th variant (rotating order), so drift in the machine's load hits all variants alike. Tables
show min/median/max; ratios are paired per repetition. A run that loses or fails a task is an
error (exit 1, shown in the report). Databases are ``cq_bench_*`` on the MariaDB server of
``--mysql-url`` and SQLite files in a temporary directory, all removed at the end. Progress
goes to stderr, the tables to stdout. CRONQUEUE_* variables of the caller are ignored.

Every process of the run is a descendant of this one: children are reaped with ``os.wait4``
(rusage), and this process is a child subreaper, so the shards a mission launches detached
are reaped here too. Timing numbers on a shared machine drift: compare medians of one run.

Modules: bench_lib.py (sizes, backends, processes, statistics), bench_sections.py (drain,
enqueue, latency, python, resources), bench_backlog.py (backlog), bench_floors.py (floors, and
the "what blocks it" lines), bench_report.py (tables, targets, Markdown), naive_worker.py (the
naive baseline's worker process), spawn_loop.py (the floors' queue-less child processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backlog import backlog
from bench_floors import floors, what_blocks
from bench_lib import (
    BOTH_BACKENDS,
    FULL,
    QUICK,
    Backend,
    BenchError,
    Ctx,
    Procs,
    SectionResult,
    become_subreaper,
    install_tasks,
)
from bench_report import console, judge, machine, markdown, summary_rows
from bench_sections import drain, enqueue_section, latency, python_section, resources

SECTIONS: dict[str, Callable[[Ctx], SectionResult]] = {
    "drain": drain,
    "enqueue": enqueue_section,
    "backlog": backlog,
    "latency": latency,
    "python": python_section,
    "resources": resources,
    "floors": floors,
}


def _csv(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"choose from {','.join(allowed)} (comma-separated), got {text!r}")
        return list(dict.fromkeys(items))

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", type=_csv(BOTH_BACKENDS), default=list(BOTH_BACKENDS),
                   help="sqlite,mariadb (default both)")
    p.add_argument("--mysql-url", default="mysql+pymysql://root:@127.0.0.1/",
                   help="a MariaDB account that may CREATE/DROP DATABASE (its database part "
                        "is ignored; cq_bench_* databases are created and dropped)")
    p.add_argument("--sections", type=_csv(tuple(SECTIONS)), default=list(SECTIONS),
                   help=f"{','.join(SECTIONS)} (default all)")
    p.add_argument("--repeat", type=int, help="repetitions (default 5; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, no numbers")
    p.add_argument("--write", type=Path, metavar="FILE.md", help="write a Markdown report")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the raw results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be >= 1")
    for out in (args.write, args.json):
        if out is not None and not out.resolve().parent.is_dir():
            p.error(f"{out}: no such directory")  # found now, not after the run
    return args


def run_sections(ctx: Ctx, names: list[str]) -> tuple[dict[str, SectionResult], dict[str, str]]:
    results: dict[str, SectionResult] = {}
    errors: dict[str, str] = {}
    for name in names:
        ctx.log(f"== section {name}")
        try:
            results[name] = SECTIONS[name](ctx)
        except BenchError as exc:
            errors[name] = str(exc)
            ctx.log(f"section {name} FAILED: {exc}")
        except Exception as exc:  # a crash of one section must not hide the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            ctx.log(f"section {name} CRASHED: {type(exc).__name__}: {exc}")
        finally:
            ctx.procs.kill_all()  # nothing of a section outlives it
    return results, errors


def build_report(args: argparse.Namespace, ctx: Ctx, info: dict[str, str],
                 results: dict[str, SectionResult], errors: dict[str, str],
                 started: datetime, elapsed: float) -> dict[str, Any]:
    sections = {
        name: {"notes": r.notes, "labels": r.labels, "extras": r.extras, "flags": r.flags,
               "rows": summary_rows(r.samples, r.labels, args.backends),
               "samples": [asdict(s) for s in r.samples]}
        for name, r in results.items()
    }
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    targets = judge(results, errors, args.backends)
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": info,
        "backends": args.backends,
        "repeat": ctx.repeat,
        "quick": ctx.quick,
        "sizes": asdict(ctx.sizes),
        "elapsed_s": elapsed,
        "order": [n for n in args.sections if n in sections or n in errors],
        "sections": sections,
        "errors": errors,
        "targets": targets,
        # only when the floors section ran: a missed target's gap and what blocks it
        "blockers": what_blocks(results, targets) if "floors" in results else None,
    }


def check_backends(backends: dict[str, Backend]) -> None:
    for b in backends.values():
        try:
            b.version()
        except Exception as exc:
            raise BenchError(f"{b.kind} is not usable: {exc}") from exc


def compile_package() -> str:
    """Byte-compile cronqueue as an installation would (``pip install`` writes the .pyc
    files). In a source checkout run with PYTHONDONTWRITEBYTECODE set, no .pyc is ever
    written and every shard and mission start would compile cronqueue from source — about
    0.1 s of CPU per process that no installed copy pays."""
    import compileall

    import cronqueue

    package = Path(cronqueue.__file__).parent
    ok = compileall.compile_dir(package, quiet=1, workers=1)
    how = "compiled by the bench" if ok else "compile FAILED: start-up includes compiling"
    env = " (PYTHONDONTWRITEBYTECODE set)" if sys.flags.dont_write_bytecode else ""
    return f"{how}{env}: {package}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in [v for v in os.environ if v.startswith("CRONQUEUE_")]:
        del os.environ[var]  # the caller's settings must not leak into the measurements
    become_subreaper()
    bytecode = compile_package()
    sizes = QUICK if args.quick else FULL
    root = Path(tempfile.mkdtemp(prefix="cq_bench_")).resolve()
    (root / "logs").mkdir()
    (root / "procs").mkdir()
    install_tasks(root / "tasks")
    backends = {b: Backend(b, root, args.mysql_url) for b in args.backends}
    ctx = Ctx(sizes=sizes, repeat=args.repeat or (1 if args.quick else 5), root=root,
              backends=backends, procs=Procs(root / "procs", sizes.process_timeout),
              quick=args.quick)
    started = datetime.now(UTC)
    try:
        check_backends(backends)
        info = machine(backends)
        info["cronqueue bytecode"] = bytecode
        results, errors = run_sections(ctx, args.sections)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        ctx.procs.kill_all()
        for b in backends.values():
            b.drop_all()
        if args.keep:
            print(f"bench: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    report = build_report(args, ctx, info, results, errors, started,
                          time.monotonic() - ctx.t0)
    print(console(report))
    if args.write:
        args.write.write_text(markdown(report))
        print(f"wrote {args.write}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
