"""``pause`` and ``resume`` of a queue, and ``schedule pause`` / ``schedule resume`` of a mission
entry (``ops.py`` hands those two actions of ``schedule`` here): each through the public
:class:`~cronqueue.queue.Queue` (``pause``, ``resume``, ``pause_entry``, ``resume_entry``)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from cronqueue.cli.args import AddCommand, open_queue, parse_time
from cronqueue.cli.display import paused_text, visible
from cronqueue.config import Config
from cronqueue.errors import ConfigError

if TYPE_CHECKING:
    from cronqueue.store.pauses import Pause

UNTIL_HELP = ("end the pause by itself at this time: ISO-8601 as `add --at` takes it, "
              "2026-12-03T08:00 (UTC unless an offset is given) or 2026-12-03T09:00+01:00; "
              "default: until resumed")
REASON_HELP = "why, shown by stats, list, schedule and the dashboard (at most 1000 characters)"


def register(add: AddCommand) -> None:
    p = add("pause", "pause a queue: shards claim none of its tasks (running ones finish, add "
            "still enqueues) until `resume` or --until", cmd_pause)
    p.add_argument("queue", metavar="QUEUE", help="the queue's name (any well-formed name)")
    pause_options(p)

    p = add("resume", "resume a paused queue: shards claim its tasks again", cmd_resume)
    p.add_argument("queue", metavar="QUEUE", help="the queue's name")
    p.add_argument("--json", action="store_true",
                   help='print {"queue": NAME, "resumed": true|false, "pause": the pause '
                        "that ended or null} as JSON")


def pause_options(p: argparse.ArgumentParser) -> None:
    """``--until``, ``--reason`` and ``--json`` of ``pause`` and ``schedule pause``."""
    p.add_argument("--until", type=parse_time, metavar="TIME", help=UNTIL_HELP)
    p.add_argument("--reason", default="", help=REASON_HELP)
    p.add_argument("--json", action="store_true",
                   help="print the pause (times ISO-8601 with their UTC offset) as JSON")


def cmd_pause(args: argparse.Namespace, cfg: Config) -> int:
    pause = open_queue(cfg).pause(args.queue, args.until, reason=args.reason)
    if args.json:
        print(json.dumps(pause.as_dict(), indent=2))
    else:
        print(f"queue {visible(pause.name)} {describe(pause)}: shards claim none of its "
              "tasks; tasks running now finish; add() still enqueues")
    return 0


def cmd_resume(args: argparse.Namespace, cfg: Config) -> int:
    ended = open_queue(cfg).resume(args.queue)
    return _resumed("queue", args.queue, ended, args.json,
                    "shards claim its tasks again")


def cmd_schedule_action(args: argparse.Namespace, cfg: Config) -> int:
    """``schedule pause NAME`` and ``schedule resume NAME``."""
    if args.action != "pause" and (args.until is not None or args.reason):
        raise ConfigError("--until and --reason go with `schedule pause NAME`")
    if args.name is None:
        raise ConfigError(f"schedule {args.action}: give the entry's NAME")
    q = open_queue(cfg)
    if args.action == "resume":
        return _resumed("entry", args.name, q.resume_entry(args.name), args.json,
                        "the mission fires it again from its next scheduled time")
    pause = q.pause_entry(args.name, args.until, reason=args.reason)
    if args.json:
        print(json.dumps(pause.as_dict(), indent=2))
    else:
        print(f"entry {visible(pause.name)} {describe(pause)}: the mission does not fire it "
              "and records no run for the times it skips (not caught up on resume)")
    return 0


def schedule_options(p: argparse.ArgumentParser) -> None:
    """What ``schedule`` takes beyond listing the entries (``ops.py``): ``schedule pause NAME
    [--until TIME] [--reason TEXT]``, ``schedule resume NAME``."""
    p.add_argument("action", nargs="?", choices=["pause", "resume"],
                   help="pause or resume the entry NAME (without: list the entries)")
    p.add_argument("name", metavar="NAME", nargs="?", help="with pause or resume: the entry")
    p.add_argument("--until", type=parse_time, metavar="TIME",
                   help=f"with pause: {UNTIL_HELP}")
    p.add_argument("--reason", default="", help=f"with pause: {REASON_HELP}")


def _resumed(kind: str, name: str, ended: Pause | None, as_json: bool, then: str) -> int:
    if as_json:
        print(json.dumps({kind: name, "resumed": ended is not None,
                          "pause": ended.as_dict() if ended is not None else None}, indent=2))
    elif ended is None:
        print(f"{kind} {visible(name)} was not paused")
    else:
        print(f"{kind} {visible(name)} resumed (it was {describe(ended)}): {then}")
    return 0


def describe(pause: Pause) -> str:
    """``paused since 2026-12-02 10:00:00 UTC by ops@web1 until ... (deploy)``."""
    return paused_text(pause.as_dict())


def with_pause(task: dict[str, Any], paused: dict[str, Pause]) -> dict[str, Any]:
    """A task of ``list --json`` with ``queue_paused``: its queue's pause in force (since,
    until, by, reason), or null."""
    pause = paused.get(task["queue"]) if isinstance(task.get("queue"), str) else None
    task["queue_paused"] = None if pause is None else pause.details()
    return task
