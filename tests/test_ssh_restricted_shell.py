"""The restricted shell's pure parts: line editor and line judging (no I/O)."""

from __future__ import annotations

import pytest

from breakglass.policy.commands import CommandRules
from breakglass.proxy.ssh.restricted_shell import (
    MAX_LINE_CHARS,
    MAX_PENDING_BYTES,
    EditorEvent,
    LineEditor,
    RestrictedShell,
    to_crlf,
)


def run(editor: LineEditor, data: bytes) -> list[tuple[str, bytes | str]]:
    editor.feed(data)
    out = []
    while events := editor.next_events():
        out += [(e.kind, e.data if e.kind == "echo" else e.text) for e in events]
    return out


def lines(editor: LineEditor, data: bytes) -> list[str]:
    return [t for k, t in run(editor, data) if k == "line"]


def test_editor_lines_and_echo():
    ed = LineEditor()
    assert run(ed, b"uptime\r") == [("echo", b"uptime\r\n"), ("line", "uptime")]
    assert lines(ed, b"a\r\nb\nc\r") == ["a", "b", "c"]  # CR LF counts once


def test_editor_one_line_per_call_keeps_type_ahead():
    ed = LineEditor()
    ed.feed(b"first\rsecond\r")
    assert [e.text for e in ed.next_events() if e.kind == "line"] == ["first"]
    assert bytes(ed.pending) == b"second\r"


def test_editor_erasing():
    ed = LineEditor()
    assert lines(ed, b"uptimX\x7fe\r") == ["uptime"]
    assert lines(ed, b"rm -rf /\x15uptime\r") == ["uptime"]  # Ctrl-U
    assert lines(ed, b"echo foo bar\x17baz\r") == ["echo foo baz"]  # Ctrl-W
    assert lines(ed, "caf\u00e9\x7f\x7fe\r".encode()) == ["cae"]  # a UTF-8 char erases whole


def test_editor_ctrl_c_ctrl_d_and_controls():
    ed = LineEditor()
    assert run(ed, b"rm -rf\x03") == [("echo", b"rm -rf^C\r\n"), ("interrupt", "")]
    assert run(ed, b"\x04") == [("eof", "")]
    assert lines(ed, b"x\x04y\r") == ["xy"]  # Ctrl-D on a non-empty line: ignored
    assert lines(ed, b"ls\t-la\x01\r") == ["ls-la"]  # tab and controls never enter a line


def test_editor_swallows_escape_sequences_and_history():
    ed = LineEditor()
    assert lines(ed, b"uptime\x1b[15~\x1bx\x1b[1;5P\r") == ["uptime"]  # F5, Alt-x, ...
    assert lines(ed, b"\x1b[A\r") == ["uptime"]  # Up recalls the last line
    assert lines(ed, b"echo \x1b[200~pasted\x1b[201~\r") == ["echo pasted"]


LEFT, RIGHT, HOME, END, DELETE = b"\x1b[D", b"\x1b[C", b"\x1b[H", b"\x1b[F", b"\x1b[3~"


@pytest.mark.parametrize(
    "keys,line",
    [
        (b"uptme" + LEFT * 2 + b"i", "uptime"),
        (b"ptime" + HOME + b"u", "uptime"),
        (b"ptime\x01u", "uptime"),  # Ctrl-A
        (b"uptim" + HOME + b"\x05e", "uptime"),  # Ctrl-E
        (b"uptim" + HOME + END + b"e", "uptime"),
        (b"uptim" + b"\x1bOH" + b"\x1bOF" + b"e", "uptime"),  # application-mode Home/End
        (b"uptim" + b"\x1b[1~" + b"\x1b[4~" + b"e", "uptime"),  # vt220 Home/End
        (b"upXtime" + LEFT * 4 + b"\x7f", "uptime"),  # Backspace in the middle
        (b"upXtime" + LEFT * 5 + DELETE, "uptime"),
        (b"upXtime" + LEFT * 5 + b"\x04", "uptime"),  # Ctrl-D deletes under the cursor
        (b"uptime; rm -rf /" + LEFT * 10 + b"\x0b", "uptime"),  # Ctrl-K
        (b"rm -rf uptime" + LEFT * 6 + b"\x15", "uptime"),  # Ctrl-U kills to the start
        (b"rm -rf uptime" + LEFT * 6 + b"\x17\x17", "uptime"),  # Ctrl-W twice
        (b"uptime" + LEFT * 10 + RIGHT * 10 + b"!" + b"\x7f", "uptime"),  # clamped moves
        ("caf\u00e9s".encode() + LEFT + b"\x7fe", "cafes"),  # characters, not bytes
    ],
)
def test_editor_cursor_keys(keys, line):
    ed = LineEditor()
    assert lines(ed, keys + b"\r") == [line]


def test_editor_echo_moves_the_terminal_cursor():
    ed = LineEditor()
    ed.feed(b"uptme" + LEFT * 2)
    ed.next_events()
    ed.feed(b"i")
    # insert redraws the tail and moves back over it
    assert ed.next_events() == [EditorEvent("echo", data=b"ime\x1b[2D")]
    ed.feed(b"\x0b")  # Ctrl-K: erase to the end of the terminal line
    assert ed.next_events() == [EditorEvent("echo", data=b"\x1b[K")]
    ed.feed(HOME + b"\r")
    assert ed.next_events() == [
        EditorEvent("echo", data=b"\x1b[4D\x1b[4C\r\n"),
        EditorEvent("line", text="upti"),
    ]


RULES = CommandRules(
    (
        "uptime",
        "cat /var/log/app/*",
        "journalctl -u app -n *",
        "journalctl -u web -n *",
        "systemctl status app",
    )
)


def completing(keys: bytes) -> tuple[str, bytes]:
    sh = RestrictedShell(RULES, target="web-1", login="deploy")
    ed = LineEditor(prompt=sh.prompt.encode(), completer=sh.complete)
    ed.feed(keys)
    echo = b"".join(e.data for e in ed.next_events() if e.kind == "echo")
    return ed.buf.decode(), echo


def test_tab_completes_what_the_grant_allows():
    assert completing(b"upt\t") == ("uptime ", b"uptime ")
    assert completing(b"cat \t")[0] == "cat /var/log/app/"  # the literal start of a glob
    assert completing(b"journalctl \t")[0] == "journalctl -u "
    assert completing(b"journalctl -u \t") == ("journalctl -u ", b"journalctl -u \x07")
    assert completing(b"journalctl -u w\t")[0] == "journalctl -u web "
    assert completing(b"sys\tst\t")[0] == "systemctl status "
    assert completing(b"he\t")[0] == "help "  # built-ins too
    # nothing to offer: the bell, and the line is unchanged
    assert completing(b"rm \t") == ("rm ", b"rm \x07")
    assert completing(b"cat /etc/\t")[0] == "cat /etc/"
    assert completing(b"echo 'up\t")[0] == "echo 'up"  # never guesses inside quotes


def test_second_tab_lists_the_choices_and_redraws_the_line():
    line, echo = completing(b"journalctl -u \t\t")
    assert line == "journalctl -u "
    assert echo.endswith(b"\x07\r\napp  web\r\ndeploy@web-1 (breakglass)$ journalctl -u ")


def test_tab_without_terminal_is_not_completion():
    sh = RestrictedShell(RULES, target="web-1", login="deploy")
    ed = LineEditor(echo=False, completer=sh.complete)
    assert lines(ed, b"upt\t\n") == ["upt"]


def test_editor_no_echo_without_terminal():
    ed = LineEditor(echo=False)
    assert run(ed, b"uptime\n") == [("line", "uptime")]


def test_editor_bounds():
    ed = LineEditor()
    (line,) = lines(ed, b"a" * (MAX_LINE_CHARS + 10) + b"\r")
    assert line == "\x00overflow"
    # type-ahead is never dropped: past the mark the caller stops reading (flow control)
    ed = LineEditor()
    ed.feed(b"x" * MAX_PENDING_BYTES)
    assert not ed.backlogged
    ed.feed(b"\rx" * MAX_PENDING_BYTES)
    assert ed.backlogged and len(ed.pending) == 3 * MAX_PENDING_BYTES
    assert lines(ed, b"\r").count("x") == MAX_PENDING_BYTES


def test_shell_judges_lines():
    sh = RestrictedShell(
        CommandRules(("uptime", "cat /var/log/app/*")), target="web-1", login="deploy"
    )
    assert sh.prompt == "deploy@web-1 (breakglass)$ "
    assert sh.handle_line("   ").kind == "noop"
    help_ = sh.handle_line("help")
    assert help_.kind == "output" and "cat /var/log/app/*" in help_.text
    assert sh.handle_line("exit").kind == "exit"
    run_ = sh.handle_line("cat /var/log/app//x.log")
    assert run_.kind == "run" and run_.verdict.command == "cat /var/log/app/x.log"
    deny = sh.handle_line("uptime; id")
    assert deny.kind == "deny" and deny.text.startswith("breakglass: denied: ")
    assert sh.handle_line("\x00overflow").kind == "deny"


def test_to_crlf():
    assert to_crlf(b"a\nb\r\nc") == b"a\r\nb\r\nc"
    assert to_crlf(b"plain") == b"plain"
