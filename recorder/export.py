"""Export a recording: asciicast v2 (for ``asciinema play``) and JSON lines.

asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a header object line, then one
``[time, code, data]`` line per event: ``"o"`` output, ``"i"`` input (only with
``include_input``), ``"r"`` resize (``"COLSxROWS"``). ``data`` is text: the recorded bytes are
decoded as UTF-8 with an incremental decoder (a character split across two recorded chunks
comes out whole); bytes that are not UTF-8 become U+FFFD, the one loss the format forces.
The recording itself stays byte-exact; ``breakglass replay`` plays it unchanged.

JSON lines: one object per statement (with its outcome), command, denial, exit and the end of
the session, in recorded order; bytes values as ``{"$b": "<base64>"}``.

Must not import proxy/ or policy/.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any

from . import format as fmt
from .replay import (
    goodbye_bytes,
    render_timeline,
    session_start,
    sftp_channels,
    sftp_text,
    statement_timeline,
)
from .term_filter import TerminalFilter

__all__ = ["asciicast_lines", "jsonl_lines"]

DEFAULT_SIZE = (80, 24)
#: A PostgreSQL session has no terminal: its statement timeline is drawn at this size.
TIMELINE_SIZE = (120, 40)


def _size(events: list[dict[str, Any]]) -> tuple[int, int]:
    for ev in events:
        cols, rows = ev.get("cols"), ev.get("rows")
        if (
            ev.get("kind") in (fmt.RESIZE, "pty")
            and isinstance(cols, int)
            and isinstance(rows, int)
        ):
            if cols > 0 and rows > 0:
                return cols, rows
    return DEFAULT_SIZE


def asciicast_lines(
    events: list[dict[str, Any]], *, include_input: bool = False, raw: bool = False
) -> Iterator[str]:
    """The asciicast v2 file, line by line (each without its newline). Output goes through
    :class:`~recorder.term_filter.TerminalFilter` (``asciinema play`` writes it to the
    reviewer's terminal) unless ``raw``."""
    header = events[0] if events and events[0].get("kind") == fmt.HEADER else {}
    t0 = session_start(events)
    postgres = header.get("protocol") == "postgres"
    width, height = TIMELINE_SIZE if postgres else _size(events)
    title_bits = [
        str(header.get(k))
        for k in ("user", "target", "session_id")
        if isinstance(header.get(k), str) and header.get(k)
    ]
    head: dict[str, Any] = {"version": 2, "width": width, "height": height}
    if t0:
        head["timestamp"] = int(t0)
    if title_bits:
        head["title"] = "breakglass " + " ".join(title_bits)
    term = next(
        (ev.get("term") for ev in events if ev.get("kind") == "pty" and ev.get("term")), None
    )
    head["env"] = {"TERM": term if isinstance(term, str) else "xterm-256color", "SHELL": ""}
    yield json.dumps(head, ensure_ascii=True)
    if postgres:
        yield from _timeline_cast(events, header)
        return
    sftp = sftp_channels(events)
    decoders: dict[tuple[str, Any], Any] = {}
    screen = None if raw else TerminalFilter()
    seen_size = False
    for ev in events:
        kind = ev.get("kind")
        t = ev.get("t")
        if not isinstance(t, int | float):
            continue
        off = round(max(0.0, float(t) - t0), 6)
        if kind == "terminate":
            yield json.dumps([off, "o", goodbye_bytes(ev).decode("utf-8", "replace")])
        elif kind == "sftp":
            yield json.dumps([off, "o", f"\r\n\x1b[7msftp {_plain(sftp_text(ev))}\x1b[27m\r\n"])
        elif ev.get("channel") in sftp and ev.get("channel") is not None:
            continue  # the sftp protocol's bytes: shown as the operations above
        elif kind in (fmt.OUTPUT, fmt.INPUT):
            if kind == fmt.INPUT and not include_input:
                continue
            data = ev.get("data")
            if not isinstance(data, bytes | bytearray) or not data:
                continue
            if kind == fmt.OUTPUT and screen is not None:
                data = screen.feed(bytes(data))
            key = (kind, ev.get("channel"), ev.get("stream"))
            dec = decoders.get(key)
            if dec is None:
                dec = decoders[key] = codecs.getincrementaldecoder("utf-8")("replace")
            text = dec.decode(bytes(data))
            if text:
                yield json.dumps([off, "o" if kind == fmt.OUTPUT else "i", text])
        elif kind == fmt.RESIZE:
            cols, rows = ev.get("cols"), ev.get("rows")
            if isinstance(cols, int) and isinstance(rows, int):
                if not seen_size and (cols, rows) == (width, height):
                    seen_size = True
                    continue
                seen_size = True
                yield json.dumps([off, "r", f"{cols}x{rows}"])


def _plain(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _timeline_cast(events: list[dict[str, Any]], header: dict[str, Any]) -> Iterator[str]:
    """A PostgreSQL session as a cast: its statement timeline, each entry at its time."""
    intro = (
        f"breakglass: PostgreSQL session {header.get('session_id')}: {header.get('user')} on "
        f"{header.get('target')} as {header.get('account')} (statement timeline)"
    )
    yield json.dumps([0.0, "o", _plain(intro) + "\r\n"])
    entries = statement_timeline(events)
    if not entries:
        yield json.dumps([0.0, "o", "(no statements recorded)\r\n"])
    for e in entries:
        text = render_timeline([e]).replace("\n", "\r\n") + "\r\n"
        yield json.dumps([round(e.offset, 6), "o", text])


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return {fmt.BYTES_KEY: fmt.b64(bytes(v))}
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


_COMMAND_KINDS = {
    "command",
    "exec",
    "upstream",
    "builtin",
    "exit",
    "terminate",
    "signal",
    "sftp",
    "warn",
    "notice",
}


def jsonl_lines(events: list[dict[str, Any]]) -> Iterator[str]:
    """JSON lines for the session's statements and commands (see the module doc)."""
    header = events[0] if events and events[0].get("kind") == fmt.HEADER else {}
    t0 = session_start(events)
    sid = header.get("session_id")
    base = {
        "session": sid,
        "user": header.get("user"),
        "target": header.get("target"),
        "protocol": header.get("protocol"),
    }
    yield json.dumps(
        {"type": "session", **base, **{k: _jsonable(header.get(k)) for k in _HEADER_KEYS}},
        ensure_ascii=True,
        sort_keys=True,
    )
    if header.get("protocol") == "postgres":
        for e in statement_timeline(events):
            rec = {"type": e.what, "session": sid, "t": round(t0 + e.offset, 6), **e.to_dict()}
            yield json.dumps(_jsonable(rec), ensure_ascii=True, sort_keys=True)
        return
    for ev in events:
        kind = ev.get("kind")
        t = ev.get("t")
        if kind == fmt.DECISION:
            rec = {
                "type": "command" if ev.get("allowed") else "denied",
                "allowed": ev.get("allowed"),
                "text": ev.get("text"),
                "rule": ev.get("rule"),
                "message": ev.get("message"),
                "decision_kind": ev.get("decision_kind"),
            }
        elif kind in _COMMAND_KINDS:
            rec = {
                "type": kind,
                **{k: v for k, v in ev.items() if k not in ("seq", "t", "kind", "prev", "type")},
            }
        elif kind == fmt.END:
            rec = {
                "type": "end",
                **{k: v for k, v in ev.items() if k not in ("seq", "t", "kind", "prev")},
            }
        else:
            continue
        rec["session"] = sid
        rec["seq"] = ev.get("seq")
        if isinstance(t, int | float):
            rec["t"] = t
            rec["offset"] = round(max(0.0, t - t0), 6)
        yield json.dumps(_jsonable(rec), ensure_ascii=True, sort_keys=True)


_HEADER_KEYS = (
    "account",
    "client",
    "gateway",
    "grant_jti",
    "template",
    "reason",
    "ticket",
    "breakglass",
    "started_at",
    "expires_at",
)
