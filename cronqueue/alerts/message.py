"""One alert as it is sent: the webhook's JSON body and the e-mail's subject and text.

The subject, the script, the queue, an error and a task's output come from rows and task
scripts: in the JSON they are plain strings (JSON escapes them); in the e-mail every line goes
through ``visible_line`` (no control character reaches a mail client), and the subject is one
line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cronqueue.store.alerts import AlertRow
from cronqueue.text import visible, visible_line

SUBJECT_MAX = 200  # characters of an e-mail subject


@dataclass(frozen=True)
class Message:
    alert: AlertRow
    detail: dict[str, Any]
    host: str  # the host that sends it
    sent_at: datetime

    @property
    def headline(self) -> str:
        """``[cronqueue] FIRING entry_failed nightly: <summary>``: one line."""
        line = (f"[cronqueue] {self.alert.state.upper()} {self.alert.kind} "
                f"{visible(self.alert.subject)}: {visible(self.alert.summary)}")
        return line if len(line) <= SUBJECT_MAX else line[:SUBJECT_MAX - 3] + "..."

    def json_body(self) -> bytes:
        a = self.alert
        return json.dumps({
            "source": "cronqueue", "id": a.id, "kind": a.kind, "subject": a.subject,
            "state": a.state, "changed_at": _iso(a.changed_at), "change": a.seq,
            "summary": a.summary, "detail": self.detail, "text": self.headline,
            "host": self.host, "sent_at": _iso(self.sent_at),
        }, ensure_ascii=False, sort_keys=False).encode("utf-8")

    def email_text(self) -> str:
        a = self.alert
        lines = [f"{a.state.upper()}: {a.kind} {visible(a.subject)}", "",
                 visible_line(a.summary), "",
                 f"  {a.state} since: {_iso(a.changed_at)}"]
        lines += _render(self.detail, 1)
        lines += ["", "-- ", f"cronqueue alert #{a.id}, change {a.seq}, sent by "
                  f"{visible(self.host)} at {_iso(self.sent_at)}"]
        return "\n".join(lines) + "\n"


def _iso(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def _render(value: Any, depth: int) -> list[str]:
    """A detail as indented ``key: value`` lines; a text of several lines as ``| `` lines."""
    pad = "  " * depth
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{visible(key)}:")
                out += _render(item, depth + 1)
            elif isinstance(item, str) and "\n" in item.rstrip("\n"):
                out.append(f"{pad}{visible(key)}:")
                out += [f"{pad}  | {visible_line(line)}"
                        for line in item.rstrip("\n").split("\n")]
            else:
                shown = "-" if item is None or item in ("", [], {}) else item
                text = shown.rstrip("\n") if isinstance(shown, str) else str(shown)
                out.append(f"{pad}{visible(key)}: {visible_line(text)}")
    elif isinstance(value, list):
        for item in value:
            body = _render(item, depth + 1)
            if body:
                out.append(f"{pad}- {body[0].lstrip()}")
                out += body[1:]
    else:
        out.append(f"{pad}{visible_line(str(value))}")
    return out
