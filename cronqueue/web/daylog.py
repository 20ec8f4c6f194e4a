"""A task's lines from the day logs (``log_dir/YYYY-MM-DD.log``): each run's section, from its
header (``--- TIME task=ID attempt=N ...``) to the next header — read on this host only, bounded
in bytes searched and shown.

The files are opened as the shard writes them (``process/logfiles``): relative to log_dir,
without following a link, only if they are regular files of this user or root. What they hold
is untrusted output: the page shows it as text, each line with its control characters escaped.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cronqueue.model import Task
from cronqueue.process.logfiles import LogFileRefused, open_dir_in_log_dir, open_file_at

MAX_DAYS = 3  # day files looked at per task
MAX_FILE = 1 << 30  # bytes of one day file searched (its start)
MAX_SHOWN = 256 * 1024  # bytes of sections shown per task
_HEADER = re.compile(rb"^--- \S+ task=\d+ attempt=\d+ ", re.MULTILINE)


@dataclass
class DayLog:
    lines: list[str] = field(default_factory=list)
    note: str = ""  # why nothing or not everything is shown
    files: list[str] = field(default_factory=list)


def _days(task: Task) -> list[str]:
    start = task.started_at or task.ctime
    end = task.finished_at or start
    if not isinstance(start, datetime) or not isinstance(end, datetime) or end < start:
        return []
    days: list[str] = []
    day = start.date()
    while day <= end.date() and len(days) < MAX_DAYS:
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def lines_of(log_dir: Path, task: Task) -> DayLog:
    out = DayLog()
    days = _days(task)
    if not days or task.started_at is None:
        out.note = "not run yet: nothing in the day logs"
        return out
    try:
        dir_fd = open_dir_in_log_dir(log_dir, "", create=False)
    except FileNotFoundError:
        out.note = f"no day logs on this host ({log_dir} does not exist)"
        return out
    except (OSError, LogFileRefused) as exc:
        out.note = f"log_dir {log_dir} cannot be read here: {exc}"
        return out
    try:
        for day in days:
            name = f"{day}.log"
            try:
                fd = open_file_at(dir_fd, name, os.O_RDONLY, shown=log_dir / name)
            except FileNotFoundError:
                continue
            except (OSError, LogFileRefused) as exc:
                out.note = f"{name}: {exc}"
                continue
            try:
                out.files.append(name)
                _scan(fd, task.id, out)
            finally:
                os.close(fd)
            if sum(len(line) for line in out.lines) >= MAX_SHOWN:
                out.note = f"cut at {MAX_SHOWN} bytes"
                break
    finally:
        os.close(dir_fd)
    if not out.lines and not out.note:
        out.note = (f"no section of task {task.id} in "
                    f"{', '.join(out.files) or 'the day logs of this host'}")
    return out


def _scan(fd: int, task_id: int, out: DayLog) -> None:
    size = os.fstat(fd).st_size
    if size == 0:
        return
    needle = f" task={task_id} attempt=".encode()
    with mmap.mmap(fd, min(size, MAX_FILE), prot=mmap.PROT_READ) as data:
        at = data.find(needle)
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            if _HEADER.match(data, start) is not None:
                nxt = _HEADER.search(data, at)
                end = nxt.start() if nxt is not None else len(data)
                room = MAX_SHOWN - sum(len(line) for line in out.lines)
                if room <= 0:
                    return
                chunk = bytes(data[start:min(end, start + room)])
                out.lines += chunk.decode("utf-8", "replace").splitlines()
                at = end
            at = data.find(needle, at + 1)
