"""The session index: one row of metadata per recording, for ``breakglass sessions``.

The recordings are the source of truth; the index is a cache that can always be rebuilt from
them (:func:`refresh` with ``rebuild=True``). Each row says who, where, when, why, how much, how
it ended, and whether the recording verifies (``integrity``).

Integrity values: ``ok`` (verifies, signed trailer), ``live`` (not finalized yet and its gateway
is running; without the audit log: not finalized), ``incomplete`` (no trailer: the recorder
failed, as a signed audit event proves), ``unfinalized`` (no trailer, its writer died),
``missing`` (the audit log or an earlier index run knew the recording, but the file is gone),
or the tampering found (``altered``, ``removed``, ``reordered``, ``truncated``,
``missing-trailer``, ``bad-signature``, ``unknown-key``, ``malformed``, and from the
cross-checks of :mod:`recorder.session_check`: ``renamed``, ``mismatch``, ``unaudited``).

With the audit log (``refresh(..., facts=...)``) a row's facts (user, target, account, client,
grant, break-glass, start, end) come from the signed audit events, not only from the header,
so a recording that fails keeps its place in every list and in the review queue.

A row is re-verified whenever the file's size, mtime, ctime or inode changes (ctime cannot be
set back from user space, so an in-place edit is always noticed), and while it is live.
``refresh(..., reverify=True)`` re-verifies everything.

Storage: :class:`SqliteIndex` (embedded, default). The interface is the small set of methods of
:class:`SessionIndex`; a PostgreSQL backend implements the same methods.

Must not import proxy/ or policy/.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import format as fmt
from .format import RecorderError
from .reader import read_events
from .session_check import AuditFacts, check_session
from .verify import (
    MISSING_TRAILER,
    STATUS_INCOMPLETE,
    STATUS_LIVE,
    STATUS_UNFINALIZED,
)

__all__ = [
    "SessionSummary",
    "SessionFilter",
    "SessionIndex",
    "SqliteIndex",
    "summarize_recording",
    "refresh",
    "merge_live",
    "RECORDING_SUFFIX",
    "OK",
    "LIVE",
    "MISSING",
]

RECORDING_SUFFIX = ".rec"
OK = "ok"
LIVE = "live"
MISSING = "missing"
UNFINALIZED = "unfinalized"  # not finalized, and the gateway says it is not live

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def valid_session_id(text: str) -> bool:
    """Session ids name files: letters, digits, ``.``, ``_``, ``-``; no path separators."""
    return bool(_SESSION_ID.match(text)) and ".." not in text


@dataclass
class SessionSummary:
    session_id: str
    path: str
    protocol: str | None = None
    gateway: str | None = None
    user: str | None = None
    target: str | None = None
    account: str | None = None
    client: str | None = None
    grant_jti: str | None = None
    template: str | None = None
    reason: str | None = None
    ticket: str | None = None
    breakglass: bool = False
    started_at: float | None = None
    expires_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    statements: int = 0  # queries (postgres) run
    commands: int = 0  # commands (ssh) run, or the gateway's own count from the end event
    denials: int = 0
    integrity: str = OK
    problem_message: str = ""
    events: int = 0
    live: bool = False
    file_size: int = 0
    file_mtime_ns: int = 0
    file_ctime_ns: int = 0
    file_ino: int = 0
    indexed_at: float = 0.0

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else (time.time() if self.live else None)
        return None if end is None else max(0.0, end - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("file_size", "file_mtime_ns", "file_ctime_ns", "file_ino", "indexed_at"):
            d.pop(k)
        d["duration"] = self.duration
        return d


_COLUMNS = [f.name for f in fields(SessionSummary)]
_BOOL_COLUMNS = {"breakglass", "live"}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else (None if v is None else str(v))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def summarize_recording(
    path: Path,
    trusted_keys: dict[str, Ed25519PublicKey],
    *,
    st: os.stat_result | None = None,
    facts: AuditFacts | None = None,
) -> SessionSummary:
    """Verify the recording at ``path`` (cross-checked with the audit log when ``facts`` are
    given) and read its metadata and counts. The session's facts (user, target, grant,
    break-glass, times) come from the signed audit events when there are any, so a recording
    whose header was altered keeps its place in every list, flagged."""
    path = Path(path)
    st = st or os.stat(path)
    result = check_session(path, trusted_keys, facts)
    s = SessionSummary(session_id=path.stem, path=str(path))
    s.file_size, s.file_mtime_ns, s.file_ctime_ns, s.file_ino = (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
    )
    s.indexed_at = time.time()
    s.events = result.events
    if result.ok:
        s.integrity = OK
    elif result.status == STATUS_LIVE or (
        facts is None and result.problem == MISSING_TRAILER and result.live
    ):
        s.integrity, s.live = LIVE, True
    elif result.status in (STATUS_INCOMPLETE, STATUS_UNFINALIZED):
        s.integrity = result.status
    else:
        s.integrity = result.problem or "malformed"
    s.problem_message = "" if result.ok else result.message

    header: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    statements = commands = denials = 0
    last_t: float | None = None
    try:
        for ev in read_events(path):
            kind = ev.get("kind")
            if kind == fmt.HEADER and header is None:
                header = ev
            elif kind == fmt.QUERY or kind == "function_call":
                statements += 1
            elif kind == fmt.DECISION:
                if ev.get("allowed") is False:
                    denials += 1
                elif ev.get("decision_kind") == "exec":
                    commands += 1
            elif kind == fmt.END:
                end = ev
            if isinstance(ev.get("t"), int | float):
                last_t = ev["t"]
    except (OSError, RecorderError):
        pass  # a damaged recording: keep what decoded; integrity says what is wrong
    if header is None:
        header = result.header or {}
    s.session_id = path.stem
    for k in (
        "protocol",
        "gateway",
        "user",
        "target",
        "account",
        "client",
        "grant_jti",
        "template",
        "reason",
        "ticket",
    ):
        setattr(s, k, _str(header.get(k)))
    s.breakglass = header.get("breakglass") is True
    s.started_at = _num(header.get("started_at")) or _num(header.get("t"))
    s.expires_at = _num(header.get("expires_at"))
    s.statements = statements
    s.commands = commands
    s.denials = denials
    if end is not None:
        s.ended_at = _num(end.get("t"))
        s.end_reason = _str(end.get("reason"))
        # the gateway's own counters are authoritative when present (they also count what the
        # recording shows in other shapes, e.g. restricted-shell lines)
        c, d = _count(end.get("commands")), _count(end.get("denials"))
        if c is not None and s.protocol != "postgres":
            s.commands = max(s.commands, c)
        if d is not None:
            s.denials = max(s.denials, d)
    elif not s.live:
        s.ended_at = last_t
        s.end_reason = "no end event"
    if facts is not None:
        _apply_audit_facts(s, facts)
    return s


def _apply_audit_facts(s: SessionSummary, facts: AuditFacts) -> None:
    """Overlay what the signed audit log says about the session (and its grant)."""
    sf = facts.sessions.get(s.session_id)
    start = sf.start if sf is not None else None
    if start is not None and start.signed:
        for col, key in (
            ("protocol", "protocol"),
            ("user", "user"),
            ("target", "target"),
            ("account", "account"),
            ("client", "client"),
            ("grant_jti", "jti"),
        ):
            v = _str(start.get(key))
            if v is not None:
                setattr(s, col, v)
        s.breakglass = start.get("breakglass") is True
        s.started_at = _num(start.get("t")) or s.started_at
    grant = facts.grants.get(s.grant_jti or "")
    if grant is not None and grant.signed:
        for col in ("template", "reason", "ticket"):
            v = _str(grant.get(col))
            if v is not None:
                setattr(s, col, v)
        s.expires_at = _num(grant.get("expires_at")) or s.expires_at
        if grant.get("breakglass") is True:
            s.breakglass = True
    end = sf.end if sf is not None else None
    if end is not None and end.signed and not s.live:
        s.ended_at = _num(end.get("t")) or s.ended_at
        s.end_reason = _str(end.get("reason")) or s.end_reason


@dataclass
class SessionFilter:
    user: str | None = None
    target: str | None = None
    since: float | None = None  # started at or after
    until: float | None = None  # started before
    grant: str | None = None
    protocol: str | None = None
    denied: bool = False
    breakglass: bool = False
    live: bool = False
    limit: int | None = None

    def matches(self, s: SessionSummary) -> bool:
        if self.user is not None and s.user != self.user:
            return False
        if self.target is not None and s.target != self.target:
            return False
        if self.grant is not None and s.grant_jti != self.grant:
            return False
        if self.protocol is not None and s.protocol != self.protocol:
            return False
        started = s.started_at or 0.0
        if self.since is not None and started < self.since:
            return False
        if self.until is not None and started >= self.until:
            return False
        if self.denied and not s.denials:
            return False
        if self.breakglass and not s.breakglass:
            return False
        return not (self.live and not s.live)


class SessionIndex(Protocol):
    """What a session index backend provides (SQLite here; PostgreSQL can implement it)."""

    def upsert(self, summary: SessionSummary) -> None: ...
    def get(self, session_id: str) -> SessionSummary | None: ...
    def all(self) -> list[SessionSummary]: ...
    def query(self, flt: SessionFilter) -> list[SessionSummary]: ...
    def delete_all(self) -> None: ...
    def resolve(self, ref: str) -> SessionSummary: ...
    def mark_once(self, key: str) -> bool: ...
    def close(self) -> None: ...


class SessionNotFound(LookupError):
    pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    protocol TEXT, gateway TEXT, user TEXT, target TEXT, account TEXT, client TEXT,
    grant_jti TEXT, template TEXT, reason TEXT, ticket TEXT,
    breakglass INTEGER NOT NULL DEFAULT 0,
    started_at REAL, expires_at REAL, ended_at REAL, end_reason TEXT,
    statements INTEGER NOT NULL DEFAULT 0,
    commands INTEGER NOT NULL DEFAULT 0,
    denials INTEGER NOT NULL DEFAULT 0,
    integrity TEXT NOT NULL,
    problem_message TEXT NOT NULL DEFAULT '',
    events INTEGER NOT NULL DEFAULT 0,
    live INTEGER NOT NULL DEFAULT 0,
    file_size INTEGER NOT NULL DEFAULT 0,
    file_mtime_ns INTEGER NOT NULL DEFAULT 0,
    file_ctime_ns INTEGER NOT NULL DEFAULT 0,
    file_ino INTEGER NOT NULL DEFAULT 0,
    indexed_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user);
CREATE INDEX IF NOT EXISTS sessions_grant ON sessions (grant_jti);
CREATE TABLE IF NOT EXISTS once (key TEXT PRIMARY KEY, t REAL NOT NULL);
"""


class SqliteIndex:
    """The index in an embedded SQLite database (WAL, safe for several processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(str(self.path), timeout=10, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def _row(self, row: tuple) -> SessionSummary:
        d = dict(zip(_COLUMNS, row, strict=True))
        for k in _BOOL_COLUMNS:
            d[k] = bool(d[k])
        return SessionSummary(**d)

    def upsert(self, summary: SessionSummary) -> None:
        values = [getattr(summary, c) for c in _COLUMNS]
        placeholders = ",".join("?" for _ in _COLUMNS)
        with self._lock, self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO sessions ({','.join(_COLUMNS)}) VALUES ({placeholders})",
                values,
            )

    def get(self, session_id: str) -> SessionSummary | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
        return None if row is None else self._row(row)

    def all(self) -> list[SessionSummary]:
        with self._lock:
            rows = self._db.execute(f"SELECT {','.join(_COLUMNS)} FROM sessions").fetchall()
        return [self._row(r) for r in rows]

    def query(self, flt: SessionFilter) -> list[SessionSummary]:
        where, args = [], []
        for col, val in (
            ("user", flt.user),
            ("target", flt.target),
            ("grant_jti", flt.grant),
            ("protocol", flt.protocol),
        ):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if flt.since is not None:
            where.append("COALESCE(started_at, 0) >= ?")
            args.append(flt.since)
        if flt.until is not None:
            where.append("COALESCE(started_at, 0) < ?")
            args.append(flt.until)
        if flt.denied:
            where.append("denials > 0")
        if flt.breakglass:
            where.append("breakglass = 1")
        if flt.live:
            where.append("live = 1")
        sql = f"SELECT {','.join(_COLUMNS)} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY COALESCE(started_at, 0) DESC, session_id DESC"
        if flt.limit is not None:
            sql += " LIMIT ?"
            args.append(int(flt.limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._row(r) for r in rows]

    def delete_all(self) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM sessions")

    def resolve(self, ref: str) -> SessionSummary:
        """A session by exact id, or by a unique prefix or suffix of its id."""
        if not ref.strip():  # an empty reference must never pick a session
            raise SessionNotFound("no session id given")
        exact = self.get(ref)
        if exact is not None:
            return exact
        pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {','.join(_COLUMNS)} FROM sessions "
                "WHERE session_id LIKE ? ESCAPE '\\' OR session_id LIKE ? ESCAPE '\\' LIMIT 3",
                (pattern + "%", "%" + pattern),
            ).fetchall()
        if not rows:
            raise SessionNotFound(f"no session {ref!r} in the index")
        if len(rows) > 1:
            raise SessionNotFound(f"session {ref!r} is ambiguous (matches several sessions)")
        return self._row(rows[0])

    def mark_once(self, key: str) -> bool:
        """True the first time ``key`` is marked (across processes), False afterwards."""
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO once (key, t) VALUES (?, ?)", (key, time.time())
            )
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recording_files(recordings_dir: Path) -> Iterator[Path]:
    d = Path(recordings_dir)
    if not d.is_dir():
        return
    for p in sorted(d.iterdir()):
        if p.name.endswith(RECORDING_SUFFIX) and p.is_file():
            yield p


def _unchanged(old: SessionSummary, st: os.stat_result) -> bool:
    return (
        not old.live
        and old.integrity != MISSING
        and old.file_size == st.st_size
        and old.file_mtime_ns == st.st_mtime_ns
        and old.file_ctime_ns == st.st_ctime_ns
        and old.file_ino == st.st_ino
    )


@dataclass
class RefreshReport:
    scanned: int = 0
    verified: int = 0
    missing: int = 0
    failed: list[SessionSummary] | None = None  # rows whose integrity is not ok/live

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "verified": self.verified,
            "missing": self.missing,
            "failed": [s.session_id for s in self.failed or []],
        }


def refresh(
    index: SessionIndex,
    recordings_dir: Path,
    trusted_keys: dict[str, Ed25519PublicKey],
    *,
    rebuild: bool = False,
    reverify: bool = False,
    audit_sessions: Iterable[dict[str, Any]] = (),
    facts: AuditFacts | None = None,
) -> RefreshReport:
    """Bring the index up to date with the recordings in ``recordings_dir``.

    New or changed files (and live ones) are verified and summarized; files that disappeared
    are kept as ``missing``. ``rebuild`` empties the index first (it is rebuilt from the
    recordings alone). ``audit_sessions``: ``session.start`` audit events (``session``, ``user``,
    ``target``, ``protocol``, ``jti``, ``breakglass``, ``t``); a session the audit log knows
    whose recording is not there is indexed as ``missing`` - deleting a recording is detected.
    ``facts``: the audit log (:func:`recorder.session_check.load_audit_facts`); recordings are
    then cross-checked with it and take their facts from it, and its session starts are used
    as ``audit_sessions``. Rows that are not ``ok`` are re-checked on every refresh.
    """
    if facts is not None and not audit_sessions:
        audit_sessions = [
            {**sf.start.fields}
            for sf in facts.sessions.values()
            if sf.start is not None and sf.start.signed
        ]
    report = RefreshReport(failed=[])
    if rebuild:
        index.delete_all()
    known = {s.session_id: s for s in index.all()}
    seen: set[str] = set()
    for p in recording_files(recordings_dir):
        report.scanned += 1
        try:
            st = os.stat(p)
        except OSError:
            continue
        old = known.get(p.stem)
        if (
            old is not None
            and old.path == str(p)
            and _unchanged(old, st)
            and not reverify
            and (facts is None or old.integrity == OK)
        ):
            seen.add(old.session_id)
            continue
        s = summarize_recording(p, trusted_keys, st=st, facts=facts)
        report.verified += 1
        index.upsert(s)
        seen.add(s.session_id)
        if s.integrity not in (OK, LIVE):
            report.failed.append(s)
    for sid, old in known.items():
        if sid in seen or old.integrity == MISSING:
            continue
        if old.path and Path(old.path).parent != Path(recordings_dir):
            continue
        old.integrity = MISSING
        old.live = False
        old.problem_message = f"recording {old.path} is gone"
        old.indexed_at = time.time()
        index.upsert(old)
        report.missing += 1
        report.failed.append(old)
    for ev in audit_sessions:
        sid = ev.get("session")
        if not isinstance(sid, str) or not valid_session_id(sid) or sid in seen:
            continue
        if sid in known and (rebuild is False):
            continue
        path = Path(recordings_dir) / f"{sid}{RECORDING_SUFFIX}"
        if path.exists():
            continue
        s = SessionSummary(
            session_id=sid,
            path=str(path),
            protocol=_str(ev.get("protocol")),
            user=_str(ev.get("user")),
            target=_str(ev.get("target")),
            account=_str(ev.get("account")),
            client=_str(ev.get("client")),
            grant_jti=_str(ev.get("jti")),
            breakglass=ev.get("breakglass") is True,
            started_at=_num(ev.get("t")),
            integrity=MISSING,
            problem_message=f"the audit log records session {sid} but its recording is gone",
            indexed_at=time.time(),
        )
        index.upsert(s)
        seen.add(sid)
        report.missing += 1
        report.failed.append(s)
    return report


def merge_live(
    rows: list[SessionSummary],
    live: list[dict[str, Any]] | None,
    *,
    flt: SessionFilter | None,
    gateway: str | None = None,
) -> list[SessionSummary]:
    """Overlay what a running gateway says (its admin ``sessions`` reply) on the index rows.

    ``live`` None means no gateway could be asked: rows keep what the files say. Otherwise a row
    that looks live but the gateway does not know is ``unfinalized`` (its writer died), live
    counters replace the file's, and a live session not (yet) in the index is added.
    ``gateway``: the name of the gateway asked; rows recorded by other gateways (sharing the
    directory) are left alone."""
    if live is None:
        return rows
    by_id = {r.session_id: r for r in rows}
    live_ids = set()
    for info in live:
        sid = info.get("id")
        if not isinstance(sid, str):
            continue
        live_ids.add(sid)
        r = by_id.get(sid)
        if r is None:
            r = SessionSummary(
                session_id=sid,
                path=_str(info.get("recording")) or "",
                protocol=_str(info.get("protocol")),
                user=_str(info.get("user")),
                target=_str(info.get("target")),
                account=_str(info.get("account")),
                client=_str(info.get("client")),
                grant_jti=_str(info.get("grant")),
                template=_str(info.get("template")),
                breakglass=info.get("breakglass") is True,
                started_at=_num(info.get("started_at")),
                expires_at=_num(info.get("expires_at")),
                integrity=LIVE,
            )
            if flt is not None and not flt.matches(SessionSummary(**{**asdict(r), "live": True})):
                continue
            rows.append(r)
            by_id[sid] = r
        r.live = True
        r.integrity = LIVE if r.integrity in (OK, LIVE) else r.integrity
        r.ended_at = None
        r.end_reason = None
        c, d = _count(info.get("commands")), _count(info.get("denials"))
        if c is not None:
            if r.protocol == "postgres":
                r.statements = max(r.statements, c)
            else:
                r.commands = max(r.commands, c)
        if d is not None:
            r.denials = max(r.denials, d)
    for r in rows:
        if r.live and r.session_id not in live_ids and (gateway is None or r.gateway == gateway):
            r.live = False
            r.integrity = UNFINALIZED
            r.problem_message = (
                "not finalized and not live on the gateway: its writer died; " + r.problem_message
            ).rstrip("; ")
    out = [r for r in rows if not (flt is not None and flt.live and not r.live)]
    out.sort(key=lambda r: (r.started_at or 0.0, r.session_id), reverse=True)
    return out
