"""PgState against a real PostgreSQL: the StateStore/RequestStore contract and LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import time

import pytest

from breakglass.policy.state import SqliteState
from breakglass.policy.state_pg import PgState, watch
from tests.factories import grant_claims
from tests.test_service_support import fresh_state_db

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def state_dsn(pg_server):
    return fresh_state_db(pg_server)


@pytest.fixture(params=["pg", "sqlite"])
async def store(request, state_dsn, tmp_path):
    s = PgState(state_dsn) if request.param == "pg" else SqliteState(tmp_path / "state.db")
    yield s
    await s.close()


async def test_grants_and_revocations(store):
    c = grant_claims(sub="erin-" + str(time.time_ns()), ticket="T-1")
    await store.record_grant(c)
    g = await store.get_grant(c["jti"])
    assert g.subject == c["sub"] and g.targets == c["targets"] and g.ticket == "T-1"
    assert [x.jti for x in await store.list_grants(subject=c["sub"])] == [c["jti"]]
    assert await store.revocation(c["jti"]) is None
    t0 = time.time()
    r1 = await store.revoke(c["jti"], "gone", "sec")
    r2 = await store.revoke(c["jti"], "again", "other")
    assert r2 == r1 and r1.reason == "gone"  # the first revocation stands
    assert await store.revocation(c["jti"]) == r1
    assert c["jti"] in [r.jti for r in await store.revocations_since(t0 - 1)]


async def test_requests_compare_and_set(store):
    doc = {"id": f"r-{time.time_ns()}", "requester": "erin", "status": "pending", "created_at": 1.0}
    await store.create_request(doc)
    got = await store.get_request(doc["id"])
    assert got["version"] == 1 and got["requester"] == "erin"
    assert await store.update_request(dict(got, status="approved"), 1)
    assert not await store.update_request(dict(got, status="denied"), 1)  # lost the race
    got = await store.get_request(doc["id"])
    assert got["status"] == "approved" and got["version"] == 2
    assert doc["id"] in [d["id"] for d in await store.list_requests(status="approved")]
    assert doc["id"] not in [d["id"] for d in await store.list_requests(status="pending")]
    assert await store.get_request("nope") is None


async def test_totp_steps_are_single_use(store):
    u = f"u{time.time_ns()}"
    assert await store.use_totp_step(u, 100)
    assert not await store.use_totp_step(u, 100)
    assert not await store.use_totp_step(u, 99)
    assert await store.use_totp_step(u, 101)


async def test_watch_delivers_existing_and_new_revocations(state_dsn):
    a, b = PgState(state_dsn), PgState(state_dsn)
    old = await a.revoke(f"old-{time.time_ns()}", "r", "x")
    seen: asyncio.Queue = asyncio.Queue()
    ready = asyncio.Event()
    task = asyncio.ensure_future(watch(b, seen.put_nowait, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        got = set()
        while old.jti not in got:
            got.add((await asyncio.wait_for(seen.get(), 5)).jti)
        t0 = time.monotonic()
        new = await a.revoke(f"new-{time.time_ns()}", "r", "x")
        while (await asyncio.wait_for(seen.get(), 5)).jti != new.jti:
            pass
        assert time.monotonic() - t0 < 1.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()
        await b.close()


async def test_watch_reconnects_and_catches_up(pg_server, state_dsn):
    a, b = PgState(state_dsn), PgState(state_dsn)
    seen: asyncio.Queue = asyncio.Queue()
    ready = asyncio.Event()
    task = asyncio.ensure_future(watch(b, seen.put_nowait, ready=ready, reconnect_delay=0.05))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        ready.clear()
        # Kill the watcher's LISTEN connection from the server side.
        pids = await (await a.pool()).fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query ILIKE 'LISTEN%'"
        )
        assert pids
        for p in pids:
            await (await a.pool()).execute("SELECT pg_terminate_backend($1)", p["pid"])
        missed = await a.revoke(f"missed-{time.time_ns()}", "r", "x")
        await asyncio.wait_for(ready.wait(), 10)
        while (await asyncio.wait_for(seen.get(), 5)).jti != missed.jti:
            pass
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()
        await b.close()
