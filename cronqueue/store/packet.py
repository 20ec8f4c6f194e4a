"""Statement sizes: a MySQL/MariaDB server refuses a statement larger than its
``max_allowed_packet`` by closing the connection ("server has gone away"). Bulk inserts are
split so that each statement fits, and a row that cannot fit alone is refused up front.
"""

from __future__ import annotations

from collections.abc import Sequence

from cronqueue.errors import InvalidTask
from cronqueue.spec import TaskSpec

# Bytes PyMySQL sends as two (backslash-escaped in a string literal).
_ESCAPED = (b"\\", b"'", b'"', b"\0", b"\n", b"\r", b"\x1a")
ROW_OVERHEAD = 256  # per row: the numbers, times, quotes and commas around the texts
STATEMENT_OVERHEAD = 4096  # per statement: the SQL text and the protocol header


def sent_bytes(text: str | None) -> int:
    """Bytes ``text`` takes in a statement PyMySQL sends (UTF-8, special bytes escaped)."""
    if text is None:
        return 4
    data = text.encode("utf-8", "surrogatepass")
    return len(data) + sum(data.count(c) for c in _ESCAPED)


def row_bytes(spec: TaskSpec) -> int:
    """An upper bound on the bytes of one task's row in an ``INSERT ... VALUES``."""
    return (ROW_OVERHEAD + sent_bytes(spec.taskscript) + sent_bytes(spec.param)
            + sent_bytes(spec.queue) + 2 * sent_bytes(spec.unique_key)
            + sent_bytes(spec.secret))


def check_fits(index: int | None, size: int, max_packet: int) -> None:
    """Refuse a row that no statement can carry (``index``: its place in an ``add_many``)."""
    if size + STATEMENT_OVERHEAD > max_packet:
        which = "the task's row" if index is None else f"add_many item {index}: its row"
        raise InvalidTask(
            f"{which} is about {size} bytes, more than the database server's "
            f"max_allowed_packet ({max_packet} bytes): raise max_allowed_packet or make "
            "its param/secret smaller")


def split(indexes: Sequence[int], sizes: Sequence[int] | dict[int, int], budget: int,
          max_rows: int) -> list[list[int]]:
    """``indexes`` in order, cut into runs of at most ``max_rows`` whose ``sizes`` add up to at
    most ``budget`` (a row larger than the budget goes alone)."""
    chunks: list[list[int]] = [[]]
    size = 0
    for i in indexes:
        cost = sizes[i]
        if chunks[-1] and (size + cost > budget or len(chunks[-1]) >= max_rows):
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += cost
    return [c for c in chunks if c]
