"""Who a process is: host, pid and the pid's start time (so a reused pid is not mistaken)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def pid_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    """True if ``pid`` runs and, when known, is the same process (same start time)."""
    current = pid_start_ticks(pid)
    if current is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start_ticks is None
    return start_ticks is None or current == start_ticks


@dataclass(frozen=True, slots=True)
class Owner:
    host: str
    pid: int
    pid_start: int | None

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, pid_start=pid_start_ticks(pid))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"
