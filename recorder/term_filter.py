"""Make recorded terminal output safe to play on a reviewer's terminal. No I/O.

A recording holds whatever the target (or the engineer) printed, byte for byte. Played back
unfiltered, that output drives the *reviewer's* terminal: it could set their clipboard (OSC 52),
retitle the window, plant hyperlinks (OSC 8), send device-control strings to the terminal or a
multiplexer (DCS, APC, PM, SOS), or make the terminal answer queries (device status, device
attributes, window reports, ENQ's answerback) so that the answer arrives on the reviewer's
standard input as if typed.

:class:`TerminalFilter` passes what draws a screen (text, line controls, cursor movement,
erasing, scrolling, colours and attributes, screen modes that do not report) and replaces every
other control sequence by a visible reverse-video marker such as ``⟦OSC 52⟧``, so a reviewer
sees that something was there and what kind it was. It is a state machine fed in chunks:
a sequence split across recorded events is judged whole. Over-long sequences are cut off
(``MAX_SEQUENCE``) and marked rather than buffered without bound.
"""

from __future__ import annotations

__all__ = ["TerminalFilter", "MAX_SEQUENCE"]

#: Longest control sequence or control string kept in memory; longer ones are dropped whole.
MAX_SEQUENCE = 4096

ESC = 0x1B
BEL = 0x07
#: C0 controls that only move the cursor or shift character sets. ESC starts a sequence.
_C0_PASS = frozenset(b"\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f")
#: CSI final bytes that draw: cursor motion, erase, insert/delete, scroll, SGR, margins,
#: save/restore cursor, tab stops, repeat.
_CSI_PASS_FINALS = frozenset(b"@ABCDEFGHIJKLMPSTXZ`abdefghlmrsu")
#: Private modes (CSI ? n h/l) that make the terminal report events on its own: X10 / normal /
#: button / any-event mouse, focus events, the extended mouse encodings. (Bracketed paste,
#: 2004, which every bash prompt sets, only wraps what the reviewer pastes: it passes.)
_REPORTING_MODES = frozenset(
    {"9", "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1015", "1016"}
)
#: ESC + one byte that pass: save/restore cursor, keypad modes, index, next line, tab set,
#: reverse index, full reset.
_ESC_PASS = frozenset(b"78=>DEHMc")
#: ESC + intermediate that takes one more byte: charset designation, DEC line attributes /
#: alignment test.
_ESC_TWO = frozenset(b"()*+-./#%")
#: ESC + byte that opens a control string, and its name.
_STRINGS = {ord("]"): "OSC", ord("P"): "DCS", ord("_"): "APC", ord("^"): "PM", ord("X"): "SOS"}

_GROUND, _ESCAPE, _ESC_ARG, _CSI, _STRING, _STRING_ESC, _C2, _DISCARD = range(8)

#: C1 controls (U+0080..U+009F, UTF-8 encoded; xterm and others obey them) that open a
#: sequence, as the 7-bit byte that follows ESC for the same sequence.
_C1_AS_ESC = {0x9B: ord("["), 0x9D: ord("]"), 0x90: ord("P"), 0x9E: ord("^"), 0x9F: ord("_")}
_C1_AS_ESC[0x98] = ord("X")


def _marker(name: str) -> bytes:
    return b"\x1b[7m\xe2\x9f\xa6" + name.encode("ascii", "replace") + b"\xe2\x9f\xa7\x1b[27m"


class TerminalFilter:
    """Filters one terminal's output stream; feed it the chunks in order."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._seq = bytearray()  # the sequence being collected (from its ESC)
        self._kind = ""  # the control string's name (OSC, DCS, ...)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        start = 0  # start of a run of plain text not yet copied
        for i, b in enumerate(data):
            if self._state == _GROUND:
                if (0x20 <= b < 0x7F or b in _C0_PASS or b >= 0x80) and b != 0xC2:
                    continue  # plain text: copied in runs
                out += data[start:i]
                self._ground(b, out)
            else:
                self._step(b, out)
            start = i + 1
        if self._state == _GROUND:
            out += data[start:]
        return bytes(out)

    def _ground(self, b: int, out: bytearray) -> None:
        """A byte in the ground state that is not plain text."""
        if b == ESC:
            self._begin(_ESCAPE)
        elif b == 0xC2:
            self._state = _C2
        elif b < 0x20 and b not in _C0_PASS:  # NUL, ENQ (answerback!), ... are dropped
            out += _marker(f"^{chr(b + 64)}")
        elif b != 0x7F:  # DEL, ignored by terminals, is dropped silently
            out.append(b)

    def _begin(self, state: int) -> None:
        self._state = state
        self._seq[:] = b"\x1b"

    def _step(self, b: int, out: bytearray) -> None:
        state = self._state
        if state == _C2:
            self._state = _GROUND
            if b in _C1_AS_ESC:
                self._begin(_ESCAPE)
                self._step(_C1_AS_ESC[b], out)
            elif 0x80 <= b <= 0x9F:
                out += _marker(f"C1 {b:#x}")
            else:  # an ordinary two-byte character, or a lone 0xC2: judged as usual
                out += b"\xc2"
                self._ground(b, out)
            return
        if state == _DISCARD:  # the rest of an over-long sequence, up to its end
            if b == ESC:
                self._begin(_ESCAPE)
            elif (b == BEL and self._kind == "OSC") or (self._kind == "CSI" and 0x40 <= b <= 0x7E):
                self._state = _GROUND
            return
        seq = self._seq
        seq.append(b)
        if len(seq) > MAX_SEQUENCE:
            out += _marker(f"{self._kind} cut: over {MAX_SEQUENCE} bytes")
            self._state = _DISCARD
            return
        if state == _ESCAPE:
            if b == ord("["):
                self._state, self._kind = _CSI, "CSI"
            elif b in _STRINGS:
                self._state, self._kind = _STRING, _STRINGS[b]
            elif b in _ESC_TWO:
                self._state = _ESC_ARG
            elif b == ESC:
                self._begin(_ESCAPE)
            elif b == ord("\\"):  # a string terminator with no string: nothing to do
                self._state = _GROUND
            else:
                out += seq if b in _ESC_PASS else _marker(f"ESC {_show(b)}")
                self._state = _GROUND
        elif state == _ESC_ARG:
            out += seq
            self._state = _GROUND
        elif state == _CSI:
            if 0x40 <= b <= 0x7E:
                out += seq if _csi_allowed(seq) else _marker(_csi_name(seq))
                self._state = _GROUND
            elif not 0x20 <= b <= 0x3F:  # a control inside CSI: the sequence is broken
                out += _marker("CSI broken")
                self._state = _GROUND
                if b == ESC:
                    self._begin(_ESCAPE)
        elif state == _STRING:
            if b == BEL and self._kind == "OSC":
                out += _marker(_string_name(self._kind, seq))
                self._state = _GROUND
            elif b == ESC:
                self._state = _STRING_ESC
        elif state == _STRING_ESC:  # ESC \ ends the string; ESC + anything else ends it too
            out += _marker(_string_name(self._kind, seq))
            self._begin(_ESCAPE)
            if b != ord("\\"):
                self._step(b, out)
            else:
                self._state = _GROUND


def _show(b: int) -> str:
    return chr(b) if 0x20 < b < 0x7F else f"{b:#x}"


#: CSI sequences with intermediates that only draw: cursor shape (DECSCUSR), soft reset.
_CSI_PASS_WITH_INTERMEDIATE = frozenset({b" q", b"!p"})
#: Finals allowed after a ``?`` (DEC private) prefix: modes, selective erase, XTSAVE/XTRESTORE.
#: Others with ``?`` are queries (``CSI ? u``, ``CSI ? 6 n``, ...) that the terminal answers.
_CSI_PRIVATE_FINALS = frozenset(b"hlJKsr")


def _csi_allowed(seq: bytearray) -> bool:
    final = seq[-1]
    params = bytes(seq[2:-1])
    inter = bytes(c for c in params if 0x20 <= c <= 0x2F)
    if inter:  # DECRQM, DECRQSS-like requests ... unless it only draws
        body = params[: params.index(inter[0])]
        drawing = inter + bytes([final]) in _CSI_PASS_WITH_INTERMEDIATE
        return drawing and (body == b"" or body.isdigit())
    if final not in _CSI_PASS_FINALS:
        return False
    if params.startswith(b"?"):
        if final not in _CSI_PRIVATE_FINALS:
            return False
        if final in b"hl":
            return not any(m in _REPORTING_MODES for m in params[1:].decode("ascii").split(";"))
        return True
    return not params.startswith((b">", b"=")) or final == ord("m")  # xterm key modifiers


def _csi_name(seq: bytearray) -> str:
    params = bytes(seq[2:-1]).decode("ascii", "replace")[:24]
    return f"CSI {params}{chr(seq[-1])}"


def _string_name(kind: str, seq: bytearray) -> str:
    if kind == "OSC":  # its number says what it does (52: clipboard, 8: hyperlink, ...)
        number = bytes(seq[2:10]).split(b";")[0]
        if number.isdigit():
            return f"OSC {number.decode()}"
    return kind
