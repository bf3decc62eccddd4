"""End to end through the real PostgreSQL gateway: sessions (live and finished), the statement
timeline of what ran, search, and the break-glass review queue."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_index_helpers import run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    g = GatewayThread(tmp_path_factory.mktemp("review-gw") / "gw", pg=pg_server).start()
    yield g
    g.stop()


async def connect(gw: GatewayThread, token: str, user: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user=user,
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )


def cli_json(capsys, *argv: str):
    capsys.readouterr()
    rc = run_cli(list(argv) + ["--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else None


def test_sessions_timeline_search_and_review_through_the_gateway(gw, capsys):
    c = str(gw.dir / "config.toml")

    async def scenario():
        ina = await connect(gw, gw.grant("breakglass", user="ina", breakglass=True), "ina")
        erin = await connect(gw, gw.grant("db-readonly", user="erin"), "erin")
        try:
            assert await erin.fetchval("select count(*) from customers where id < $1", 1000) >= 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await erin.execute("delete from customers where id = 424242")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await erin.execute("select 1/0")
            await ina.execute("select 'incident-marker-7'")
            # both live now: the gateway's admin socket says so
            rc, live = await asyncio.to_thread(cli_json, capsys, "-c", c, "sessions", "--live")
            assert rc == 0
            assert sorted(r["user"] for r in live) == ["erin", "ina"]
            assert all(r["live"] and r["integrity"] == "live" for r in live)
        finally:
            await erin.close()
            await ina.close()

    asyncio.run(scenario())
    gw.wait_idle()
    gw.flush_audit()

    rc, rows = cli_json(capsys, "-c", c, "sessions")
    by_user = {r["user"]: r for r in rows}
    erin, ina = by_user["erin"], by_user["ina"]
    assert not erin["live"] and erin["integrity"] == "ok" and erin["denials"] == 1
    assert erin["end_reason"] and erin["duration"] is not None
    assert ina["breakglass"] and ina["integrity"] == "ok"
    rc, rows = cli_json(capsys, "-c", c, "sessions", "--denied")
    assert [r["user"] for r in rows] == ["erin"]

    rc, tl = cli_json(capsys, "-c", c, "replay", erin["session_id"], "--timeline")
    assert rc == 0
    ran = [(e["what"], e["outcome"]) for e in tl if e["what"] in ("statement", "denied")]
    texts = [e["text"] for e in tl if e["what"] in ("statement", "denied")]
    assert ("denied", "DENIED") in ran
    assert "delete from customers where id = 424242" in texts
    sel = next(e for e in tl if "count(*) from customers" in e["text"] and e.get("params"))
    # asyncpg binds an int8 in binary: recorded as its value, typed by the statement
    assert sel["params"] == ["1000"] and sel["param_types"] == ["int8"]
    assert sel["outcome"] == "OK" and sel["duration_ms"] >= 0  # fetchval: portal suspended
    div = next(e for e in tl if e["text"] == "select 1/0")
    assert div["outcome"] == "ERROR" and div["error"]["sqlstate"] == "22012"

    rc, res = cli_json(capsys, "-c", c, "search", "incident-marker-7", "--in", "queries")
    assert [r["session"] for r in res] == [ina["session_id"]]

    rc, queue = cli_json(capsys, "-c", c, "review", "list")
    assert [q["session"]["session_id"] for q in queue] == [ina["session_id"]]
    assert run_cli(["-c", c, "review", ina["session_id"], "--notes", "restart only"]) == 0
    rc, queue = cli_json(capsys, "-c", c, "review", "list")
    assert queue == []
