"""The dead-man's switch: each tick pings a monitoring service (healthchecks.io, Cronitor, any
URL), which alerts when the pings stop — the one failure nothing inside the tick can report (cron
stopped, the host is down, the mission cannot start).

A tick sends ``GET <ping_url>/start`` as it begins (in a thread: the tick does not wait for
it), then, when it ends, ``GET <ping_url>`` if every step succeeded or ``GET <ping_url>/fail``
if one failed. ``ping_start_url`` and ``ping_fail_url`` replace the derived URLs (Cronitor:
``...?state=run``, ``...?state=fail``, and ``ping_url`` ``...?state=complete``). Each request
has a short timeout; a failure is logged with one line (naming the host only: the URL is a
credential) and never fails the tick.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

from cronqueue.config.alerts import HealthConfig, url_host
from cronqueue.errors import one_line

log = logging.getLogger("cronqueue.ping")


def _ping(url: str, timeout: float, what: str) -> bool:
    # the scheme is http or https: config/alerts.py refuses any other
    request = urllib.request.Request(url, headers={"User-Agent": "cronqueue-mission"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read(4096)
    except urllib.error.HTTPError as exc:
        log.warning("ping %s to %s failed: HTTP %d", what, url_host(url), exc.code)
        return False
    except (urllib.error.URLError, OSError, ValueError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        reason = one_line(cause) if isinstance(cause, BaseException) else str(cause)
        log.warning("ping %s to %s failed: %s", what, url_host(url), reason)
        return False
    return True


class Pinger:
    """The pings of one tick: ``start()`` when it begins, ``finish(ok)`` when it ends."""

    def __init__(self, health: HealthConfig) -> None:
        self.health = health
        self._start: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.health.ping_url is not None

    def _url(self, suffix: str) -> str:
        base = self.health.ping_url
        assert base is not None
        explicit = {"start": self.health.ping_start_url,
                    "fail": self.health.ping_fail_url}.get(suffix)
        return explicit or f"{base.rstrip('/')}/{suffix}"

    def start(self) -> None:
        if not self.enabled:
            return
        self._start = threading.Thread(
            target=_ping, args=(self._url("start"), self.health.ping_timeout, "start"),
            name="cronqueue-ping", daemon=True)
        self._start.start()

    def finish(self, ok: bool) -> bool:
        """Ping success or failure (after the start ping has ended: they arrive in order)."""
        if not self.enabled:
            return False
        if self._start is not None:
            self._start.join(self.health.ping_timeout + 1)
        url = self.health.ping_url if ok else self._url("fail")
        assert url is not None
        return _ping(url, self.health.ping_timeout, "success" if ok else "fail")
