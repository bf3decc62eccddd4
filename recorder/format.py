"""Recording format constants and the few byte-level rules shared by writer, reader and verifier.

The full specification, with a worked example, is docs/recording-format.md. In short:

* A recording is a file of JSON lines (ASCII only, each terminated by one ``\\n``).
* Line ``i`` has ``"seq": i`` and ``"prev"``: the lowercase hex SHA-256 of the exact bytes of
  line ``i-1`` including its ``\\n`` (64 zeros for line 0, the header).
* ``checkpoint`` and ``trailer`` lines carry an Ed25519 signature (hex, ``"sig"``) by the key
  named in ``"key_id"`` over the ASCII message ``signed_message(kind, seq, prev, format)``.
* Since ``breakglass-recording/2``: a line with ``"raw_len": N`` is followed by N raw bytes (a
  *frame*, the event's payload, e.g. bulk terminal output) whose SHA-256 is the line's
  ``"raw_sha256"``. The chain hashes the line, which commits to the frame through that digest.

Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

FORMAT_V1 = "breakglass-recording/1"
#: What the writer writes: /1 plus raw frames for large data payloads.
FORMAT = "breakglass-recording/2"
#: Formats the reader and the verifier accept.
FORMATS = (FORMAT_V1, FORMAT)
ZERO_HASH = "0" * 64

# Event kinds. The set is open: any other non-empty string is a valid kind for a generic event.
HEADER = "header"
INPUT = "input"
OUTPUT = "output"
RESIZE = "resize"
QUERY = "query"
DECISION = "decision"
COMMAND = "command"
EXIT = "exit"
AUDIT = "audit"
END = "end"
CHECKPOINT = "checkpoint"
TRAILER = "trailer"

#: Kinds only the writer itself may emit.
RESERVED_KINDS = frozenset({HEADER, CHECKPOINT, TRAILER, END})
#: Kinds whose ``data`` field is a plain base64 string of raw bytes.
DATA_KINDS = frozenset({INPUT, OUTPUT})
#: Field names every line has; callers cannot set them.
RESERVED_FIELDS = frozenset({"seq", "t", "kind", "prev"})
#: Fields the writer puts in the header; the caller's header dict cannot override them.
HEADER_FIELDS = frozenset({"format", "recording_id", "key_id"})

#: Field giving the length of the raw frame that follows a line (format /2), and the field
#: with its hex SHA-256.
RAW_LEN = "raw_len"
RAW_SHA256 = "raw_sha256"
#: Largest frame a reader accepts (and the writer writes): a crafted length must not make a
#: reader allocate without bound.
MAX_RAW_LEN = 16 << 20

#: Key of the one-entry JSON object that stands for a bytes value in non-data fields.
BYTES_KEY = "$b"


class RecorderError(Exception):
    """A recording cannot be written (failed, closed, storage error) or read."""


class RecorderFieldError(RecorderError, TypeError):
    """An event field cannot be recorded (not JSON-serialisable, reserved name, ...)."""


def signed_message(kind: str, seq: int, prev: str, format: str = FORMAT) -> bytes:
    """The exact bytes a checkpoint or trailer signature covers.

    ``format`` is the recording's format (its header's ``"format"``), ``kind`` is
    ``"checkpoint"`` or ``"trailer"`` (domain separation: a checkpoint can never be passed off
    as a trailer), ``seq`` the signed line's own sequence number and ``prev`` the hex SHA-256
    of the line before it, which commits to the whole chain back to the header.
    """
    return f"{format} {kind} {seq} {prev}".encode("ascii")


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {BYTES_KEY: b64(bytes(obj))}
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")


def _check_no_bytes_marker(obj: Any, depth: int = 0) -> None:
    """Refuse caller dicts that would read back as bytes (``{"$b": ...}``)."""
    if depth > 64:
        raise RecorderFieldError("event fields nested too deeply")
    if isinstance(obj, dict):
        if len(obj) == 1 and BYTES_KEY in obj:
            raise RecorderFieldError(
                f"a dict with the single key {BYTES_KEY!r} is reserved for bytes"
            )
        for v in obj.values():
            if isinstance(v, dict | list | tuple):
                _check_no_bytes_marker(v, depth + 1)
    elif isinstance(obj, list | tuple):
        for v in obj:
            if isinstance(v, dict | list | tuple):
                _check_no_bytes_marker(v, depth + 1)


#: One encoder for every event (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_default
)
_encode_str = json.encoder.encode_basestring_ascii  # C implementation when available


def encode_fields(fields: dict[str, Any]) -> bytes:
    """``fields`` as the inside of a JSON object (no braces), ASCII bytes, ``b""`` when empty.

    Bytes values (at any depth) become ``{"$b": "<base64>"}``.
    """
    if not fields:
        return b""
    for k in fields:
        if not isinstance(k, str):
            raise RecorderFieldError(f"field names must be strings, got {k!r}")
        if k in RESERVED_FIELDS:
            raise RecorderFieldError(f"field name {k!r} is reserved")
    for v in fields.values():
        if isinstance(v, dict | list | tuple):
            _check_no_bytes_marker(fields)
            break
    try:
        text = _ENCODER.encode(fields)
    except (TypeError, ValueError) as exc:
        raise RecorderFieldError(f"event fields cannot be recorded: {exc}") from exc
    return text[1:-1].encode("ascii")


def encode_str(value: str) -> bytes:
    """A JSON string literal (with quotes), ASCII bytes."""
    return _encode_str(value).encode("ascii")


def decode_value(obj: Any) -> Any:
    """Turn every ``{"$b": "<base64>"}`` back into bytes (recursively)."""
    if isinstance(obj, dict):
        if len(obj) == 1 and BYTES_KEY in obj and isinstance(obj[BYTES_KEY], str):
            return unb64(obj[BYTES_KEY])
        return {k: decode_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_value(v) for v in obj]
    return obj


def frame_length(event: dict[str, Any]) -> int | None:
    """Length of the raw frame that follows this parsed line of a /2 recording (None: no
    frame). ``ValueError`` when the line announces a frame it cannot have."""
    n = event.get(RAW_LEN)
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_RAW_LEN:
        raise ValueError(f"invalid {RAW_LEN!r} {n!r}")
    digest = event.get(RAW_SHA256)
    if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
        raise ValueError(f"a frame needs {RAW_SHA256!r}: 64 lowercase hex digits")
    return n


def decode_event(event: dict[str, Any], payload: bytes | None = None) -> dict[str, Any]:
    """A parsed line with its bytes fields decoded back to ``bytes``; ``payload``, the raw frame
    that followed the line, becomes its ``data`` (in place of ``raw_len``/``raw_sha256``)."""
    out = decode_value(event)
    if payload is not None:
        del out[RAW_LEN], out[RAW_SHA256]
        out["data"] = payload
    elif event.get("kind") in DATA_KINDS and isinstance(event.get("data"), str):
        out["data"] = unb64(event["data"])
    return out
