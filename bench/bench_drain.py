"""The drain sections of bench.py (``drain``: 2,000 tasks; ``drain_big``: 20,000 tasks, fewer
repetitions): the same ``/bin/true '<json>'`` tasks, backlog enqueued first, run by

* ``cronqueue``: two ``cronqueue work --total 2 --shard I`` started side by side;
* ``mission``: one ``cronqueue mission`` tick whose ``do_queue`` entry (total 2) starts the two
  shards detached (they are reaped here: bench.py is a child subreaper);
* ``limit``: ``xargs -P 2`` over the same params (no queue: the ceiling);
* ``naive``: the naive table queue (naive_worker.py: SELECT one row, run it, UPDATE it), two
  workers, on the same database kind;
* ``huey``: huey's SqliteHuey with two worker processes (huey_peer.py), a file of its own
  whichever the backend of the row (huey has no MariaDB storage of its own);
* ``rq`` (opt-in, ``--peers naive,huey,rq``): RQ, two burst workers on the Redis server of
  ``--redis-url`` (rq_peer.py).

Per variant: the drain rate (tasks / seconds from the launch until drained: the last process
exit for cronqueue, mission, naive, RQ and xargs; the last task's finish for huey, whose
consumer never exits by itself), the steady rate (first to last finish; xargs: its drain rate,
it has no start-up to speak of), the first task done after the launch, the CPU of the process
tree (wait4), the machine's CPU (/proc/stat: the database server included, and anyone else's
load) and the queue's CPU, that minus xargs's in the same repetition (also from the process
trees' CPU: no database server, but no other load either). Ratios are paired per repetition: the
drain against the best peer (the fastest of the peers in that repetition), the steady rate
against xargs's rate.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_lib import (
    HERE,
    Backend,
    Ctx,
    Sample,
    SectionResult,
    drain_params,
    enqueue,
    merge_samples,
    param_text,
    require_done,
    run_rotated,
    run_times,
    steady_rate,
)
from common import (
    BenchError,
    Finished,
    children_of,
    clean_env,
    has_exited,
    machine_cpu_s,
    toml_str,
    wait_rusage,
)
from sqlalchemy import create_engine, text

PEERS = ("naive", "huey", "rq")  # bench.py --peers: naive,huey by default
LABELS = {
    "cronqueue": "cronqueue: 2 x cronqueue work --total 2 --shard I",
    "mission": "cronqueue: a mission tick (do_queue total 2)",
    "limit": "limit: xargs -P 2 (steady = its rate)",
    "naive": "naive table queue (2 workers)",
    "huey": "huey SqliteHuey (2 worker processes)",
    "rq": "RQ (2 burst workers, Redis)",
    "best peer": "best peer (the fastest peer of the repetition)",
    "cronqueue/best peer": "cronqueue work / best peer",
    "mission/best peer": "mission tick / best peer",
    "cronqueue/limit": "cronqueue work / limit",
    "mission/limit": "mission tick / limit",
    "naive/limit": "naive / limit",
    "huey/limit": "huey / limit",
    "rq/limit": "RQ / limit",
}

NAIVE_DDL = {
    "sqlite": "CREATE TABLE naive (id INTEGER PRIMARY KEY AUTOINCREMENT, taskscript TEXT NOT "
              "NULL, param TEXT NOT NULL, status INTEGER NOT NULL DEFAULT 0, priority INTEGER "
              "NOT NULL DEFAULT 0, finished_at REAL)",
    "mariadb": "CREATE TABLE naive (id BIGINT AUTO_INCREMENT PRIMARY KEY, taskscript "
               "VARCHAR(255) NOT NULL, param TEXT NOT NULL, status SMALLINT NOT NULL DEFAULT 0, "
               "priority INT NOT NULL DEFAULT 0, finished_at DOUBLE) ENGINE=InnoDB",
}

MISSION_DRAIN = """\
db_url = {db}
task_dir = {tasks}
log_dir = {logs}

[[mission]]
name = "drain"
cron = "* * * * *"
do_queue = {{ total = 2 }}
"""


def drain(ctx: Ctx) -> SectionResult:
    return drain_section(ctx, "drain", ctx.sizes.drain, ctx.repeat)


def drain_big(ctx: Ctx) -> SectionResult:
    return drain_section(ctx, "drain_big", ctx.sizes.drain_big, ctx.big_repeat)


def drain_section(ctx: Ctx, section: str, n: int, repeat: int) -> SectionResult:
    params = drain_params(n)
    args_file = write_drain_args(ctx, params)
    runners: dict[str, Callable[[Backend], dict[str, float]]] = {
        "cronqueue": lambda b: drain_cronqueue(ctx, b, params),
        "mission": lambda b: drain_mission(ctx, b, params),
        "limit": lambda b: drain_limit_metrics(ctx, args_file, n),
        "naive": lambda b: drain_naive(ctx, b, params),
        "huey": lambda b: drain_huey(ctx, args_file, n),
        "rq": lambda b: drain_rq(ctx, args_file, n),
    }

    def measure(backend: str, variant: str, rep: int) -> dict[str, float]:
        return runners[variant](ctx.backends[backend])

    variants = [(b, v) for b in ctx.backends
                for v in ("cronqueue", "mission", "limit", *ctx.peers)]
    samples = run_rotated(ctx, section, variants, measure, repeat=repeat)
    derived, winners = derive(section, samples)
    return SectionResult(samples + derived, labels=LABELS, extras={
        "the best peer of each repetition": "\n".join(
            f"{b}: {', '.join(w)}" for b, w in winners.items())})


def derive(section: str, samples: list[Sample]) -> tuple[list[Sample], dict[str, list[str]]]:
    """Paired per (backend, repetition): each queue's CPU beyond xargs's (added to its own
    sample), the best peer, and the ratios."""
    by = {(s.backend, s.variant, s.rep): s.metrics for s in samples}
    out: list[Sample] = []
    winners: dict[str, list[str]] = {}
    for backend, rep in sorted({(s.backend, s.rep) for s in samples}, key=lambda k: k[1]):
        limit = by.get((backend, "limit", rep))
        if limit is None:
            continue
        for variant in ("cronqueue", "mission", *PEERS):
            if (m := by.get((backend, variant, rep))) is not None:
                m["queue_cpu_ms_per_task"] = (m["machine_cpu_ms_per_task"]
                                              - limit["machine_cpu_ms_per_task"])
                m["queue_tree_cpu_ms_per_task"] = (m["cpu_ms_per_task"]
                                                   - limit["cpu_ms_per_task"])
        peers = {p: by[(backend, p, rep)] for p in PEERS if (backend, p, rep) in by}
        if not peers:
            continue
        best_name = max(peers, key=lambda p: peers[p]["tasks_per_s"])
        best = peers[best_name]
        winners.setdefault(backend, []).append(best_name)
        out.append(Sample(section, backend, "best peer", rep, {
            "tasks_per_s": best["tasks_per_s"], "steady_per_s": best["steady_per_s"]}))
        for variant in ("cronqueue", "mission"):
            if (m := by.get((backend, variant, rep))) is None:
                continue
            out.append(Sample(section, backend, f"{variant}/best peer", rep, {
                "ratio": _ratio(m["tasks_per_s"], best["tasks_per_s"]),
                "steady_ratio": _ratio(m["steady_per_s"], best["steady_per_s"])}))
        for variant in ("cronqueue", "mission", *PEERS):
            if (m := by.get((backend, variant, rep))) is None:
                continue
            out.append(Sample(section, backend, f"{variant}/limit", rep, {
                "ratio": _ratio(m["tasks_per_s"], limit["tasks_per_s"]),
                "steady_ratio": _ratio(m["steady_per_s"], limit["tasks_per_s"])}))
    return merge_samples(out), winners


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def write_drain_args(ctx: Ctx, params: list[dict[str, Any]]) -> Path:
    """The params, one JSON text a line: what xargs, huey and the floors' spawn loop read."""
    args_file = ctx.root / f"drain-args-{len(params)}.txt"
    args_file.write_text("".join(param_text(p) + "\n" for p in params))
    return args_file


def _metrics(n: int, seconds: float, finished: list[Finished], machine_cpu: float, *,
             launched: float, first: float, last: float) -> dict[str, float]:
    """first / last: the first and the last task's finish (epoch seconds)."""
    return {"tasks_per_s": n / seconds, "seconds": seconds,
            "steady_per_s": (n - 1) / (last - first) if n > 1 and last > first else math.inf,
            "first_done_s": first - launched,
            "cpu_ms_per_task": sum(f.cpu_s for f in finished) / n * 1e3,
            "machine_cpu_ms_per_task": machine_cpu / n * 1e3}


# -- cronqueue --------------------------------------------------------------------------------

def drain_cronqueue(ctx: Ctx, backend: Backend, params: list[dict[str, Any]]) -> dict[str, float]:
    """Two burst shards started side by side; launch to the last exit."""
    n = len(params)
    url = backend.fresh("drain")
    try:
        enqueue(ctx, url, [{"taskscript": "true", "param": p} for p in params])
        cpu, launched = machine_cpu_s(), time.time()
        seconds, finished = ctx.run_shards(url, total=2)
        cpu = machine_cpu_s() - cpu
        return _cronqueue_metrics(url, n, backend, seconds, finished, cpu, launched)
    finally:
        backend.drop(url)


def _cronqueue_metrics(url: str, n: int, backend: Backend, seconds: float,
                       finished: list[Finished], cpu: float, launched: float
                       ) -> dict[str, float]:
    require_done(url, n, f"drain on {backend.kind}")
    done, started, first, last = run_times(url)
    metrics = _metrics(n, seconds, finished, cpu, launched=launched,
                       first=first.timestamp(), last=last.timestamp())
    metrics["steady_per_s"] = steady_rate(done, first, last)
    metrics["first_task_s"] = started.timestamp() - launched
    return metrics


def drain_mission(ctx: Ctx, backend: Backend, params: list[dict[str, Any]]) -> dict[str, float]:
    """One ``cronqueue mission`` tick (no --now: the current minute) with a do_queue entry of
    total 2; its detached shards drain the backlog and exit; launch to the last exit. The tree
    CPU is the mission's and the shards'."""
    n = len(params)
    url = backend.fresh("missiondrain")
    config = ctx.root / "drain-mission.toml"
    config.write_text(MISSION_DRAIN.format(db=toml_str(url), tasks=toml_str(ctx.task_dir),
                                           logs=toml_str(ctx.log_dir)))
    argv = [sys.executable, "-m", "cronqueue", "mission", "--config", str(config),
            "--log-level", "warning"]
    try:
        enqueue(ctx, url, [{"taskscript": "true", "param": p} for p in params])
        cpu, launched, began = machine_cpu_s(), time.time(), time.perf_counter()
        finished = [ctx.procs.wait(ctx.procs.start(argv, name="mission", env=clean_env(),
                                                   cwd=ctx.root))]
        shards = reap_detached(ctx, began)
        seconds = time.perf_counter() - began
        cpu = machine_cpu_s() - cpu
        if len(shards) != 2:
            raise BenchError(f"the mission tick on {backend.kind} left {len(shards)} "
                             "processes to reap, not 2 shards")
        return _cronqueue_metrics(url, n, backend, seconds, finished + shards, cpu, launched)
    finally:
        backend.drop(url)


def reap_detached(ctx: Ctx, began: float) -> list[Finished]:
    """Reap every child of ours that bench.py did not start (a mission's detached shards,
    re-parented here when the mission exited), each with its rusage; a failed one is an error.
    """
    out: list[Finished] = []
    deadline = time.monotonic() + ctx.sizes.process_timeout
    while pids := [p for p in children_of(os.getpid()) if p not in ctx.procs.live]:
        for pid in pids:
            try:
                status, usage = wait_rusage(pid, max(deadline - time.monotonic(), 0.0))
            except ChildProcessError:
                continue
            except TimeoutError:
                ctx.procs.kill_all()
                raise BenchError(f"detached process {pid} still running after "
                                 f"{ctx.sizes.process_timeout:g}s; killed") from None
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise BenchError(f"a detached shard (pid {pid}) exited {code}; see "
                                 f"{ctx.log_dir / 'shards.log'}")
            out.append(Finished(code, usage, time.perf_counter() - began))
    return out


# -- the references ---------------------------------------------------------------------------

def drain_limit(ctx: Ctx, args_file: Path) -> tuple[list[Finished], float]:
    """xargs -P 2 over the args file: its process, and the machine's CPU meanwhile."""
    argv = ["xargs", "-P", "2", "-n", "1", "-d", "\n", str(ctx.task_dir / "true")]
    with open(args_file, "rb") as stdin:
        cpu = machine_cpu_s()
        finished = ctx.procs.wait(ctx.procs.start(argv, name="xargs", stdin=stdin, cwd=ctx.root))
        return [finished], machine_cpu_s() - cpu


def drain_limit_metrics(ctx: Ctx, args_file: Path, n: int) -> dict[str, float]:
    finished, cpu = drain_limit(ctx, args_file)
    seconds = finished[0].seconds
    return {"tasks_per_s": n / seconds, "seconds": seconds, "steady_per_s": n / seconds,
            "cpu_ms_per_task": finished[0].cpu_s / n * 1e3,
            "machine_cpu_ms_per_task": cpu / n * 1e3}


def drain_naive(ctx: Ctx, backend: Backend, params: list[dict[str, Any]]) -> dict[str, float]:
    """The naive table queue (naive_worker.py): two workers, one row at a time; launch to the
    last exit."""
    n = len(params)
    url = backend.fresh("naive")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if backend.kind == "sqlite":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.execute(text(NAIVE_DDL[backend.kind]))
            conn.execute(text("INSERT INTO naive (taskscript, param) VALUES ('true', :param)"),
                         [{"param": param_text(p)} for p in params])
        env = clean_env(NAIVE_DB=json.dumps(backend.driver_params(url)),
                        NAIVE_TASK_DIR=str(ctx.task_dir))
        cpu, launched, began = machine_cpu_s(), time.time(), time.perf_counter()
        procs = [ctx.procs.start([sys.executable, str(HERE / "naive_worker.py"), str(i), "2"],
                                 name=f"naive{i}", env=env, cwd=ctx.root) for i in range(2)]
        finished = [ctx.procs.wait(proc) for proc in procs]
        seconds = time.perf_counter() - began
        cpu = machine_cpu_s() - cpu
        with engine.connect() as conn:
            done, first, last = conn.execute(text(
                "SELECT COUNT(*), MIN(finished_at), MAX(finished_at) FROM naive "
                "WHERE status = 1")).one()
        if done != n:
            raise BenchError(f"naive queue on {backend.kind}: {done} of {n} done")
    finally:
        engine.dispose()
        backend.drop(url)
    return _metrics(n, seconds, finished, cpu, launched=launched, first=float(first),
                    last=float(last))


def drain_huey(ctx: Ctx, args_file: Path, n: int) -> dict[str, float]:
    """huey_peer.py: enqueue the backlog, start the consumer (2 worker processes), wait for
    every task's finish line, stop it (SIGINT: huey's graceful stop, the workers joined)."""
    work = ctx.root / "huey"
    shutil.rmtree(work, ignore_errors=True)
    done_dir = work / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    env = clean_env(HUEY_DB=str(work / "huey.db"), HUEY_TASK_DIR=str(ctx.task_dir),
                    HUEY_DONE_DIR=str(done_dir), PYTHONPATH=str(HERE))
    ctx.procs.wait(ctx.procs.start([sys.executable, str(HERE / "huey_peer.py"), "enqueue",
                                    str(args_file)], name="huey-enqueue", env=env,
                                   cwd=ctx.root))
    argv = [sys.executable, "-m", "huey.bin.huey_consumer", "huey_peer.huey", "-w", "2",
            "-k", "process", "-n", "-q"]
    cpu, launched = machine_cpu_s(), time.time()
    consumer = ctx.procs.start(argv, name="huey", env=env, cwd=ctx.root)
    deadline = time.monotonic() + ctx.sizes.process_timeout
    try:
        while len(times := done_times(done_dir)) < n:
            if time.monotonic() > deadline:
                raise BenchError(f"huey: {len(times)} of {n} tasks done after "
                                 f"{ctx.sizes.process_timeout:g}s")
            if has_exited(consumer):
                code = ctx.procs.wait(consumer, check=False).returncode
                raise BenchError(f"the huey consumer exited {code} with {len(times)} of {n} "
                                 "tasks done")
            time.sleep(0.01)
        cpu = machine_cpu_s() - cpu
    finally:
        ctx.procs.signal(consumer, 2)  # SIGINT: graceful
    finished = ctx.procs.wait(consumer, check=False)
    if len(times) != n:
        raise BenchError(f"huey: {len(times)} finish lines for {n} tasks")
    first, last = min(times), max(times)
    return _metrics(n, last - launched, [finished], cpu, launched=launched, first=first,
                    last=last)


def done_times(done_dir: Path) -> list[float]:
    """Every finish time huey_peer's workers recorded so far (a file per worker process)."""
    times: list[float] = []
    for path in done_dir.glob("done-*.txt"):
        times += [float(x) for x in path.read_text().split()]
    return times


def drain_rq(ctx: Ctx, args_file: Path, n: int) -> dict[str, float]:
    """rq_peer.py: enqueue the backlog into a queue of our own, start two burst workers, launch
    to the last exit; the queue and its jobs deleted after."""
    work = ctx.root / "rq"
    shutil.rmtree(work, ignore_errors=True)
    done_dir = work / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    name = f"cq_bench_{os.getpid()}_{next(_RQ_QUEUES)}"
    env = clean_env(RQ_TASK_DIR=str(ctx.task_dir), RQ_DONE_DIR=str(done_dir),
                    PYTHONPATH=str(HERE))
    peer = [sys.executable, str(HERE / "rq_peer.py")]
    try:
        ctx.procs.wait(ctx.procs.start([*peer, "enqueue", ctx.redis_url, name, str(args_file)],
                                       name="rq-enqueue", env=env, cwd=ctx.root))
        argv = [sys.executable, "-m", "rq.cli", "worker", "--burst", "-q", "--url",
                ctx.redis_url, "--path", str(HERE), name]
        cpu, launched, began = machine_cpu_s(), time.time(), time.perf_counter()
        procs = [ctx.procs.start(argv, name=f"rq{i}", env=env, cwd=ctx.root) for i in range(2)]
        finished = [ctx.procs.wait(proc) for proc in procs]
        seconds = time.perf_counter() - began
        cpu = machine_cpu_s() - cpu
    finally:
        ctx.procs.wait(ctx.procs.start([*peer, "delete", ctx.redis_url, name],
                                       name="rq-delete", env=env, cwd=ctx.root), check=False)
    times = done_times(done_dir)
    if len(times) != n:
        raise BenchError(f"rq: {len(times)} finish lines for {n} tasks")
    return _metrics(n, seconds, finished, cpu, launched=launched, first=min(times),
                    last=max(times))


_RQ_QUEUES = itertools.count(1)
