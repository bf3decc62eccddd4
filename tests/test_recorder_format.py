"""docs/recording-format.md is right: its worked example verifies, its hashes and signed
messages are the real ones, and its independent verifier agrees with ours."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from breakglass.recorder.reader import read_events
from breakglass.recorder.verify import verify_recording
from breakglass.recorder.writer import RecordingWriter
from tests.test_recorder import split_events

DOC = Path(__file__).resolve().parent.parent / "docs" / "recording-format.md"
#: The worked example of the format's first version, as the writer of that time wrote it.
FORMAT1_EXAMPLE = Path(__file__).resolve().parent / "data" / "format1-example.rec"


def block_after(marker: str) -> str:
    text = DOC.read_text()
    m = re.search(re.escape(f"<!-- {marker} -->") + r"\n```[a-z]*\n(.*?)```", text, re.S)
    assert m, f"no code block after {marker}"
    return m.group(1)


@pytest.fixture
def example(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "example.rec"
    path.write_bytes(block_after("example-recording").encode("ascii"))
    os.chmod(path, 0o440)
    key = load_pem_public_key(block_after("example-public-key").encode())
    return path, {"recorder-1": key}


@pytest.fixture
def auditor():
    namespace: dict = {"__name__": "auditor"}
    exec(compile(block_after("independent-verifier"), "verify_rec.py", "exec"), namespace)
    assert len(block_after("independent-verifier").splitlines()) <= 40
    return namespace["verify"]


def test_doc_example_verifies(example):
    path, keys = example
    r = verify_recording(path, keys)
    assert r.ok, r.message
    assert (r.events, r.checkpoints) == (9, 1)
    assert r.header["format"] == "breakglass-recording/2"
    events = list(read_events(path))
    assert events[2]["data"] == b"ls\r"
    out = events[3]["data"]
    assert out == b"ls\r\n\x1b[0mREADME\x1b[0m  \xff\xfe\r\n$ "
    hex_in_doc = "6c 73 0d 0a 1b 5b 30 6d 52 45 41 44 4d 45 1b 5b 30 6d 20 20 ff fe 0d 0a 24 20"
    assert out.hex(" ") == hex_in_doc and hex_in_doc in DOC.read_text()
    assert f"the {len(out)} bytes" in DOC.read_text()
    frame = events[4]["data"]  # event 5, written as a frame
    assert frame == b"README.md  docs  proxy  recorder  tests\n"
    assert f"is `{frame.decode().strip()}`" in DOC.read_text()
    assert f"prints `{hashlib.sha256(frame).hexdigest()[:8]}…" in DOC.read_text()


def test_doc_hash_table_and_signed_messages_are_exact(example):
    path, keys = example
    text = DOC.read_text()
    lines = [e.split(b"\n")[0] + b"\n" for e in split_events(path.read_bytes())]
    assert len(lines) == 9
    assert f"`{hashlib.sha256(lines[0]).hexdigest()[:8]}…" in text  # the head -n 1 check
    for i, line in enumerate(lines):
        h = hashlib.sha256(line).hexdigest()
        assert re.search(rf"\| {i} \| \w+ +\| `{h}`", text), f"hash of line {i} not in the table"
        if i + 1 < len(lines):
            assert json.loads(lines[i + 1])["prev"] == h
    for i in (1, 8):
        ev = json.loads(lines[i])
        msg = f"breakglass-recording/2 {ev['kind']} {i} {ev['prev']}"
        assert msg in text
        keys["recorder-1"].verify(bytes.fromhex(ev["sig"]), msg.encode("ascii"))


def test_independent_verifier_agrees(example, auditor, tmp_path):
    path, keys = example
    assert auditor(path, keys) == "OK: 9 lines"

    key = Ed25519PrivateKey.generate()
    ours = {"k": key.public_key()}
    rec = tmp_path / "r.rec"
    w = RecordingWriter.create(rec, {"user": "bob"}, key, "k", checkpoint_events=5)
    for i in range(30):
        w.output(bytes([i]) * 40)
    w.close("done")
    assert verify_recording(rec, ours).ok
    assert auditor(rec, ours).startswith("OK")

    lines = rec.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"".join(lines[:10] + lines[11:]))
    assert auditor(bad, ours).startswith("FAIL: chain broken at line 10")
    bad.write_bytes(b"".join(lines[:-1]))
    assert auditor(bad, ours).startswith("FAIL: no trailer")
    assert auditor(rec, {}).startswith("FAIL: line 1 signed by unknown key")
    sig = json.loads(lines[-1])["sig"]
    bad.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(sig.encode(), sig[::-1].encode()))
    with pytest.raises(InvalidSignature):
        auditor(bad, ours)


def test_independent_verifier_checks_frames(auditor, tmp_path):
    key = Ed25519PrivateKey.generate()
    ours = {"k": key.public_key()}
    rec = tmp_path / "frames.rec"
    w = RecordingWriter.create(rec, {"user": "bob"}, key, "k", checkpoint_events=5)
    for i in range(12):
        w.output(os.urandom(5000 + i * 1000) + b"\n" * 3)  # frames with line feeds inside
        w.input(b"k")
    w.close("done")
    assert verify_recording(rec, ours).ok
    assert auditor(rec, ours) == f"OK: {len(split_events(rec.read_bytes()))} lines"

    events = split_events(rec.read_bytes())
    k = next(i for i, e in enumerate(events) if b'"raw_len"' in e.split(b"\n")[0])
    bad = tmp_path / "bad.rec"
    flipped = bytearray(events[k])
    flipped[-7] ^= 1
    bad.write_bytes(b"".join([*events[:k], bytes(flipped), *events[k + 1 :]]))
    assert auditor(bad, ours) == f"FAIL: frame of line {k} altered or incomplete"
    os.chmod(bad, 0o440)
    r = verify_recording(bad, ours)
    assert (r.problem, r.event_index) == ("altered", k)


def test_format_1_recordings_still_read_and_verify(auditor, tmp_path):
    """A recording of the first format (no frames; signatures over "breakglass-recording/1")
    verifies, reads and is checked by the independent verifier as before."""
    path = tmp_path / "v1.rec"
    path.write_bytes(FORMAT1_EXAMPLE.read_bytes())
    os.chmod(path, 0o440)
    keys = {"recorder-1": load_pem_public_key(block_after("example-public-key").encode())}
    r = verify_recording(path, keys)
    assert r.ok and (r.events, r.checkpoints) == (8, 1), r.message
    assert r.header["format"] == "breakglass-recording/1"
    assert [e["data"] for e in read_events(path) if e["kind"] == "input"] == [b"ls\r"]
    assert auditor(path, keys) == "OK: 8 lines"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"data":"bHMN', b'"data":"bHMO')
    os.chmod(path, 0o640)
    path.write_bytes(b"".join(lines))
    os.chmod(path, 0o440)
    assert (verify_recording(path, keys).problem, verify_recording(path, keys).event_index) == (
        "altered",
        4,
    )


def test_independent_verifier_accepts_audit_segments_of_every_writer(auditor, tmp_path):
    """Audit segments (streaming and shared CLI ones, with the chain fields in their header)
    are recordings the documented verifier checks as they are."""
    from breakglass.recorder.audit import AuditLog, segments

    key = Ed25519PrivateKey.generate()
    ours = {"k": key.public_key()}
    d = tmp_path / "audit"
    gw = AuditLog(d, key, "k", writer="gateway-gw-w0", rotate_events=4)
    for i in range(6):
        gw.append("session.start", session=f"s{i}", blob=b"\x00")
    gw.close()
    for i in range(8):
        with AuditLog(d, key, "k", writer="cli", shared=True, rotate_events=8) as cli:
            cli.append("grant.revoked", jti=f"j{i}", actor="carol")
    finished = [s for s in segments(d) if not os.stat(s).st_mode & 0o200]
    assert len(finished) >= 3
    for seg in segments(d):
        want = f"OK: {len(seg.read_bytes().splitlines())} lines"
        if seg in finished:
            assert auditor(seg, ours) == want
        else:  # the open CLI segment: every line signed, no trailer yet
            n = len(seg.read_bytes().splitlines())
            assert auditor(seg, ours) == f"FAIL: no trailer; signed through line {n - 1}"
