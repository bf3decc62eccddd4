"""The gateway's own messages to the engineer (expiry warning, "grant expired ... session
closed") are recorded and shown by replay and export — real gateways, real clients."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from breakglass.recorder.export import asciicast_lines
from breakglass.recorder.replay import (
    load_events,
    render_timeline,
    session_timeline,
    terminal_frames,
)
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pg_gw(pg_server, tmp_path_factory):
    def warn_early(text: str) -> str:
        return text.replace('warn_before_expiry = "2m"', 'warn_before_expiry = "2s"')

    g = GatewayThread(
        tmp_path_factory.mktemp("pg-msg") / "gw", pg=pg_server, edit_config=warn_early
    )
    g.start()
    yield g
    g.stop()


async def test_postgres_notice_and_fatal_are_recorded_and_replayed(pg_gw):
    token = pg_gw.grant(ttl=5)
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=pg_gw.pg_port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(pg_gw.dir / "keys/gateway_tls.crt"),
    )
    try:
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await conn.fetchval("select pg_sleep(30)")
    finally:
        conn.terminate()
    await asyncio.to_thread(pg_gw.wait_idle)
    (path,) = sorted(pg_gw.cfg.recordings_dir.glob("*.rec"))
    events = load_events(path)
    notices = [e for e in events if e["kind"] == "notice"]
    assert [n["severity"] for n in notices] == ["WARNING"]
    assert "expires in" in notices[0]["message"]
    # the recording ends at the termination; the FATAL the client got is drawn from it
    assert events[-1]["kind"] == "end" and events[-2]["kind"] == "terminate"
    text = render_timeline(session_timeline(events))
    assert "GATEWAY  breakglass: your grant expires in" in text
    assert "TERMINATE  breakglass: grant expired at" in text and "— session closed" in text
    cast = [json.loads(x) for x in asciicast_lines(events)]
    shown = "".join(x[2] for x in cast[1:])
    assert "your grant expires in" in shown and "grant expired" in shown and "pg_sleep" in shown


def test_ssh_expiry_warning_and_goodbye_are_in_the_replay(ssh_gateway: GatewayHarness):  # noqa: F811
    h = ssh_gateway
    claims = h.claims(commands=["sleep 30"], ttl=3.5)
    res = h.ssh(h.sign(claims), "sleep 30", timeout=30)
    assert b"grant expired" in res.stderr
    h.wait_session_ended(claims["jti"])
    events = h.events(claims["jti"])
    out = b"".join(f.data for f in terminal_frames(events))
    assert b"this grant expires in" in out
    assert b"grant expired" in out and b"session closed" in out
    cast = "".join(asciicast_lines(events))
    assert "grant expired" in cast and "this grant expires in" in cast
    text = render_timeline(session_timeline(events))
    assert "exec  sleep 30" in text and "expiry warning" in text and "TERMINATE" in text
