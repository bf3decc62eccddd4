"""Watching a session that runs on another gateway sharing the PostgreSQL state.

A gateway's recordings are on its own disk, so a watcher elsewhere (``breakglass watch`` run
with another gateway's config, or the console of a grant service on another host) cannot
follow the file. Instead, through the shared state database:

1. the watcher inserts a row in ``bg_watch_requests`` (session, who, how) and keeps it fresh
   (``seen_at``) while it watches;
2. the gateway running the session (:func:`serve`, every :data:`RELAY_POLL` s) tells the
   engineer — the same terminal line / NOTICE as a local watch, recorded — audits it
   (``session.watched_remotely``), marks the row ``told``, and from then on copies the
   session's recording, complete records only, into ``bg_watch_chunks`` (byte offset, bytes);
3. the watcher appends those bytes to a private local copy of the recording and follows that
   copy exactly as a local watch follows the original (:class:`RemoteWatch`).

Read-only: nothing flows from the watcher to the session but the request row. When no watcher
has been seen for :data:`WATCHER_STALE` s the gateway stops copying; copies of sessions that
are over are deleted after :data:`KEEP` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from breakglass.proxy.logs import log

RELAY_POLL = 0.1  # the owning gateway's step: with the watcher's own poll, well inside 1 s
WATCHER_STALE = 5.0  # a watcher not seen for this long is gone
HEARTBEAT = 1.0  # how often a watcher refreshes its request row
CHUNK = 256 * 1024  # bytes per row
KEEP = 600.0  # chunks and requests of sessions that are over are dropped after this long
FINISH_GRACE = 5.0  # after a session leaves the registry, copy until its recording ends

SCHEMA = """
CREATE TABLE IF NOT EXISTS bg_watch_requests (
    session TEXT NOT NULL,
    watcher TEXT NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,
    told BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (session, watcher)
);
CREATE TABLE IF NOT EXISTS bg_watch_chunks (
    session TEXT NOT NULL,
    off BIGINT NOT NULL,
    data BYTEA NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (session, off)
);
"""
_SCHEMA_LOCK = 0x62727763  # advisory lock: concurrent first uses create the tables once


class WatchFailed(Exception):
    """A remote watch could not start (said to the user as it is)."""


async def ensure_schema(pool: Any) -> None:
    async with pool.acquire() as c, c.transaction():
        await c.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await c.execute(SCHEMA)


def watching_text(actor: str) -> str:
    return f"breakglass: {actor} is watching this session (read-only)"


def tell_engineer(session: Any, actor: str) -> None:
    """The engineer is told (a terminal line for SSH, a NOTICE for PostgreSQL; recorded)."""
    if session.on_notice is not None:
        session.on_notice(watching_text(str(actor)[:100]))


# ------------------------------------------------------------------ the owning gateway


class _Copy:
    """One session's recording being copied into the shared state: complete records only."""

    def __init__(self, path: Path, sent: int) -> None:
        from breakglass.recorder.tail import Tail

        self.tail = Tail(path)
        self.raw = open(path, "rb")  # noqa: SIM115 - kept open while copying
        self.sent = sent
        self.gone_at: float | None = None  # when the session left the registry

    def read(self) -> tuple[int, bytes]:
        """(offset, bytes) of the records completed since the last call."""
        self.tail.poll()
        end = self.tail._f.tell()  # Tail rewinds to the start of a torn record
        if end <= self.sent:
            return self.sent, b""
        self.raw.seek(self.sent)
        data = self.raw.read(end - self.sent)
        off, self.sent = self.sent, self.sent + len(data)
        return off, data

    def close(self) -> None:
        self.tail.close()
        self.raw.close()


async def serve(gw: Any) -> None:
    """Run on each gateway with a PostgreSQL state: answer watch requests for its sessions."""
    copies: dict[str, _Copy] = {}
    last_cleanup = 0.0
    pool = None
    try:
        while True:
            try:
                if pool is None:  # retried until the state database answers
                    p = await gw.state.pool()
                    await ensure_schema(p)
                    pool = p
                await _step(gw, pool, copies)
                if time.time() - last_cleanup > 60:
                    last_cleanup = time.time()
                    await _cleanup(pool, list(gw.registry.sessions))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep serving; a broken state DB is logged loudly
                log.error("watch_relay.failed", error=type(e).__name__, detail=str(e)[:200])
            await asyncio.sleep(RELAY_POLL)
    finally:
        for c in copies.values():
            c.close()


async def _step(gw: Any, pool: Any, copies: dict[str, _Copy]) -> None:
    live = dict(gw.registry.sessions)
    ids = sorted(set(live) | set(copies))
    if not ids:
        return
    now = time.time()
    rows = await pool.fetch(
        "SELECT session, watcher, actor, via, told FROM bg_watch_requests "
        "WHERE session = ANY($1::text[]) AND seen_at > $2",
        ids,
        now - WATCHER_STALE,
    )
    wanted = {r["session"] for r in rows}
    for r in rows:
        s = live.get(r["session"])
        if r["told"] or s is None:
            continue
        tell_engineer(s, r["actor"])
        with contextlib.suppress(Exception):  # a full audit log is handled by its guard
            gw.audit.append(
                "session.watched_remotely",
                session=r["session"],
                actor=r["actor"],
                via=r["via"],
                watcher=r["watcher"],
            )
        await pool.execute(
            "UPDATE bg_watch_requests SET told = true WHERE session = $1 AND watcher = $2",
            r["session"],
            r["watcher"],
        )
    for sid in wanted - set(copies):
        s = live.get(sid)
        path = Path(str((s.info() if s is not None else {}).get("recording") or ""))
        if s is None or not path.is_file():
            continue
        have = await pool.fetchval(
            "SELECT coalesce(max(off + length(data)), 0) FROM bg_watch_chunks WHERE session = $1",
            sid,
        )
        c = await asyncio.to_thread(_Copy, path, 0)
        if have:  # an earlier watcher's copy is there: go on from where it stops
            await asyncio.to_thread(c.read)  # to the current boundary (framing known)
            c.sent = min(int(have), c.sent)
        copies[sid] = c
    for sid, c in list(copies.items()):
        off, data = await asyncio.to_thread(c.read)
        if data:
            rows_ = [(sid, off + i, data[i : i + CHUNK], now) for i in range(0, len(data), CHUNK)]
            await pool.executemany(
                "INSERT INTO bg_watch_chunks VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                rows_,
            )
        if sid not in live and c.gone_at is None:
            c.gone_at = now
        done = c.tail.finished or (c.gone_at is not None and now - c.gone_at > FINISH_GRACE)
        if (sid not in wanted and sid in live) or (sid not in live and done and not data):
            c.close()
            del copies[sid]


async def _cleanup(pool: Any, live: list[str]) -> None:
    cut = time.time() - KEEP
    await pool.execute(
        "DELETE FROM bg_watch_chunks WHERE at < $1 AND NOT (session = ANY($2::text[]))", cut, live
    )
    await pool.execute("DELETE FROM bg_watch_requests WHERE seen_at < $1", cut)


# ------------------------------------------------------------------------ the watcher


class RemoteWatch:
    """A watch of a session on another gateway: a local copy of its recording at ``path``
    (created 0600), kept current by :meth:`pull`."""

    def __init__(self, pool: Any, session: str, actor: str, via: str, path: Path) -> None:
        self.pool = pool
        self.session = session
        self.actor = actor
        self.via = via
        self.path = Path(path)
        self.watcher = f"{via}:{secrets.token_hex(8)}"
        self.size = 0
        self._beat = 0.0
        self.last_used = time.monotonic()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._out = os.fdopen(fd, "wb")

    async def start(self, timeout: float = 10.0) -> None:
        """Ask; return once the owning gateway has told the engineer and sent the recording
        so far (bounded)."""
        await ensure_schema(self.pool)
        now = time.time()
        await self.pool.execute(
            "INSERT INTO bg_watch_requests VALUES ($1, $2, $3, $4, $5, $5, false)",
            self.session,
            self.watcher,
            self.actor,
            self.via,
            now,
        )
        self._beat = now
        deadline = time.monotonic() + timeout
        while True:
            told = await self.pool.fetchval(
                "SELECT told FROM bg_watch_requests WHERE session = $1 AND watcher = $2",
                self.session,
                self.watcher,
            )
            if told and await self.pull():
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise WatchFailed(
                    f"session {self.session}: the gateway running it did not answer the watch "
                    f"request within {timeout:.0f} s (is it still live? see `breakglass "
                    "sessions --live`)"
                )
            await asyncio.sleep(0.05)

    async def pull(self) -> int:
        """Append what the owning gateway has copied since; returns the bytes added."""
        self.last_used = time.monotonic()
        now = time.time()
        if now - self._beat >= HEARTBEAT:
            self._beat = now
            await self.pool.execute(
                "UPDATE bg_watch_requests SET seen_at = $3 WHERE session = $1 AND watcher = $2",
                self.session,
                self.watcher,
                now,
            )
        rows = await self.pool.fetch(
            "SELECT off, data FROM bg_watch_chunks WHERE session = $1 "
            "AND off + length(data) > $2 ORDER BY off",
            self.session,
            self.size,
        )
        added = 0
        for r in rows:
            off, data = int(r["off"]), bytes(r["data"])
            if off > self.size:  # a gap: the rest comes with the next pull
                break
            new = data[self.size - off :]
            self._out.write(new)
            self.size += len(new)
            added += len(new)
        if added:
            self._out.flush()
        return added

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.pool.execute(
                "DELETE FROM bg_watch_requests WHERE session = $1 AND watcher = $2",
                self.session,
                self.watcher,
            )
        self._out.close()
