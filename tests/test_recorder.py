"""Recordings: chained, signed, byte-exact, write-once; verify says exactly what is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.recorder.reader import read_events
from breakglass.recorder.verify import verify_recording
from breakglass.recorder.writer import RecorderError, RecordingWriter

KEY = Ed25519PrivateKey.generate()
TRUSTED = {"rec-1": KEY.public_key()}
HEADER = {"session": "s-1", "user": "alice", "target": "web1", "protocol": "ssh"}


def split_events(data: bytes) -> list[bytes]:
    """A recording's bytes cut into events: each line with the raw frame that follows it."""
    events, at = [], 0
    while at < len(data):
        end = data.index(b"\n", at) + 1
        size = json.loads(data[at:end]).get("raw_len", 0)
        events.append(data[at : end + size])
        at = end + size
    return events


def make_recording(
    path: Path, n: int = 40, checkpoint_events: int = 10, raw_min: int = 4096
) -> list[bytes]:
    """A finalized recording: header, checkpoint, resize, n outputs/inputs, query, end, trailer.
    Returns its events (lines, with their frames for payloads of ``raw_min`` bytes or more)."""
    w = RecordingWriter.create(
        path, HEADER, KEY, "rec-1", checkpoint_events=checkpoint_events, raw_min=raw_min
    )
    w.resize(80, 24)
    for i in range(n):
        if i % 3 == 0:
            w.input(bytes([i, 255 - i]) * 3)
        else:
            w.output(b"line %d \xff\xfe\r\n" % i, channel="ch0")
    w.query(text="select 1", params=[b"\x00\x01", None, 7], tag="SELECT 1", rows=1)
    w.close("client disconnected")
    return split_events(path.read_bytes())


def rewrite(path: Path, lines: list[bytes], mode: int = 0o440) -> Path:
    """Replace the file's content (as an attacker with root would), keeping it finalized."""
    os.chmod(path, 0o640)
    path.write_bytes(b"".join(lines))
    os.chmod(path, mode)
    return path


def index_of(lines: list[bytes], kind: str, nth: int = 0) -> int:
    found = [i for i, line in enumerate(lines) if json.loads(line.split(b"\n")[0])["kind"] == kind]
    return found[nth]


@pytest.fixture
def rec(tmp_path: Path) -> tuple[Path, list[bytes]]:
    path = tmp_path / "s-1.rec"
    return path, make_recording(path)


# ---------------------------------------------------------------- intact


def test_untouched_recording_verifies_with_counts(rec):
    path, lines = rec
    r = verify_recording(path, TRUSTED)
    assert r.ok, r.message
    assert r.problem is None and r.event_index is None
    assert r.finalized and not r.live
    assert r.events == len(lines)
    # one checkpoint after the header, then one every 10 events
    assert r.checkpoints == sum(1 for line in lines if b'"kind":"checkpoint"' in line)
    assert r.checkpoints >= 4
    assert r.header["user"] == "alice" and r.header["format"] == "breakglass-recording/2"
    assert r.message.startswith("OK")
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds[:3] == ["header", "checkpoint", "resize"]
    assert kinds[-2:] == ["end", "trailer"]


def test_every_line_chains_to_the_previous_one(rec):
    import hashlib

    _, lines = rec
    prev = "0" * 64
    for i, line in enumerate(lines):
        ev = json.loads(line)
        assert ev["seq"] == i and ev["prev"] == prev
        prev = hashlib.sha256(line).hexdigest()


def test_bytes_round_trip_exactly(tmp_path):
    path = tmp_path / "bytes.rec"
    w = RecordingWriter.create(path, {"blob": b"\x00\xff"}, KEY, "rec-1")
    for b in range(256):
        w.input(bytes([b]))
    w.output(bytes(range(256)), stream="stderr")
    w.output(b"")
    nasty = b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\x00\r\n\x1b[2J\x7f"
    w.output(nasty, channel='chan "1"\n\u00e9')
    w.event("command", argv=[b"rm", b"\xff"], env={"X": b"\x00"}, note="caf\u00e9")
    w.close("done")
    assert verify_recording(path, TRUSTED).ok
    raw = path.read_bytes()
    raw.decode("ascii")  # the file itself is plain ASCII JSON lines
    events = list(read_events(path))
    assert events[0]["blob"] == b"\x00\xff"
    inputs = [e["data"] for e in events if e["kind"] == "input"]
    assert inputs == [bytes([b]) for b in range(256)]
    outputs = [e for e in events if e["kind"] == "output"]
    assert outputs[0]["data"] == bytes(range(256)) and outputs[0]["stream"] == "stderr"
    assert outputs[1]["data"] == b"" and "stream" not in outputs[1]
    assert outputs[2]["data"] == nasty and outputs[2]["channel"] == 'chan "1"\n\u00e9'
    cmd = next(e for e in events if e["kind"] == "command")
    assert cmd["argv"] == [b"rm", b"\xff"] and cmd["env"] == {"X": b"\x00"}
    assert cmd["note"] == "caf\u00e9"


def test_large_payloads_are_raw_frames_that_chain_and_verify(tmp_path):
    """Payloads of raw_min bytes or more follow their line as raw frames: read back exactly,
    committed to by the line's raw_sha256, and a flipped byte deep in one is caught there."""
    path = tmp_path / "bulk.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1", checkpoint_events=3)
    blobs = [os.urandom(n) for n in (3000, 4095, 4096, 32768, 200_000, 5)]
    for i, blob in enumerate(blobs):
        w.output(blob, channel="ch0", stream="stderr") if i % 2 else w.input(blob)
    w.close("done")
    assert verify_recording(path, TRUSTED).ok
    events = [e for e in read_events(path) if e["kind"] in ("input", "output")]
    assert [e["data"] for e in events] == blobs
    assert [e.get("channel") for e in events] == [None, "ch0"] * 3
    assert all("raw_len" not in e for e in events)
    chunks = split_events(path.read_bytes())
    framed = [json.loads(c.split(b"\n")[0]) for c in chunks if b'"raw_len"' in c.split(b"\n")[0]]
    assert [f["raw_len"] for f in framed] == [4096, 32768, 200_000]
    assert all("data" not in f for f in framed)
    assert chunks[index_of(chunks, "output", 1)].endswith(blobs[3])  # the frame is the payload

    k = index_of(chunks, "input", 2)  # the 200 KB one
    bad = bytearray(chunks[k])
    bad[-100_000] ^= 0x40
    report = verify_recording(rewrite(path, [*chunks[:k], bytes(bad), *chunks[k + 1 :]]), TRUSTED)
    assert (report.problem, report.event_index) == ("altered", k), report.message
    assert "raw frame" in report.message


@pytest.mark.parametrize("delta", [+1, -1, +5000])
def test_a_changed_frame_length_is_caught_at_its_event(tmp_path, delta):
    path = tmp_path / "len.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    w.output(b"a" * 5000)
    w.output(b"tail")
    w.close("done")
    chunks = split_events(path.read_bytes())
    k = index_of(chunks, "output")
    chunks[k] = chunks[k].replace(b'"raw_len":5000', b'"raw_len":%d' % (5000 + delta))
    report = verify_recording(rewrite(path, chunks), TRUSTED)
    assert (report.problem, report.event_index) == ("altered", k), report.message


def test_a_live_recording_cut_inside_a_frame_reads_and_verifies_up_to_it(tmp_path):
    path = tmp_path / "live.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    w.output(b"before")
    w.output(b"x" * 10_000)
    w.flush()
    data = path.read_bytes()
    w.close("done")
    os.chmod(path, 0o640)
    path.write_bytes(data[:-3000])  # the writer died in the middle of writing the frame
    assert [e["data"] for e in read_events(path) if e["kind"] == "output"] == [b"before"]
    report = verify_recording(path, TRUSTED)
    assert (report.problem, report.live) == ("missing-trailer", True), report.message


def test_frames_hold_the_bytes_given_and_split_past_the_maximum(tmp_path):
    from breakglass.recorder.format import MAX_RAW_LEN

    path = tmp_path / "big.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    buf = bytearray(b"q" * 8192)
    w.output(buf)
    buf[:] = b"z" * 8192  # the caller reuses its buffer: the recording keeps what was given
    w.output(memoryview(b"wxyz" * 1024).cast("I"))  # 1024 items, 4096 bytes: one frame
    with pytest.raises(TypeError):
        w.output("text is not bytes" * 500)
    big = os.urandom(MAX_RAW_LEN + 10)
    w.output(big)
    w.close("done")
    assert verify_recording(path, TRUSTED).ok
    outs = [e["data"] for e in read_events(path) if e["kind"] == "output"]
    assert outs[0] == b"q" * 8192 and outs[1] == b"wxyz" * 1024
    assert [len(o) for o in outs[2:]] == [MAX_RAW_LEN, 10] and b"".join(outs[2:]) == big


def test_fields_decision_query_and_end(tmp_path):
    path = tmp_path / "f.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    w.decision(kind="sql", allowed=False, rule="read-only", text="drop table t")
    w.query(text="select $1", params=["x"], error="42501", duration_ms=1.5)
    w.close("grant expired", grant_jti="j1")
    events = list(read_events(path))
    dec = next(e for e in events if e["kind"] == "decision")
    assert dec["decision_kind"] == "sql" and dec["allowed"] is False
    q = next(e for e in events if e["kind"] == "query")
    assert q["params"] == ["x"] and q["duration_ms"] == 1.5
    assert events[-1]["kind"] == "end" and events[-1]["reason"] == "grant expired"
    assert events[-1]["grant_jti"] == "j1"
    ts = [e["t"] for e in events]
    assert ts == sorted(ts)
    assert list(read_events(path, include_signatures=True))[-1]["kind"] == "trailer"


def test_bad_fields_are_refused_and_do_not_break_the_chain(tmp_path):
    path = tmp_path / "f.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    with pytest.raises(RecorderError):
        w.event("command", seq=3)
    with pytest.raises(RecorderError):
        w.event("checkpoint", x=1)
    with pytest.raises(RecorderError):
        w.event("end")
    with pytest.raises(RecorderError):
        w.event("query", when=object())
    with pytest.raises(RecorderError):
        w.query(x=float("nan"))
    with pytest.raises(RecorderError):
        w.query(x={"$b": "AAAA"})
    with pytest.raises(RecorderError):
        w.event("output", data="not bytes")
    with pytest.raises(TypeError):
        w.output("not bytes")
    with pytest.raises(RecorderError):
        RecordingWriter.create(tmp_path / "g.rec", {"key_id": "x"}, KEY, "rec-1")
    w.output(b"still fine")
    w.close("done")
    assert verify_recording(path, TRUSTED).ok


# ---------------------------------------------------------------- tampering


def test_one_byte_changed_in_event_data_is_altered_at_that_event(rec):
    path, lines = rec
    k = index_of(lines, "output", 5)
    ev = json.loads(lines[k])
    data = ev["data"]
    changed = ("A" if data[0] != "A" else "B") + data[1:]
    lines[k] = lines[k].replace(f'"data":"{data}"'.encode(), f'"data":"{changed}"'.encode())
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "altered", k)
    assert r.message == f"event {k} altered (hash chain broken)"
    assert r.events == k  # events 0..k-1 verified


def test_one_byte_changed_in_a_field_is_altered_at_that_event(rec):
    path, lines = rec
    k = index_of(lines, "resize")
    lines[k] = lines[k].replace(b'"cols":80', b'"cols":81')
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("altered", k)

    q = index_of(lines, "query")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[k] = lines[k].replace(b'"cols":81', b'"cols":80')  # undo
    lines[q] = lines[q].replace(b'"rows":1', b'"rows":9')
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("altered", q)


def test_one_byte_changed_in_a_checkpoint_signature_is_bad_signature(rec):
    path, lines = rec
    k = index_of(lines, "checkpoint", 2)
    sig = json.loads(lines[k])["sig"]
    bad = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    lines[k] = lines[k].replace(sig.encode(), bad.encode())
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "bad-signature", k)
    assert f"checkpoint at event {k}" in r.message


def test_trailer_signature_changed_is_bad_signature(rec):
    path, lines = rec
    sig = json.loads(lines[-1])["sig"]
    lines[-1] = lines[-1].replace(sig.encode(), sig[::-1].encode())
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("bad-signature", len(lines) - 1)


def test_rechained_forgery_is_caught_by_the_next_signature(rec):
    """An attacker changes event k and recomputes every prev after it: the next checkpoint's
    signature no longer matches."""
    import hashlib

    path, lines = rec
    k = index_of(lines, "input", 3)
    ev = json.loads(lines[k])
    lines[k] = lines[k].replace(ev["data"].encode(), b"cm0gLXJmIC8K")  # "rm -rf /"
    for i in range(k + 1, len(lines)):
        old = json.loads(lines[i])["prev"]
        lines[i] = lines[i].replace(old.encode(), hashlib.sha256(lines[i - 1]).hexdigest().encode())
    next_ckpt = next(i for i in range(k + 1, len(lines)) if b'"kind":"checkpoint"' in lines[i])
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("bad-signature", next_ckpt)


def test_one_event_removed_is_removed_at_that_index(rec):
    path, lines = rec
    k = index_of(lines, "output", 7)
    del lines[k]
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "removed", k)
    assert r.message == f"event {k} removed (sequence jumps {k - 1} -> {k + 1})"


def test_several_events_removed(rec):
    path, lines = rec
    k = index_of(lines, "output", 2)
    del lines[k : k + 3]
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("removed", k)
    assert f"events {k}..{k + 2} removed" in r.message


def test_removed_checkpoint_is_removed(rec):
    path, lines = rec
    k = index_of(lines, "checkpoint", 1)
    del lines[k]
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("removed", k)


def test_two_events_swapped_is_reordered(rec):
    path, lines = rec
    k = index_of(lines, "output", 4)
    lines[k], lines[k + 1] = lines[k + 1], lines[k]
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "reordered", k)
    assert f"event {k} reordered" in r.message


def test_event_moved_far_is_reordered(rec):
    path, lines = rec
    k = index_of(lines, "input", 1)
    moved = lines.pop(k)
    lines.insert(k + 6, moved)
    r = verify_recording(rewrite(path, lines), TRUSTED)
    assert (r.problem, r.event_index) == ("reordered", k)


def test_tail_cut_after_a_checkpoint_is_truncated(rec):
    path, lines = rec
    ckpts = [i for i, line in enumerate(lines) if b'"kind":"checkpoint"' in line]
    cut = ckpts[2] + 4  # keep 3 checkpoints and 3 events after the third
    r = verify_recording(rewrite(path, lines[:cut]), TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "truncated", ckpts[2])
    assert r.message.startswith(f"truncated after checkpoint 3 (event {ckpts[2]})")
    assert "3 later events are not covered by a signature" in r.message
    assert r.events == cut and r.checkpoints == 3 and not r.live


def test_tail_cut_mid_line_is_truncated(rec):
    path, lines = rec
    ckpts = [i for i, line in enumerate(lines) if b'"kind":"checkpoint"' in line]
    data = b"".join(lines[: ckpts[1] + 3]) + lines[ckpts[1] + 3][:25]
    os.chmod(path, 0o640)
    path.write_bytes(data)
    os.chmod(path, 0o440)
    r = verify_recording(path, TRUSTED)
    assert (r.problem, r.event_index) == ("truncated", ckpts[1])
    assert "last line is incomplete" in r.message


def test_trailer_cut_is_missing_trailer(rec):
    path, lines = rec
    r = verify_recording(rewrite(path, lines[:-1]), TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "missing-trailer", len(lines) - 1)
    assert "missing trailer" in r.message and not r.live


def test_data_after_trailer_is_reported(rec):
    path, lines = rec
    r = verify_recording(rewrite(path, lines + [lines[5]]), TRUSTED)
    assert (r.problem, r.event_index) == ("malformed", len(lines))


def test_unknown_key(tmp_path):
    path = tmp_path / "other.rec"
    other = Ed25519PrivateKey.generate()
    w = RecordingWriter.create(path, HEADER, other, "rogue-1")
    w.output(b"x")
    w.close("done")
    r = verify_recording(path, TRUSTED)
    assert (r.ok, r.problem, r.event_index) == (False, "unknown-key", 1)
    assert "rogue-1" in r.message
    # the same key id but a different key than trusted: bad signature
    w = RecordingWriter.create(tmp_path / "imp.rec", HEADER, other, "rec-1")
    w.close("done")
    r = verify_recording(tmp_path / "imp.rec", TRUSTED)
    assert (r.problem, r.event_index) == ("bad-signature", 1)
    # trusted: fine
    assert verify_recording(path, {"rogue-1": other.public_key()}).ok


def test_every_single_byte_change_is_caught_at_that_line(tmp_path):
    """Exhaustive: flip one bit of any byte of a small recording -> the first problem reported
    is at the changed line, as altered, bad-signature or unknown-key."""
    path = tmp_path / "small.rec"
    lines = make_recording(path, n=4, checkpoint_events=3, raw_min=8)  # outputs: raw frames
    assert sum(b'"raw_len"' in line for line in lines) == 2
    target = tmp_path / "t.rec"
    for k, line in enumerate(lines):
        for pos in range(len(line)):
            mutated = bytearray(line)
            mutated[pos] ^= 0x01 if pos % 2 else 0x20
            target.write_bytes(b"".join(lines[:k]) + bytes(mutated) + b"".join(lines[k + 1 :]))
            r = verify_recording(target, TRUSTED)
            assert not r.ok, (k, pos)
            assert r.event_index == k, (k, pos, r.message)
            assert r.problem in ("altered", "bad-signature", "unknown-key"), (k, pos, r.message)


# ---------------------------------------------------------------- storage


def test_read_only_after_close_and_write_once(tmp_path):
    path = tmp_path / "once.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    assert stat.S_IMODE(path.stat().st_mode) & 0o222  # writable while live
    w.output(b"hi")
    w.close("done")
    w.close("again")  # idempotent
    assert w.closed and w.failed is None
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o222 == 0 and mode & 0o004 == 0  # read-only, not world-readable
    before = path.read_bytes()
    with pytest.raises(RecorderError, match="already exists"):
        RecordingWriter.create(path, HEADER, KEY, "rec-1")
    assert path.read_bytes() == before
    with pytest.raises(RecorderError, match="closed"):
        w.output(b"late")
    with pytest.raises(RecorderError, match="closed"):
        w.event("command", argv=["x"])
    assert verify_recording(path, TRUSTED).ok


def test_create_fails_clearly_when_directory_missing(tmp_path):
    with pytest.raises(RecorderError, match="cannot create"):
        RecordingWriter.create(tmp_path / "nope" / "x.rec", HEADER, KEY, "rec-1")


def test_live_recording_is_on_disk_and_reported_not_finalized(tmp_path):
    path = tmp_path / "live.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    assert path.read_bytes().count(b"\n") == 2  # header + first checkpoint, synchronously
    w.input(b"whoami\r")
    w.output(b"root\r\n")
    assert w.wait_durable(timeout=10)  # the committer thread wrote and fsynced them
    assert w.durable_events == w.event_count == 4
    assert [e["kind"] for e in read_events(path)] == ["header", "input", "output"]
    r = verify_recording(path, TRUSTED)
    assert (r.ok, r.problem, r.live) == (False, "missing-trailer", True)
    assert "recording not finalized" in r.message
    assert "2 later events are not covered" in r.message
    w.close("done")
    assert verify_recording(path, TRUSTED).ok


def test_time_based_checkpoint_signs_idle_tail(tmp_path):
    path = tmp_path / "idle.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1", checkpoint_interval=0.05)
    w.output(b"last words before idling")
    ckpt_seq = w.event_count  # the committer appends the checkpoint here
    assert w.wait_durable(ckpt_seq + 1, timeout=10)
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[ckpt_seq])["kind"] == "checkpoint"
    r = verify_recording(path, TRUSTED)
    assert r.live and r.last_checkpoint == ckpt_seq and "later events" not in r.message
    w.close("done")


def test_checkpoint_every_n_events(tmp_path):
    path = tmp_path / "n.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1", checkpoint_events=100)
    for _ in range(1000):
        w.output(b"x" * 32)
    w.close("done")
    kinds = [e["kind"] for e in read_events(path, include_signatures=True)]
    ckpts = [i for i, k in enumerate(kinds) if k == "checkpoint"]
    assert ckpts[0] == 1
    # exactly 100 events between checkpoints (time-based ones may come sooner on a slow box)
    assert all(b - a <= 101 for a, b in zip(ckpts, ckpts[1:], strict=False))
    assert len(ckpts) >= 11
    assert verify_recording(path, TRUSTED).checkpoints == len(ckpts)


def test_concurrent_appends_from_threads_stay_one_chain(tmp_path):
    path = tmp_path / "threads.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1", checkpoint_events=50)

    def worker(n: int) -> None:
        for i in range(500):
            w.output(b"%d:%d" % (n, i), channel=str(n))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close("done")
    r = verify_recording(path, TRUSTED)
    assert r.ok, r.message
    per_channel: dict[str, list[bytes]] = {}
    for e in read_events(path):
        if e["kind"] == "output":
            per_channel.setdefault(e["channel"], []).append(e["data"])
    for n in range(4):
        assert per_channel[str(n)] == [b"%d:%d" % (n, i) for i in range(500)]


# ---------------------------------------------------------------- failure


def _break_disk(w: RecordingWriter) -> None:
    """Make the writer's file descriptor refer to /dev/full: every later write fails with
    ENOSPC, for real, in the kernel."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, w._fd)
    finally:
        os.close(full)


def test_disk_failure_in_background_fires_on_failure_and_appends_raise(tmp_path):
    path = tmp_path / "full.rec"
    fired = threading.Event()
    calls: list[tuple[Exception, str]] = []

    def on_failure(exc: Exception) -> None:
        calls.append((exc, threading.current_thread().name))
        fired.set()

    w = RecordingWriter.create(path, HEADER, KEY, "rec-1", on_failure=on_failure)
    w.output(b"before")
    w.flush()
    _break_disk(w)
    w.output(b"lost with the disk")  # buffered; the committer's write fails
    assert fired.wait(10)
    assert isinstance(w.failed, OSError) and w.failed.errno == 28  # ENOSPC
    with pytest.raises(RecorderError, match="failed"):
        w.output(b"after")
    with pytest.raises(RecorderError, match="failed"):
        w.query(text="select 1")
    with pytest.raises(RecorderError):
        w.flush()
    w.close("gone")  # does not raise again; releases the file
    assert len(calls) == 1 and calls[0][1].startswith("recorder-commit")
    r = verify_recording(path, TRUSTED)  # what reached the disk is intact, not finalized
    assert r.problem == "missing-trailer" and r.live
    assert [e.get("data") for e in read_events(path)][-1] == b"before"


def test_disk_failure_on_flush_raises_in_caller(tmp_path):
    calls: list[Exception] = []
    w = RecordingWriter.create(
        tmp_path / "f.rec", HEADER, KEY, "rec-1", commit_interval=60, on_failure=calls.append
    )
    w.flush()
    _break_disk(w)
    w.output(b"x" * 100)
    with pytest.raises(RecorderError, match="No space left"):
        w.flush()
    assert len(calls) == 1
    w.close("x")
    assert len(calls) == 1


def test_failure_during_close_raises(tmp_path):
    calls: list[Exception] = []
    w = RecordingWriter.create(
        tmp_path / "c.rec", HEADER, KEY, "rec-1", commit_interval=60, on_failure=calls.append
    )
    w.flush()
    _break_disk(w)
    with pytest.raises(RecorderError):
        w.close("bye")
    assert w.closed and len(calls) == 1
    w.close("bye")  # idempotent, quiet


def test_buffer_overflow_stops_appends_but_recording_still_finalizes(tmp_path):
    path = tmp_path / "o.rec"
    calls: list[Exception] = []
    w = RecordingWriter.create(
        path, HEADER, KEY, "rec-1", commit_interval=60, max_buffer=4096, on_failure=calls.append
    )
    with pytest.raises(RecorderError, match="not keeping up"):
        for _ in range(1000):
            w.output(b"y" * 64)
    assert w.failed is not None and len(calls) == 1
    with pytest.raises(RecorderError):
        w.output(b"z")
    w.close("recorder overflow")
    r = verify_recording(path, TRUSTED)
    assert r.ok, r.message
    end = list(read_events(path))[-1]
    assert end["kind"] == "end" and "not keeping up" in end["recorder_error"]


async def test_async_gateway_usage(tmp_path):
    """Appends from the event loop, on_failure hopping back with call_soon_threadsafe."""
    loop = asyncio.get_running_loop()
    failed = asyncio.Event()
    path = tmp_path / "a.rec"
    w = RecordingWriter.create(
        path,
        HEADER,
        KEY,
        "rec-1",
        on_failure=lambda exc: loop.call_soon_threadsafe(failed.set),
    )
    for i in range(2000):
        w.output(b"row %d\r\n" % i)
        if i % 100 == 0:
            await asyncio.sleep(0)
    await asyncio.to_thread(w.flush)
    assert w.durable_events == w.event_count
    _break_disk(w)
    w.output(b"doomed")
    await asyncio.wait_for(failed.wait(), 10)
    with pytest.raises(RecorderError):
        w.input(b"q")
    await asyncio.to_thread(w.close, "recording failed")


def test_append_encoded_fast_path(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from breakglass.recorder.format import encode_str
    from breakglass.recorder.reader import read_events
    from breakglass.recorder.verify import verify_recording
    from breakglass.recorder.writer import RecorderFieldError, RecordingWriter

    key = Ed25519PrivateKey.generate()
    w = RecordingWriter.create(tmp_path / "f.rec", {"session_id": "s"}, key, "k1")
    w.append_encoded("query", b'"n":1,"text":' + encode_str('select "x" \u00e9\n'))
    for kind in ("output", "trailer", "header"):
        with pytest.raises(RecorderFieldError):
            w.append_encoded(kind, b'"n":1')
    w.close("done")
    events = [e for e in read_events(tmp_path / "f.rec") if e["kind"] == "query"]
    assert events[0]["text"] == 'select "x" \u00e9\n' and events[0]["n"] == 1
    assert verify_recording(tmp_path / "f.rec", {"k1": key.public_key()}).ok


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux fincore not installed")
def test_written_recording_pages_are_dropped_from_the_page_cache(tmp_path):
    """Bulk output must not fill the page cache: once fsynced, whole pages are dropped."""
    path = tmp_path / "cache.rec"
    w = RecordingWriter.create(path, HEADER, KEY, "rec-1")
    for _ in range(256):
        w.output(os.urandom(32768))  # 8 MiB
    w.flush()
    size = path.stat().st_size
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert size > 8 << 20 and int(out.stdout.strip()) <= 4096, out.stdout
    w.close("done")
    assert verify_recording(path, TRUSTED).ok
