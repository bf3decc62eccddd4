"""Find text in recordings: keystrokes, terminal output, commands (and sftp operations), SQL
statements.

Keystrokes and output are searched as byte *streams* (one per channel and direction): what the
engineer typed arrives one byte per event in a PTY, and output is cut into arbitrary chunks, so
a match may span many events. A hit points at the event where the match starts (``seq``, time).
Commands (policy decisions, what was sent upstream) and queries (statement text, parse text,
parameters, denied statements, FunctionCall names and arguments, COPY data) are searched per
event (a match across two CopyData messages is not found).

Output is searched raw: text broken up by terminal escape sequences (colours inside a word) is
not found. Must not import proxy/ or policy/.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import format as fmt
from .format import RecorderError
from .reader import read_events

__all__ = ["Hit", "search_recording", "WHERE_ALL"]

WHERE_ALL = ("input", "output", "commands", "queries")
CONTEXT = 40


@dataclass
class Hit:
    session_id: str
    where: str  # input | output | commands | queries
    seq: int
    t: float
    offset: float  # seconds since the session started
    context: str  # printable excerpt around the match
    kind: str = ""  # the event kind (for commands/queries)
    denied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def printable(data: bytes) -> str:
    out = []
    for b in data:
        if 32 <= b < 127:
            out.append(chr(b))
        elif b == 10:
            out.append("\\n")
        elif b == 13:
            out.append("\\r")
        elif b == 9:
            out.append("\\t")
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


class _Stream:
    __slots__ = ("buf", "starts", "events")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.starts: list[int] = []
        self.events: list[tuple[int, float]] = []  # (seq, t)

    def add(self, data: bytes, seq: int, t: float) -> None:
        self.starts.append(len(self.buf))
        self.events.append((seq, t))
        self.buf += data


def _find_all(hay: bytes, needle: bytes, limit: int) -> list[int]:
    out, i = [], hay.find(needle)
    while i >= 0 and len(out) < limit:
        out.append(i)
        i = hay.find(needle, i + max(1, len(needle)))
    return out


def _text_fields(ev: dict[str, Any], names: Iterable[str]) -> list[str]:
    out = []
    for n in names:
        v = ev.get(n)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out += [x for x in v if isinstance(x, str)]
            out += [x.decode("utf-8", "replace") for x in v if isinstance(x, bytes)]
    return out


def search_recording(
    path: Path,
    text: str,
    *,
    where: Iterable[str] = WHERE_ALL,
    ignore_case: bool = False,
    max_hits: int = 50,
    session_id: str | None = None,
) -> list[Hit]:
    """Every place ``text`` occurs in the recording at ``path`` (at most ``max_hits``)."""
    where = set(where)
    needle = text.encode("utf-8", "surrogateescape")
    if not needle:
        return []
    if ignore_case:
        needle = needle.lower()
    sid = session_id or Path(path).stem
    streams: dict[tuple[str, Any], _Stream] = {}
    hits: list[Hit] = []
    t0 = 0.0
    try:
        events = list(read_events(Path(path)))
    except (OSError, RecorderError):
        return hits
    for ev in events:
        kind = ev.get("kind")
        seq = ev.get("seq", -1)
        t = float(ev["t"]) if isinstance(ev.get("t"), int | float) else 0.0
        if kind == fmt.HEADER:
            t0 = t
            sid = session_id or (
                ev.get("session_id") if isinstance(ev.get("session_id"), str) else sid
            )
            continue
        if kind in (fmt.INPUT, fmt.OUTPUT):
            w = "input" if kind == fmt.INPUT else "output"
            if w in where and isinstance(ev.get("data"), bytes):
                key = (w, ev.get("channel"))
                streams.setdefault(key, _Stream()).add(ev["data"], seq, t)
            continue
        texts: list[str] = []
        w = ""
        if kind == fmt.DECISION:
            w = "queries" if ev.get("decision_kind") == "sql" else "commands"
            texts = _text_fields(ev, ("text",))
        elif kind in (fmt.QUERY, "parse"):
            w = "queries"
            texts = _text_fields(ev, ("text", "params"))
        elif kind == "function_call":  # FunctionCall: name and arguments (lowrite's data)
            w = "queries"
            texts = _text_fields(ev, ("name", "args"))
        elif kind == "function_name":  # its name, looked up after the call (function_names.py)
            w = "queries"
            texts = _text_fields(ev, ("name", "signature", "args"))
        elif kind == "copy_data":  # COPY ... FROM STDIN rows, per CopyData message
            w = "queries"
            data = ev.get("data")
            texts = [data.decode("utf-8", "replace")] if isinstance(data, bytes) else []
        elif kind in ("upstream", fmt.COMMAND, "exec"):
            w = "commands"
            texts = _text_fields(ev, ("command", "text"))
        elif kind == "sftp":  # an sftp operation: "remove /etc/app.conf", "rename a b"
            w = "commands"
            texts = [" ".join(_text_fields(ev, ("op", "path", "to")))]
        if not w or w not in where:
            continue
        for s in texts:
            hay = s.encode("utf-8", "surrogateescape")
            if ignore_case:
                hay = hay.lower()
            i = hay.find(needle)
            if i >= 0:
                raw = s.encode("utf-8", "surrogateescape")
                ctx = raw[max(0, i - CONTEXT) : i + len(needle) + CONTEXT]
                hits.append(
                    Hit(
                        sid,
                        w,
                        seq,
                        t,
                        round(t - t0, 6),
                        printable(ctx),
                        kind=str(kind),
                        denied=ev.get("allowed") is False,
                    )
                )
                break
    for (w, _channel), st in streams.items():
        hay = bytes(st.buf)
        cmp = hay.lower() if ignore_case else hay
        for pos in _find_all(cmp, needle, max_hits):
            i = bisect.bisect_right(st.starts, pos) - 1
            seq, t = st.events[i]
            ctx = hay[max(0, pos - CONTEXT) : pos + len(needle) + CONTEXT]
            hits.append(Hit(sid, w, seq, t, round(t - t0, 6), printable(ctx), kind=w))
    hits.sort(key=lambda h: (h.seq, h.where))
    return hits[:max_hits]
