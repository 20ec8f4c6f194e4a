"""Which version a database is at when it has cronqueue's tables but no record of its version
(made by 0.1.0's ``init-db``, by an unreleased later one, or by hand from ``sql/``): its
*shape*, the names of its tables, columns and indexes, against each version's.

A version's shape comes from replaying the SQLite migrations up to it in an in-memory database
(the MySQL set has the same names: tests compare them). Only cronqueue's tables, columns and
indexes count: an application's own tables in the same MySQL database, or a column or index an
operator added, are ignored (and logged).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, create_engine, inspect

from cronqueue.store.migrations import load

log = logging.getLogger("cronqueue.migrate")

Name = tuple[str, ...]  # ("table", t) | ("column", t, c) | ("index", t, i)
_SHOWN = 6  # differences named in a refusal, at most


def names_of(conn: Connection, tables: Iterable[str] | None = None) -> frozenset[Name]:
    """The names of a database's tables (those of ``tables`` present; default: all)."""
    insp = inspect(conn)
    present = set(insp.get_table_names())
    wanted = present if tables is None else present & set(tables)
    out: set[Name] = set()
    for t in wanted:
        out.add(("table", t))
        out.update(("column", t, c["name"]) for c in insp.get_columns(t))
        out.update(("index", t, str(ix["name"])) for ix in insp.get_indexes(t))
    return frozenset(out)


@functools.cache
def version_shapes() -> tuple[frozenset[Name], ...]:
    """The names after each version (index ``v - 1``), from the SQLite set replayed in memory."""
    engine = create_engine("sqlite://")
    shapes = []
    try:
        with engine.connect() as conn:
            for migration in load("sqlite"):
                for statement in migration.statements:
                    conn.exec_driver_sql(statement)
                shapes.append(names_of(conn))
    finally:
        engine.dispose()
    return tuple(shapes)


def known_tables() -> frozenset[str]:
    return frozenset(n[1] for shape in version_shapes() for n in shape)


@dataclass(frozen=True)
class Placement:
    version: int | None  # the version whose shape it has; 0: no cronqueue table; None: none
    problem: str | None = None  # version None: what differs from the closest version
    ignored: frozenset[Name] = frozenset()  # names no version has (an operator's additions)


def place(conn: Connection) -> Placement:
    """The version the database's cronqueue tables match by their names."""
    shapes = version_shapes()
    every = frozenset().union(*shapes)
    found = names_of(conn, known_tables())
    ours, ignored = found & every, found - every
    if ignored:
        log.info("not part of any cronqueue schema version, ignored: %s",
                 ", ".join(_name(n) for n in sorted(ignored)))
    if not ours:
        return Placement(0, ignored=ignored)
    for version in range(len(shapes), 0, -1):
        if ours == shapes[version - 1]:
            return Placement(version, ignored=ignored)
    closest = min(range(len(shapes), 0, -1), key=lambda v: len(ours ^ shapes[v - 1]))
    return Placement(None, f"the cronqueue tables match no schema version; closest is version "
                           f"{closest}: {differences(ours, shapes[closest - 1])}", ignored)


def differences(have: frozenset[Name], want: frozenset[Name]) -> str:
    """``missing table t, missing column t.c, unexpected index t.i, ...`` (a missing table's
    own columns and indexes not repeated)."""
    gone = {n[1] for n in want - have if n[0] == "table"}
    extra = {n[1] for n in have - want if n[0] == "table"}
    items = [f"missing {_name(n)}" for n in sorted(want - have)
             if n[0] == "table" or n[1] not in gone]
    items += [f"unexpected {_name(n)}" for n in sorted(have - want)
              if n[0] == "table" or n[1] not in extra]
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _name(n: Name) -> str:
    return f"{n[0]} {n[1]}" if n[0] == "table" else f"{n[0]} {n[1]}.{n[2]}"
