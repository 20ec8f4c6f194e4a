"""The task commands: ``add``, ``status``, ``list``, ``stats``, ``retry``, ``cancel``,
``purge`` — each through the public :class:`~cronqueue.queue.Queue`."""

from __future__ import annotations

import argparse
import json
import sys

from cronqueue.cli.args import (
    AddCommand,
    env_option,
    integer,
    json_flag,
    open_queue,
    parse_age,
    parse_time,
    positive_int,
    seconds,
    status,
    task_id,
    upto,
)
from cronqueue.cli.display import (
    format_stats,
    format_table,
    format_task,
    status_name,
    visible,
)
from cronqueue.config import Config
from cronqueue.decode import INT_MAX
from cronqueue.errors import ConfigError, InvalidTask, TaskNotFound
from cronqueue.model import Status


def register(add: AddCommand) -> None:
    p = add("add", "enqueue a task; prints its id", cmd_add)
    p.add_argument("taskscript", metavar="TASKSCRIPT", help="script path relative to task_dir")
    p.add_argument("param", metavar="PARAM_JSON", nargs="?", default="null",
                   help="param as JSON text (default null)")
    env_option(p, "--priority", env="CRONQUEUE_ADD_PRIORITY", type=integer, default=0,
               help="higher runs sooner (default 0)")
    env_option(p, "--queue", env="CRONQUEUE_ADD_QUEUE", default="default", help="queue name")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=seconds, help="run after this long (30, 5m, 2h)")
    when.add_argument("--at", type=parse_time, help="run at this ISO time (UTC if no offset)")
    p.add_argument("--max-attempts", type=positive_int, help="default: worker.max_attempts")
    p.add_argument("--timeout", type=positive_int, help="seconds; default: worker.timeout")
    p.add_argument("--unique-key", help="while a task with this key is active, return its id")
    p.add_argument("--secret-stdin", action="store_true",
                   help="read a JSON secret from stdin; the script gets it on its stdin, "
                        "never in argv")
    p.add_argument("--no-check", action="store_true",
                   help="do not look for TASKSCRIPT in task_dir (by default a script not "
                        "found there is added with a warning: it may be deployed later)")
    json_flag(p, '{"id": N, "existing": false}; existing: a task holding --unique-key was '
                 "found and its id returned")

    p = add("status", "show one task", cmd_status)
    p.add_argument("id", metavar="ID", type=task_id, help="the task's id")
    p.add_argument("--wait", action="store_true",
                   help="wait until it is finished; exit 0 if done, 1 if failed or cancelled, "
                        f"{WAIT_TIMED_OUT} if --timeout passed first")
    p.add_argument("--timeout", type=seconds,
                   help=f"with --wait: give up after this long (30, 5m; exit {WAIT_TIMED_OUT})")
    json_flag(p, "the task")

    p = add("list", "list tasks, newest first", cmd_list)
    p.add_argument("--status", type=status, help="pending, done, running, failed, cancelled")
    p.add_argument("--queue")
    p.add_argument("--limit", type=upto(INT_MAX), default=50)
    json_flag(p, "the tasks")

    p = add("stats", "counts by status and queue, due backlog", cmd_stats)
    json_flag(p, "the counts")

    p = add("retry", "run a failed or cancelled task again", cmd_retry)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", metavar="ID", type=task_id, nargs="?", help="the task's id")
    which.add_argument("--failed", action="store_true", help="every failed task")

    p = add("cancel", "cancel a pending task", cmd_cancel)
    p.add_argument("id", metavar="ID", type=task_id, help="the task's id")

    p = add("purge", "delete finished tasks older than an age (pending or running ones only "
            "with --include-pending --yes)", cmd_purge)
    p.add_argument("--older-than", type=parse_age, required=True, metavar="AGE",
                   help="e.g. 7d, 12h, 3600: finished that long ago (pending and running "
                        "tasks: created that long ago)")
    p.add_argument("--status", type=status, action="append", dest="statuses", metavar="STATUS",
                   help="only tasks of this status (repeatable; default: done, failed, "
                        "cancelled)")
    p.add_argument("--include-pending", action="store_true",
                   help="allow pending and running tasks (all statuses if no --status); "
                        "needs --yes")
    p.add_argument("--yes", action="store_true",
                   help="with --include-pending: really delete tasks that have not finished")
    p.add_argument("--dry-run", action="store_true",
                   help="count what would be deleted, per status; delete nothing")


def cmd_add(args: argparse.Namespace, cfg: Config) -> int:
    try:
        param = json.loads(args.param)
    except ValueError as exc:
        raise InvalidTask(f"PARAM_JSON is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidTask("PARAM_JSON is nested too deeply to decode") from None
    secret = None
    if args.secret_stdin:
        try:
            secret = json.loads(sys.stdin.read())
        except ValueError as exc:
            raise InvalidTask(f"--secret-stdin: stdin is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidTask("--secret-stdin: stdin is nested too deeply to decode") from None
    q = open_queue(cfg)
    now = q.clock()
    q.clock = lambda: now  # the new row's ctime: how a row found by its unique key differs
    new_id = q.add(
        args.taskscript, param, priority=args.priority, queue=args.queue, delay=args.delay,
        run_at=args.at, max_attempts=args.max_attempts, timeout=args.timeout,
        unique_key=args.unique_key, secret=secret)
    existing = False
    if args.unique_key is not None:
        found = q.get(new_id)
        existing = found is not None and found.ctime != now
        if existing and found is not None:
            print(f"cronqueue: task {new_id} ({status_name(found.status)}) holds unique_key "
                  f"{visible(args.unique_key)}: its id is returned, nothing was added",
                  file=sys.stderr)
    if not (args.no_check or existing):
        from cronqueue.cli.checks import script_problem

        problem = script_problem(cfg.task_dir, args.taskscript)
        if problem is not None:
            print(f"cronqueue: warning: {problem}; added anyway (it may be deployed before a "
                  "shard runs it; --no-check skips this check)", file=sys.stderr)
    print(json.dumps({"id": new_id, "existing": existing}) if args.json else new_id)
    return 0


WAIT_TIMED_OUT = 3
"""``status --wait --timeout T``: T passed and the task is not finished (not a failed task: 1)."""


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    q = open_queue(cfg)
    task = q.wait(args.id, timeout=args.timeout) if args.wait else q.get(args.id)
    if task is None:
        raise TaskNotFound(f"no task with id {args.id}")
    if args.json:
        print(json.dumps(task.as_dict(), indent=2))
    else:
        # a task whose max_attempts/timeout are NULL gets the configuration's, as a shard does
        print(format_task(task, max_attempts=cfg.worker.retry.attempts_for(None),
                          timeout=cfg.worker.timeout))
    if not args.wait:
        return 0
    if not task.status.finished and "status" not in task.bad_columns:
        print(f"cronqueue: timed out after {args.timeout:g}s waiting for task {task.id}: still "
              f"{status_name(task.status)}", file=sys.stderr)
        return WAIT_TIMED_OUT
    return 0 if task.status is Status.DONE else 1


COUNT_CAP = 10_000  # `list` counts the tasks it did not show up to this many


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    from cronqueue.cli.pause import with_pause

    q = open_queue(cfg)
    tasks = q.list(status=args.status, queue=args.queue, limit=args.limit)
    paused = {p.name: p for p in q.pauses()}  # marked in the table, queue_paused in JSON
    if args.json:
        print(json.dumps([with_pause(t.as_dict(), paused) for t in tasks], indent=2))
        return 0
    print(format_table(tasks, paused={name: p.as_dict() for name, p in paused.items()}))
    if len(tasks) == args.limit:  # stopped at its limit: say so, and how many there are
        count = q.count(status=args.status, queue=args.queue, cap=max(COUNT_CAP, args.limit))
        if count > len(tasks):
            print(shown_of(len(tasks), count, max(COUNT_CAP, args.limit)))
    return 0


def shown_of(shown: int, count: int, cap: int) -> str:
    """``50 of 1,014 shown; --limit N for more`` (``count`` > ``cap``: more than ``cap``)."""
    total = f"more than {cap:,}" if count > cap else f"{count:,}"
    return f"{shown:,} of {total} shown (newest first); --limit N for more"


def cmd_stats(args: argparse.Namespace, cfg: Config) -> int:
    stats = open_queue(cfg).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(format_stats(stats))
    return 0


def cmd_retry(args: argparse.Namespace, cfg: Config) -> int:
    q = open_queue(cfg)
    if args.failed:
        print(f"retrying {q.retry_failed()} failed task(s)")
    else:
        q.retry(args.id)
        print(f"task {args.id} is pending again")
    return 0


def cmd_cancel(args: argparse.Namespace, cfg: Config) -> int:
    open_queue(cfg).cancel(args.id)
    print(f"task {args.id} cancelled")
    return 0


PURGE_COUNT_CAP = 1_000_000  # purge --dry-run counts each status up to this many
_UNFINISHED = (Status.PENDING, Status.RUNNING)


def cmd_purge(args: argparse.Namespace, cfg: Config) -> int:
    """``purge --older-than 1m`` deleted 979 tasks at once, with no way to see them first:
    ``--dry-run`` counts, ``--status`` narrows, and pending or running tasks (not finished:
    aged by their creation time) are deleted only with ``--include-pending --yes``."""
    chosen = list(dict.fromkeys(args.statuses or (
        [*Status] if args.include_pending else [Status.DONE, Status.FAILED, Status.CANCELLED])))
    unfinished = [s for s in chosen if s in _UNFINISHED]
    age = f"{args.older_than.total_seconds():g}s"
    q = open_queue(cfg)
    if args.dry_run:
        counts = q.purgeable(args.older_than, statuses=chosen, cap=PURGE_COUNT_CAP)
        total = sum(min(n, PURGE_COUNT_CAP) for n in counts.values())
        more = any(n > PURGE_COUNT_CAP for n in counts.values())
        each = ", ".join(f"{s.name.lower()} {_count(n, PURGE_COUNT_CAP)}"
                         for s, n in counts.items())
        print(f"would purge {'more than ' if more else ''}{total:,} task(s) older than {age}: "
              f"{each} (dry run: nothing deleted)")
        return 0
    if unfinished and not (args.include_pending and args.yes):
        names = " and ".join(s.name.lower() for s in unfinished)
        raise ConfigError(f"purge: refusing to delete {names} tasks (not finished) without "
                          "--include-pending --yes; --dry-run counts them")
    deleted = q.purge(args.older_than, statuses=chosen)
    print(f"purged {deleted:,} task(s) older than {age} "
          f"({', '.join(s.name.lower() for s in chosen)})")
    return 0


def _count(n: int, cap: int) -> str:
    return f"more than {cap:,}" if n > cap else f"{n:,}"
