"""Export: asciicast v2 that the real asciinema plays; JSON lines of statements and commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from breakglass.recorder.export import asciicast_lines, jsonl_lines
from breakglass.recorder.replay import load_events
from tests.test_index_helpers import (
    PG_STATEMENTS,
    SHELL_OUTPUT,
    Recorder,
    write_exec_session,
    write_pg_session,
    write_shell_session,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rec(tmp_path):
    return Recorder(tmp_path / "recordings")


def asciinema() -> list[str]:
    exe = shutil.which("asciinema")
    if exe:
        return [exe]
    pytest.importorskip("asciinema")
    return [sys.executable, "-m", "asciinema"]


EXPECTED_TEXT = b"".join(SHELL_OUTPUT).decode("utf-8", "replace")


def test_asciicast_is_valid_v2(rec, tmp_path):
    lines = list(asciicast_lines(load_events(write_shell_session(rec))))
    head = json.loads(lines[0])
    assert head["version"] == 2 and (head["width"], head["height"]) == (100, 30)
    assert head["env"]["TERM"] == "xterm-256color"
    events = [json.loads(x) for x in lines[1:]]
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert "".join(e[2] for e in events if e[1] == "o") == EXPECTED_TEXT
    assert "\u2713" in EXPECTED_TEXT  # the split character came out whole
    assert [e[2] for e in events if e[1] == "r"] == ["120x40"]
    assert not [e for e in events if e[1] == "i"]


def test_asciicast_input_events_on_request(rec):
    lines = list(asciicast_lines(load_events(write_shell_session(rec)), include_input=True))
    typed = "".join(json.loads(x)[2] for x in lines[1:] if json.loads(x)[1] == "i")
    assert typed == "cat /etc/motd\rexit\r"


def test_asciinema_plays_the_export(rec, tmp_path):
    cast = tmp_path / "session.cast"
    cast.write_text("\n".join(asciicast_lines(load_events(write_shell_session(rec)))) + "\n")
    cat = subprocess.run(
        [*asciinema(), "cat", str(cast)], capture_output=True, timeout=20, stdin=subprocess.DEVNULL
    )
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == EXPECTED_TEXT.encode()
    play = subprocess.run(
        [*asciinema(), "play", "-s", "50", "-i", "0.01", str(cast)],
        capture_output=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )
    assert play.returncode == 0, play.stderr
    assert play.stdout == EXPECTED_TEXT.encode()


def test_jsonl_statements_match_what_ran(rec):
    recs = [json.loads(x) for x in jsonl_lines(load_events(write_pg_session(rec)))]
    assert recs[0]["type"] == "session" and recs[0]["protocol"] == "postgres"
    stmts = [r for r in recs if r["type"] in ("statement", "denied")]
    assert [(r["type"], r["text"], r["outcome"]) for r in stmts] == [
        ("statement", PG_STATEMENTS[0][0], "OK"),
        ("statement", PG_STATEMENTS[1][0], "OK"),
        ("denied", "delete from orders", "DENIED"),
        ("statement", PG_STATEMENTS[2][0], "ERROR"),
    ]
    assert stmts[1]["params"] == ["42"] and stmts[0]["rows"] == 1
    assert stmts[3]["error"]["sqlstate"] == "22012"
    assert recs[-1]["type"] == "end"


def test_jsonl_commands_of_an_ssh_session(rec):
    recs = [json.loads(x) for x in jsonl_lines(load_events(write_exec_session(rec, denials=1)))]
    kinds = [(r["type"], r.get("text") or r.get("command")) for r in recs[1:]]
    assert kinds[:3] == [
        ("command", "systemctl status nginx"),
        ("upstream", "systemctl status nginx"),
        ("exit", None),
    ]
    assert ("denied", "rm -rf /var/lib/nginx0") in kinds
    assert recs[-1]["type"] == "end" and recs[-1]["denials"] == 1
