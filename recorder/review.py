"""Post-incident review of break-glass sessions.

Every session under a break-glass grant is in the review queue until somebody other than its
owner reviews it. Reviews are audit events (``review.done``: ``session``, ``actor`` = the
reviewer: the grant service's user, or ``os:NAME`` for an OS account without a service login, ``subject`` = the session's user, ``outcome`` ``ok``|``follow-up``, ``notes``), so the
audit log is the one place they live; the queue is computed from the session index and the
audit log. Only reviews from audit segments that verify (or, for a segment still being
written, that are covered by a signed checkpoint) count: a review cannot be forged by
appending to a file.

A session is *overdue* when it started longer ago than the review deadline (default 24 h) and
has no review.

Must not import proxy/ or policy/.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit import read_audit, segments
from .index import LIVE, OK, SessionSummary
from .verify import MISSING_TRAILER, verify_recording

__all__ = [
    "OUTCOMES",
    "REVIEW_EVENT",
    "DEFAULT_DEADLINE",
    "Review",
    "QueueItem",
    "ReviewRefused",
    "load_reviews",
    "review_queue",
    "check_review",
    "record_review",
]

OUTCOMES = ("ok", "follow-up")
REVIEW_EVENT = "review.done"
DEFAULT_DEADLINE = 24 * 3600
MAX_NOTES = 10_000
OS_ACCOUNT = "os:"  # a reviewer named by the OS account, not the grant service


class ReviewRefused(Exception):
    pass


@dataclass
class Review:
    session: str
    reviewer: str
    outcome: str
    notes: str
    t: float
    segment: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ReviewSet:
    by_session: dict[str, list[Review]] = field(default_factory=dict)
    untrusted: list[str] = field(default_factory=list)  # segments whose reviews were ignored


def load_reviews(audit_dir: Path, trusted_keys: dict[str, Ed25519PublicKey]) -> ReviewSet:
    """All trustworthy ``review.done`` events, by session, oldest first."""
    out = ReviewSet()
    if not Path(audit_dir).is_dir():
        return out
    events = read_audit(audit_dir, type=REVIEW_EVENT)
    wanted = {e["segment"] for e in events}
    covered: dict[str, int] = {}  # segment -> events up to this seq are signed
    for seg in segments(audit_dir):
        if seg.name not in wanted:
            continue
        r = verify_recording(seg, trusted_keys)
        if r.ok:
            covered[seg.name] = r.events
        elif r.problem == MISSING_TRAILER and r.live and r.last_checkpoint is not None:
            covered[seg.name] = r.last_checkpoint
        else:
            out.untrusted.append(seg.name)
    for e in events:
        limit = covered.get(e["segment"])
        if limit is None or e.get("seq", 1 << 62) >= limit:
            continue
        sid, reviewer, outcome = e.get("session"), e.get("actor"), e.get("outcome")
        if not (isinstance(sid, str) and isinstance(reviewer, str) and outcome in OUTCOMES):
            continue
        out.by_session.setdefault(sid, []).append(
            Review(sid, reviewer, outcome, str(e.get("notes") or ""), float(e["t"]), e["segment"])
        )
    return out


@dataclass
class QueueItem:
    session: SessionSummary
    due_at: float
    reviews: list[Review]
    status: str  # pending | overdue | ok | follow-up

    @property
    def reviewed(self) -> bool:
        return bool(self.reviews)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session.to_dict(),
            "due_at": self.due_at,
            "status": self.status,
            "reviews": [r.to_dict() for r in self.reviews],
        }


def review_queue(
    sessions: Iterable[SessionSummary],
    reviews: ReviewSet,
    *,
    deadline: float = DEFAULT_DEADLINE,
    now: float | None = None,
    overdue_only: bool = False,
    include_reviewed: bool = False,
) -> list[QueueItem]:
    """Break-glass sessions with their review status, oldest first."""
    now = time.time() if now is None else now
    out = []
    for s in sessions:
        if not s.breakglass:
            continue
        started = s.started_at or 0.0
        rs = reviews.by_session.get(s.session_id, [])
        due = started + deadline
        if rs:
            status = rs[-1].outcome
        else:
            status = "overdue" if now >= due else "pending"
        if rs and not include_reviewed:
            continue
        if overdue_only and status != "overdue":
            continue
        out.append(QueueItem(s, due, rs, status))
    out.sort(key=lambda q: (q.session.started_at or 0.0, q.session.session_id))
    return out


def check_review(summary: SessionSummary, reviewer: str, outcome: str, notes: str) -> None:
    """Raise :class:`ReviewRefused` unless ``reviewer`` may record this review."""
    if outcome not in OUTCOMES:
        raise ReviewRefused(f"outcome must be one of {', '.join(OUTCOMES)}")
    if not notes or not notes.strip():
        raise ReviewRefused("a review needs --notes saying what was checked")
    if len(notes) > MAX_NOTES:
        raise ReviewRefused(f"notes are limited to {MAX_NOTES} characters")
    if not summary.breakglass:
        raise ReviewRefused(
            f"session {summary.session_id} was not under a break-glass grant; only break-glass "
            "sessions are queued for review"
        )
    # An OS account (``os:NAME``, no service login) counts as NAME here: the same person,
    # as far as anyone can tell.
    person = reviewer.removeprefix(OS_ACCOUNT)
    if summary.user is not None and summary.user in (reviewer, person):
        raise ReviewRefused(
            f"{reviewer} cannot review session {summary.session_id}: it is their own session"
        )
    if summary.live or summary.integrity == LIVE:
        raise ReviewRefused(f"session {summary.session_id} is still live; review it once it ends")
    if summary.integrity != OK and outcome == "ok":
        raise ReviewRefused(
            f"the recording of session {summary.session_id} does not verify "
            f"({summary.integrity}); it cannot be closed as ok - use --outcome follow-up"
        )


def record_review(
    audit: Any, summary: SessionSummary, reviewer: str, outcome: str, notes: str
) -> None:
    """Check and append the review to the audit log (``audit.append``)."""
    check_review(summary, reviewer, outcome, notes)
    audit.append(
        REVIEW_EVENT,
        session=summary.session_id,
        actor=reviewer,
        subject=summary.user,
        target=summary.target,
        jti=summary.grant_jti,
        outcome=outcome,
        notes=notes,
        integrity=summary.integrity,
    )
