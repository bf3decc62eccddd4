"""Cross-check session recordings against the audit log.

A recording proves itself whole (:func:`recorder.verify.verify_recording`), but only the audit
log can say whether it is the recording of the session its file name says, whether the session
it records ended (so a recording without a trailer was cut back, not left by a crashed writer),
and which facts (user, target, grant, break-glass) the gateway saw when the session started.

:func:`load_audit_facts` reads the audit log once (verifying every segment); facts from events
that no valid signature covers are marked ``signed=False`` and are used only to raise an alarm,
never to clear one or to fill in the session index.

Must not import proxy/ or policy/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import verify as v
from .audit import read_audit, verify_audit
from .verify import VerifyResult, verify_recording

__all__ = ["AuditRecord", "SessionFacts", "AuditFacts", "load_audit_facts", "check_session"]

#: (recording header field, session.start field) pairs that must agree.
HEADER_FACTS = (
    ("user", "user"),
    ("target", "target"),
    ("grant_jti", "jti"),
    ("protocol", "protocol"),
    ("account", "account"),
    ("client", "client"),
    ("breakglass", "breakglass"),
)
#: How far apart the header's ``started_at`` and the audit event's time may be (seconds).
START_SLACK = 30.0
END_EVENTS = ("session.end", "session.recording_failed")
#: A session started less than this long ago may not be in the audit files yet (seconds).
RECENT = 10.0


@dataclass
class AuditRecord:
    fields: dict[str, Any]
    segment: str
    seq: int
    signed: bool

    @property
    def where(self) -> str:
        return f"audit segment {self.segment}, event {self.seq}"

    def get(self, key: str) -> Any:
        return self.fields.get(key)


@dataclass
class SessionFacts:
    start: AuditRecord | None = None
    end: AuditRecord | None = None
    failed: AuditRecord | None = None  # session.recording_failed


@dataclass
class AuditFacts:
    directory: Path
    results: list[tuple[Path, VerifyResult]]
    sessions: dict[str, SessionFacts] = field(default_factory=dict)
    grants: dict[str, AuditRecord] = field(default_factory=dict)  # grant.issued by jti
    revocations: dict[str, AuditRecord] = field(default_factory=dict)  # grant.revoked by jti
    live_runs: set[str] = field(default_factory=set)  # runs (processes) writing right now
    segment_runs: dict[str, str] = field(default_factory=dict)

    @property
    def writing(self) -> bool:
        """Some writer is live: its newest events may still be in its memory buffer."""
        return bool(self.live_runs)

    def run_live(self, rec: AuditRecord | None) -> bool:
        return rec is not None and self.segment_runs.get(rec.segment) in self.live_runs


def _signed_limits(results: list[tuple[Path, VerifyResult]]) -> dict[str, int]:
    """Per segment: events with a smaller seq are covered by a valid signature."""
    out: dict[str, int] = {}
    for seg, r in results:
        if r.ok:
            out[seg.name] = r.events
        elif r.last_checkpoint is not None:
            limit = r.last_checkpoint
            if r.status == v.STATUS_TAMPERED and r.event_index is not None:
                limit = min(limit, r.event_index)
            out[seg.name] = limit
    return out


def _prefer(old: AuditRecord | None, new: AuditRecord) -> AuditRecord:
    """The first signed record wins; an unsigned one only fills a gap."""
    if old is None or (new.signed and not old.signed):
        return new
    return old


def load_audit_facts(
    directory: Path, trusted_keys: dict[str, Ed25519PublicKey]
) -> AuditFacts | None:
    """Session and grant facts from the audit log in ``directory`` (None if there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    results = verify_audit(directory, trusted_keys)
    facts = AuditFacts(directory=directory, results=results)
    for seg, r in results:
        run = (r.header or {}).get("run")
        if isinstance(run, str):
            facts.segment_runs[seg.name] = run
            if r.status == v.STATUS_LIVE:
                facts.live_runs.add(run)
    limits = _signed_limits(results)
    for e in read_audit(directory):
        kind = e.get("type")
        if kind not in ("session.start", "grant.issued", "grant.revoked", *END_EVENTS):
            continue
        seq = e.get("seq")
        rec = AuditRecord(
            fields=e,
            segment=e["segment"],
            seq=seq if isinstance(seq, int) else -1,
            signed=isinstance(seq, int) and seq < limits.get(e["segment"], 0),
        )
        if kind in ("grant.issued", "grant.revoked"):
            jti = e.get("jti")
            table = facts.grants if kind == "grant.issued" else facts.revocations
            if isinstance(jti, str):
                table[jti] = _prefer(table.get(jti), rec)
            continue
        sid = e.get("session")
        if not isinstance(sid, str):
            continue
        sf = facts.sessions.setdefault(sid, SessionFacts())
        if kind == "session.start":
            sf.start = _prefer(sf.start, rec)
        elif kind == "session.end":
            sf.end = _prefer(sf.end, rec)
        else:
            sf.failed = _prefer(sf.failed, rec)
    return facts


def _tamper(r: VerifyResult, problem: str, message: str) -> None:
    r.ok = False
    r.status = v.STATUS_TAMPERED
    r.problem = problem
    r.message = message


def _through(r: VerifyResult) -> str:
    if r.last_checkpoint is None:
        return "no signed checkpoint"
    unsigned = r.events - 1 - r.last_checkpoint
    more = f"; {unsigned} later events unsigned" if unsigned > 0 else ""
    return f"verified through checkpoint {r.checkpoints}, event {r.last_checkpoint}{more}"


def session_id_of(path: Path) -> str:
    return Path(path).name.removesuffix(".rec")


def check_session(
    path: Path,
    trusted_keys: dict[str, Ed25519PublicKey],
    facts: AuditFacts | None,
    *,
    result: VerifyResult | None = None,
) -> VerifyResult:
    """Verify a session recording and cross-check it with its file name and the audit log.

    ``status`` becomes one of ``ok``, ``live``, ``tampered`` (``problem`` says how: the
    verifier's, or ``renamed``, ``mismatch``, ``unaudited``, or ``truncated`` when the audit
    log says the session ended), ``incomplete`` (no trailer, and a signed audit event proves a
    storage failure) or ``unfinalized`` (no trailer, writer gone, nothing says why).
    """
    r = result if result is not None else verify_recording(path, trusted_keys)
    h = r.header or {}
    sid = session_id_of(path)
    hsid = h.get("session_id")
    if hsid is not None and hsid != sid:
        _tamper(
            r,
            "renamed",
            f"tampered: the header names session {hsid!r} but the file is {Path(path).name} "
            "(another session's recording copied or renamed over it)",
        )
        return r
    if facts is None or hsid is None:  # no audit log, or not a gateway session recording
        if r.status == v.STATUS_UNFINALIZED:
            r.message = (
                "not finalized (no trailer; without the audit log a live, crashed or cut-back "
                f"recording cannot be told apart); {_through(r)}"
            )
        return r
    sf = facts.sessions.get(sid, SessionFacts())
    start = sf.start
    if start is None:
        # a running writer may still hold a fresh session.start in memory (its commit
        # interval): only for a session that is live or started moments ago
        started = h.get("started_at")
        recent = isinstance(started, int | float) and time.time() - started < RECENT
        pending = facts.writing and (recent or r.status == v.STATUS_UNFINALIZED)
        if r.status != v.STATUS_TAMPERED and not pending:
            _tamper(
                r,
                "unaudited",
                f"tampered: the audit log has no session.start for session {sid} (an audit "
                "segment was deleted, or the recording was not made by a gateway of this log)",
            )
            return r
    elif r.status != v.STATUS_TAMPERED:
        for hk, ak in HEADER_FACTS:
            hv, av = h.get(hk), start.get(ak)
            if hk == "breakglass":
                hv, av = hv is True, av is True
            if hv != av and not (hv is None and ak == "client"):
                _tamper(
                    r,
                    "mismatch",
                    f"tampered: the header says {hk}={hv!r} but the audit log's session.start "
                    f"({start.where}) says {av!r}",
                )
                return r
        hs, at = h.get("started_at"), start.get("t")
        if isinstance(hs, int | float) and isinstance(at, int | float):
            if abs(hs - at) > START_SLACK:
                _tamper(
                    r,
                    "mismatch",
                    f"tampered: the header's start time is {abs(hs - at):.0f} s away from the "
                    f"audit log's session.start ({start.where})",
                )
                return r
    if r.status != v.STATUS_UNFINALIZED:
        return r
    _unfinalized(r, sf, facts)
    return r


def _unfinalized(r: VerifyResult, sf: SessionFacts, facts: AuditFacts) -> None:
    """No trailer, still writable: live, storage failure, cut back, or crashed writer?"""
    end, failed = sf.end, sf.failed
    proof = failed if failed is not None and failed.signed else None
    if proof is None and end is not None and end.signed and end.get("reason") == "recorder-failed":
        proof = end
    if proof is not None:
        error = proof.get("error")
        r.status = v.STATUS_INCOMPLETE
        r.message = (
            f"incomplete: storage failure, proven by {proof.get('type')} ({proof.where}"
            f"{': ' + str(error) if error else ''}); {_through(r)}"
        )
        return
    if end is not None:
        r.status = v.STATUS_TAMPERED
        r.problem = v.TRUNCATED
        r.message = (
            f"tampered: truncated; the audit log says the session ended ({end.where}: "
            f"session.end reason={end.get('reason')}) but the recording has no trailer and "
            f"is writable again; {_through(r)}"
        )
        return
    if facts.run_live(sf.start) or (sf.start is None and facts.writing):
        r.status = v.STATUS_LIVE
        r.message = f"live ({_through(r)})"
        return
    r.message = (
        "not finalized: writer died (no session.end in the audit log and no live gateway "
        f"holds it); {_through(r)}"
    )
