"""The restricted shell the gateway serves when a grant has ``ssh.shell = false``.

Pure code, no I/O: :class:`LineEditor` turns the bytes an engineer types into echo bytes
and complete lines; :class:`RestrictedShell` judges one line at a time (built-ins, or
:func:`policy.commands.check_command`). ``proxy.ssh.server`` drives both and runs allowed
commands upstream, without a PTY.

Deliberately small: insert at the end of the line, Backspace, Ctrl-U, Ctrl-W, Ctrl-C,
Ctrl-D, Ctrl-L, Up/Down history. Escape sequences it does not know are swallowed whole so
they can never become part of a command.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from policy.commands import CommandRules, CommandVerdict, check_command

#: A line longer than this is not kept (it would be refused as too long anyway).
MAX_LINE_CHARS = 8192
#: Type-ahead kept while a command runs.
MAX_PENDING_BYTES = 64 * 1024
HISTORY = 100

BEL = b"\x07"
CTRL_C = 0x03
CTRL_D = 0x04
CTRL_U = 0x15
CTRL_W = 0x17
ESC = 0x1B
BACKSPACES = (0x08, 0x7F)


@dataclass(frozen=True)
class EditorEvent:
    """One thing the editor produced: ``echo`` bytes to show, a ``line``, ``interrupt``
    (Ctrl-C on the line being edited) or ``eof`` (Ctrl-D on an empty line)."""

    kind: str  # echo | line | interrupt | eof
    data: bytes = b""
    text: str = ""


class LineEditor:
    """Bytes in, :class:`EditorEvent` out. ``echo=False`` when the client has no terminal."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.buf = bytearray()
        self.pending = bytearray()
        self.overflow = False
        self.history: deque[bytes] = deque(maxlen=HISTORY)
        self._hist_pos = 0
        self._after_cr = False

    def feed(self, data: bytes) -> None:
        """Queue typed bytes; take events out with :meth:`next_events`."""
        room = MAX_PENDING_BYTES - len(self.pending)
        if room > 0:
            self.pending += data[:room]

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
            if b == 0x0A and self._after_cr:  # CR LF from a paste counts once
                self._after_cr = False
                continue
            self._after_cr = b == 0x0D
            if b in (0x0D, 0x0A):
                echo += b"\r\n"
                line = bytes(self.buf)
                over = self.overflow
                self.buf.clear()
                self.overflow = False
                if line.strip():
                    self.history.append(line)
                self._hist_pos = len(self.history)
                text = line.decode("utf-8", "surrogateescape")
                if over:
                    text = "\x00overflow"
                stop = EditorEvent("line", text=text)
            elif b == CTRL_C:
                echo += b"^C\r\n"
                self.buf.clear()
                self.overflow = False
                stop = EditorEvent("interrupt")
            elif b == CTRL_D:
                if not self.buf:
                    stop = EditorEvent("eof")
                else:
                    echo += BEL
            elif b in BACKSPACES:
                if self.buf:
                    self._erase(echo, 1)
            elif b == CTRL_U:
                self._erase(echo, len(self.buf))
            elif b == CTRL_W:
                while self.buf and self.buf[-1] == 0x20:
                    self._erase(echo, 1)
                while self.buf and self.buf[-1] != 0x20:
                    self._erase(echo, 1)
            elif b == ESC:
                i = self._escape(p, i, n, echo)
            elif b < 0x20 or b == 0x7F:
                echo += BEL  # tab and other controls: not part of a command
            else:
                if len(self.buf) >= MAX_LINE_CHARS:
                    self.overflow = True
                    continue
                self.buf.append(b)
                echo.append(b)
        del p[:i]
        if echo and self.echo:
            out.append(EditorEvent("echo", data=bytes(echo)))
        if stop is not None:
            out.append(stop)
        return out

    def _erase(self, echo: bytearray, count: int) -> None:
        """Erase ``count`` characters (a UTF-8 character's bytes go together)."""
        erased = 0
        while erased < count and self.buf:
            while len(self.buf) > 1 and 0x80 <= self.buf[-1] < 0xC0:
                self.buf.pop()
            self.buf.pop()
            erased += 1
        echo += b"\b \b" * erased

    def _replace(self, echo: bytearray, new: bytes) -> None:
        self._erase(echo, len(self.buf))
        self.buf[:] = new
        echo += new

    def _escape(self, p: bytearray, i: int, n: int, echo: bytearray) -> int:
        """Swallow one escape sequence starting after ESC at ``i``; handle Up/Down."""
        if i >= n:
            return i
        if p[i] in (ord("["), ord("O")):
            j = i + 1
            while j < n and not (0x40 <= p[j] <= 0x7E):
                j += 1
            if j >= n:
                return n  # incomplete: drop it
            final = p[j]
            if j == i + 1 and final in (ord("A"), ord("B")) and self.history:
                if final == ord("A"):
                    self._hist_pos = max(0, self._hist_pos - 1)
                else:
                    self._hist_pos = min(len(self.history), self._hist_pos + 1)
                entry = self.history[self._hist_pos] if self._hist_pos < len(self.history) else b""
                self._replace(echo, entry)
            return j + 1
        return i + 1  # ESC x (Alt-x): ignored


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
            "Built-ins: help, exit. Ctrl-C interrupts a running command.",
        ]
        return "\n".join(lines) + "\n"

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
