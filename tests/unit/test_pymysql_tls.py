"""PyMySQL's preferred TLS mode with one shared context (store/backends/pymysql_tls.py): the
same verification as PyMySQL's own context (none, without a TLS option), no CA bundle loaded
per connection, and PyMySQL's own handling whenever a TLS option is given."""

from __future__ import annotations

import ssl

import pytest
from sqlalchemy import text

from cronqueue.store.backends.pymysql_tls import connection_class, preferred_context
from cronqueue.store.engine import make_engine

pymysql = pytest.importorskip("pymysql")


def test_preferred_context_verifies_as_pymysql_does_without_the_ca_bundle() -> None:
    ours = preferred_context()
    conn = pymysql.connections.Connection(defer_connect=True)
    theirs = pymysql.connections.Connection._create_ssl_ctx(conn, {})  # PyMySQL's own
    assert ours is preferred_context()  # built once per process
    assert ours.verify_mode == theirs.verify_mode == ssl.CERT_NONE
    assert ours.check_hostname is theirs.check_hostname is False
    assert ours.protocol == theirs.protocol
    assert ours.verify_flags == theirs.verify_flags
    assert ours.options == theirs.options
    assert ours.minimum_version == theirs.minimum_version
    assert ours.cert_store_stats()["x509_ca"] == 0  # what the CERT_NONE never read


def test_no_tls_option_is_preferred_mode_with_the_shared_context() -> None:
    if not pymysql.connections.Connection(defer_connect=True).ssl:
        pytest.skip("this PyMySQL has no preferred TLS mode (< 1.2): nothing to share")
    conn = connection_class()(host="127.0.0.1", defer_connect=True)
    assert isinstance(conn, pymysql.connections.Connection)
    assert conn.ctx is preferred_context()
    assert conn.ssl and not conn._ssl_required  # still tries TLS, still falls back


@pytest.mark.parametrize("options", [
    {"ssl": {"check_hostname": False}},
    {"ssl_verify_cert": True},
    {"ssl_disabled": True},
])
def test_a_tls_option_is_left_to_pymysql(options: dict[str, object]) -> None:
    ours = connection_class()(host="127.0.0.1", defer_connect=True, **options)
    theirs = pymysql.connections.Connection(host="127.0.0.1", defer_connect=True, **options)
    assert (ours.ssl, ours._ssl_required) == (theirs.ssl, theirs._ssl_required)
    if ours.ssl:
        assert ours.ctx is not preferred_context()
        assert ours.ctx.verify_mode == theirs.ctx.verify_mode
        assert ours.ctx.check_hostname == theirs.ctx.check_hostname


def test_the_engine_connects_through_it(db_url: str, backend: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            driver = conn.connection.driver_connection
            if backend == "mariadb":
                assert isinstance(driver, connection_class())
                assert getattr(driver, "ctx", preferred_context()) is preferred_context()
            else:
                assert not isinstance(driver, pymysql.connections.Connection)
    finally:
        engine.dispose()
