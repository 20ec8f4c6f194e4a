"""Alerts sent by the mission tick, and the dead-man's switch (see docs/alerts.md).

* ``rules.py`` — what is wrong now: each rule's evidence, as firing or resolved alerts;
* ``record.py`` — the tick's step: record each change of state once across hosts
  (``store/alerts.py``), then send what is unsent under the hourly cap;
* ``message.py`` — an alert as a JSON body and as an e-mail; ``sinks.py`` — the webhook and
  SMTP;
* ``ping.py`` — the tick's pings (start, success, fail); ``health.py`` — ``cronqueue check
  --health``, from each host's last tick (``store/ticks.py``).
"""
