"""`breakglass replay` in a real terminal (pty): plays, pauses on space, quits on q."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.test_index_helpers import Recorder, make_workdir

pytestmark = pytest.mark.timeout(30)

SCRIPT = "import sys; from tests.test_index_helpers import run_cli; sys.exit(run_cli(sys.argv[1:]))"


def test_interactive_replay_pause_and_quit(tmp_path):
    cfg = make_workdir(tmp_path / "bg")
    rec = Recorder.for_config(cfg)
    w = rec.open()
    w.output(b"first-frame\r\n", "0")
    t = time.monotonic()
    while time.monotonic() - t < 0.3:  # a real gap in the recording (busy wait, no sleep)
        pass
    w.output(b"second-frame\r\n", "0")
    w.close("client disconnected")
    child = pexpect.spawn(
        sys.executable,
        ["-c", SCRIPT, "-c", str(cfg.path), "replay", w.header["session_id"], "--speed", "0.02"],
        cwd=str(Path(__file__).resolve().parent.parent),
        timeout=15,
    )
    try:
        child.expect("space: pause")
        child.expect("first-frame")
        child.send(" ")
        child.expect(r"\[paused")
        child.send("q")
        child.expect(pexpect.EOF)
        assert b"second-frame" not in child.before  # quit before the 15 s (0.3 s / 0.02) gap
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
