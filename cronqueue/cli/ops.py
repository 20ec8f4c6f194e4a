"""The commands that run and watch the queue: ``work`` (one do_queue shard), ``mission``
(cron_mission), ``schedule`` and ``workers``."""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime

from cronqueue.cli.args import (
    AddCommand,
    entry_name,
    env_option,
    flag,
    integer,
    json_flag,
    max_seconds,
    open_queue,
    parse_time,
    task_id,
    upto,
)
from cronqueue.cli.display import format_schedule, format_workers, visible
from cronqueue.cli.pause import cmd_schedule_action, schedule_options
from cronqueue.config import MAX_BATCH, MAX_SHARDS, Config
from cronqueue.errors import ConfigError

log = logging.getLogger("cronqueue.cli")


def register(add: AddCommand) -> None:
    p = add("work", "run one do_queue shard: claim and run tasks with id %% TOTAL == SHARD",
            cmd_work)
    env_option(p, "--total", env="CRONQUEUE_TOTAL", type=upto(MAX_SHARDS), default=1,
               help="number of shards N (default 1)")
    env_option(p, "--shard", env="CRONQUEUE_SHARD", type=integer, default=0,
               help="this shard's index i, 0 <= i < N (default 0)")
    env_option(p, "--queue", env="CRONQUEUE_QUEUES", action="append", dest="queues",
               help="only this queue (repeatable; env: comma-separated; default: all)")
    env_option(p, "--batch", env="CRONQUEUE_BATCH", type=upto(MAX_BATCH),
               help="rows per claim (default: worker.batch)")
    env_option(p, "--max-seconds", env="CRONQUEUE_MAX_SECONDS", type=max_seconds,
               help="keep polling for this long (default: drain what is due and exit)")
    env_option(p, "--python-fork", env="CRONQUEUE_PYTHON_FORK", type=flag, nargs="?",
               const=True, help="run .py task scripts in children forked from a warm "
                                "interpreter (default: worker.python_fork)")
    env_option(p, "--entry", env="CRONQUEUE_ENTRY", type=entry_name,
               help="the mission entry this shard belongs to: at most one process per (entry, "
                    "shard) runs at a time on all hosts; others exit at once")

    p = add("mission", "cron_mission: run the schedule entries due this minute, then return "
            "(the one crontab line)", cmd_mission)
    env_option(p, "--now", env="CRONQUEUE_NOW", type=parse_time,
               help="act as if it were this time (ISO-8601; for tests and catch-up drills; "
                    "more than a minute ahead of the clock only with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what the tick would do; write, start and purge nothing")

    p = add("schedule", "the mission entries: cron, description, next runs, last run; "
            "`schedule pause NAME` / `schedule resume NAME`", cmd_schedule)
    json_flag(p, "the entries")
    schedule_options(p)  # pause / resume NAME: cli/pause.py

    p = add("workers", "running shards on every host; `workers stop` asks them to stop",
            cmd_workers)
    p.add_argument("action", nargs="?", choices=["list", "stop"], default="list")
    p.add_argument("ids", metavar="ID", nargs="*", type=task_id, help="with stop: worker ids")
    p.add_argument("--entry", help="with stop: the shards of this mission entry")
    p.add_argument("--shard", type=integer, help="with stop --entry: only this shard index")
    p.add_argument("--all", action="store_true", help="with stop: every running shard")
    json_flag(p, "the shards")


def cmd_work(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.cli.main import startup_done
    from cronqueue.shard.loop import Shard
    from cronqueue.spec import check_queue

    startup_done()  # imports done: the collector runs from here on (cli/main.py)
    if not 0 <= args.shard < args.total:
        raise ConfigError(f"--shard must be in 0..{args.total - 1} for --total {args.total}, "
                          f"got {args.shard}")
    for name in args.queues or []:
        check_queue(name)
    # --batch and --python-fork are in cfg.worker (flag > env > file > default: main.py)
    report = Shard(cfg, total=args.total, shard=args.shard, queues=args.queues,
                   batch=cfg.worker.batch, max_seconds=args.max_seconds, entry=args.entry).run()
    return 2 if report.refused else 0  # task_dir missing: logged by the shard, one line


def cmd_mission(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.cli.main import startup_done
    from cronqueue.mission.tick import Mission, refuse_future_drill

    startup_done()  # imports done: the collector runs from here on (cli/main.py)
    if args.now is not None and not args.dry_run:
        refuse_future_drill(args.now, datetime.now(UTC))
    if not cfg.missions:
        log.warning("no [[mission]] entries in %s: nothing to do",
                    cfg.source or "the configuration (no config file)")
    if args.dry_run:
        report = Mission(cfg).plan(args.now)
        for line in report.plan:
            print(line)
        return 1 if report.errors else 0
    report = Mission(cfg).tick(args.now)
    return 1 if report.errors else 0


def cmd_schedule(args: argparse.Namespace, cfg: Config) -> int:
    if args.action is not None or args.until is not None or args.reason:
        return cmd_schedule_action(args, cfg)
    entries = open_queue(cfg).schedule()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no [[mission]] entries ({cfg.source or 'no config file'})")
    else:
        print(format_schedule(entries))
    return 0


def cmd_workers(args: argparse.Namespace, cfg: Config) -> int:
    q = open_queue(cfg)
    if args.action == "stop":
        if not (args.ids or args.entry or args.all):
            raise ConfigError("workers stop: give worker ids, --entry NAME or --all")
        asked = q.stop_workers(args.ids or None, entry=args.entry, shard=args.shard)
        for w in asked:
            who = (f"worker {w.id} ({visible(w.host)}:{w.pid}, {visible(w.entry or '-')} "
                   f"shard {w.shard}/{w.total})")
            if w.signalled:
                print(f"asked {who} to stop: sent SIGTERM")
            else:
                print(f"asked {who} to stop through the database only ({w.no_signal_reason}): "
                      f"it stops at its next heartbeat, within {cfg.worker.heartbeat:g}s")
        if not asked:
            print("no running worker matched")
            return 1
        return 0
    workers = q.workers()
    if args.json:
        print(json.dumps([w.as_dict() for w in workers], indent=2))
        return 0
    print(format_workers(workers))
    return 0
