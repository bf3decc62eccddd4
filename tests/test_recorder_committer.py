"""The shared committer: a few threads make every recording durable and signed in time."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.recorder import committer
from breakglass.recorder.reader import read_events
from breakglass.recorder.verify import verify_recording
from breakglass.recorder.writer import RecordingWriter

KEY = Ed25519PrivateKey.generate()
TRUSTED = {"rec-1": KEY.public_key()}
HEADER = {"session": "s-1", "user": "alice", "target": "db1", "protocol": "postgres"}

pytestmark = pytest.mark.timeout(60)


def _lines(path) -> list[dict]:
    """Every line of a recording, checkpoints included (no raw frames in these tests)."""
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _commit_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("recorder-commit")]


def test_many_recordings_are_made_durable_by_a_few_threads(tmp_path):
    writers = [
        RecordingWriter.create(tmp_path / f"{i}.rec", HEADER, KEY, "rec-1", commit_interval=0.05)
        for i in range(200)
    ]
    for i, w in enumerate(writers):
        w.query(text=f"select {i}", tag="SELECT 1", rows=1)
        w.write()
    # nobody flushes: the committer fsyncs each within commit_interval (plus its queue)
    for w in writers:
        assert w.wait_durable(timeout=20), w
    assert 1 <= len(_commit_threads()) <= committer.THREADS  # not a thread per recording
    for i, w in enumerate(writers):
        w.close("done")
        assert verify_recording(w.path, TRUSTED).ok
        assert [e["text"] for e in read_events(w.path) if e["kind"] == "query"] == [f"select {i}"]


def test_an_idle_tail_is_signed_by_the_committer(tmp_path):
    w = RecordingWriter.create(tmp_path / "idle.rec", HEADER, KEY, "rec-1", checkpoint_interval=1.0)
    w.query(text="select 1")
    w.write()
    seq = w.event_count - 1  # the query's seq; nothing else is appended
    assert w.wait_durable(seq + 2, timeout=10)  # the query, then a checkpoint covering it
    events = _lines(w.path)
    assert events[seq]["kind"] == "query" and events[seq + 1]["kind"] == "checkpoint"
    assert events[seq + 1]["t"] - events[seq]["t"] >= 0.99  # signed at the deadline
    w.close()
    assert verify_recording(w.path, TRUSTED).ok


def test_a_quiet_recording_is_signed_with_its_fsync_not_a_second_time(tmp_path):
    """One statement now and then: the checkpoint rides on the statement's fsync (one fsync
    for both) rather than coming checkpoint_interval later with an fsync of its own."""
    w = RecordingWriter.create(
        tmp_path / "quiet.rec", HEADER, KEY, "rec-1", checkpoint_interval=4.0
    )
    time.sleep(2.1)  # the last checkpoint (at creation) is older than half the interval
    w.query(text="select 1")
    w.write()
    seq = w.event_count - 1
    # well before the 4 s deadline: the committer signed when it fsynced the query
    assert w.wait_durable(seq + 2, timeout=1.5)
    events = _lines(w.path)
    assert events[seq + 1]["kind"] == "checkpoint"
    assert events[seq + 1]["t"] - events[seq]["t"] < 1.5
    w.close()
    assert verify_recording(w.path, TRUSTED).ok


def test_a_busy_recording_is_not_signed_at_every_fsync(tmp_path):
    w = RecordingWriter.create(
        tmp_path / "busy.rec", HEADER, KEY, "rec-1", checkpoint_interval=30, commit_interval=0.01
    )
    for i in range(20):  # twenty fsyncs' worth of statements
        w.query(text=f"select {i}")
        w.write()
        assert w.wait_durable(timeout=10)
    kinds = [e["kind"] for e in _lines(w.path)]
    assert kinds.count("checkpoint") == 1  # the one at creation; the next is due in 15 s
    w.close()


class _Slow:
    """Served slowly, like a recording on a disk whose fsync takes 0.3 s."""

    def __init__(self, done: list[str], cond: threading.Condition) -> None:
        self._due = float("inf")
        self.done = done
        self.cond = cond

    def _serve(self) -> float | None:
        time.sleep(0.3)  # the slow fsync itself
        with self.cond:
            self.done.append(threading.current_thread().name)
            self.cond.notify_all()
        return None


def test_a_committer_that_falls_behind_starts_more_threads_and_ends_them(monkeypatch):
    monkeypatch.setattr(committer, "BEHIND", 0.2)
    monkeypatch.setattr(committer, "IDLE_EXIT", 0.5)
    c = committer._Committer()
    done: list[str] = []
    cond = threading.Condition()
    now = time.monotonic()
    slow = [_Slow(done, cond) for _ in range(8)]
    for s in slow:
        c.schedule(s, now)
    with cond:
        assert cond.wait_for(lambda: len(done) == 8, timeout=30)
    assert 1 < len(c._started) <= committer.THREADS  # one more each time it fell behind
    assert len(set(done)) > 1  # served by more than one thread
    assert all(s._due == float("inf") for s in slow)
    for t in c._started:  # idle, the extra threads end (IDLE_EXIT); one stays
        t.join(timeout=3)
    assert [t.is_alive() for t in c._started].count(True) == 1 and c._threads == 1


def test_an_earlier_request_supersedes_a_later_one():
    c = committer._Committer()
    served = threading.Event()
    times: list[float] = []

    class One:
        _due = float("inf")

        def _serve(self) -> float | None:
            times.append(time.monotonic())
            served.set()
            return None

    one = One()
    t0 = time.monotonic()
    c.schedule(one, t0 + 60)
    c.schedule(one, t0 + 0.05)  # the waiting thread wakes for it, not in a minute
    assert served.wait(10)
    assert times[0] - t0 < 5 and len(times) == 1


def test_a_log_of_rare_events_is_signed_with_every_fsync(tmp_path):
    """The audit log (write_through): a session.start is signed at its fsync, so it can
    reach the store before the recording it speaks of does."""
    w = RecordingWriter.create(
        tmp_path / "a.audit", HEADER, KEY, "rec-1", checkpoint_interval=30, write_through=True
    )
    for i in range(3):
        w.event("audit", type="session.start", session=f"s-{i}")
        seq = w.event_count - 1
        assert w.wait_durable(seq + 2, timeout=10)  # long before the 30 s deadline
        assert _lines(w.path)[seq + 1]["kind"] == "checkpoint"
    w.close()
    assert verify_recording(w.path, TRUSTED).ok


def test_lag_says_how_late_the_most_overdue_work_is():
    c = committer._Committer()
    started, release = threading.Event(), threading.Event()

    class Blocking:
        _due = float("inf")

        def _serve(self) -> float | None:
            started.set()
            release.wait(10)  # an fsync that does not return
            return None

    class Waiting:
        _due = float("inf")

        def _serve(self) -> float | None:
            return None

    assert c.lag() == 0.0
    now = time.monotonic()
    c.schedule(Blocking(), now)
    assert started.wait(10)
    c.schedule(Waiting(), now)  # due now, but the only thread is stuck
    c.schedule(Waiting(), now + 3600)  # not due: says nothing about lateness
    time.sleep(0.2)  # the time that makes it late
    assert 0.2 <= c.lag() < 5
    release.set()


def test_a_busy_recording_is_fsynced_at_most_once_per_commit_interval(tmp_path, monkeypatch):
    """Bulk output: fsyncs come commit_interval after the previous one ended, as with a
    thread per recording (fsyncing on the half-interval grid cost SSH bulk 10 % throughput)."""
    w = RecordingWriter.create(tmp_path / "bulk.rec", HEADER, KEY, "rec-1", commit_interval=0.1)
    real, spans = os.fsync, []

    def timed(fd: int) -> None:
        start = time.monotonic()
        real(fd)
        if fd == w._fd:
            spans.append((start, time.monotonic()))

    monkeypatch.setattr(os, "fsync", timed)
    until = time.monotonic() + 1.2
    while time.monotonic() < until:
        w.output(b"x" * 8192)
        w.write()
        time.sleep(0.001)  # paces the output (about 8 MB/s); nothing is waited for
    during = list(spans)
    w.close()
    assert len(during) >= 4  # the committer did fsync while the output ran
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(during)]
    assert min(gaps) >= 0.099, gaps
    assert verify_recording(w.path, TRUSTED).ok
