"""The floors section of bench.py: what cronqueue's processes are up against on this machine,
measured without any queue in the same run (interleaved like every section):

* interpreter start-up: ``python -c pass``, ``import sqlalchemy``, ``import cronqueue.cli.main``
  (every shard and every mission tick starts an interpreter);
* a spawn loop: two Python processes running ``subprocess.run([task, param])`` over the drain
  params, against xargs -P 2 in the same repetition;
* a fork whose child runs the trivial task's code and _exits, against
  ``subprocess.run([python, "-c", "pass"])``: the Python fast path's ceiling.

The database floors (a bare driver's INSERT) sit beside what they bound, in the enqueue
section."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from bench_drain import drain_limit, write_drain_args
from bench_lib import (
    HERE,
    NO_DB,
    Ctx,
    SectionResult,
    drain_params,
    paired_ratios,
    run_rotated,
)
from common import clean_env

INTERPRETERS = {
    "pass": "pass",
    "sqlalchemy": "import sqlalchemy",
    "cli": "import cronqueue.cli.main",
}
LABELS = {
    "pass": "interpreter: python -c pass",
    "sqlalchemy": "interpreter: import sqlalchemy",
    "cli": "interpreter: import cronqueue.cli.main",
    "spawn": "spawn loop (2 Python processes, subprocess.run, no queue)",
    "limit": "limit (xargs -P 2, same params)",
    "spawn/limit": "spawn loop/limit",
    "fork": "fork + the trivial task's code + _exit + wait4",
    "exec": "subprocess.run([python, -c, pass])",
    "exec/fork": "exec/fork (ceiling of the fast path)",
}


def floors(ctx: Ctx) -> SectionResult:
    s = ctx.sizes
    n = s.drain
    args_file = write_drain_args(ctx, drain_params(n))
    interpreter_runs: dict[int, dict[str, dict[str, float]]] = {}  # by repetition

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        if variant in INTERPRETERS:
            if rep not in interpreter_runs:  # all three at once, interleaved: comparable
                interpreter_runs[rep] = interpreters(ctx)
            return interpreter_runs[rep][variant]
        if variant in ("spawn", "limit"):
            seconds = spawn_loop(ctx, args_file) if variant == "spawn" else max(
                f.seconds for f in drain_limit(ctx, args_file)[0])
            return {"tasks_per_s": n / seconds, "seconds": seconds}
        return process_floor(ctx, variant, s.fork_loops if variant == "fork" else s.exec_loops)

    variants = [(NO_DB, v) for v in (*INTERPRETERS, "spawn", "limit", "fork", "exec")]
    samples = run_rotated(ctx, "floors", variants, measure)
    samples += paired_ratios(samples, "floors", "spawn", "limit", "tasks_per_s", "spawn/limit")
    samples += paired_ratios(samples, "floors", "exec", "fork", "ms_per_task", "exec/fork")
    return SectionResult(samples, labels=LABELS)


def interpreters(ctx: Ctx) -> dict[str, dict[str, float]]:
    """Each of INTERPRETERS ``floor_runs`` times, in turn (pass, sqlalchemy, cli, pass, ...),
    so that drift of the machine hits them alike; the median CPU and wall time of each."""
    cpu: dict[str, list[float]] = {name: [] for name in INTERPRETERS}
    wall: dict[str, list[float]] = {name: [] for name in INTERPRETERS}
    for _ in range(ctx.sizes.floor_runs):
        for name, code in INTERPRETERS.items():
            proc = ctx.procs.start([sys.executable, "-c", code], name="interpreter",
                                   env=clean_env(), cwd=ctx.root)
            done = ctx.procs.wait(proc)
            cpu[name].append(done.cpu_s)
            wall[name].append(done.seconds)
    return {name: {"startup_cpu_s": statistics.median(cpu[name]),
                   "startup_wall_s": statistics.median(wall[name])} for name in INTERPRETERS}


def spawn_loop(ctx: Ctx, args_file: Path) -> float:
    """Seconds from launch to exit of two spawn-loop processes (every 2nd line each)."""
    task = str(ctx.task_dir / "true")
    procs = [ctx.procs.start([sys.executable, str(HERE / "spawn_loop.py"), "loop",
                              str(args_file), task, str(i), "2"],
                             name=f"spawnloop{i}", env=clean_env(), cwd=ctx.root)
             for i in range(2)]
    return max(ctx.procs.wait(proc).seconds for proc in procs)


def process_floor(ctx: Ctx, step: str, rounds: int) -> dict[str, float]:
    """ms per task of ``spawn_loop.py fork|exec`` (in a fresh, small Python process), and the
    forked child's minor page faults."""
    out = ctx.root / f"floor-{step}.json"
    out.unlink(missing_ok=True)
    ctx.procs.wait(ctx.procs.start([sys.executable, str(HERE / "spawn_loop.py"), step,
                                    str(rounds), str(out)], name=f"floor-{step}",
                                   env=clean_env(), cwd=ctx.root))
    result = json.loads(out.read_text())
    floor = {"ms_per_task": float(result["ms_per_task"])}
    if step == "fork":
        floor["faults_per_task"] = float(result["faults_per_task"])
    return floor
