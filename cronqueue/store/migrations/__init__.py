"""The schema's history: ordered SQL migrations per dialect, shipped inside the package.

``<set>/NNNN_name.sql``, one set per dialect (``sqlite``; ``mysql`` for MySQL and MariaDB),
the same versions and names in both. Version ``NNNN`` counts from 1 without gaps; version 1 is
cronqueue 0.1.0's schema (``tests/fixtures/schema_0_1_0``). Applying every file in order gives
exactly the tables ``store/schema.py`` defines (tests compare them on both databases);
``store/migrate.py`` applies them and records each in ``cronqueue_migrations``.

Writing a new migration (both sets, then the schema.py change it stands for):

* Statements end with ``;`` at the end of a line; lines starting with ``--`` are comments. No
  other line may end with ``;``.
* New columns go at the end of their table, in schema.py's order (column order is compared).
* Each migration adds or drops a table, a column or an index: a database that has the tables
  but no record of its version is placed by those names alone (``Shape``), so two versions
  must never have the same names (a test checks).
* MySQL/MariaDB commit each DDL statement on its own, so ``migrate`` records every statement
  it completes and an interrupted migration resumes at the next one; the statement that was
  running when it stopped may have completed, and its re-run failing with "already exists"
  (a table, a column, an index) or "does not exist" (a drop) counts as done. So: one change
  per statement (one ``ADD COLUMN``, one ``CREATE INDEX``), and data changes written to be
  safe to run twice.
* Never edit a migration once released: ``migrate`` refuses a database where a file it
  applied has changed (checksum). The ``sql/`` files carry the checksums too.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources

SETS = ("sqlite", "mysql")
_FILE_RE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # the file name without .sql: "0002_queue_secret"
    sql: str = field(repr=False)  # the file's text

    @functools.cached_property
    def checksum(self) -> str:
        """sha256 of the file's text (line endings as stored)."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @functools.cached_property
    def statements(self) -> tuple[str, ...]:
        return tuple(split_statements(self.sql))


def set_for(dialect_name: str) -> str:
    """The migration set of a dialect: its backend's name (``mariadb`` uses ``mysql``'s). A
    new backend (``store/backends/``) brings its own set, the same versions as the others."""
    from cronqueue.store.backends import backend_for

    name = backend_for(dialect_name).name  # ValueError: unsupported
    if name not in SETS:
        raise ValueError(f"no migrations for the {name} backend")
    return name


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file (see the rules above), without comments."""
    out: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            stmt = "\n".join(current).strip()[:-1].strip()
            if stmt:
                out.append(stmt)
            current = []
    if "\n".join(current).strip():
        raise ValueError("a migration's last statement does not end with ';'")
    return out


@functools.cache
def _files(set_name: str) -> tuple[tuple[int, str], ...]:
    """(version, file name) of a set, in order; checked to count from 1 without gaps."""
    if set_name not in SETS:
        raise ValueError(f"no migration set {set_name!r}")
    found = []
    for entry in resources.files(__name__).joinpath(set_name).iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name))
    found.sort()
    versions = [v for v, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"cronqueue migrations/{set_name}: versions {versions} are not "
                           f"1..{len(found)} (a file is missing or numbered twice)")
    return tuple(found)


def newest(set_name: str) -> int:
    """The version this cronqueue brings a database to (file names only: cheap)."""
    return len(_files(set_name))


@functools.cache
def load(set_name: str) -> tuple[Migration, ...]:
    """Every migration of a set, in order (version ``v`` at index ``v - 1``)."""
    base = resources.files(__name__).joinpath(set_name)
    return tuple(Migration(version, name.removesuffix(".sql"),
                           base.joinpath(name).read_text(encoding="utf-8"))
                 for version, name in _files(set_name))
