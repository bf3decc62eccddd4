"""Replay's terminal filter: screen drawing passes byte for byte; sequences that would act on
the reviewer's terminal (clipboard, title, links, queries, device control) become markers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from breakglass.recorder.export import asciicast_lines
from breakglass.recorder.replay import load_events, terminal_frames
from breakglass.recorder.term_filter import MAX_SEQUENCE, TerminalFilter
from tests.test_index_helpers import Recorder, make_workdir

DRAWING = [
    b"total 8\r\n\x1b[0m\x1b[01;34mlogs\x1b[0m  \x1b[01;32memit.sh\x1b[0m\r\n",  # ls --color
    b"\x1b[?1049h\x1b[22;0;0t"[:8] + b"\x1b[1;24r\x1b[H\x1b[2J\x1b[?25l",  # vim: alt screen ...
    b"\x1b[38;5;208morange\x1b[48;2;10;20;30mtruecolor\x1b[m\x1b[K",
    b"\x1b(0lqqk\x1b(B\x1b)0\x0e\x0f\x1b7\x1b[5;10H\x1b8\x1b=\x1b>\x1bM\x1bD\x1bE\x1bH\x1b#8",
    b"\x1b[3@\x1b[2P\x1b[4L\x1b[1M\x1b[2X\x1b[3S\x1b[1T\x1b[10G\x1b[5d\x1b[3g\x1b[2b\x1b[Z",
    b"\x1b[?1h\x1b[?7l\x1b[4h\x1b[4l\x1b[?2004h\x1b[?2004l\x1b[s\x1b[u\x1b[>4;2m\x1bc",
    b"\x1b[2 q\x1b[ q\x1b[!p\x1b[?1J\x1b[?25s\x1b[?25r",  # cursor shape, soft reset, XTSAVE
    "caf\u00e9 \u00b0C \u2713 \u00a0nbsp \U0001f600\ttab\x08\x07\r\n".encode(),
]

ATTACKS = [  # (bytes, the marker that must replace them)
    (b"\x1b]52;c;cm0gLXJmIH4K\x07", "OSC 52"),  # write the reviewer's clipboard (BEL)
    (b"\x1b]52;c;cm0gLXJmIH4K\x1b\\", "OSC 52"),  # ... (ST)
    (b"\x1b]0;pwned\x07", "OSC 0"),  # window title
    (b"\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "OSC 8"),  # hidden link
    (b"\x1b]10;?\x07", "OSC 10"),  # colour query: the terminal answers on stdin
    (b"\x1bP$qm\x1b\\", "DCS"),  # DECRQSS: answered on stdin
    (b"\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\", "DCS"),  # tmux passthrough to the outer terminal
    (b"\x1b_Gf=100;AAAA\x1b\\", "APC"),  # kitty graphics / APC
    (b"\x1b^private\x1b\\", "PM"),
    (b"\x1bXstring\x1b\\", "SOS"),
    (b"\x1b[6n", "CSI 6n"),  # cursor position report
    (b"\x1b[c", "CSI c"),  # device attributes
    (b"\x1b[>0c", "CSI >0c"),
    (b"\x1b[21t", "CSI 21t"),  # report window title
    (b"\x1b[14t", "CSI 14t"),
    (b"\x1b[?1000h", "CSI ?1000h"),  # mouse reporting
    (b"\x1b[?1049;1004h", "CSI ?1049;1004h"),  # focus reporting hidden beside a harmless mode
    (b"\x1b[?2026$p", "CSI ?2026$p"),  # DECRQM
    (b"\x1b[5i", "CSI 5i"),  # media copy: to the printer
    (b"\x1b[?u", "CSI ?u"),  # kitty keyboard flags query
    (b"\x1b[?6n", "CSI ?6n"),  # DEC cursor position report
    (b"\x1b[?4m", "CSI ?4m"),  # modifier-keys query
    (b"\x1b[1$w", "CSI 1$w"),  # DECRQPSR
    (b"\x05", "^E"),  # ENQ: answerback
    (b"\x00", "^@"),
    (b"\x1bZ", "ESC Z"),  # DECID
    (b"\xc2\x9b6n", "CSI 6n"),  # C1 CSI encoded in UTF-8 (xterm obeys it)
    (b"\xc2\x9d52;c;eA==\x07", "OSC 52"),  # C1 OSC
    (b"\xc2\x85", "C1 0x85"),  # NEL as C1
]


def marker(name: str) -> bytes:
    return b"\x1b[7m\xe2\x9f\xa6" + name.encode() + b"\xe2\x9f\xa7\x1b[27m"


def feed_all(chunks) -> bytes:
    f = TerminalFilter()
    return b"".join(f.feed(c) for c in chunks)


def test_drawing_passes_byte_for_byte():
    for chunk in DRAWING:
        assert feed_all([chunk]) == chunk, chunk
    whole = b"".join(DRAWING)
    assert feed_all([whole[i : i + 1] for i in range(len(whole))]) == whole  # any split


@pytest.mark.parametrize("attack,name", ATTACKS, ids=[a[1] for a in ATTACKS])
def test_acting_sequences_become_markers(attack, name):
    out = feed_all([b"before", attack, b"after"])
    assert out.startswith(b"before" + marker(name)), out
    assert out.endswith(b"after")
    if b"tmux;" in attack:  # the string ends at the inner ESC, which opens an OSC of its own
        assert out == b"before" + marker("DCS") + marker("OSC 52") + b"after", out
    elif b"click" not in attack:  # OSC 8 keeps its visible link text
        assert out == b"before" + marker(name) + b"after", out
    for bad in (b"\x1b]", b"\x1bP", b"\x1b_", b"\x1b^", b"\x1bX", b"\x05", b"\xc2\x9b", b"52;"):
        assert bad not in out.replace(marker(name), b""), (name, out)


def test_split_anywhere_is_judged_the_same():
    stream = b"".join(a for a, _ in ATTACKS) + b"".join(DRAWING)
    whole = feed_all([stream])
    for size in (1, 2, 3, 7, 64):
        assert feed_all([stream[i : i + size] for i in range(0, len(stream), size)]) == whole


def test_overlong_and_broken_sequences_do_not_swallow_output():
    out = feed_all([b"\x1b]52;c;" + b"A" * (MAX_SEQUENCE + 10), b"\x07visible"])
    assert out == marker(f"OSC cut: over {MAX_SEQUENCE} bytes") + b"visible"
    out = feed_all([b"\x1b[" + b"1;" * MAX_SEQUENCE + b"mvisible"])
    assert out == marker(f"CSI cut: over {MAX_SEQUENCE} bytes") + b"visible"
    assert feed_all([b"\x1b[12\x07;3Hvisible"]) == marker("CSI broken") + b";3Hvisible"


def test_random_bytes_never_reach_the_terminal_as_acting_sequences():
    rnd = random.Random(7)
    alphabet = b"\x1b\x07\x05\x00\xc2\x9b\x9d[]P_^X;?0123456789cnthlm$ \\abc"
    for _ in range(300):
        data = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 400)))
        out = feed_all([data[i : i + 5] for i in range(0, len(data), 5)])
        plain = out.replace(b"\x1b[7m", b"").replace(b"\x1b[27m", b"")
        for bad in (b"\x1b]", b"\x1bP", b"\x1b_", b"\x1b^", b"\x1bX", b"\x05", b"\xc2\x9b"):
            assert bad not in plain, (data, out)
        for final in b"nct":  # no query / report sequence survives
            assert not any(
                p.endswith(bytes([final])) and p.startswith(b"\x1b[") for p in _csis(plain)
            ), (data, out)


def _csis(data: bytes) -> list[bytes]:
    out, i = [], 0
    while (i := data.find(b"\x1b[", i)) >= 0:
        j = i + 2
        while j < len(data) and 0x20 <= data[j] <= 0x3F:
            j += 1
        out.append(data[i : j + 1])
        i = j
    return out


def test_replay_and_export_filter_unless_raw(tmp_path):
    cfg = make_workdir(tmp_path / "bg")
    w = Recorder.for_config(cfg).open(protocol="ssh")
    w.output(b"$ cat notes\r\n\x1b]52;c;cm0gLXJmIH4K", "0")  # split across two events
    w.output(b"\x07done\r\n", "0")
    w.close("client disconnected")
    events = load_events(w.path)
    shown = b"".join(f.data for f in terminal_frames(events))
    assert shown == b"$ cat notes\r\n" + marker("OSC 52") + b"done\r\n"
    raw = b"".join(f.data for f in terminal_frames(events, raw=True))
    assert raw == b"$ cat notes\r\n\x1b]52;c;cm0gLXJmIH4K\x07done\r\n"
    cast = [json.loads(x) for x in list(asciicast_lines(events))[1:]]
    assert "".join(e[2] for e in cast) == "$ cat notes\r\n\x1b[7m⟦OSC 52⟧\x1b[27mdone\r\n"
    cast = [json.loads(x) for x in list(asciicast_lines(events, raw=True))[1:]]
    assert "\x1b]52;" in "".join(e[2] for e in cast)

    script = (
        "import sys; from tests.test_index_helpers import run_cli; sys.exit(run_cli(sys.argv[1:]))"
    )
    root = Path(__file__).resolve().parent.parent
    sid = w.header["session_id"]
    for extra, want in (([], marker("OSC 52")), (["--raw"], b"\x1b]52;c;")):
        res = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                "-c",
                str(cfg.path),
                "replay",
                sid,
                "--speed",
                "64",
                *extra,
            ],
            cwd=root,
            capture_output=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert want in res.stdout and (bool(extra) == (b"\x1b]52" in res.stdout))
