"""Two gateways and one grant service on one PostgreSQL state database: a revocation made
through the service ends a live session on each gateway within a second (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import shutil
import time

import asyncpg
import jwt
import pytest

from breakglass.policy.state_pg import PgState, watch
from breakglass.proxy.gateway import Gateway
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_service_support import Cli, ServiceThread, add_service_config, fresh_state_db

pytestmark = pytest.mark.timeout(60)


async def _watch_with_notify(self: Gateway) -> None:
    """What the gateway does with a PostgreSQL state: LISTEN instead of polling."""

    async def on_revoke(rev) -> None:
        if rev.jti not in self.revoked:
            self.revoked.add(rev.jti)
            await self.registry.revoke(rev.jti, rev.reason)

    await watch(self.state, on_revoke)


@pytest.fixture
def cluster(pg_server, tmp_path, monkeypatch):
    dsn = fresh_state_db(pg_server)
    import breakglass.proxy.gateway

    monkeypatch.setattr(breakglass.proxy.gateway, "open_state", lambda cfg: PgState(dsn))
    monkeypatch.setattr(Gateway, "watch_revocations", _watch_with_notify)
    g1 = GatewayThread(tmp_path / "gw1", pg=pg_server)
    g2 = GatewayThread(tmp_path / "gw2", pg=pg_server)
    for f in ("issuer-1.key", "issuer-1.pub"):  # one cluster: both trust the service's issuer
        shutil.copyfile(g1.dir / "keys" / f, g2.dir / "keys" / f)
    g1.start()
    g2.start()
    secrets = add_service_config(g1.dir)
    svc = ServiceThread(g1.dir / "config.toml", state=PgState(dsn)).start()
    cli = Cli(tmp_path / "home", g1.dir / "config.toml", secrets, monkeypatch)
    yield g1, g2, svc, cli
    svc.stop()
    g2.stop()
    g1.stop()


async def test_revocation_through_service_ends_sessions_on_every_gateway(cluster):
    g1, g2, svc, cli = cluster
    for u in ("erin", "alice"):
        cli.login(u, svc.url)
    rid = cli.request("erin", "two gateways")["id"]
    cli.ok("alice", "approve", rid)
    token = cli.ok("erin", "grant", "get", rid, "--print").strip()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]

    async def session(gw):
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=gw.pg_port,
            user="erin",
            password=token,
            database="shop",
            ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
        )
        assert await conn.fetchval("select 1") == 1
        return conn

    c1, c2 = await session(g1), await session(g2)
    assert [s["grant"] for s in g1.sessions()] == [jti] == [s["grant"] for s in g2.sessions()]
    t1 = asyncio.ensure_future(c1.fetchval("select pg_sleep(30)"))
    t2 = asyncio.ensure_future(c2.fetchval("select pg_sleep(30)"))
    t0 = time.monotonic()
    await asyncio.to_thread(cli.ok, "alice", "grant", "revoke", jti, "--reason", "done")
    for t in (t1, t2):
        with pytest.raises(Exception) as e:
            await asyncio.wait_for(t, 5)
        assert "revoked" in str(e.value) or "closed" in str(e.value).lower()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"sessions ended {elapsed:.2f}s after the revocation"
    # And the grant no longer opens a session on either gateway.
    for gw in (g1, g2):
        with pytest.raises(Exception) as e:
            await session(gw)
        assert "revoked" in str(e.value)
    # Revoked grants cannot be fetched again.
    rc, _, err = cli.run("erin", "grant", "get", rid)
    assert rc != 0 and "revoked" in err
    for c in (c1, c2):
        await c.close()
