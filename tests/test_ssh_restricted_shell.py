"""The restricted shell's pure parts: line editor and line judging (no I/O)."""

from __future__ import annotations

from policy.commands import CommandRules
from proxy.ssh.restricted_shell import (
    MAX_LINE_CHARS,
    MAX_PENDING_BYTES,
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
    assert lines(ed, b"upt\x1b[Dime\x1b[3~\r") == ["uptime"]
    assert lines(ed, b"\x1b[A\r") == ["uptime"]  # Up recalls the last line
    assert lines(ed, b"echo \x1b[200~pasted\x1b[201~\r") == ["echo pasted"]


def test_editor_no_echo_without_terminal():
    ed = LineEditor(echo=False)
    assert run(ed, b"uptime\n") == [("line", "uptime")]


def test_editor_bounds():
    ed = LineEditor()
    (line,) = lines(ed, b"a" * (MAX_LINE_CHARS + 10) + b"\r")
    assert line == "\x00overflow"
    ed = LineEditor()
    ed.feed(b"x" * (MAX_PENDING_BYTES * 2))
    assert len(ed.pending) == MAX_PENDING_BYTES


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
