"""Replay gaps that could hide what happened: resizes and modes, the SSH timeline, sftp,
PostgreSQL casts, the gateway's own messages, --from past the end, the playback clock.

Screens are checked with xterm.js (@xterm/headless, run by node): what a reviewer's terminal
would show."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from breakglass.recorder.export import asciicast_lines
from breakglass.recorder.replay import (
    END_RESET,
    Player,
    load_events,
    render_timeline,
    ssh_timeline,
    terminal_frames,
)
from tests.conftest import _unavailable
from tests.test_index_helpers import Recorder, make_workdir, run_cli, write_pg_session

pytestmark = pytest.mark.timeout(30)


ROOT = Path(__file__).resolve().parent.parent
XTERM = ROOT / "console" / "node_modules" / "@xterm" / "headless"


@dataclass
class Screen:
    lines: list[str]
    scrollTop: int  # noqa: N815 - xterm.js names
    scrollBottom: int  # noqa: N815
    buffer: str
    cursorHidden: bool  # noqa: N815
    applicationCursorKeys: bool  # noqa: N815

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines)


def terminal(data: bytes, cols: int, rows: int) -> Screen:
    """Feed ``data`` to xterm.js and return its screen and modes."""
    if shutil.which("node") is None or not XTERM.is_dir():
        _unavailable("node and console/node_modules (cd console && npm ci) are needed")
    res = subprocess.run(
        ["node", str(ROOT / "tests" / "js" / "screen.js"), str(cols), str(rows)],
        input=data,
        capture_output=True,
        timeout=20,
        check=True,
    )
    return Screen(**json.loads(res.stdout))


def screen_after(frames, cols: int, rows: int, *, finish: bool = True) -> Screen:
    out = io.BytesIO()
    player = Player(frames, out, speed=1e9, sleep=lambda s: None)
    player.play()
    if finish:
        player.finish()
    return terminal(out.getvalue(), cols, rows)


def write_fullscreen_then_resize(rec: Recorder):
    """A 100x30 session runs a program with a status line (scroll region 1-29), the engineer
    enlarges the window to 120x35 (their terminal resets the region; the program exits without
    setting one), then runs more commands and logs out at the bottom of the bigger screen."""
    w = rec.open(protocol="ssh")
    w.event("pty", channel="0", term="xterm-256color", cols=100, rows=30)
    w.output(b"$ top\r\n\x1b[1;29r\x1b[H\x1b[2Jtop - 03:00 up 1 day\x1b[30;1Hstatus", "0")
    w.resize(120, 35)
    w.output(b"\x1b[35;1H\r\n", "0")
    for i in range(12):
        w.output(b"$ echo after-%d\r\nafter-%d\r\n" % (i, i), "0")
    w.output(b"$ logout\r\n", "0")
    w.close("client disconnected", commands=0, denials=0)
    return w.path


def test_recorded_resize_is_honoured_so_the_last_commands_stay_visible(tmp_path):
    rec = Recorder(tmp_path / "r")
    events = load_events(write_fullscreen_then_resize(rec))
    text = screen_after(terminal_frames(events), 120, 35).text
    assert "after-11" in text and "after-10" in text and "logout" in text, text
    # what replay did before resizes were honoured: everything piled up on the bottom line
    old = terminal(b"".join(f.data for f in terminal_frames(events) if f.kind != "r"), 120, 35)
    assert "after-10" not in old.text


def test_end_of_replay_resets_scroll_region_and_modes(tmp_path):
    """The session ends inside a full-screen program (killed at expiry): the reviewer's
    terminal gets its scroll region, cursor and keypad back, the last screen stays drawn."""
    rec = Recorder(tmp_path / "r")
    w = rec.open(protocol="ssh")
    w.event("pty", channel="0", term="xterm", cols=80, rows=24)
    w.output(b"\x1b[?1049h\x1b[?25l\x1b[5;20r\x1b[7mvim-ish screen\x1b[?1h\x1b=", "0")
    w.close("grant expired", commands=0, denials=0)
    frames = terminal_frames(load_events(w.path))
    left_set = screen_after(frames, 80, 24, finish=False)
    assert (left_set.scrollTop, left_set.scrollBottom) == (4, 19)  # what the bug left behind
    assert left_set.cursorHidden and left_set.applicationCursorKeys
    assert left_set.buffer == "alternate"
    screen = screen_after(frames, 80, 24)
    assert (screen.scrollTop, screen.scrollBottom) == (0, 23)
    assert not screen.cursorHidden and not screen.applicationCursorKeys
    assert screen.buffer == "normal"
    assert END_RESET.endswith(b"\r\n")


def test_scroll_regions_are_clamped_to_a_smaller_terminal(tmp_path):
    rec = Recorder(tmp_path / "r")
    w = rec.open(protocol="ssh")
    w.event("pty", channel="0", term="xterm", cols=120, rows=35)
    w.output(b"\x1b[1;34r\x1b[H" + b"".join(b"row %d\r\n" % i for i in range(40)), "0")
    w.output(b"\x1b[36;40r\x1b[2;10r", "0")
    w.close("client disconnected", commands=0, denials=0)
    out = b"".join(f.data for f in terminal_frames(load_events(w.path), viewer_rows=30))
    assert b"\x1b[1;30r" in out and b"\x1b[1;34r" not in out
    assert b"\x1b[36;40r" not in out and b"\x1b[2;10r" in out  # fits: unchanged


def test_playback_clock_reports_progress_to_the_end(tmp_path):
    rec = Recorder(tmp_path / "r")
    events = load_events(write_fullscreen_then_resize(rec))
    frames = terminal_frames(events)
    for i, f in enumerate(frames):  # spread over 6 s of playback
        f.vt = f.offset = i * 6 / len(frames)
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    ticks: list[tuple[float, float]] = []
    Player(
        frames,
        io.BytesIO(),
        clock=lambda: now[0],
        sleep=sleep,
        on_progress=lambda pos, length: ticks.append((pos, length)),
    ).play()
    positions = [p for p, _ in ticks]
    assert positions == sorted(positions) and len(ticks) >= 8
    assert ticks[-1][0] == ticks[-1][1] == frames[-1].vt


def test_replay_from_past_the_end_says_so(tmp_path, capsys):
    cfg = make_workdir(tmp_path / "wd")
    path = write_fullscreen_then_resize(Recorder.for_config(cfg))
    c = str(tmp_path / "wd" / "config.toml")
    assert run_cli(["-c", c, "replay", path.stem, "--from", "10m"]) != 0
    err = capsys.readouterr().err
    assert "past the end" in err and path.stem in err


def test_postgres_export_as_asciicast_renders_the_statement_timeline(tmp_path, capsys):
    cfg = make_workdir(tmp_path / "wd")
    w = Recorder.for_config(cfg)
    path = write_pg_session(w)
    c = str(tmp_path / "wd" / "config.toml")
    capsys.readouterr()
    assert run_cli(["-c", c, "export", path.stem, "--format", "asciicast"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = json.loads(lines[0])
    assert head["version"] == 2
    text = "".join(json.loads(x)[2] for x in lines[1:])
    for needle in ("select count(*) from orders", "DENIED", "delete from orders", "22012"):
        assert needle in text, text


def write_ssh_activity(rec: Recorder):
    w = rec.open(protocol="ssh")
    w.decision(kind="exec", channel="0", allowed=True, text="uptime", pattern="uptime")
    w.output(b"up 3 days\n", "0")
    w.event("exit", channel="0", status=0, signal=None)
    w.decision(kind="shell", channel="1", allowed=True, text="df -h", pattern="df *")
    w.decision(kind="shell", channel="1", allowed=False, text="rm -rf /", rule="", message="no")
    w.decision(kind="subsystem", channel="2", allowed=True, text="sftp")
    w.output(b"\x00\x00\x00\x05\x02\x00\x00\x00\x03", "2")  # sftp protocol bytes
    w.event("sftp", channel="2", op="remove", path="/etc/app.conf", status="ok")
    w.event("sftp", channel="2", op="open", path="/x", flags="read", status="error", error="nope")
    w.event("warn", seconds_left=60.0)
    w.event("terminate", reason="expired", message="grant expired at 2026-12-01 03:00:00Z")
    w.close("grant expired", commands=2, denials=1)
    return w.path


def test_ssh_timeline_lists_commands_shell_lines_sftp_denials_and_gateway_messages(tmp_path):
    events = load_events(write_ssh_activity(Recorder(tmp_path / "r")))
    tl = ssh_timeline(events)
    assert [e.what for e in tl] == [
        "command",
        "exit",
        "command",
        "denied",
        "command",
        "sftp",
        "sftp",
        "gateway",
        "terminate",
        "end",
    ]
    text = render_timeline(tl)
    for needle in (
        "exec  uptime",
        "shell line  df -h",
        "DENIED  shell line",
        "rm -rf /",
        "sftp  remove /etc/app.conf: ok",
        "sftp  open /x (read): error (nope)",
        "expiry warning",
        "grant expired at",
    ):
        assert needle in text, text


def test_sftp_replays_as_operations_not_protocol_bytes(tmp_path):
    events = load_events(write_ssh_activity(Recorder(tmp_path / "r")))
    out = b"".join(f.data for f in terminal_frames(events))
    assert b"\x00\x00\x00\x05" not in out
    assert b"sftp remove /etc/app.conf: ok" in out
    cast = "".join(asciicast_lines(events))
    assert "sftp remove /etc/app.conf: ok" in cast and "\\u0000" not in cast


def test_timeline_text_cannot_drive_the_reviewers_terminal(tmp_path):
    rec = Recorder(tmp_path / "r")
    w = rec.open(protocol="ssh")
    w.decision(
        kind="exec", channel="0", allowed=False, text="x\x1b]52;c;aGk=\x07", message="\x1b[2J"
    )
    w.close("client disconnected", commands=0, denials=1)
    text = render_timeline(ssh_timeline(load_events(w.path)))
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]52" in text
