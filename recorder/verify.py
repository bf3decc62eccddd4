"""Verify a recording: whole and signed, or the first place it was cut or altered.

The walk is single-pass and streaming (constant memory however long the recording), with a
two-line lookahead to tell "this line was altered" from "the next line's prev was altered", and a
forward re-scan only when a sequence jump has to be classified as a removal or a reordering.

Conventions (see docs/recording-format.md):

* "event N" is the line with ``seq`` N, i.e. the N-th line of the file counting from 0; checkpoints
  and the trailer are events too.
* ``events`` in the result counts the lines that verified; ``checkpoints`` the valid checkpoint
  signatures (the trailer not included).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import stat
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import format as fmt

__all__ = ["VerifyResult", "verify_recording", "GOOD_STATUSES"]

ALTERED = "altered"
REORDERED = "reordered"
REMOVED = "removed"
TRUNCATED = "truncated"
MISSING_TRAILER = "missing-trailer"
BAD_SIGNATURE = "bad-signature"
UNKNOWN_KEY = "unknown-key"
MALFORMED = "malformed"

# Overall verdicts (VerifyResult.status). verify_recording alone can only say ok, tampered or
# unfinalized (no trailer, still writable); recorder.session_check and recorder.audit refine an
# unfinalized file with what the audit log and lock files say.
STATUS_OK = "ok"
STATUS_LIVE = "live"  # a running writer holds it: verified through the last checkpoint
STATUS_OPEN = "open"  # shared audit segment between appends, every event signed
STATUS_CRASHED = "crashed"  # audit segment whose writer died; its successor vouches for it
STATUS_TAMPERED = "tampered"
STATUS_INCOMPLETE = "incomplete"  # storage failure, proven by a signed audit event
STATUS_UNFINALIZED = "unfinalized"  # no trailer, writer gone, nothing says why
#: Statuses that are not a failure (``breakglass verify`` exits 0 on these alone).
GOOD_STATUSES = frozenset({STATUS_OK, STATUS_LIVE, STATUS_OPEN, STATUS_CRASHED})

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX128 = re.compile(r"[0-9a-f]{128}\Z")
_TRAILER_KEYS = frozenset({"seq", "kind", "prev", "key_id", "sig"})


@dataclass
class VerifyResult:
    path: Path
    ok: bool
    problem: str | None = None
    event_index: int | None = None
    message: str = ""
    events: int = 0
    checkpoints: int = 0
    header: dict | None = None
    live: bool = False
    finalized: bool = False
    key_ids: list[str] = field(default_factory=list)
    last_checkpoint: int | None = None  # seq of the last valid checkpoint
    status: str = STATUS_TAMPERED  # overall verdict, see STATUS_*
    torn: bool = False  # the file ends inside a line or frame

    @property
    def good(self) -> bool:
        return self.status in GOOD_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "problem": self.problem,
            "event_index": self.event_index,
            "message": self.message,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "live": self.live,
            "finalized": self.finalized,
            "key_ids": list(self.key_ids),
            "last_checkpoint": self.last_checkpoint,
            "status": self.status,
        }


class _Line:
    """One event: its line (``raw``, whose hash the chain holds), and in a /2 recording the
    raw frame that may follow it (checked against the line's ``raw_sha256``)."""

    __slots__ = (
        "index",
        "raw",
        "hash",
        "obj",
        "error",
        "complete",
        "offset",
        "frame_error",
        "short_frame",
    )

    def __init__(self, index: int, raw: bytes, offset: int) -> None:
        self.index = index
        self.offset = offset
        self.raw = raw
        self.complete = raw.endswith(b"\n")
        self.hash = hashlib.sha256(raw).hexdigest()
        self.obj: dict[str, Any] | None = None
        self.error: str | None = None
        self.frame_error: str | None = None
        self.short_frame: bytes | None = None  # the frame, when the file ends inside it
        try:
            obj = json.loads(raw, object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError) as exc:
            self.error = f"not valid JSON ({exc})"
            return
        self.error = _shape_error(obj)
        if self.error is None:
            self.obj = obj

    @property
    def seq(self) -> int | None:
        return None if self.obj is None else self.obj["seq"]

    @property
    def kind(self) -> str | None:
        return None if self.obj is None else self.obj["kind"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _shape_error(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "missing or invalid 'seq'"
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        return "missing or invalid 'kind'"
    prev = obj.get("prev")
    if not isinstance(prev, str) or not _HEX64.match(prev):
        return "missing or invalid 'prev'"
    if kind != fmt.TRAILER:
        t = obj.get("t")
        if not isinstance(t, int | float) or isinstance(t, bool):
            return "missing or invalid 't'"
    if kind in fmt.DATA_KINDS and not isinstance(obj.get("data"), str) and fmt.RAW_LEN not in obj:
        return f"{kind} event without data"
    return None


class _Lines:
    """Lines of a file with lookahead; index = position in the file (0-based)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._ahead: deque[_Line] = deque()
        self._next_index = 0
        self._offset = 0
        self.format = fmt.FORMAT_V1  # the header's, once read: what signatures cover
        self._framed = False  # lines may be followed by raw frames (format /2)

    def _read_one(self) -> _Line | None:
        raw = self._f.readline()
        if not raw:
            return None
        line = _Line(self._next_index, raw, self._offset)
        self._next_index += 1
        self._offset += len(raw)
        if line.index == 0 and line.obj is not None and line.obj.get("format") in fmt.FORMATS:
            self.format = line.obj["format"]
            self._framed = self.format != fmt.FORMAT_V1
        if self._framed and line.obj is not None and fmt.RAW_LEN in line.obj and line.complete:
            self._read_frame(line)
        return line

    def _read_frame(self, line: _Line) -> None:
        assert line.obj is not None
        try:
            size = fmt.frame_length(line.obj)
        except ValueError as exc:
            line.error, line.obj = str(exc), None
            return
        assert size is not None  # the line has raw_len
        frame = self._f.read(size)
        self._offset += len(frame)
        if len(frame) < size:
            line.complete, line.short_frame = False, frame
        elif hashlib.sha256(frame).hexdigest() != line.obj[fmt.RAW_SHA256]:
            line.frame_error = "its raw frame does not match its raw_sha256"

    def peek(self, n: int) -> _Line | None:
        """The n-th line after the current one (0 = the next one to be taken)."""
        while len(self._ahead) <= n:
            line = self._read_one()
            if line is None:
                return None
            self._ahead.append(line)
        return self._ahead[n]

    def take(self) -> _Line | None:
        if self._ahead:
            return self._ahead.popleft()
        return self._read_one()


def _scan_for_seq(path: Path, offset: int, start_index: int, seq: int) -> int | None:
    """Position (event index) of the first line at or after ``offset`` whose seq is ``seq``.

    Raw frames (format /2) hold arbitrary bytes, and after a swap a line may no longer sit
    right after the frame it used to follow, so lines are found by their start
    (``{"seq":N,``), not by splitting at newlines. The position counts line starts on the way.
    """
    needle = b'{"seq":%d,' % seq
    start = b'{"seq":'
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= offset:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # constant memory
            at = data.find(needle, offset)
            while at >= 0:
                end = data.find(b"\n", at)
                line = _Line(0, data[at : size if end < 0 else end + 1], 0)
                if line.seq == seq:
                    count, pos = 0, data.find(start, offset, at)
                    while 0 <= pos < at:
                        count += 1
                        pos = data.find(start, pos + 1, at)
                    return start_index + count
                at = data.find(needle, at + 1)
    return None


def _is_live(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


class _Fail(Exception):
    def __init__(self, problem: str, index: int | None, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.index = index
        self.message = message


def verify_recording(path: Path, trusted_keys: dict[str, Ed25519PublicKey]) -> VerifyResult:
    """Verify the recording at ``path`` against ``trusted_keys`` (key id -> public key).

    ``ok`` only if the chain is whole, every checkpoint and the trailer carry a valid signature
    by a trusted key, and the trailer is the last line. Otherwise ``problem`` names the first
    problem found, ``event_index`` where, and ``message`` says it in words.
    """
    path = Path(path)
    result = VerifyResult(path=path, ok=False)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        result.problem = MALFORMED
        result.message = f"cannot read recording: {exc}"
        return result
    try:
        with f:
            _walk(path, _Lines(f), trusted_keys, result)
    except _Fail as fail:
        result.ok = False
        result.problem = fail.problem
        result.event_index = fail.index
        result.message = fail.message
        if fail.problem not in (TRUNCATED, MISSING_TRAILER) and fail.index is not None:
            # count only what verified before the first bad event
            result.events = min(result.events, fail.index)
            if result.last_checkpoint is not None and result.last_checkpoint >= fail.index:
                result.checkpoints -= 1
                result.last_checkpoint = None
    if result.ok:
        result.status = STATUS_OK
    elif result.problem == MISSING_TRAILER and result.live:
        result.status = STATUS_UNFINALIZED
    else:
        result.status = STATUS_TAMPERED
    return result


def _check_signature(
    line: _Line,
    trusted_keys: dict[str, Ed25519PublicKey],
    what: str,
    lines: _Lines,
    classify: bool = True,
) -> str:
    obj = line.obj
    assert obj is not None
    key_id = obj.get("key_id")
    sig = obj.get("sig")
    i = line.index
    if not isinstance(key_id, str) or not isinstance(sig, str):
        problem = _altered_or(lines, line, MALFORMED) if classify else MALFORMED
        raise _Fail(problem, i, f"{what} at event {i} has no key_id/sig")
    key = trusted_keys.get(key_id)
    if key is None:
        raise _Fail(UNKNOWN_KEY, i, f"{what} at event {i} is signed with unknown key {key_id!r}")
    if not _HEX128.match(sig):
        raise _Fail(BAD_SIGNATURE, i, f"{what} at event {i} has a bad signature (not 64 hex bytes)")
    try:
        key.verify(
            bytes.fromhex(sig), fmt.signed_message(obj["kind"], i, obj["prev"], lines.format)
        )
    except InvalidSignature:
        raise _Fail(
            BAD_SIGNATURE,
            i,
            f"{what} at event {i} has a bad signature (key {key_id!r}): the signature or the "
            f"events before it were changed",
        ) from None
    return key_id


def _signature_valid(line: _Line, trusted_keys: dict[str, Ed25519PublicKey], lines: _Lines) -> bool:
    try:
        _check_signature(line, trusted_keys, "x", lines, classify=False)
    except _Fail:
        return False
    return True


def _walk(
    path: Path, lines: _Lines, trusted_keys: dict[str, Ed25519PublicKey], r: VerifyResult
) -> None:
    prev_hash = fmt.ZERO_HASH
    prev_kind: str | None = None
    torn = False
    trailer_seen = False
    i = -1
    while True:
        line = lines.take()
        if line is None:
            break
        i = line.index
        if not line.complete:
            if _looks_like_trailer(line, i, prev_hash):
                raise _Fail(ALTERED, i, f"trailer at event {i} altered (its final newline)")
            if _frame_length_altered(line, i):
                raise _Fail(ALTERED, i, f"event {i} altered (its raw_len overruns its frame)")
            torn = True  # the last line was cut short (no newline): a tail cut or a torn write
            break
        if trailer_seen:
            raise _Fail(MALFORMED, i, f"unexpected data after the trailer (event {i})")

        if line.obj is None:
            nxt = lines.peek(0)
            if nxt is not None and nxt.obj is not None and nxt.obj["prev"] == line.hash:
                raise _Fail(MALFORMED, i, f"event {i} is malformed: {line.error}")
            raise _Fail(ALTERED, i, f"event {i} altered ({line.error})")

        obj = line.obj
        seq = obj["seq"]
        if obj["prev"] != prev_hash:
            if seq == i:
                if i > 0 and not _own_prev_altered(line, lines, trusted_keys):
                    raise _Fail(ALTERED, i - 1, f"event {i - 1} altered (hash chain broken)")
                raise _Fail(ALTERED, i, f"event {i} altered (its prev hash is wrong)")
            if seq > i:
                found = _scan_for_seq(path, line.offset, i, i)
                if found is not None:
                    raise _Fail(
                        REORDERED,
                        i,
                        f"event {i} reordered: event {seq} is at its place, "
                        f"event {i} was moved to position {found}",
                    )
                if seq == i + 1:
                    raise _Fail(REMOVED, i, f"event {i} removed (sequence jumps {i - 1} -> {seq})")
                raise _Fail(
                    REMOVED, i, f"events {i}..{seq - 1} removed (sequence jumps {i - 1} -> {seq})"
                )
            raise _Fail(REORDERED, i, f"event {seq} reordered: it appears again at position {i}")
        if seq != i:
            raise _Fail(ALTERED, i, f"event {i} altered (its sequence number reads {seq})")
        if line.frame_error is not None:
            raise _Fail(ALTERED, i, f"event {i} altered ({line.frame_error})")

        kind = obj["kind"]
        if i == 0:
            if kind != fmt.HEADER:
                raise _Fail(_altered_or(lines, line, MALFORMED), 0, "event 0 is not a header")
            if obj.get("format") not in fmt.FORMATS:
                raise _Fail(
                    _altered_or(lines, line, MALFORMED),
                    0,
                    f"unsupported recording format {obj.get('format')!r} "
                    f"(want one of {', '.join(fmt.FORMATS)})",
                )
            try:
                r.header = fmt.decode_event(obj)
            except ValueError:  # bad base64 in a header field: keep it undecoded
                r.header = dict(obj)
        elif kind == fmt.HEADER:
            raise _Fail(_altered_or(lines, line, MALFORMED), i, f"second header at event {i}")
        elif kind == fmt.CHECKPOINT:
            key_id = _check_signature(line, trusted_keys, "checkpoint", lines)
            r.checkpoints += 1
            r.last_checkpoint = i
            if key_id not in r.key_ids:
                r.key_ids.append(key_id)
        elif kind == fmt.TRAILER:
            extra = set(obj) - _TRAILER_KEYS
            if extra:
                raise _Fail(
                    ALTERED, i, f"trailer at event {i} altered (unexpected {sorted(extra)})"
                )
            key_id = _check_signature(line, trusted_keys, "trailer", lines)
            if key_id not in r.key_ids:
                r.key_ids.append(key_id)
            trailer_seen = True
        r.events = i + 1
        prev_hash = line.hash
        prev_kind = kind

    live = _is_live(path)
    if trailer_seen:
        r.ok = True
        r.finalized = True
        r.message = (
            f"OK: {r.events} events, {r.checkpoints} checkpoints, signed trailer "
            f"(key {', '.join(r.key_ids)})"
        )
        return

    r.live = live
    r.torn = torn
    tail = "; its last line is incomplete" if torn else ""
    if r.events == 0:
        raise _Fail(TRUNCATED, 0, "recording is empty (no header)" + tail)
    if r.last_checkpoint is None:
        raise _Fail(TRUNCATED, r.events - 1, "truncated: no signed checkpoint at all" + tail)
    unsigned = r.events - 1 - r.last_checkpoint
    after = f"; {unsigned} later events are not covered by a signature" if unsigned else ""
    where = f"checkpoint {r.checkpoints} (event {r.last_checkpoint})"
    if live:
        raise _Fail(
            MISSING_TRAILER,
            r.last_checkpoint,
            f"recording not finalized (no trailer: still being written, or the writer died); "
            f"verified through {where}{after}{tail}",
        )
    if prev_kind == fmt.END and not torn:
        raise _Fail(
            MISSING_TRAILER,
            r.events,
            f"missing trailer after the end event (event {r.events - 1}); last signature: "
            f"{where}{after}",
        )
    raise _Fail(TRUNCATED, r.last_checkpoint, f"truncated after {where}{after}{tail}")


def _looks_like_trailer(line: _Line, i: int, prev_hash: str) -> bool:
    """An incomplete last line that is a whole trailer but for its final newline (changed or
    removed) was altered, not cut."""
    for raw in (line.raw, line.raw[:-1]):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if (
            isinstance(obj, dict)
            and obj.get("kind") == fmt.TRAILER
            and obj.get("seq") == i
            and obj.get("prev") == prev_hash
        ):
            return True
    return False


def _frame_length_altered(line: _Line, i: int) -> bool:
    """The file ends inside ``line``'s frame. Cut there, or was its ``raw_len`` made larger?
    Altered if the frame as written (it matches ``raw_sha256``) is followed by event i+1."""
    frame = line.short_frame
    if frame is None or line.obj is None:
        return False
    needle = b'{"seq":%d,' % (i + 1)
    at = frame.find(needle)
    for _ in range(8):  # bounded: a crafted frame full of needles must not stall the verifier
        if at < 0:
            break
        if hashlib.sha256(frame[:at]).hexdigest() == line.obj[fmt.RAW_SHA256]:
            return True
        at = frame.find(needle, at + 1)
    return False


def _own_prev_altered(
    line: _Line, lines: _Lines, trusted_keys: dict[str, Ed25519PublicKey]
) -> bool:
    """``line``'s prev does not match the line before it. Was ``line`` itself changed (its
    prev field) rather than the line before it? A single edit to ``line`` also breaks the link
    to the line after it; an edit to the line before does not."""
    nxt = lines.peek(0)
    if nxt is not None and nxt.complete and nxt.obj is not None:
        if nxt.obj["seq"] == line.index + 1:
            return nxt.obj["prev"] != line.hash
        return False
    if line.kind in (fmt.CHECKPOINT, fmt.TRAILER):
        # last line and signed: the signature covers the prev as the writer wrote it
        return not _signature_valid(line, trusted_keys, lines)
    return False


def _altered_or(lines: _Lines, line: _Line, otherwise: str) -> str:
    """ALTERED if the next line's prev shows ``line`` changed after it was written."""
    nxt = lines.peek(0)
    if nxt is not None and nxt.obj is not None and nxt.obj["prev"] != line.hash:
        return ALTERED
    return otherwise
