"""`sessions --live` and `kill` from any gateway sharing the PostgreSQL state, and the grant
service's admin kill: a session running on gateway B ends within a second."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import asyncpg
import pyotp
import pytest

from breakglass.service.identity import add_local_user
from tests.harness import GatewayThread, run_cli
from tests.pg_client import client_tls
from tests.test_service_support import ServiceThread, add_service_config, drop_state_db
from tests.test_service_support import fresh_state_db as _fresh
from tests.test_service_throttle import post

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(pg_server, tmp_path):
    dsn = _fresh(pg_server, "bglive")
    shared = lambda text: text.replace('database = "state.db"', f'url = "{dsn}"', 1)  # noqa: E731
    g1 = GatewayThread(tmp_path / "gw1", pg=pg_server, edit_config=shared)
    g2 = GatewayThread(tmp_path / "gw2", pg=pg_server, edit_config=shared)
    for f in ("issuer-1.key", "issuer-1.pub"):  # one cluster: one issuer
        shutil.copyfile(g1.dir / "keys" / f, g2.dir / "keys" / f)
    g1.start()
    g2.start()
    yield g1, g2
    g2.stop()
    g1.stop()
    asyncio.run(drop_state_db(pg_server, dsn))


def cli(gw, *argv: str) -> subprocess.CompletedProcess:
    return run_cli(gw.dir / "config.toml", *argv)


async def _open(gw, token):
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )


async def _killed_within(conn, start: float) -> float:
    busy = asyncio.ensure_future(conn.fetchval("select pg_sleep(30)"))
    with pytest.raises(Exception) as e:
        await asyncio.wait_for(busy, 10)
    assert "killed by" in str(e.value)
    return time.monotonic() - start


def _wait_listed(gw, sid: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:  # bounded: the owning gateway publishes within 0.25 s
        r = cli(gw, "sessions", "--live", "--json")
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)
        if any(sid in json.dumps(x) for x in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


async def test_live_list_and_kill_from_another_gateway(cluster):
    g1, g2 = cluster
    conn = await _open(g2, g1.grant())
    try:
        sid = g2.sessions()[0]["id"]
        await asyncio.to_thread(_wait_listed, g1, sid)  # seen from gateway A's config
        r = await asyncio.to_thread(cli, g1, "kill", "")
        assert r.returncode != 0 and "no session id given" in r.stderr
        busy = asyncio.ensure_future(_killed_within(conn, time.monotonic()))
        await asyncio.sleep(0.2)
        r = await asyncio.to_thread(cli, g1, "kill", sid[-8:], "--reason", "from A")
        assert r.returncode == 0, r.stderr
        assert f"killed {sid} on test-gw@" in r.stdout
        await busy  # (the within-a-second figure: test_service_admin_kill, no CLI start-up)
        await asyncio.to_thread(g2.wait_idle)
    finally:
        await conn.close()


async def test_service_admin_kill(cluster, tmp_path):
    g1, g2 = cluster
    add_service_config(g1.dir)
    secret = add_local_user(g1.dir / "users.toml", "sec", "security-pass-01", ("security",))
    svc = await asyncio.to_thread(lambda: ServiceThread(g1.dir / "config.toml").start())
    try:
        st, body, _ = await asyncio.to_thread(
            post,
            svc.url,
            "/v1/login",
            {"method": "local", "username": "sec", "password": "security-pass-01",
             "totp": pyotp.TOTP(secret).now()},
        )  # fmt: skip
        assert st == 200, body
        token = body["token"]
        conn = await _open(g2, g1.grant())
        sid = g2.sessions()[0]["id"]

        def call(path, data=None):
            req = urllib.request.Request(
                svc.url + path, data=data, method="POST" if data else "GET"
            )
            req.add_header("Authorization", f"Bearer {token}")
            req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        deadline = time.monotonic() + 10
        while True:
            st, live = await asyncio.to_thread(call, "/v1/sessions/live")
            assert st == 200
            if any(x["id"] == sid for x in live):
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        busy = asyncio.ensure_future(_killed_within(conn, time.monotonic()))
        await asyncio.sleep(0.2)
        st, out = await asyncio.to_thread(
            call, f"/v1/sessions/{sid}/kill", json.dumps({"reason": "sec"}).encode()
        )
        assert st == 200 and out["killed"] == sid, out
        assert await busy < 1.5
        await conn.close()
        await asyncio.to_thread(svc.service.audit.flush)
        from breakglass.recorder.audit import read_audit

        await asyncio.to_thread(g2.flush_audit)
        kills = [
            e for e in read_audit(g2.cfg.audit_dir, type="session.killed") if e["session"] == sid
        ]
        assert kills and kills[0]["actor"] == "sec"  # the service identity, not an OS account
    finally:
        await asyncio.to_thread(svc.stop)


def test_session_references_are_matched_one_way_everywhere():
    from breakglass.proxy.admin import match_session

    ids = ["20261201T030317Z-1e13337920", "20261201T030318Z-aa00bb11cc"]
    assert match_session(ids[0], ids) == ids[0]
    assert match_session("1e13337920", ids) == ids[0]  # a unique suffix
    assert match_session("20261201T030318", ids) == ids[1]  # a unique prefix
    for bad, why in (("", "no session id"), ("  ", "no session id"), ("20261201T03", "ambiguous"),
                     ("zzzz", "no live session"),
                     ("0", "at least 4")):  # fmt: skip
        with pytest.raises(LookupError) as e:
            match_session(bad, ids)
        assert why in str(e.value)


def test_admin_socket_removed_when_the_gateway_stops(pg_server, tmp_path):
    g = GatewayThread(tmp_path / "gw", pg=pg_server).start()
    sock = g.gw.admin_socket
    assert sock.is_socket()
    g.stop()
    assert not sock.exists()
