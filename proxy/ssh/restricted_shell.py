"""The restricted shell the gateway serves when a grant has ``ssh.shell = false``.

Pure code, no I/O: :class:`LineEditor` turns the bytes an engineer types into echo bytes
and complete lines; :class:`RestrictedShell` judges one line at a time (built-ins, or
:func:`policy.commands.check_command`). ``proxy.ssh.server`` drives both and runs allowed
commands upstream, without a PTY.

Line editing, as in bash's emacs mode: Left/Right (and Ctrl-B/F), Home/End (and
Ctrl-A/E), Backspace, Delete, Ctrl-K (kill to end), Ctrl-U (kill to start), Ctrl-W (kill
the word before the cursor), Ctrl-C, Ctrl-D, Up/Down history, and Tab completion of what
the grant allows (built from the allowlist alone: nothing runs on the target; a second Tab
lists the choices). Escape sequences it does not know are swallowed whole so they can
never become part of a command.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from breakglass.policy.commands import CommandRules, CommandVerdict, check_command

#: A line longer than this is not kept (it would be refused as too long anyway).
MAX_LINE_CHARS = 8192
#: Type-ahead above this makes the server stop reading from the client until it drains
#: (flow control, never a drop: one SSH packet may carry 256 KiB at once).
MAX_PENDING_BYTES = 64 * 1024
HISTORY = 100

BEL = b"\x07"
CTRL_A = 0x01
CTRL_B = 0x02
CTRL_C = 0x03
CTRL_D = 0x04
CTRL_E = 0x05
CTRL_F = 0x06
TAB = 0x09
CTRL_K = 0x0B
CTRL_U = 0x15
CTRL_W = 0x17
ESC = 0x1B
BACKSPACES = (0x08, 0x7F)
ERASE_TO_END = b"\x1b[K"

#: Tab completion: (words before the cursor's word, the partial word) -> candidates
#: ``(text, complete)`` (see :meth:`policy.commands.CommandRules.completions`).
Completer = Callable[[Sequence[str], str], list[tuple[str, bool]]]

#: Final bytes (and "N~" codes) of the cursor keys the editor understands.
_KEYS = {
    b"A": "up",
    b"B": "down",
    b"C": "right",
    b"D": "left",
    b"H": "home",
    b"F": "end",
    b"1~": "home",
    b"7~": "home",
    b"4~": "end",
    b"8~": "end",
    b"3~": "delete",
}


def _columns(data: bytes | bytearray) -> int:
    """Characters in UTF-8 ``data`` (continuation bytes do not count)."""
    return sum(1 for b in data if not 0x80 <= b < 0xC0)


def _left(n: int) -> bytes:
    return b"\x1b[%dD" % n if n > 0 else b""


def _right(n: int) -> bytes:
    return b"\x1b[%dC" % n if n > 0 else b""


@dataclass(frozen=True)
class EditorEvent:
    """One thing the editor produced: ``echo`` bytes to show, a ``line``, ``interrupt``
    (Ctrl-C on the line being edited) or ``eof`` (Ctrl-D on an empty line)."""

    kind: str  # echo | line | interrupt | eof
    data: bytes = b""
    text: str = ""


class LineEditor:
    """Bytes in, :class:`EditorEvent` out. ``echo=False`` when the client has no terminal
    (then there is no cursor to move and no completion: Tab is just refused).

    ``prompt`` is redrawn after a completion listing; ``completer`` offers completions.
    """

    def __init__(
        self, *, echo: bool = True, prompt: bytes = b"", completer: Completer | None = None
    ) -> None:
        self.echo = echo
        self.prompt = prompt
        self.completer = completer
        self.buf = bytearray()
        self.pos = 0  # cursor, a byte offset at a character boundary
        self.pending = bytearray()
        self.overflow = False
        self.history: deque[bytes] = deque(maxlen=HISTORY)
        self._hist_pos = 0
        self._after_cr = False
        self._last_tab = False

    def feed(self, data: bytes) -> None:
        """Queue typed bytes (all of them); take events out with :meth:`next_events`. The
        caller stops reading while :attr:`backlogged`."""
        self.pending += data

    @property
    def backlogged(self) -> bool:
        return len(self.pending) > MAX_PENDING_BYTES

    def discard_pending(self) -> None:
        self.pending.clear()

    def next_events(self) -> list[EditorEvent]:
        """Consume queued bytes up to and including the next completed line (or interrupt /
        eof); returns the events, the last one being that line if there was one."""
        out: list[EditorEvent] = []
        echo = bytearray()
        i = 0
        p = self.pending
        n = len(p)
        stop: EditorEvent | None = None
        while i < n and stop is None:
            b = p[i]
            i += 1
            tab = False
            if b == 0x0A and self._after_cr:  # CR LF from a paste counts once
                self._after_cr = False
                continue
            self._after_cr = b == 0x0D
            if b in (0x0D, 0x0A):
                echo += _right(_columns(self.buf[self.pos :])) + b"\r\n"
                stop = self._take_line()
            elif b == CTRL_C:
                echo += _right(_columns(self.buf[self.pos :])) + b"^C\r\n"
                self._clear()
                stop = EditorEvent("interrupt")
            elif b == CTRL_D:
                if not self.buf:
                    stop = EditorEvent("eof")
                elif self.pos < len(self.buf):
                    self._delete(echo, self.pos, self._next(self.pos))
                else:
                    echo += BEL
            elif b in BACKSPACES:
                if self.pos > 0:
                    self._delete(echo, self._prev(self.pos), self.pos)
            elif b == CTRL_A:
                self._move(echo, 0)
            elif b == CTRL_E:
                self._move(echo, len(self.buf))
            elif b == CTRL_B:
                self._move(echo, self._prev(self.pos))
            elif b == CTRL_F:
                self._move(echo, self._next(self.pos))
            elif b == CTRL_K:
                self._delete(echo, self.pos, len(self.buf))
            elif b == CTRL_U:
                self._delete(echo, 0, self.pos)
            elif b == CTRL_W:
                start = self.pos
                while start > 0 and self.buf[start - 1] in (0x20, 0x09):
                    start -= 1
                while start > 0 and self.buf[start - 1] not in (0x20, 0x09):
                    start -= 1
                self._delete(echo, start, self.pos)
            elif b == TAB and self.echo and self.completer is not None:
                tab = True
                self._complete(echo)
            elif b == ESC:
                i = self._escape(p, i, n, echo)
            elif b < 0x20 or b == 0x7F:
                echo += BEL  # other controls: never part of a command
            else:
                if len(self.buf) >= MAX_LINE_CHARS:
                    self.overflow = True
                    continue
                self._insert(echo, bytes([b]))
            self._last_tab = tab
        del p[:i]
        if echo and self.echo:
            out.append(EditorEvent("echo", data=bytes(echo)))
        if stop is not None:
            out.append(stop)
        return out

    # -- editing primitives (each appends what the terminal must show to ``echo``)

    def _take_line(self) -> EditorEvent:
        line = bytes(self.buf)
        over = self.overflow
        self._clear()
        if line.strip():
            self.history.append(line)
        self._hist_pos = len(self.history)
        text = line.decode("utf-8", "surrogateescape")
        return EditorEvent("line", text="\x00overflow" if over else text)

    def _clear(self) -> None:
        self.buf.clear()
        self.pos = 0
        self.overflow = False

    def _prev(self, pos: int) -> int:
        """Start of the character before ``pos``."""
        pos = max(0, pos - 1)
        while pos > 0 and 0x80 <= self.buf[pos] < 0xC0:
            pos -= 1
        return pos

    def _next(self, pos: int) -> int:
        """Start of the character after ``pos``."""
        n = len(self.buf)
        pos = min(n, pos + 1)
        while pos < n and 0x80 <= self.buf[pos] < 0xC0:
            pos += 1
        return pos

    def _move(self, echo: bytearray, to: int) -> None:
        if to < self.pos:
            echo += _left(_columns(self.buf[to : self.pos]))
        else:
            echo += _right(_columns(self.buf[self.pos : to]))
        self.pos = to

    def _insert(self, echo: bytearray, data: bytes) -> None:
        tail = bytes(self.buf[self.pos :])
        self.buf[self.pos : self.pos] = data
        self.pos += len(data)
        echo += data + tail + _left(_columns(tail))

    def _delete(self, echo: bytearray, start: int, end: int) -> None:
        """Delete ``buf[start:end]`` and put the cursor at ``start``."""
        if start >= end:
            return
        self._move(echo, start)
        del self.buf[start:end]
        tail = bytes(self.buf[start:])
        echo += tail + ERASE_TO_END + _left(_columns(tail))

    def _replace(self, echo: bytearray, new: bytes) -> None:
        self._delete(echo, 0, len(self.buf))
        self._insert(echo, new)

    def _complete(self, echo: bytearray) -> None:
        """Tab: complete the word before the cursor from what the grant allows."""
        assert self.completer is not None
        head = self.buf[: self.pos].decode("utf-8", "replace")
        if any(c in head for c in "'\"\\") or (
            self.pos < len(self.buf) and self.buf[self.pos] != 0x20
        ):
            echo += BEL  # quoting, or the cursor inside a word: no guessing
            return
        words = head.split()
        partial = "" if not words or head[-1:].isspace() else words.pop()
        choices = self.completer(words, partial)
        if not choices:
            echo += BEL
            return
        texts = [t for t, _ in choices]
        common = texts[0]
        for t in texts[1:]:
            while not t.startswith(common):
                common = common[:-1]
        add = common[len(partial) :]
        if len(choices) == 1 and choices[0][1]:
            add += " "
        if add:
            self._insert(echo, add.encode())
        elif self._last_tab and len(choices) > 1:
            listing = "  ".join(texts).encode()
            tail = bytes(self.buf[self.pos :])
            echo += b"\r\n" + listing + b"\r\n" + self.prompt + bytes(self.buf)
            echo += _left(_columns(tail))
        else:
            echo += BEL

    def _escape(self, p: bytearray, i: int, n: int, echo: bytearray) -> int:
        """Handle one escape sequence starting after ESC at ``i``; swallow unknown ones."""
        if i >= n:
            return i
        if p[i] not in (ord("["), ord("O")):
            return i + 1  # ESC x (Alt-x): ignored
        j = i + 1
        while j < n and not (0x40 <= p[j] <= 0x7E):
            j += 1
        if j >= n:
            return n  # incomplete: drop it
        key = _KEYS.get(bytes(p[i + 1 : j + 1]))
        if key == "left":
            self._move(echo, self._prev(self.pos))
        elif key == "right":
            self._move(echo, self._next(self.pos))
        elif key == "home":
            self._move(echo, 0)
        elif key == "end":
            self._move(echo, len(self.buf))
        elif key == "delete":
            if self.pos < len(self.buf):
                self._delete(echo, self.pos, self._next(self.pos))
        elif key in ("up", "down") and self.history:
            if key == "up":
                self._hist_pos = max(0, self._hist_pos - 1)
            else:
                self._hist_pos = min(len(self.history), self._hist_pos + 1)
            entry = self.history[self._hist_pos] if self._hist_pos < len(self.history) else b""
            self._replace(echo, entry)
        return j + 1


@dataclass(frozen=True)
class ShellAction:
    """What to do with one line: ``noop``, ``output`` (show ``text``), ``exit``, ``deny``
    (show ``text``; ``verdict`` says why) or ``run`` (run ``verdict.command`` upstream)."""

    kind: str
    text: str = ""
    verdict: CommandVerdict | None = None


class RestrictedShell:
    """Judges restricted-shell lines against a grant's command rules."""

    BUILTINS = ("help", "exit")

    def __init__(self, rules: CommandRules, *, target: str, login: str) -> None:
        self.rules = rules
        self.target = target
        self.login = login

    @property
    def prompt(self) -> str:
        return f"{self.login}@{self.target} (breakglass)$ "

    def welcome(self, expires: str, minutes_left: int) -> str:
        return (
            f"breakglass restricted shell on {self.target} as {self.login}; "
            f"grant expires {expires} ({minutes_left} min left).\n"
            "Only the commands this grant allows can run; type 'help' to list them. "
            "This session is recorded.\n"
        )

    def help_text(self) -> str:
        lines = [f"Commands this grant allows on {self.target}:"]
        if self.rules.patterns:
            lines += [f"  {p}" for p in self.rules.patterns]
        else:
            lines.append("  (none)")
        lines += [
            "In a pattern, * and ? match within one argument (never '/'), DIR/** any path "
            "below DIR, and a trailing ... further arguments.",
            "No pipes, redirections, variables or wildcards: quote literal characters.",
            "Built-ins: help, exit. Tab completes what this grant allows; Ctrl-C interrupts "
            "a running command.",
        ]
        return "\n".join(lines) + "\n"

    def complete(self, words: Sequence[str], partial: str) -> list[tuple[str, bool]]:
        """Tab completion: built-ins and what the grant's patterns allow."""
        out = self.rules.completions(words, partial)
        if not words:
            out += [(b, True) for b in self.BUILTINS if b.startswith(partial)]
        return sorted(set(out))

    def handle_line(self, line: str) -> ShellAction:
        if line == "\x00overflow":
            return ShellAction(
                "deny",
                f"breakglass: denied: the line is too long (over {MAX_LINE_CHARS} characters)\n",
                CommandVerdict(allowed=False, rule="too-long", message="line too long"),
            )
        word = line.strip(" \t")
        if not word:
            return ShellAction("noop")
        if word in ("help", "?"):
            return ShellAction("output", self.help_text())
        if word in ("exit", "logout", "quit"):
            return ShellAction("exit")
        verdict = check_command(line, self.rules)
        if verdict.allowed:
            return ShellAction("run", verdict=verdict)
        return ShellAction("deny", f"breakglass: denied: {verdict.message}\n", verdict)


def to_crlf(data: bytes) -> bytes:
    """What a terminal's ONLCR would do: LF -> CR LF (for output of commands run without a
    PTY, shown on the engineer's terminal)."""
    if b"\n" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
