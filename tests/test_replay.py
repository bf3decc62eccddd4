"""Replay: exact output bytes in order, timing, seeking, keys; the statement timeline; integrity."""

from __future__ import annotations

import io

import pytest

from breakglass.recorder.replay import (
    RESET,
    RESIZE_RESET,
    IntegrityRefused,
    Player,
    check_integrity,
    load_events,
    render_timeline,
    statement_timeline,
    terminal_frames,
)
from tests.test_index_helpers import (
    SHELL_OUTPUT,
    Recorder,
    tamper,
    write_pg_session,
    write_shell_session,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rec(tmp_path):
    return Recorder(tmp_path / "recordings")


class Clock:
    """Virtual time: sleeping advances it (the player's timing is checked without waiting)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


class Keys:
    """Keys pressed at given virtual times."""

    def __init__(self, clock: Clock, presses: list[tuple[float, str]]) -> None:
        self.clock = clock
        self.presses = sorted(presses)

    def read(self, timeout):
        if self.presses and (timeout is None or self.presses[0][0] <= self.clock.now + timeout):
            at, key = self.presses.pop(0)
            self.clock.now = max(self.clock.now, at)
            return key
        if timeout is None:
            return "q"
        self.clock.now += timeout
        return None


def test_replay_writes_exactly_the_recorded_output_in_order(rec):
    path = write_shell_session(rec)
    check_integrity(path, rec.trusted)
    frames = terminal_frames(load_events(path))
    out = io.BytesIO()
    clock = Clock()
    Player(frames, out, speed=1.0, clock=clock, sleep=clock.sleep).play()
    # the recorded bytes, plus where the engineer resized their terminal, the scroll-region
    # reset their terminal did then
    resized = len(b"".join(SHELL_OUTPUT[:7]))
    want = b"".join(SHELL_OUTPUT)
    assert out.getvalue() == want[:resized] + RESIZE_RESET + want[resized:]


def test_timing_follows_the_recording_scaled_by_speed_and_idle_limit():
    assert terminal_frames([]) == []
    events = [
        {"kind": "header", "t": 0.0, "seq": 0},
        {"kind": "output", "t": 1.0, "seq": 1, "data": b"a"},
        {"kind": "output", "t": 11.0, "seq": 2, "data": b"b"},
        {"kind": "output", "t": 12.0, "seq": 3, "data": b"c"},
    ]
    clock = Clock()
    frames = terminal_frames(events, idle_limit=2.0)
    assert [f.vt for f in frames] == [1.0, 3.0, 4.0]
    out = io.BytesIO()
    Player(frames, out, speed=2.0, clock=clock, sleep=clock.sleep).play()
    assert out.getvalue() == b"abc"
    assert clock.now - 100.0 == pytest.approx(2.0)  # 4 s of compressed playback at 2x


def test_keys_pause_seek_and_quit():
    events = [{"kind": "header", "t": 0.0, "seq": 0}] + [
        {"kind": "output", "t": float(i), "seq": i, "data": b"%d;" % i} for i in range(1, 21)
    ]
    frames = terminal_frames(events)
    clock = Clock()
    out = io.BytesIO()
    keys = Keys(clock, [(102.5, "right"), (104.0, " "), (110.0, " "), (111.0, "left"), (113, "q")])
    p = Player(frames, out, keys=keys, clock=clock, sleep=clock.sleep)
    p.play()
    text = out.getvalue()
    # 1, 2 in real time; right arrow at 2.5 s draws 3..7 at once; pause 104..110; left arrow
    # resets the terminal and redraws up to 5 s back; q at 113 stops.
    assert text.startswith(b"1;2;3;4;5;6;7;")
    assert RESET in text
    after = text.split(RESET, 1)[1]
    assert after.startswith(b"1;2;3;")
    assert p.quit and p.position < len(frames)


def test_seek_offset_draws_everything_before_instantly(rec):
    events = [{"kind": "header", "t": 0.0, "seq": 0}] + [
        {"kind": "output", "t": float(i * 30), "seq": i, "data": b"%d;" % i} for i in range(1, 6)
    ]
    clock = Clock()
    out = io.BytesIO()
    p = Player(terminal_frames(events), out, clock=clock, sleep=clock.sleep)
    p.seek_offset(90.0)  # --from 1m30s
    assert out.getvalue() == b"1;2;"
    p.play()
    assert out.getvalue() == b"1;2;3;4;5;"
    assert clock.now - 100.0 == pytest.approx(60.0)


def test_show_input_marks_keystrokes(rec):
    path = write_shell_session(rec)
    frames = terminal_frames(load_events(path), show_input=True)
    inputs = b"".join(f.data for f in frames if f.kind == "i")
    assert b"\x1b[7mc\x1b[27m" in inputs and b"\\r" in inputs


def test_statement_timeline_matches_what_ran(rec):
    path = write_pg_session(rec)
    tl = statement_timeline(load_events(path))
    rows = [(e.what, e.n, e.text, e.outcome, e.rows) for e in tl]
    assert rows == [
        ("statement", 1, "select count(*) from orders", "OK", 1),
        ("statement", 2, "select * from orders where id = $1", "OK", 1),
        ("denied", None, "delete from orders", "DENIED", None),
        ("statement", 4, "select 1/0", "ERROR", None),
        ("end", None, "", "END", None),
    ]
    assert tl[1].params == ["42"] and tl[0].duration_ms == 1.25
    text = render_timeline(tl)
    assert "params: ['42']" in text and "22012 division by zero" in text
    assert "DENIED  rule=read-only" in text


def test_tampered_recording_refused_without_force(rec):
    path = write_shell_session(rec)
    tamper(path, b'"rows":40', b'"rows":41')
    with pytest.raises(IntegrityRefused, match="altered"):
        check_integrity(path, rec.trusted)
    result, warning = check_integrity(path, rec.trusted, force=True)
    assert not result.ok and "FAILED VERIFICATION" in warning


def test_live_recording_allowed_with_a_notice(rec):
    w = rec.open()
    w.output(b"x", "0")
    w.flush()
    result, warning = check_integrity(w.path, rec.trusted)
    assert result.live and "not finalized" in warning
    w.close("x")
