"""The engineer is warned before the grant expires (a NOTICE), then the session ends."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.harness import GatewayThread
from tests.pg_client import client_tls

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    def warn_early(text: str) -> str:
        return text.replace('warn_before_expiry = "2m"', 'warn_before_expiry = "2s"')

    g = GatewayThread(
        tmp_path_factory.mktemp("pg-warn") / "gw", pg=pg_server, edit_config=warn_early
    )
    g.start()
    yield g
    g.stop()


async def test_warning_notice_then_fatal_at_expiry(gw):
    import jwt

    token = gw.grant(ttl=4)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    warned = asyncio.Event()
    messages = []

    def on_notice(_conn, msg):
        messages.append((time.time(), msg.severity, msg.message))
        if "expires in" in msg.message:
            warned.set()

    conn.add_log_listener(on_notice)
    try:
        # asyncpg reads asynchronous notices while a query waits; a sleeping query spans the warning
        sleeper = asyncio.ensure_future(conn.fetchval("select pg_sleep(30)"))
        await asyncio.wait_for(warned.wait(), 10)
        t_warn, severity, text = next(m for m in messages if "expires in" in m[2])
        assert severity == "WARNING" and "session will then be closed" in text
        assert exp - 2.5 <= t_warn <= exp - 1.5  # warn_before_expiry = 2s
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await sleeper
        assert time.time() - exp < 1.2
    finally:
        conn.terminate()
