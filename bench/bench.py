#!/usr/bin/env python3
"""cronqueue benchmarks: one command, one process tree, SQLite and MariaDB interleaved.

    python bench/bench.py                              # everything, 5 repetitions
    python bench/bench.py --out /tmp/bench.md --json /tmp/bench.json
    python bench/bench.py --backends sqlite --sections drain --repeat 3
    python bench/bench.py --quick                      # tiny sizes: a smoke test

Sections (``--sections``, default all): drain, drain_big, enqueue, backlog, latency, python,
resources, floors; docs/benchmarks.md says what each measures and analyses a run. drain_big
(20,000 tasks) runs ``--big-repeat`` times (default 2), the others ``--repeat`` times. The
report opens with the targets of issue 16, each beside its references measured in the same
run (the best peer, xargs, the bare driver, the interpreter floors). Repetition r of a
section starts at its r-th variant (rotating order), so drift in the machine's load hits all
variants alike; ratios are paired per repetition. A run that loses or fails a task is an error
(exit 1). Databases are ``cq_bench_*`` on the MariaDB server of ``--mysql-url`` and SQLite
files in a temporary directory, all removed at the end; CRONQUEUE_* variables of the caller are
ignored. Progress goes to stderr; the tables (Markdown) to stdout. Every process of the run is a
descendant of this one (a child subreaper: a mission's detached shards are reaped here too).

Modules: common.py (what every bench script shares), bench_lib.py (the harness),
driver_clock.py (driver vs client time), bench_drain.py, bench_sections.py, bench_backlog.py,
bench_floors.py, bench_report.py (the tables and the targets), naive_worker.py, huey_peer.py
(the peers: ``pip install -e '.[bench]'`` installs huey) and spawn_loop.py (child processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backlog import backlog
from bench_drain import PEERS, drain, drain_big
from bench_floors import floors
from bench_lib import (
    BOTH_BACKENDS,
    FULL,
    QUICK,
    Backend,
    Ctx,
    SectionResult,
    install_tasks,
)
from bench_report import TARGET_HEADER, judge, render, section_table
from bench_sections import enqueue_section, latency, python_section, resources
from common import BenchError, Procs, become_subreaper, load_average, run_header

SECTIONS: dict[str, Callable[[Ctx], SectionResult]] = {
    "drain": drain,
    "drain_big": drain_big,
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
    p.add_argument("--big-repeat", type=int,
                   help="repetitions of drain_big (default 2; 1 with --quick)")
    p.add_argument("--big-tasks", type=int,
                   help="tasks of drain_big (default 20,000; 200 with --quick)")
    p.add_argument("--peers", type=_csv(PEERS), default=["naive", "huey"],
                   help="the drain's peer queues: naive,huey (default), rq (opt-in: needs "
                        "pip install rq and a Redis server)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15",
                   help="the RQ peer's Redis (a queue cq_bench_* of its own, deleted after)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, no numbers")
    p.add_argument("--out", type=Path, metavar="FILE.md", help="also write the tables here")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the raw samples as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    for name in ("repeat", "big_repeat", "big_tasks"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if "rq" in args.peers:
        from rq_peer import available

        if (why := available(args.redis_url)) is not None:
            p.error(f"--peers rq: {why}")
    for out in (args.out, args.json):
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


def check_backends(backends: dict[str, Backend]) -> dict[str, str]:
    versions = {}
    for name, b in backends.items():
        try:
            versions[name] = b.version()
        except Exception as exc:
            raise BenchError(f"{b.kind} is not usable: {exc}") from exc
    return versions


def compile_package() -> str:
    """Byte-compile cronqueue as an installation would (``pip install`` writes the .pyc
    files). In a source checkout run with PYTHONDONTWRITEBYTECODE set, no .pyc is ever
    written and every shard and mission start would compile cronqueue from source: about
    0.1 s of CPU per process that no installed copy pays."""
    import compileall

    import cronqueue

    ok = compileall.compile_dir(Path(cronqueue.__file__).parent, quiet=1, workers=1)
    return "compiled by the bench" if ok else "compile FAILED: start-up includes compiling"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in [v for v in os.environ if v.startswith("CRONQUEUE_")]:
        del os.environ[var]  # the caller's settings must not leak into the measurements
    become_subreaper()
    header = run_header()
    header["machine"]["cronqueue bytecode"] = compile_package()
    sizes = QUICK if args.quick else FULL
    if args.big_tasks:
        sizes = replace(sizes, drain_big=args.big_tasks)
    root = Path(tempfile.mkdtemp(prefix="cq_bench_")).resolve()
    for sub in ("logs", "procs"):
        (root / sub).mkdir()
    install_tasks(root / "tasks")
    backends = {b: Backend(b, root, args.mysql_url) for b in args.backends}
    ctx = Ctx(sizes=sizes, repeat=args.repeat or (1 if args.quick else 5), root=root,
              backends=backends, procs=Procs(root / "procs", sizes.process_timeout),
              big_repeat=args.big_repeat or (1 if args.quick else 2), peers=tuple(args.peers),
              redis_url=args.redis_url)
    try:
        header["machine"].update(check_backends(backends))
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
    header["machine"]["load average at end"] = load_average()
    report = build_report(args, ctx, header, results, errors)
    text = render(report)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 1 if errors else 0


def build_report(args: argparse.Namespace, ctx: Ctx, header: dict[str, Any],
                 results: dict[str, SectionResult], errors: dict[str, str]) -> dict[str, Any]:
    sections = {}
    for name, r in results.items():
        columns, rows = section_table(r.samples, r.labels, args.backends)
        sections[name] = {"header": columns, "rows": rows, "extras": r.extras,
                          "flags": r.flags, "samples": [asdict(s) for s in r.samples]}
    return {**header, "backends": args.backends, "repeat": ctx.repeat,
            "big_repeat": ctx.big_repeat, "quick": args.quick,
            "sizes": asdict(ctx.sizes), "elapsed_s": time.monotonic() - ctx.t0,
            "order": [n for n in args.sections if n in sections or n in errors],
            "sections": sections, "errors": errors,
            "targets_header": TARGET_HEADER,
            "targets": judge(results, errors, args.backends, asdict(ctx.sizes))}


if __name__ == "__main__":
    sys.exit(main())
