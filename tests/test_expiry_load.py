"""Expiry is a hard gate, not only a timer: 100 concurrent PostgreSQL sessions with staggered
grant expiry, each sending statements as fast as it can through one gateway process. No
statement is recorded or forwarded at or after its grant's ``exp``, none is answered from a
later execution, and every recording ends within a second of ``exp``. (``bench/expiry.py``
runs the same with 500 and 1,000 sessions.)"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from breakglass.recorder.reader import read_events
from tests.harness import GatewayThread

pytestmark = pytest.mark.timeout(120)

SESSIONS = 100


async def _connect(gw: GatewayThread, token: str, logins: asyncio.Semaphore):
    async with logins:  # the gateway admits 32 logins in progress per address
        return await gw.connect_pg(token, timeout=30)


async def _hammer(conn: asyncpg.Connection, answered: list[float]) -> None:
    try:
        while True:
            # the database's own clock says when the statement ran
            answered.append(await conn.fetchval("select extract(epoch from clock_timestamp())"))
    except Exception:  # noqa: BLE001 - the session was ended (how asyncpg says so varies)
        pass
    finally:
        conn.terminate()


def test_staggered_expiry_of_100_sessions_under_load(pg_server, tmp_path):
    gw = GatewayThread(tmp_path / "gw", pg=pg_server).start()
    try:
        answered: list[list[float]] = [[] for _ in range(SESSIONS)]
        exps: list[float] = []

        async def run() -> None:
            # every session logs in first (slow on a loaded 2-core machine), then all expire
            # within two seconds while they send statements as fast as they can
            logins = asyncio.Semaphore(16)
            # calibrate: how long do logins take on this machine right now?
            t0 = time.time()
            probe = await asyncio.gather(*(_connect(gw, gw.grant(), logins) for _ in range(16)))
            per_login = (time.time() - t0) / 16
            await asyncio.gather(*(c.close() for c in probe))
            start = time.time() + 3 + 2 * per_login * SESSIONS
            exps.extend(start + 2.0 * i / SESSIONS for i in range(SESSIONS))
            tokens = [gw.grant(ttl=120, exp=e) for e in exps]
            conns = await asyncio.gather(*(_connect(gw, t, logins) for t in tokens))
            assert time.time() < exps[0], "logins took too long to test expiry"
            await asyncio.gather(*(_hammer(c, a) for c, a in zip(conns, answered, strict=True)))

        asyncio.run(asyncio.wait_for(run(), 90))
        gw.wait_idle(30)
        late_answers = [
            (i, t - exps[i]) for i, ts in enumerate(answered) for t in ts if t >= exps[i]
        ]
        assert not late_answers, late_answers[:5]
        assert all(answered), "every session ran statements before its grant expired"

        ends, late_queries = [], []
        staggered = 0
        for rec in sorted(gw.cfg.recordings_dir.glob("*.rec")):
            events = list(read_events(rec))
            exp = events[0]["expires_at"]
            if exp not in exps:
                continue  # a calibration session
            staggered += 1
            held = {
                q
                for e in events
                if e["kind"] == "not_forwarded"
                for q in range(e["since_seq"], e["seq"])
            }
            late_queries += [
                e["t"] - exp
                for e in events
                if e["kind"] == "query" and e["t"] >= exp and e["seq"] not in held
            ]
            end = [e for e in events if e["kind"] == "end"]
            assert end and end[0]["reason"] == "expired", end
            ends.append(end[0]["t"] - exp)
        assert staggered == SESSIONS
        assert not late_queries, late_queries[:5]
        assert max(ends) <= 1.0, f"p100 of recording end - exp: {max(ends):.3f}s"
    finally:
        gw.stop()
