"""Who a process is: host identity, pid and the pid's start time (so a reused pid is not mistaken).

A hostname does not name a pid space: containers sharing the host's hostname (``network_mode:
host``, Kubernetes ``hostNetwork``, one ``hostname:`` in a compose file) each have their own pid
namespace, where pid 4242 is another process or none. So the host a row records is
``hostname#id``, the id a hash of the kernel's boot id and the pid namespace's inode: equal only
for processes that see the same pids (same boot, same pid namespace). A pid is judged by
``/proc`` only under an identity equal to ours; any other value (another host, a neighbour
container, a row written before the id, by hand) is judged by its lease.

Where the id cannot be known (no ``/proc``, or a ``/proc`` mounted for another pid namespace,
where ``/proc/<pid>`` names someone else's process), the identity carries a token of this process
instead: no other process equals it, so nothing is judged by pid and the lease decides.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

HOST_ID_SEP = "#"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
_unsure: dict[int, str] = {}  # pid -> this process's token when the host id is unknown


def host_id() -> str | None:
    """12 hex digits naming this boot and pid namespace; None when /proc cannot tell them
    (or is not this pid namespace's /proc: /proc/self is then not our pid)."""
    try:
        with open(BOOT_ID, "rb") as fh:
            boot = fh.read().strip()
        ns = os.stat("/proc/self/ns/pid")
        if int(os.readlink("/proc/self")) != os.getpid():
            return None
    except (OSError, ValueError):
        return None
    if not boot:
        return None
    ident = b"%s:%d:%d" % (boot, ns.st_dev, ns.st_ino)
    return hashlib.sha256(ident).hexdigest()[:12]


def host_identity() -> str:
    """What this process records as its host: ``hostname#hostid``."""
    hid = host_id()
    if hid is None:
        hid = "x" + _unsure.setdefault(os.getpid(), secrets.token_hex(8))
    return f"{socket.gethostname()}{HOST_ID_SEP}{hid}"


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
    host: str  # the host identity, as recorded on rows (see host_identity)
    pid: int
    pid_start: int | None

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(host=host_identity(), pid=pid, pid_start=pid_start_ticks(pid))

    def same_host(self, host: str | None) -> bool:
        """Is ``host`` (a recorded identity) this pid space, so its pids can be judged here?"""
        return host is not None and host == self.host

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def owner_gone(host: str | None, pid: int | None, pid_start: int | None,
               lease_until: datetime | None, *, me: Owner, now: datetime,
               alive: Callable[[int, int | None], bool] = pid_alive) -> bool:
    """Is the process a row names gone? In our pid space (``host`` is our identity) its pid
    decides: dead, or now another process (start time differs). Anywhere else only its lease
    can: expired (None: no lease to judge by, so not gone)."""
    if me.same_host(host) and pid is not None:
        return not alive(pid, pid_start)
    return lease_until is not None and lease_until < now
