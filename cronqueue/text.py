"""Untrusted text made safe for one line of a terminal, a table cell or a log line.

Task output, scripts, params, queue names, hosts and errors come from rows anyone who can write
to the database may have filled by hand, or from task scripts. Shown raw, an ANSI/OSC escape
would drive the operator's terminal and a newline would forge lines. Every layer that shows or
logs such a value (the CLI, the shard's log, the mission, the rescue) goes through here.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(value: object) -> str:
    """``value`` as text for one line, table cell or log line: as is if printable, else its
    repr (a hand-inserted row may hold newlines or control characters, which would forge or
    break lines)."""
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else repr(text)


def visible_line(text: str) -> str:
    """One line of task output: tabs kept, every other non-printable character escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else _escape(c) for c in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
