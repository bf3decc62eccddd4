"""The audit log: grants, approvals, sessions, denials, kills, revocations, reviews.

Several processes append at once (the gateway, the ``breakglass`` CLI, ...), and one file with
one hash chain cannot take concurrent writers without a cross-process lock on the hot path. So
every :class:`AuditLog` instance writes its own *segment*: a recording in the ordinary format
(docs/recording-format.md) whose header has ``"log": "audit"`` and whose events have kind
``"audit"`` and a ``type`` field. Segments rotate (finalize, start a new one) after
``rotate_events`` events or ``rotate_seconds``, so a long-running gateway leaves finalized,
verifiable segments behind. :func:`read_audit` merges all segments by time.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import format as fmt
from .format import RecorderError
from .reader import read_events
from .verify import VerifyResult, verify_recording
from .writer import RecordingWriter

__all__ = ["AuditLog", "read_audit", "verify_audit", "SEGMENT_SUFFIX"]

SEGMENT_SUFFIX = ".audit"
_USER_FIELDS = ("actor", "subject", "user")


class AuditLog:
    """Append-only audit log segment writer. Thread-safe; appends are cheap and never block on
    the disk (see :class:`RecordingWriter`). ``writer_kwargs`` go to ``RecordingWriter.create``
    (``checkpoint_interval``, ``commit_interval``, ``on_failure`` ...)."""

    def __init__(
        self,
        directory: Path,
        signing_key: Ed25519PrivateKey,
        key_id: str,
        *,
        rotate_events: int = 100_000,
        rotate_seconds: float = 3600.0,
        **writer_kwargs: Any,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._key = signing_key
        self._key_id = key_id
        self._writer_kwargs = writer_kwargs
        self._rotate_events = rotate_events
        self._rotate_seconds = rotate_seconds
        self._lock = threading.Lock()
        self._closed = False
        self._writer = self._new_segment(None)

    @property
    def path(self) -> Path:
        """The current segment file."""
        return self._writer.path

    @property
    def failed(self) -> Exception | None:
        return self._writer.failed

    def _new_segment(self, previous: RecordingWriter | None) -> RecordingWriter:
        stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
        header: dict[str, Any] = {"log": "audit", "pid": os.getpid(), "host": socket.gethostname()}
        if previous is not None:
            # links rotated segments, so deleting one of them is detected by verify_audit
            header["previous_segment"] = previous.path.name
            header["previous_hash"] = previous.last_hash
        w = RecordingWriter.create(
            self.directory / name, header, self._key, self._key_id, **self._writer_kwargs
        )
        self._started = time.monotonic()
        return w

    def append(self, type: str, **fields: Any) -> None:  # noqa: A002 - the contract's name
        """Record one audit event, e.g. ``append("grant.issued", actor=..., jti=...)``."""
        if not isinstance(type, str) or not type:
            raise fmt.RecorderFieldError("audit event type must be a non-empty string")
        with self._lock:
            if self._closed:
                raise RecorderError("audit log is closed")
            w = self._writer
            if (
                w.event_count >= self._rotate_events
                or time.monotonic() - self._started >= self._rotate_seconds
            ):
                w.close("rotated")
                w = self._writer = self._new_segment(w)
            w.event(fmt.AUDIT, type=type, **fields)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Finalize the current segment. Idempotent."""
        with self._lock:
            self._closed = True
            self._writer.close("closed")

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def segments(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


def _type_matches(want: str, got: Any) -> bool:
    if not isinstance(got, str):
        return False
    if want.endswith("."):
        return got.startswith(want)
    return got == want


def read_audit(
    directory: Path,
    *,
    since: float | None = None,
    user: str | None = None,
    type: str | None = None,  # noqa: A002 - the contract's name
) -> list[dict[str, Any]]:
    """All audit events of all segments in ``directory``, merged by time, filtered.

    Each is a dict with ``t``, ``type`` and the event's fields, plus ``segment`` (file name) and
    ``seq``. ``since``: ``t >= since``. ``user``: equals one of ``actor``/``subject``/``user``.
    ``type``: exact, or a prefix when it ends with ``.`` (``"grant."``). Does not verify; use
    :func:`verify_audit` for that. Events still in another process's memory buffer (at most its
    commit interval) are not seen yet.
    """
    out: list[dict[str, Any]] = []
    for seg in segments(directory):
        events: list[dict[str, Any]] = []
        try:
            for ev in read_events(seg):
                events.append(ev)
        except (OSError, RecorderError):
            pass  # keep what decoded before the damage; verify_audit reports the segment
        for ev in events:
            if ev.get("kind") != fmt.AUDIT:
                continue
            if since is not None and ev["t"] < since:
                continue
            if type is not None and not _type_matches(type, ev.get("type")):
                continue
            if user is not None and not any(ev.get(k) == user for k in _USER_FIELDS):
                continue
            item = {k: v for k, v in ev.items() if k not in ("kind", "prev")}
            item["segment"] = seg.name
            out.append(item)
    out.sort(key=lambda e: (e["t"], e["segment"], e["seq"]))
    return out


def verify_audit(
    directory: Path, trusted_keys: dict[str, Ed25519PublicKey]
) -> list[tuple[Path, VerifyResult]]:
    """Verify every segment. A segment still being written by a live process is reported with
    ``problem == "missing-trailer"`` and ``live`` set. Rotated segments name their predecessor
    in their header: a predecessor that is gone gets an extra entry for its path with
    ``problem == "removed"``; one that was swapped for another valid segment is reported
    ``"altered"``. (Deleting the newest segment of a process, or every segment of one, cannot be
    detected from the files alone.)"""
    directory = Path(directory)
    results = [(seg, verify_recording(seg, trusted_keys)) for seg in segments(directory)]
    by_name = {seg.name: r for seg, r in results}
    extra: list[tuple[Path, VerifyResult]] = []
    for seg, r in results:
        prev_name = (r.header or {}).get("previous_segment")
        if not isinstance(prev_name, str):
            continue
        prev_path = directory / prev_name
        prev = by_name.get(prev_name)
        if prev is None:
            extra.append(
                (
                    prev_path,
                    VerifyResult(
                        path=prev_path,
                        ok=False,
                        problem="removed",
                        message=f"segment {prev_name} is missing (named as previous by {seg.name})",
                    ),
                )
            )
        elif prev.ok and _last_line_hash(prev_path) != r.header.get("previous_hash"):
            prev.ok = False
            prev.problem = "altered"
            prev.message = (
                f"segment {prev_name} is not the one {seg.name} follows (its final hash differs)"
            )
    return results + extra


def _last_line_hash(path: Path) -> str | None:
    last = None
    with open(path, "rb") as f:
        for raw in f:
            last = raw
    return None if last is None else hashlib.sha256(last).hexdigest()
