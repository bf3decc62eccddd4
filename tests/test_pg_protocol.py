"""Protocol negotiation (3.0 and 3.2) and direct TLS, through the real gateway.

libpq 18 (bundled with psycopg's binary wheel) is the real client for ``max_protocol_version=3.2``
and ``sslnegotiation=direct``; a hand-built client covers what libpq never sends (3.3, ``_pq_.``
options, direct TLS without ALPN). The upstream is PostgreSQL 15, which speaks 3.0 only.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

import pytest

from breakglass.proxy.postgres import codec
from tests.conftest import _unavailable
from tests.harness import GatewayThread
from tests.pg_client import RawClient, client_tls, error_of

pytestmark = pytest.mark.timeout(120)  # includes starting PostgreSQL on a loaded machine

psycopg = pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    g = GatewayThread(tmp_path_factory.mktemp("pg-proto") / "gw", pg=pg_server).start()
    yield g
    g.stop()


def libpq18() -> None:
    if psycopg.pq.version() < 180000:
        _unavailable(f"libpq 18 is needed (psycopg uses libpq {psycopg.pq.version()})")


def connect(gw: GatewayThread, token: str, **kw):
    return psycopg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=token,
        dbname="shop",
        sslmode="verify-full",
        sslrootcert=str(gw.dir / "keys/gateway_tls.crt"),
        connect_timeout=10,
        **kw,
    )


def live_connection(gw: GatewayThread):
    """The gateway side of the only open session (callers start from an idle gateway)."""

    async def one():
        [conn] = [c for c in gw.gw.postgres.connections if c.session and not c.closing]
        return conn

    return gw.call(one())


@pytest.mark.parametrize(
    "versions", [{"max_protocol_version": "3.2"}, {"min_protocol_version": "3.2"}]
)
def test_libpq18_protocol_32_with_a_30_upstream(gw, versions):
    """libpq 18 asking for 3.2 connects: the gateway speaks 3.2 to it (its cancel keys are the
    gateway's own, 32 bytes) and 3.0 to PostgreSQL 15, after the upstream's own negotiation."""
    libpq18()
    gw.wait_idle()
    kw = dict(versions, max_protocol_version="3.2")
    with connect(gw, gw.grant(), **kw) as conn:
        assert conn.pgconn.full_protocol_version == 30002
        assert conn.execute("select count(*) from customers").fetchone() == (200,)
        live = live_connection(gw)
        assert (live.protocol, live.up_protocol) == (codec.PROTOCOL_3_2, codec.PROTOCOL_3_0)
        assert len(gw.gw.postgres.cancel_keys.by_pid[live.our_pid][0]) == 32
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from customers")


def test_cancel_with_a_32_byte_key(gw):
    """A 3.2 client's CancelRequest carries the long key; the gateway routes it upstream."""
    libpq18()
    with connect(gw, gw.grant(), max_protocol_version="3.2") as conn:
        done = threading.Event()

        def cancel_until_done() -> None:  # a cancel before the query starts does nothing
            while not done.wait(0.3):
                conn.cancel_safe()

        canceller = threading.Thread(target=cancel_until_done)
        canceller.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
        finally:
            done.set()
            canceller.join()
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)


def test_libpq18_default_still_30(gw):
    libpq18()
    gw.wait_idle()
    with connect(gw, gw.grant()) as conn:
        assert conn.pgconn.full_protocol_version == 30000
        assert live_connection(gw).protocol == codec.PROTOCOL_3_0
        assert len(gw.gw.postgres.cancel_keys.by_pid[live_connection(gw).our_pid][0]) == 4


async def test_newer_version_and_pq_options_are_negotiated_down(gw):
    """A client asking for 3.7 with a ``_pq_.`` option gets NegotiateProtocolVersion(3.2, [option])
    before anything else, as PostgreSQL would answer, and then logs in at 3.2."""
    c = await RawClient.connect(gw.pg_port, gw.dir / "keys/gateway_tls.crt")
    try:
        c.send(
            codec.encode_startup(
                {"user": "erin", "database": "shop", "_pq_.future": "on"}, protocol=(3 << 16) | 7
            )
        )
        first = await c.until(b"R")
        assert [m.type for m in first] == [b"v", b"R"]
        assert codec.decode_negotiate_protocol_version(first[0].body) == (
            codec.PROTOCOL_3_2,
            ["_pq_.future"],
        )
        c.send(codec.encode_password(gw.grant()))
        msgs = await c.until(b"Z", b"E")
        assert error_of(msgs) is None
        [key] = [m for m in msgs if m.type == b"K"]
        _pid, secret = codec.decode_backend_key_data(key.body)
        assert len(secret) == 32
    finally:
        c.close()


def test_direct_tls_with_libpq(gw):
    """``sslnegotiation=direct``: TLS from the first byte, ALPN "postgresql", no SSLRequest."""
    libpq18()
    gw.wait_idle()
    with connect(gw, gw.grant(), sslnegotiation="direct") as conn:
        assert conn.execute("select name from customers where id = 7").fetchone() == ("Customer 7",)
        assert live_connection(gw).direct_tls
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update customers set name = 'x' where id = 7")
    rw = gw.grant("db-readwrite")
    with connect(gw, rw, sslnegotiation="direct", max_protocol_version="3.2") as conn:
        with conn.transaction(force_rollback=True):
            cur = conn.execute("update customers set name = 'x' where id = 7")
            assert cur.rowcount == 1


async def _direct(gw: GatewayThread, alpn: list[str] | None):
    ctx = client_tls(gw.dir / "keys/gateway_tls.crt")
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", gw.pg_port, ssl=ctx, server_hostname="127.0.0.1"
    )
    c = RawClient(reader, writer)
    c.send(codec.encode_startup({"user": "erin", "database": "shop"}))
    return c


async def test_direct_tls_hand_built_client(gw):
    c = await _direct(gw, ["postgresql"])
    try:
        assert c.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "postgresql"
        await c.until(b"R")
        c.send(codec.encode_password(gw.grant()))
        assert error_of(await c.until(b"Z", b"E")) is None
        c.send(codec.encode_query("select 41 + 1"))
        msgs = await c.until(b"Z")
        [row] = [m for m in msgs if m.type == b"D"]
        assert bytes(row.body).endswith(b"42")
    finally:
        c.close()


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]])
async def test_direct_tls_without_postgresql_alpn_is_refused(gw, alpn):
    """As PostgreSQL 17: direct TLS without ALPN "postgresql" could be another protocol's client
    (a cross-protocol attack), so it gets a FATAL, over TLS, before any password is asked."""
    c = await _direct(gw, alpn)
    try:
        data = await c.read_all()
    except (ConnectionResetError, ssl.SSLError):
        pytest.fail("expected a FATAL error over TLS")
    finally:
        c.close()
    err = error_of(codec.MessageReader().feed_and_split(data))
    assert err and err["S"] == "FATAL" and "ALPN" in err["M"], err
    assert b"R" not in data[:1]


def test_direct_tls_and_32_on_uvloop(pg_server, tmp_path):
    """The production loop (uvloop) reads a socket as soon as it is accepted: the gateway's own
    acceptor must still hand the ClientHello to the TLS handshake untouched."""
    libpq18()
    uvloop = pytest.importorskip("uvloop")
    g = GatewayThread(tmp_path / "gw", pg=pg_server, loop_factory=uvloop.new_event_loop).start()
    try:
        assert type(g.loop).__module__.startswith("uvloop")
        for kw in ({"sslnegotiation": "direct"}, {"max_protocol_version": "3.2"}, {}):
            with connect(g, g.grant(), **kw) as conn:
                assert conn.execute("select 1").fetchone() == (1,), kw
    finally:
        g.stop()
