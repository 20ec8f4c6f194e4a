"""One backend object per database: what differs between them (see ``base.py``).

A new database is one new module here (a ``Backend`` subclass added to ``_BACKENDS``) plus
``tests/contract/test_backend.py`` passing against it: nothing else in cronqueue names a dialect.
"""

from __future__ import annotations

from sqlalchemy import Connection, Dialect, Engine

from cronqueue.store.backends.base import Backend, NotSupported
from cronqueue.store.backends.mysql import MysqlBackend
from cronqueue.store.backends.sqlite import SqliteBackend

__all__ = ["BACKENDS", "Backend", "NotSupported", "backend_for", "supported"]

BACKENDS: tuple[Backend, ...] = (SqliteBackend(), MysqlBackend())
_BY_NAME = {name: b for b in BACKENDS for name in b.dialects}


def supported() -> tuple[str, ...]:
    """The SQLAlchemy backend names cronqueue runs on."""
    return tuple(_BY_NAME)


def backend_for(what: Engine | Connection | Dialect | str) -> Backend:
    """The backend of an engine, a connection, a dialect or a backend/dialect name."""
    if isinstance(what, Engine | Connection):
        what = what.dialect
    name = what if isinstance(what, str) else what.name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unsupported database {name!r} (one of: "
                         f"{', '.join(_BY_NAME)})") from None
