"""Replay a recording: terminal playback for SSH sessions, a statement timeline for PostgreSQL.

Everything starts with :func:`check_integrity`: a recording that does not verify is refused
unless the caller forces it, and then comes with a loud warning. A live recording (not
finalized yet) is allowed with a notice: what follows its last checkpoint is not signed yet.

:class:`Player` writes the recorded output bytes, exactly and in order, to a binary stream,
sleeping between them as recorded (divided by ``speed``; gaps longer than ``idle_limit``
shortened to it). With a key source it is interactive: space pauses, right/left arrows seek
5 s, ``+``/``-`` change the speed, ``q`` quits. Seeking back resets the terminal and redraws
from the start instantly.

Must not import proxy/ or policy/.
"""

from __future__ import annotations

import os
import re
import select
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import format as fmt
from .format import RecorderError
from .reader import read_events
from .term_filter import TerminalFilter
from .verify import MISSING_TRAILER, VerifyResult, verify_recording

__all__ = [
    "IntegrityRefused",
    "check_integrity",
    "load_events",
    "Frame",
    "terminal_frames",
    "Player",
    "TimelineEntry",
    "statement_timeline",
    "render_timeline",
    "ssh_timeline",
    "session_timeline",
    "recorded_size",
    "END_RESET",
    "sftp_text",
    "progress_text",
]

SEEK_STEP = 5.0
RESET = b"\x1bc"
#: Written when playback ends: whatever modes the recorded programs left set (a scroll region,
#: the alternate screen, a hidden cursor, application keys, bracketed paste, colours) are put
#: back, so the reviewer's terminal is usable, without clearing what is on the screen.
END_RESET = (
    b"\x1b[?47l\x1b7\x1b[r\x1b8\x1b[?25h\x1b[0m\x1b[?7h\x1b[?1l\x1b>\x1b[?2004l\x1b(B\x0f\r\n"
)
#: A recorded resize: a real terminal resets its scroll region when it is resized (the program
#: then redraws for the new size); the replay does the same, or a region set for the old size
#: would trap everything printed below it.
#: (DECSTBM homes the cursor: saved and restored around it.)
RESIZE_RESET = b"\x1b7\x1b[r\x1b8"
_DECSTBM = re.compile(rb"\x1b\[(\d*)(?:;(\d*))?r")


class IntegrityRefused(Exception):
    """The recording failed verification and ``force`` was not given."""

    def __init__(self, result: VerifyResult) -> None:
        super().__init__(
            f"recording {result.path} FAILED verification ({result.problem}): {result.message}. "
            "Refusing to use it; pass --force to override (the content may be forged)."
        )
        self.result = result


def check_integrity(
    path: Path, trusted_keys: dict[str, Ed25519PublicKey], *, force: bool = False
) -> tuple[VerifyResult, str | None]:
    """Verify ``path``. Returns the result and a warning to show (or None); raises
    :class:`IntegrityRefused` if it fails and ``force`` is false."""
    result = verify_recording(Path(path), trusted_keys)
    if result.ok:
        return result, None
    if result.problem == MISSING_TRAILER and result.live:
        return result, (
            f"NOTE: recording not finalized (session live, or its writer died); verified through "
            f"its last checkpoint (event {result.last_checkpoint}); later events are not signed yet"
        )
    if not force:
        raise IntegrityRefused(result)
    bar = "!" * 78
    return result, (
        f"{bar}\n!! WARNING: THIS RECORDING FAILED VERIFICATION ({result.problem}).\n"
        f"!! {result.message}\n"
        f"!! Shown because of --force. Anything at or after event {result.event_index} may be "
        f"forged.\n{bar}"
    )


def load_events(path: Path) -> list[dict[str, Any]]:
    """All events, decoded; on damage, what decoded before it (the caller forced this)."""
    out: list[dict[str, Any]] = []
    try:
        for ev in read_events(Path(path)):
            out.append(ev)
    except RecorderError:
        pass
    return out


def _header(events: list[dict[str, Any]]) -> dict[str, Any]:
    return events[0] if events and events[0].get("kind") == fmt.HEADER else {}


def session_start(events: list[dict[str, Any]]) -> float:
    """Time zero of a session: its header's ``t``."""
    h = _header(events)
    t = h.get("t")
    return float(t) if isinstance(t, int | float) else 0.0


@dataclass
class Frame:
    offset: float  # seconds since the session started, as recorded
    data: bytes
    seq: int
    kind: str = "o"  # o (output) | i (input, shown only with show_input)
    vt: float = 0.0  # position on the (idle-compressed) playback clock


def _input_marker(data: bytes) -> bytes:
    shown = "".join(ch if 32 <= ord(ch) < 127 else repr(ch)[1:-1] for ch in data.decode("latin-1"))
    return b"\x1b[7m" + shown.encode("ascii", "backslashreplace") + b"\x1b[27m"


def recorded_size(events: Iterable[dict[str, Any]]) -> tuple[int, int] | None:
    """The terminal size the session started with (its first pty or resize event)."""
    for ev in events:
        cols, rows = ev.get("cols"), ev.get("rows")
        if (
            ev.get("kind") in (fmt.RESIZE, "pty")
            and isinstance(cols, int)
            and isinstance(rows, int)
        ):
            if cols > 0 and rows > 0:
                return cols, rows
    return None


def sftp_channels(events: Iterable[dict[str, Any]]) -> set[Any]:
    """Channels that carried an (allowed) sftp subsystem: their bytes are the binary sftp
    protocol, shown as the recorded ``sftp`` operations instead."""
    return {
        ev.get("channel")
        for ev in events
        if ev.get("kind") == fmt.DECISION
        and ev.get("decision_kind") == "subsystem"
        and ev.get("text") == "sftp"
        and ev.get("allowed")
    }


def sftp_text(ev: dict[str, Any]) -> str:
    """One sftp operation as a line: ``remove /etc/app.conf: ok``, ``rename a -> b: error (..)``."""
    bits = [str(ev.get("op", "?"))]
    if ev.get("path") is not None:
        bits.append(str(ev.get("path")))
    if ev.get("to") is not None:
        bits += ["->", str(ev.get("to"))]
    if ev.get("flags"):
        bits.append(f"({ev.get('flags')})")
    for k in ("read", "written", "entries"):
        if isinstance(ev.get(k), int) and ev.get(k):
            bits.append(f"{k}={ev.get(k)}")
    if ev.get("mode") is not None:
        bits.append(f"mode={ev.get('mode')}")
    status = ev.get("status")
    if ev.get("error"):
        status = f"{status or 'error'} ({ev.get('error')})"
    text = " ".join(bits)
    return f"{text}: {status}" if status else text


def goodbye_text(ev: dict[str, Any]) -> str:
    """What the gateway sends the engineer when it ends a session (expiry, revocation, kill):
    the recording ends at the ``terminate`` event, so replay and export draw it from there."""
    msg = ev.get("message") or ev.get("reason") or "session ended"
    return f"breakglass: {_printable(str(msg))} — session closed"


def goodbye_bytes(ev: dict[str, Any]) -> bytes:
    return b"\r\n" + goodbye_text(ev).encode("utf-8", "replace") + b"\r\n"


def _printable(text: str) -> str:
    """Recorded text shown on the reviewer's terminal: no control characters."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _note(text: str) -> bytes:
    """A replay annotation (not recorded output): reverse video, on its own line."""
    return b"\r\n\x1b[7m" + _printable(text).encode("utf-8", "replace") + b"\x1b[27m\r\n"


def _clamp_regions(data: bytes, rows: int) -> bytes:
    """Scroll regions set for a taller screen, clamped to the reviewer's ``rows`` (a region
    the terminal rejects would leave an older one in force)."""

    def fix(m: re.Match[bytes]) -> bytes:
        top = int(m.group(1) or 1)
        bottom = int(m.group(2) or rows)
        if bottom <= rows:
            return m.group(0)
        if top >= rows:
            return b"\x1b[r"
        return b"\x1b[%d;%dr" % (top, rows)

    return _DECSTBM.sub(fix, data)


def terminal_frames(
    events: Iterable[dict[str, Any]],
    *,
    start: float | None = None,
    show_input: bool = False,
    idle_limit: float | None = None,
    raw: bool = False,
    viewer_rows: int | None = None,
) -> list[Frame]:
    """The output (and with ``show_input``, input) of a session as timed frames.

    Output frames carry the recorded output (stdout and stderr of every channel, in recorded
    order) through :class:`~recorder.term_filter.TerminalFilter`, so the reviewer's terminal
    only draws (``raw``: the recorded bytes unchanged). Input frames are rendered as a
    visible, reverse-video marker. A recorded resize resets the scroll region (as the
    engineer's terminal did); with ``viewer_rows``, scroll regions are clamped to it. sftp
    channels show their operations, one line each, instead of protocol bytes."""
    events = list(events)
    screen = None if raw else TerminalFilter()
    t0 = start if start is not None else session_start(events)
    sftp = sftp_channels(events)
    size = recorded_size(events)
    frames: list[Frame] = []
    for ev in events:
        kind = ev.get("kind")
        t = ev.get("t")
        off = max(0.0, float(t) - t0) if isinstance(t, int | float) else 0.0
        seq = ev.get("seq", -1)
        if kind == fmt.RESIZE:
            cols, rows = ev.get("cols"), ev.get("rows")
            if isinstance(cols, int) and isinstance(rows, int):
                if size is not None and (cols, rows) != size:
                    frames.append(Frame(off, RESIZE_RESET, seq, "r"))
                size = (cols, rows)
            continue
        if kind == "sftp":
            frames.append(Frame(off, _note("sftp " + sftp_text(ev)), seq, "o"))
            continue
        if kind == "terminate":  # the recording ends here; the gateway then told the engineer
            frames.append(Frame(off, goodbye_bytes(ev), seq, "o"))
            continue
        data = ev.get("data")
        if not isinstance(data, bytes | bytearray) or not data:
            continue
        if ev.get("channel") in sftp and ev.get("channel") is not None:
            continue
        if kind == fmt.OUTPUT:
            shown = bytes(data) if screen is None else screen.feed(bytes(data))
            if shown and viewer_rows and screen is not None:
                shown = _clamp_regions(shown, viewer_rows)
            if shown:
                frames.append(Frame(off, shown, seq, "o"))
        elif kind == fmt.INPUT and show_input:
            frames.append(Frame(off, _input_marker(bytes(data)), seq, "i"))
    vt, last = 0.0, 0.0
    for f in frames:
        gap = f.offset - last
        if idle_limit is not None and gap > idle_limit:
            gap = idle_limit
        vt += max(0.0, gap)
        f.vt = vt
        last = f.offset
    return frames


class KeySource(Protocol):
    def read(self, timeout: float | None) -> str | None:
        """A key (``" "``, ``"q"``, ``"left"``, ``"right"``, ``"+"``, ``"-"``) or None on timeout."""


class TerminalKeys:
    """Keys from a terminal in cbreak mode (restored by :meth:`close`)."""

    def __init__(self, fd: int) -> None:
        import termios
        import tty

        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)

    def read(self, timeout: float | None) -> str | None:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return None
        b = os.read(self.fd, 8)
        if not b:
            return "q"
        if b.startswith((b"\x1b[C", b"\x1bOC")):  # normal or application cursor keys
            return "right"
        if b.startswith((b"\x1b[D", b"\x1bOD")):
            return "left"
        return b[:1].decode("latin-1")

    def close(self) -> None:
        import termios

        # Recorded output may contain sequences that make the reviewer's terminal answer on its
        # input (status/title reports): drop whatever is pending, so none of it reaches the
        # reviewer's shell after replay.
        termios.tcflush(self.fd, termios.TCIFLUSH)
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


@dataclass
class Player:
    frames: list[Frame]
    out: BinaryIO
    speed: float = 1.0
    keys: KeySource | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    on_status: Callable[[str], None] | None = None
    #: Called with (position, length) in playback seconds, at most every ``progress_every``
    #: seconds of wall time and once at the end: a clock / progress bar.
    on_progress: Callable[[float, float], None] | None = None
    progress_every: float = 0.5
    position: int = 0  # index of the next frame to write
    quit: bool = False
    _vpos: float = 0.0  # where playback is, on the frames' vt clock
    _next_progress: float = 0.0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    @property
    def length(self) -> float:
        """Playback length in seconds (idle gaps shortened)."""
        return self.frames[-1].vt if self.frames else 0.0

    def _progress(self, now: float, force: bool = False) -> None:
        if self.on_progress is None:
            return
        if force or now >= self._next_progress:
            self._next_progress = now + self.progress_every
            self.on_progress(min(self._vpos, self.length), self.length)

    def finish(self) -> None:
        """Put back the terminal modes the recording may have left set (see END_RESET)."""
        self._write(END_RESET)

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    def seek_offset(self, offset: float) -> None:
        """Jump to ``offset`` seconds (recorded time): draw everything before it instantly."""
        i = 0
        while i < len(self.frames) and self.frames[i].offset < offset:
            i += 1
        self._jump(i)
        if i < len(self.frames):
            f = self.frames[i]
            self._vpos = max(self._vpos, f.vt - (f.offset - offset))

    def _jump(self, index: int) -> None:
        index = max(0, min(index, len(self.frames)))
        if index < self.position:
            self._write(RESET)
            self.position = 0
        if index > self.position:
            self._write(b"".join(f.data for f in self.frames[self.position : index]))
        self.position = index
        self._vpos = self.frames[index - 1].vt if index else 0.0

    def _vt(self) -> float:
        return self._vpos

    def _seek_vt(self, vt: float) -> None:
        vt = max(0.0, vt)
        i = 0
        while i < len(self.frames) and self.frames[i].vt <= vt:
            i += 1
        self._jump(i)
        self._vpos = vt

    def play(self) -> None:
        """Play from ``position`` to the end (or until ``q``)."""
        base_wall, base_v = self.clock(), self._vt()
        while self.position < len(self.frames) and not self.quit:
            frame = self.frames[self.position]
            due = base_wall + (frame.vt - base_v) / self.speed
            now = self.clock()
            wait = due - now
            if wait > 0:
                if self.on_progress is not None:
                    self._vpos = max(self._vpos, base_v + (now - base_wall) * self.speed)
                    self._vpos = min(self._vpos, frame.vt)
                    self._progress(now)
                    wait = min(wait, self.progress_every)
                if self.keys is None:
                    self.sleep(wait)
                    continue
                key = self.keys.read(wait)
                if key is None:
                    continue
                if self._key(key):
                    base_wall, base_v = self.clock(), self._vt()
                continue
            self._write(frame.data)
            self.position += 1
            self._vpos = frame.vt
        self._progress(self.clock(), force=True)

    def _key(self, key: str) -> bool:
        """Handle one key; True if the playback clock must be re-based."""
        if key in ("q", "Q", "\x03"):
            self.quit = True
            return False
        if key == " ":
            self._status("paused (space resumes, q quits)")
            while True:
                k = self.keys.read(None) if self.keys else " "
                if k in ("q", "Q", "\x03"):
                    self.quit = True
                    return False
                if k in ("left", "right"):
                    self._seek_vt(self._vt() + (SEEK_STEP if k == "right" else -SEEK_STEP - 1e-9))
                    continue
                if k == " ":
                    break
            self._status("playing")
            return True
        if key == "right":
            self._seek_vt(self._vt() + SEEK_STEP)
            return True
        if key == "left":
            self._seek_vt(self._vt() - SEEK_STEP - 1e-9)
            return True
        if key in ("+", "="):
            self.speed = min(self.speed * 2, 64.0)
            self._status(f"speed {self.speed:g}x")
            return True
        if key in ("-", "_"):
            self.speed = max(self.speed / 2, 1 / 64)
            self._status(f"speed {self.speed:g}x")
            return True
        return False


# ---------------------------------------------------------------- PostgreSQL statement timeline


@dataclass
class TimelineEntry:
    offset: float
    seq: int
    # statement | function_call | denied | cancel | terminate | violation | copy | end (PostgreSQL)
    # command | denied | sftp | exit | builtin | gateway | terminate | end (SSH)
    what: str
    n: int | None = None
    text: str = ""
    protocol: str | None = None
    params: Any = None
    tag: Any = None
    rows: int | None = None
    error: dict[str, Any] | None = None
    duration_ms: float | None = None
    rule: str | None = None
    message: str | None = None
    #: Batches of a portal read with a row limit (cursor-style), when more than one.
    fetches: int | None = None
    param_types: list[Any] | None = None
    #: COPY data from the client: its size and the first COPY_PREVIEW bytes as text.
    bytes: int | None = None
    data: str | None = None
    truncated: bool | None = None

    @property
    def outcome(self) -> str:
        if self.what == "denied":
            return "DENIED"
        if self.what == "sftp":
            return "ERROR" if self.error else "OK"
        if self.what not in ("statement", "function_call"):
            return self.what.upper()
        if self.error:
            return "ERROR"
        if self.what == "function_call" and self.duration_ms is not None:
            return "OK"  # FunctionCallResponse carries no command tag
        if self.tag is None:
            return "no result"
        return "OK"

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if v is not None and v != ""}
        d["outcome"] = self.outcome
        if isinstance(d.get("params"), list):
            d["params"] = [_jsonable(p) for p in d["params"]]
        return d


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return {fmt.BYTES_KEY: fmt.b64(bytes(v))}
    return v


#: COPY data kept per COPY in the timeline and the JSON-lines export (the recording has it all).
COPY_PREVIEW = 4096


def _function_text(ev: dict[str, Any], named: dict[str, Any] | None = None) -> str:
    """``pg_catalog.int4pl(2, 40)``: the call's name (inline, or from the ``function_name``
    event that follows a side lookup) and its arguments (decoded there when they could be)."""
    named = named or {}
    name = named.get("name", ev.get("name"))
    args = named.get("args", ev.get("args"))
    if not isinstance(name, str):
        unknown = named.get("unknown")
        name = f"function oid {ev.get('oid')}"
        if isinstance(unknown, str):
            name += f" ({unknown})"
    if isinstance(args, list):
        return f"{name}({', '.join(_param(a) for a in args)})"
    return f"{name}(...)"


def statement_timeline(events: list[dict[str, Any]]) -> list[TimelineEntry]:
    """Statements in order with their outcome (matched by ``n``), denials and other events."""
    t0 = session_start(events)
    out: list[TimelineEntry] = []
    by_n: dict[int, TimelineEntry] = {}
    calls: dict[int, dict[str, Any] | None] = {}  # n -> its function_call event
    copy_bytes: TimelineEntry | None = None
    copies: list[TimelineEntry] = []

    def off(ev: dict[str, Any]) -> float:
        t = ev.get("t")
        return max(0.0, float(t) - t0) if isinstance(t, int | float) else 0.0

    for ev in events:
        kind = ev.get("kind")
        seq = ev.get("seq", -1)
        if kind != "copy_data":
            copy_bytes = None
        if kind in (fmt.QUERY, "function_call"):
            e = TimelineEntry(
                off(ev),
                seq,
                "statement" if kind == fmt.QUERY else "function_call",
                n=ev.get("n") if isinstance(ev.get("n"), int) else None,
                text=str(ev.get("text", "")) if kind == fmt.QUERY else _function_text(ev),
                protocol=ev.get("protocol"),
                params=ev.get("params") if kind == fmt.QUERY else ev.get("args"),
                param_types=ev.get("param_types")
                if isinstance(ev.get("param_types"), list)
                else None,
            )
            out.append(e)
            if e.n is not None:
                by_n[e.n] = e
                calls[e.n] = ev if kind == "function_call" else None
        elif kind == "function_name":  # the name of an earlier FunctionCall, looked up
            n = ev.get("n")
            e = by_n.get(n) if isinstance(n, int) else None
            if e is not None and e.what == "function_call" and calls.get(n) is not None:
                e.text = _function_text(calls[n], ev)
                if isinstance(ev.get("args"), list):
                    e.params = ev["args"]
                if isinstance(ev.get("arg_types"), list):
                    e.param_types = ev["arg_types"]
        elif kind == "result":
            n = ev.get("n")
            e = by_n.get(n) if isinstance(n, int) else None
            if e is None:
                continue
            e.tag = ev.get("tag")
            e.rows = ev.get("rows") if isinstance(ev.get("rows"), int) else None
            err = ev.get("error")
            e.error = err if isinstance(err, dict) else None
            d = ev.get("duration_ms")
            e.duration_ms = float(d) if isinstance(d, int | float) else None
            f = ev.get("fetches")
            e.fetches = f if isinstance(f, int) else None
        elif kind == fmt.DECISION and ev.get("allowed") is False:
            out.append(
                TimelineEntry(
                    off(ev),
                    seq,
                    "denied",
                    text=str(ev.get("text", "")),
                    protocol=ev.get("protocol"),
                    rule=ev.get("rule"),
                    message=ev.get("message"),
                )
            )
        elif kind == "cancel":
            out.append(TimelineEntry(off(ev), seq, "cancel"))
        elif kind == "notice":  # the gateway's own message to the engineer (expiry, kill)
            out.append(_gateway_entry(off(ev), seq, ev))
        elif kind == "terminate":
            out.append(
                TimelineEntry(
                    off(ev), seq, "terminate", message=str(ev.get("message") or ev.get("reason"))
                )
            )
        elif kind == "parameter_violation":
            out.append(
                TimelineEntry(
                    off(ev),
                    seq,
                    "violation",
                    text=f"{ev.get('name')}={ev.get('value')}",
                    message=ev.get("message"),
                )
            )
        elif kind == "copy_data":
            chunk = ev["data"] if isinstance(ev.get("data"), bytes) else b""
            n = ev.get("n") if isinstance(ev.get("n"), int) and ev.get("n") else None
            if copy_bytes is None or (n is not None and copy_bytes.n != n):
                copy_bytes = TimelineEntry(off(ev), seq, "copy", n=n, bytes=0, data="")
                copy_bytes.truncated = False
                out.append(copy_bytes)
                copies.append(copy_bytes)
            size = copy_bytes.bytes or 0
            if size < COPY_PREVIEW:
                copy_bytes.data = (copy_bytes.data or "") + chunk[: COPY_PREVIEW - size].decode(
                    "utf-8", "replace"
                )
            copy_bytes.truncated = size + len(chunk) > COPY_PREVIEW
            copy_bytes.bytes = size + len(chunk)
            copy_bytes.text = f"{copy_bytes.bytes} bytes of COPY data from the client"
        elif kind == fmt.END:
            out.append(TimelineEntry(off(ev), seq, "end", message=str(ev.get("reason", ""))))
    for c in copies:  # rows: what the server counted ("COPY 251"), not bytes or lines
        stmt = by_n.get(c.n) if c.n is not None else None
        if stmt is not None:
            c.rows = stmt.rows
            c.error = stmt.error
    return out


def _gateway_entry(offset: float, seq: int, ev: dict[str, Any]) -> TimelineEntry:
    if ev.get("kind") == "warn":
        left = ev.get("seconds_left")
        text = f"expiry warning: the grant expires in {left} s"
    else:
        text = str(ev.get("message", ""))
    return TimelineEntry(offset, seq, "gateway", text=str(ev.get("severity") or ""), message=text)


_SSH_DECISIONS = {"exec": "exec", "shell": "shell line", "subsystem": "subsystem"}


def ssh_timeline(events: list[dict[str, Any]]) -> list[TimelineEntry]:
    """What happened in an SSH session, in order: exec commands, restricted-shell lines,
    subsystems and forwards (allowed or denied), sftp operations, exits, the gateway's own
    messages to the engineer, and the end."""
    t0 = session_start(events)
    out: list[TimelineEntry] = []
    for ev in events:
        kind = ev.get("kind")
        seq = ev.get("seq", -1)
        t = ev.get("t")
        off = max(0.0, float(t) - t0) if isinstance(t, int | float) else 0.0
        if kind == fmt.DECISION:
            dk = str(ev.get("decision_kind") or "")
            label = _SSH_DECISIONS.get(dk, dk or "command")
            out.append(
                TimelineEntry(
                    off,
                    seq,
                    "command" if ev.get("allowed") else "denied",
                    text=str(ev.get("text", "")),
                    protocol=label,
                    rule=ev.get("rule") or ev.get("pattern"),
                    message=ev.get("message") if not ev.get("allowed") else None,
                )
            )
        elif kind == "sftp":
            err = ev.get("error")
            out.append(
                TimelineEntry(
                    off,
                    seq,
                    "sftp",
                    text=sftp_text(ev),
                    error={"message": str(err)} if err or ev.get("status") == "error" else None,
                )
            )
        elif kind == "exit":
            sig = ev.get("signal")
            text = f"signal {sig}" if sig else f"status {ev.get('status')}"
            out.append(TimelineEntry(off, seq, "exit", text=f"channel {ev.get('channel')} {text}"))
        elif kind == "builtin":
            out.append(TimelineEntry(off, seq, "builtin", text=str(ev.get("name", ""))))
        elif kind in ("warn", "notice"):
            out.append(_gateway_entry(off, seq, ev))
        elif kind == "terminate":
            msg = str(ev.get("message") or ev.get("reason"))
            out.append(TimelineEntry(off, seq, "terminate", message=msg))
        elif kind == "upstream-lost":
            out.append(TimelineEntry(off, seq, "upstream-lost", text=str(ev.get("error") or "")))
        elif kind == fmt.END:
            out.append(TimelineEntry(off, seq, "end", message=str(ev.get("reason", ""))))
    return out


def session_timeline(events: list[dict[str, Any]]) -> list[TimelineEntry]:
    """The timeline for the session's protocol."""
    if _header(events).get("protocol") == "postgres":
        return statement_timeline(events)
    return ssh_timeline(events)


def progress_text(pos: float, length: float, width: int = 20) -> str:
    """``0:12 / 1:30 [####----------------]``: where playback is."""
    frac = 0.0 if length <= 0 else max(0.0, min(1.0, pos / length))
    filled = round(frac * width)

    def mmss(x: float) -> str:
        m, sec = divmod(int(x), 60)
        return f"{m}:{sec:02d}"

    return f"{mmss(pos)} / {mmss(length)} [{'#' * filled}{'-' * (width - filled)}]"


def _fmt_offset(s: float) -> str:
    m, sec = divmod(s, 60)
    h, m = divmod(int(m), 60)
    return f"{h:d}:{m:02d}:{sec:06.3f}"


def _one_line(text: str, width: int = 400) -> str:
    t = _printable(" ".join(text.split()))  # recorded text: no control sequences
    return t if len(t) <= width else t[: width - 1] + "…"


def render_timeline(entries: list[TimelineEntry]) -> str:
    lines = []
    for e in entries:
        head = f"{_fmt_offset(e.offset)}  "
        if e.what in ("statement", "function_call"):
            n = f"#{e.n}" if e.n is not None else "#?"
            tag = e.tag if not isinstance(e.tag, list) else ", ".join(map(str, e.tag))
            bits = [n, e.outcome]
            if tag:
                bits.append(str(tag))
            if e.fetches is not None:
                tag = tag.split(" ", 1)[0] if tag and e.fetches > 1 else tag
                bits[2:] = [str(tag)] if tag else []
            if e.rows is not None:
                bits.append(f"{e.rows} rows")
            if e.fetches is not None and e.fetches > 1:
                bits.append(f"{e.fetches} fetches")
            if e.duration_ms is not None:
                bits.append(f"{e.duration_ms:.1f} ms")
            lines.append(head + "  ".join(bits))
            lines.append(f"    {_one_line(e.text)}")
            if e.params not in (None, [], "") and e.what == "statement":  # calls show args inline
                lines.append(f"    params: {_params_text(e.params)}")
            if e.error:
                lines.append(f"    error: {e.error.get('sqlstate')} {e.error.get('message')}")
        elif e.what == "denied":
            what = f"{e.protocol}  " if e.protocol in _SSH_DECISIONS.values() else ""
            lines.append(head + f"DENIED  {what}rule={e.rule}  {e.message or ''}".rstrip())
            lines.append(f"    {_one_line(e.text)}")
        elif e.what == "end":
            lines.append(head + f"END  {e.message}")
        elif e.what == "copy":
            rows = f"  {e.rows} rows" if e.rows is not None else ""
            lines.append(head + f"COPY  #{e.n if e.n is not None else '?'}{rows}  {e.text}")
            if e.data:
                more = " …" if e.truncated else ""
                lines.append(f"    data: {_short(_escaped(e.data), PARAM_WIDTH)}{more}")
        elif e.what == "command":
            lines.append(head + f"{e.protocol or 'command'}  {_one_line(e.text)}")
        elif e.what == "sftp":
            lines.append(head + f"sftp  {_one_line(e.text)}")
        elif e.what == "gateway":
            lines.append(head + f"GATEWAY  {_one_line(e.message or '')}")
        elif e.what == "terminate":
            lines.append(head + f"TERMINATE  {goodbye_text({'message': e.message})}")
        else:
            lines.append(head + f"{e.outcome}  {e.text or ''} {e.message or ''}".rstrip())
    # Recorded text is untrusted: no control characters reach the reviewer's terminal.
    return "\n".join(_printable(line) for line in lines)


def _params_text(params: Any) -> str:
    if isinstance(params, list):
        return "[" + ", ".join(_param(p) for p in params) + "]"
    return str(params)


#: Longest parameter shown in the timeline; the recording and the export keep it whole.
PARAM_WIDTH = 200


def _short(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return f"{text[: width - 1]}… ({len(text)} characters)"


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def _param(p: Any) -> str:
    if p is None:
        return "NULL"
    if isinstance(p, bytes | bytearray):
        if len(p) * 2 + 2 <= PARAM_WIDTH:
            return "\\x" + bytes(p).hex()
        return f"\\x{bytes(p[: PARAM_WIDTH // 2]).hex()}… ({len(p)} bytes)"
    if isinstance(p, str) and len(p) > PARAM_WIDTH:
        return f"{p[:PARAM_WIDTH]!r}… ({len(p)} characters)"
    return repr(p)
