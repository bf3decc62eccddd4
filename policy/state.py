"""Access state: grants issued and revocations.

``StateStore`` is the interface; ``SqliteState`` the embedded default. A
PostgreSQL implementation (asyncpg) can stand in for several gateways.
Methods are async so that a networked store fits the same shape.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class IssuedGrant:
    jti: str
    subject: str
    template: str | None
    targets: list[dict[str, Any]]
    issued_at: float
    expires_at: float
    reason: str
    ticket: str | None
    breakglass: bool
    approvers: list[str]


@dataclass(frozen=True)
class Revocation:
    jti: str
    revoked_at: float
    reason: str
    actor: str


class StateStore(Protocol):
    async def record_grant(self, claims: Mapping[str, Any]) -> None: ...
    async def get_grant(self, jti: str) -> IssuedGrant | None: ...
    async def list_grants(
        self, *, subject: str | None = None, limit: int = 100
    ) -> list[IssuedGrant]: ...
    async def revoke(self, jti: str, reason: str, actor: str) -> Revocation: ...
    async def forget_grant(self, jti: str) -> None: ...
    async def revocation(self, jti: str) -> Revocation | None: ...
    async def revocations_since(self, since: float) -> list[Revocation]: ...
    async def publish_live(
        self, gateway: str, sessions: list[dict[str, Any]], now: float
    ) -> None: ...
    async def live_sessions(self, fresh_after: float) -> list[dict[str, Any]]: ...
    async def request_kill(self, session: str, actor: str, reason: str, now: float) -> None: ...
    async def take_kills(self, sessions: list[str]) -> list[tuple[str, str, str]]: ...
    async def end_sessions(self, key: str, at: float) -> None: ...
    async def sessions_ended(self, keys: list[str]) -> float | None: ...
    async def close(self) -> None: ...


class RequestStore(Protocol):
    """Access requests (JSON documents with a version for compare-and-set) and TOTP replay
    protection; used by the grant service (``breakglass serve``)."""

    async def create_request(self, doc: Mapping[str, Any]) -> None: ...
    async def get_request(self, request_id: str) -> dict[str, Any] | None: ...
    async def list_requests(
        self, *, requester: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...
    async def update_request(self, doc: Mapping[str, Any], expected_version: int) -> bool: ...
    async def use_totp_step(self, user: str, step: int) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    jti TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    template TEXT,
    targets TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    reason TEXT NOT NULL,
    ticket TEXT,
    breakglass INTEGER NOT NULL,
    approvers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    jti TEXT PRIMARY KEY,
    revoked_at REAL NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_at ON revocations (revoked_at);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created_at);
CREATE TABLE IF NOT EXISTS totp_steps (
    user TEXT PRIMARY KEY,
    step INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS live_sessions (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    info TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kill_requests (
    session TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    requested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS session_cutoffs (
    key TEXT PRIMARY KEY,
    cutoff REAL NOT NULL
);
"""


class SqliteState:
    """Embedded state in one SQLite file (WAL mode, safe for several local processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Grants, requests and reasons: private to the service account (sqlite gives its
        # -wal and -shm files the same mode).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        # Several processes (gateway workers, CLI commands) may open the file at once;
        # switching to WAL can fail with "locked" without waiting, so retry for a while.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    async def record_grant(self, claims: Mapping[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO grants VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                claims["jti"],
                claims["sub"],
                claims.get("template"),
                json.dumps(claims["targets"]),
                float(claims["iat"]),
                float(claims["exp"]),
                claims.get("reason", ""),
                claims.get("ticket"),
                1 if claims.get("breakglass") else 0,
                json.dumps(list(claims.get("approvers") or [])),
            ),
        )

    @staticmethod
    def _grant(row: tuple) -> IssuedGrant:
        return IssuedGrant(
            jti=row[0],
            subject=row[1],
            template=row[2],
            targets=json.loads(row[3]),
            issued_at=row[4],
            expires_at=row[5],
            reason=row[6],
            ticket=row[7],
            breakglass=bool(row[8]),
            approvers=json.loads(row[9]),
        )

    async def get_grant(self, jti: str) -> IssuedGrant | None:
        row = self._db.execute("SELECT * FROM grants WHERE jti = ?", (jti,)).fetchone()
        return self._grant(row) if row else None

    async def list_grants(
        self, *, subject: str | None = None, limit: int = 100
    ) -> list[IssuedGrant]:
        if subject:
            rows = self._db.execute(
                "SELECT * FROM grants WHERE subject = ? ORDER BY issued_at DESC LIMIT ?",
                (subject, limit),
            )
        else:
            rows = self._db.execute(
                "SELECT * FROM grants ORDER BY issued_at DESC LIMIT ?", (limit,)
            )
        return [self._grant(r) for r in rows.fetchall()]

    async def forget_grant(self, jti: str) -> None:
        """Undo ``record_grant`` for a grant that was never handed out (issuing failed)."""
        self._db.execute("DELETE FROM grants WHERE jti = ?", (jti,))

    async def revoke(self, jti: str, reason: str, actor: str) -> Revocation:
        existing = await self.revocation(jti)
        if existing:
            return existing
        rev = Revocation(jti=jti, revoked_at=time.time(), reason=reason, actor=actor)
        self._db.execute(
            "INSERT INTO revocations VALUES (?,?,?,?)",
            (rev.jti, rev.revoked_at, rev.reason, rev.actor),
        )
        return rev

    async def revocation(self, jti: str) -> Revocation | None:
        row = self._db.execute("SELECT * FROM revocations WHERE jti = ?", (jti,)).fetchone()
        return Revocation(*row) if row else None

    async def revocations_since(self, since: float) -> list[Revocation]:
        rows = self._db.execute(
            "SELECT * FROM revocations WHERE revoked_at >= ? ORDER BY revoked_at", (since,)
        ).fetchall()
        return [Revocation(*r) for r in rows]

    # -- requests (grant service) -------------------------------------------------------

    async def create_request(self, doc: Mapping[str, Any]) -> None:
        d = dict(doc, version=1)
        self._db.execute(
            "INSERT INTO requests VALUES (?,?,?,?,?,?)",
            (d["id"], d["requester"], d["status"], float(d["created_at"]), 1, json.dumps(d)),
        )

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT doc FROM requests WHERE id = ?", (request_id,)).fetchone()
        return json.loads(row[0]) if row else None

    async def list_requests(
        self, *, requester: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM requests WHERE 1=1", []
        if requester:
            sql, args = sql + " AND requester = ?", [*args, requester]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        rows = self._db.execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [json.loads(r[0]) for r in rows.fetchall()]

    async def update_request(self, doc: Mapping[str, Any], expected_version: int) -> bool:
        d = dict(doc, version=expected_version + 1)
        cur = self._db.execute(
            "UPDATE requests SET status = ?, version = ?, doc = ? WHERE id = ? AND version = ?",
            (d["status"], d["version"], json.dumps(d), d["id"], expected_version),
        )
        return cur.rowcount == 1

    async def use_totp_step(self, user: str, step: int) -> bool:
        """Record that ``user`` used TOTP time step ``step``; False if it (or a later one) was
        already used, i.e. the code is a replay."""
        cur = self._db.execute(
            "INSERT INTO totp_steps VALUES (?, ?) "
            "ON CONFLICT (user) DO UPDATE SET step = excluded.step WHERE totp_steps.step < excluded.step",
            (user, step),
        )
        return cur.rowcount == 1

    # -- live sessions across gateways (sessions --live, kill from any gateway)

    async def publish_live(self, gateway: str, sessions: list[dict[str, Any]], now: float) -> None:
        """Replace ``gateway``'s live sessions with ``sessions`` (each has ``id``)."""
        ids = [s["id"] for s in sessions]
        with self._db:
            marks = ",".join("?" * len(ids))
            self._db.execute(
                f"DELETE FROM live_sessions WHERE gateway = ? AND id NOT IN ({marks})",
                (gateway, *ids),
            )
            self._db.executemany(
                "INSERT INTO live_sessions VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "gateway = excluded.gateway, info = excluded.info, heartbeat = excluded.heartbeat",
                [(s["id"], gateway, json.dumps(s, default=str), now) for s in sessions],
            )

    async def live_sessions(self, fresh_after: float) -> list[dict[str, Any]]:
        """Sessions published by gateways whose last heartbeat is after ``fresh_after``."""
        rows = self._db.execute(
            "SELECT gateway, info FROM live_sessions WHERE heartbeat > ?", (fresh_after,)
        ).fetchall()
        return [dict(json.loads(info), gateway_instance=gw) for gw, info in rows]

    async def request_kill(self, session: str, actor: str, reason: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO kill_requests VALUES (?, ?, ?, ?) ON CONFLICT (session) DO NOTHING",
            (session, actor, reason, now),
        )

    async def take_kills(self, sessions: list[str]) -> list[tuple[str, str, str]]:
        """Kill requests for any of ``sessions`` (removed as they are taken)."""
        if not sessions:
            return []
        marks = ",".join("?" * len(sessions))
        rows = self._db.execute(
            f"SELECT session, actor, reason FROM kill_requests WHERE session IN ({marks})",
            sessions,
        ).fetchall()
        if rows:  # a read most of the time: nothing to commit (or fsync)
            taken = [r[0] for r in rows]
            self._db.execute(
                f"DELETE FROM kill_requests WHERE session IN ({','.join('?' * len(taken))})",
                taken,
            )
        return [tuple(r) for r in rows]

    async def end_sessions(self, key: str, at: float) -> None:
        """Grant-service API sessions of ``key`` (``user:NAME`` or ``session:ID``) issued at
        or before ``at`` are over (logout, a disabled or removed user)."""
        self._db.execute(
            "INSERT INTO session_cutoffs VALUES (?, ?) ON CONFLICT (key) "
            "DO UPDATE SET cutoff = max(cutoff, excluded.cutoff)",
            (key, at),
        )

    async def sessions_ended(self, keys: list[str]) -> float | None:
        """The latest cutoff recorded for any of ``keys``, or None."""
        marks = ",".join("?" * len(keys))
        row = self._db.execute(
            f"SELECT max(cutoff) FROM session_cutoffs WHERE key IN ({marks})", keys
        ).fetchone()
        return row[0] if row else None

    async def close(self) -> None:
        self._db.close()
