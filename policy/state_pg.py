"""Shared state in PostgreSQL (asyncpg), for several gateways and grant services.

``PgState(dsn)`` implements ``policy.state.StateStore`` and ``RequestStore``. It connects
lazily (on first use, inside the caller's event loop), so it can be built synchronously like
``SqliteState``. Tables are created if missing (names prefixed ``bg_``).

Revocations are announced with ``NOTIFY breakglass_revocations`` in the same transaction as
the insert; :func:`watch` LISTENs on a dedicated connection and calls ``on_revoke`` for each,
catching up from the table (by sequence number) whenever it (re)connects, so a notification
missed while disconnected is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from breakglass.policy.state import IssuedGrant, Revocation

CHANNEL = "breakglass_revocations"
_log = logging.getLogger("breakglass.state_pg")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bg_grants (
    jti TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    template TEXT,
    targets JSONB NOT NULL,
    issued_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT,
    breakglass BOOLEAN NOT NULL,
    approvers JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS bg_grants_subject ON bg_grants (subject, issued_at);
CREATE TABLE IF NOT EXISTS bg_revocations (
    seq BIGSERIAL UNIQUE,
    jti TEXT PRIMARY KEY,
    revoked_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS bg_revocations_at ON bg_revocations (revoked_at);
CREATE TABLE IF NOT EXISTS bg_requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    version INTEGER NOT NULL,
    doc JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS bg_requests_created ON bg_requests (created_at);
CREATE TABLE IF NOT EXISTS bg_live_sessions (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    info JSONB NOT NULL,
    heartbeat DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS bg_kill_requests (
    session TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS bg_session_cutoffs (
    key TEXT PRIMARY KEY,
    cutoff DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS bg_totp_steps (
    username TEXT PRIMARY KEY,
    step BIGINT NOT NULL
);
"""

_SCHEMA_LOCK = 0x62726B67  # advisory lock id: concurrent first starts create the schema once


def _grant(row: Mapping[str, Any]) -> IssuedGrant:
    return IssuedGrant(
        jti=row["jti"],
        subject=row["subject"],
        template=row["template"],
        targets=json.loads(row["targets"]),
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        reason=row["reason"],
        ticket=row["ticket"],
        breakglass=row["breakglass"],
        approvers=json.loads(row["approvers"]),
    )


def _rev(row: Mapping[str, Any]) -> Revocation:
    return Revocation(
        jti=row["jti"], revoked_at=row["revoked_at"], reason=row["reason"], actor=row["actor"]
    )


class PgState:
    """State in a PostgreSQL database named by ``dsn`` (``postgresql://user:pw@host/db``)."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 5) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._lock: asyncio.Lock | None = None
        self._sizes = (min_size, max_size)

    def __repr__(self) -> str:  # never show the password
        return "PgState(<dsn hidden>)"

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.dsn, min_size=self._sizes[0], max_size=self._sizes[1]
                )
                try:
                    async with pool.acquire() as c, c.transaction():
                        await c.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                        await c.execute(_SCHEMA)
                except BaseException:
                    await pool.close()
                    raise
                self._pool = pool
        return self._pool

    # -- grants and revocations (StateStore) -------------------------------------------

    async def record_grant(self, claims: Mapping[str, Any]) -> None:
        p = await self.pool()
        await p.execute(
            "INSERT INTO bg_grants VALUES ($1,$2,$3,$4::jsonb,$5,$6,$7,$8,$9,$10::jsonb)",
            claims["jti"],
            claims["sub"],
            claims.get("template"),
            json.dumps(claims["targets"]),
            float(claims["iat"]),
            float(claims["exp"]),
            claims.get("reason", ""),
            claims.get("ticket"),
            bool(claims.get("breakglass")),
            json.dumps(list(claims.get("approvers") or [])),
        )

    async def get_grant(self, jti: str) -> IssuedGrant | None:
        p = await self.pool()
        row = await p.fetchrow("SELECT * FROM bg_grants WHERE jti = $1", jti)
        return _grant(row) if row else None

    async def list_grants(
        self, *, subject: str | None = None, limit: int = 100
    ) -> list[IssuedGrant]:
        p = await self.pool()
        if subject:
            rows = await p.fetch(
                "SELECT * FROM bg_grants WHERE subject = $1 ORDER BY issued_at DESC LIMIT $2",
                subject,
                limit,
            )
        else:
            rows = await p.fetch("SELECT * FROM bg_grants ORDER BY issued_at DESC LIMIT $1", limit)
        return [_grant(r) for r in rows]

    async def forget_grant(self, jti: str) -> None:
        p = await self.pool()
        await p.execute("DELETE FROM bg_grants WHERE jti = $1", jti)

    async def revoke(self, jti: str, reason: str, actor: str) -> Revocation:
        p = await self.pool()
        async with p.acquire() as c, c.transaction():
            row = await c.fetchrow(
                "INSERT INTO bg_revocations (jti, revoked_at, reason, actor) VALUES ($1,$2,$3,$4) "
                "ON CONFLICT (jti) DO NOTHING RETURNING *",
                jti,
                time.time(),
                reason,
                actor,
            )
            if row is None:  # already revoked: the first revocation stands
                row = await c.fetchrow("SELECT * FROM bg_revocations WHERE jti = $1", jti)
            else:
                await c.execute("SELECT pg_notify($1, $2)", CHANNEL, jti)
        return _rev(row)

    async def revocation(self, jti: str) -> Revocation | None:
        p = await self.pool()
        row = await p.fetchrow("SELECT * FROM bg_revocations WHERE jti = $1", jti)
        return _rev(row) if row else None

    async def revocations_since(self, since: float) -> list[Revocation]:
        p = await self.pool()
        rows = await p.fetch(
            "SELECT * FROM bg_revocations WHERE revoked_at >= $1 ORDER BY revoked_at", since
        )
        return [_rev(r) for r in rows]

    async def _revocations_after_seq(self, seq: int) -> list[tuple[int, Revocation]]:
        p = await self.pool()
        rows = await p.fetch("SELECT * FROM bg_revocations WHERE seq > $1 ORDER BY seq", seq)
        return [(r["seq"], _rev(r)) for r in rows]

    # -- requests (RequestStore) ---------------------------------------------------------

    async def create_request(self, doc: Mapping[str, Any]) -> None:
        d = dict(doc, version=1)
        p = await self.pool()
        await p.execute(
            "INSERT INTO bg_requests VALUES ($1,$2,$3,$4,1,$5::jsonb)",
            d["id"],
            d["requester"],
            d["status"],
            float(d["created_at"]),
            json.dumps(d),
        )

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        p = await self.pool()
        v = await p.fetchval("SELECT doc FROM bg_requests WHERE id = $1", request_id)
        return json.loads(v) if v is not None else None

    async def list_requests(
        self, *, requester: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        p = await self.pool()
        rows = await p.fetch(
            "SELECT doc FROM bg_requests WHERE ($1::text IS NULL OR requester = $1) "
            "AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC LIMIT $3",
            requester,
            status,
            limit,
        )
        return [json.loads(r["doc"]) for r in rows]

    async def update_request(self, doc: Mapping[str, Any], expected_version: int) -> bool:
        d = dict(doc, version=expected_version + 1)
        p = await self.pool()
        tag = await p.execute(
            "UPDATE bg_requests SET status = $1, version = $2, doc = $3::jsonb "
            "WHERE id = $4 AND version = $5",
            d["status"],
            d["version"],
            json.dumps(d),
            d["id"],
            expected_version,
        )
        return tag == "UPDATE 1"

    async def use_totp_step(self, user: str, step: int) -> bool:
        p = await self.pool()
        tag = await p.execute(
            "INSERT INTO bg_totp_steps VALUES ($1, $2) ON CONFLICT (username) "
            "DO UPDATE SET step = excluded.step WHERE bg_totp_steps.step < excluded.step",
            user,
            step,
        )
        return tag == "INSERT 0 1"

    async def publish_live(self, gateway: str, sessions: list[dict[str, Any]], now: float) -> None:
        p = await self.pool()
        ids = [x["id"] for x in sessions]
        async with p.acquire() as c, c.transaction():
            await c.execute(
                "DELETE FROM bg_live_sessions WHERE gateway = $1 AND NOT (id = ANY($2::text[]))",
                gateway,
                ids,
            )
            await c.executemany(
                "INSERT INTO bg_live_sessions VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (id) "
                "DO UPDATE SET gateway = excluded.gateway, info = excluded.info, "
                "heartbeat = excluded.heartbeat",
                [(x["id"], gateway, json.dumps(x, default=str), now) for x in sessions],
            )

    async def live_sessions(self, fresh_after: float) -> list[dict[str, Any]]:
        p = await self.pool()
        rows = await p.fetch(
            "SELECT gateway, info FROM bg_live_sessions WHERE heartbeat > $1", fresh_after
        )
        return [dict(json.loads(r["info"]), gateway_instance=r["gateway"]) for r in rows]

    async def request_kill(self, session: str, actor: str, reason: str, now: float) -> None:
        p = await self.pool()
        await p.execute(
            "INSERT INTO bg_kill_requests VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            session,
            actor,
            reason,
            now,
        )

    async def take_kills(self, sessions: list[str]) -> list[tuple[str, str, str]]:
        if not sessions:
            return []
        p = await self.pool()
        rows = await p.fetch(
            "DELETE FROM bg_kill_requests WHERE session = ANY($1::text[]) "
            "RETURNING session, actor, reason",
            sessions,
        )
        return [(r["session"], r["actor"], r["reason"]) for r in rows]

    async def end_sessions(self, key: str, at: float) -> None:
        p = await self.pool()
        await p.execute(
            "INSERT INTO bg_session_cutoffs VALUES ($1, $2) ON CONFLICT (key) "
            "DO UPDATE SET cutoff = GREATEST(bg_session_cutoffs.cutoff, excluded.cutoff)",
            key,
            at,
        )

    async def sessions_ended(self, keys: list[str]) -> float | None:
        p = await self.pool()
        return await p.fetchval(
            "SELECT max(cutoff) FROM bg_session_cutoffs WHERE key = ANY($1::text[])", keys
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


OnRevoke = Callable[[Revocation], Awaitable[None] | None]


async def watch(
    state: PgState,
    on_revoke: OnRevoke,
    *,
    reconnect_delay: float = 1.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Call ``on_revoke(revocation)`` for every revocation, old and new, until cancelled.

    Existing revocations are delivered first (so a starting gateway knows them all), then each
    new one as its NOTIFY arrives. After a lost connection it reconnects and catches up from
    the table. ``ready`` is set once LISTEN is active. ``on_revoke`` may be sync or async;
    an exception in it is logged and does not stop the watch.
    """
    last_seq = 0
    while True:
        conn: asyncpg.Connection | None = None
        try:
            await state.pool()  # schema exists
            conn = await asyncpg.connect(state.dsn)
            woke = asyncio.Event()
            lost = asyncio.Event()
            await conn.add_listener(CHANNEL, lambda *_, e=woke: e.set())
            conn.add_termination_listener(lambda *_, e=lost: e.set())
            # LISTEN first, then read the table: nothing can fall between the two.
            if ready is not None:
                ready.set()
            while True:
                woke.clear()
                for seq, rev in await state._revocations_after_seq(last_seq):
                    last_seq = max(last_seq, seq)
                    await _deliver(on_revoke, rev)
                if lost.is_set():
                    break
                waiters = [asyncio.ensure_future(woke.wait()), asyncio.ensure_future(lost.wait())]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # keep watching; say so loudly
            _log.error("revocation watch failed (%s: %s); reconnecting", type(e).__name__, e)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        await asyncio.sleep(reconnect_delay)


async def _deliver(on_revoke: OnRevoke, rev: Revocation) -> None:
    try:
        r = on_revoke(rev)
        if inspect.isawaitable(r):
            await r
    except Exception as e:
        _log.error("on_revoke failed for %s: %s: %s", rev.jti, type(e).__name__, e)
