"""PyMySQL's "preferred" TLS without its per-connection cost.

PyMySQL >= 1.2, given no TLS option, negotiates TLS when the server offers it and falls back
to plain text when it does not. For that it builds, at every connection and before it knows
what the server offers, ``ssl.create_default_context()`` — which loads the system's CA bundle
(20-40 ms of CPU a connection on the benchmark machine: 68 ms of a mission-launched shard's
start-up on MariaDB, which opens two connections before its first task) — and then sets
``verify_mode = CERT_NONE`` and ``check_hostname = False`` on it: the loaded CAs are never
consulted.

:func:`preferred_context` is that same context (same protocol, same flags, same verification:
none) without the CA bundle, built once per process and shared by every connection (an
``SSLContext`` may be used by several connections and threads). Connections whose URL or
option file names any TLS option (``?ssl_ca=...``: "required" mode) are built by PyMySQL as
before. With a PyMySQL that has no preferred mode, nothing changes.
"""

from __future__ import annotations

import functools
import os
import ssl
import sys
from typing import Any

from sqlalchemy import Engine, event


@functools.cache
def preferred_context() -> ssl.SSLContext:
    """What ``pymysql.Connection._create_ssl_ctx({})`` builds, minus the CA bundle that its
    ``CERT_NONE`` never reads."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # create_default_context's protocol
    keylog = os.environ.get("SSLKEYLOGFILE")  # as create_default_context (debugging)
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT  # as PyMySQL does
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@functools.cache
def connection_class() -> type[Any]:
    """PyMySQL's ``Connection`` with the preferred mode's context shared (imported on first
    use: an SQLite installation never loads PyMySQL)."""
    from pymysql.connections import Connection

    class SharedTlsConnection(Connection):  # type: ignore[misc]  # PyMySQL is untyped
        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if isinstance(sslp, dict) and not sslp:  # preferred mode: no TLS option given
                return preferred_context()
            return super()._create_ssl_ctx(sslp)

    return SharedTlsConnection


def share_preferred_tls(engine: Engine) -> None:
    """Have ``engine`` (PyMySQL's) open its connections with :func:`connection_class`."""
    if engine.dialect.driver != "pymysql":
        return

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return connection_class()(*cargs, **cparams)
