"""Recordings and audit segments on S3 with Object Lock (a real SeaweedFS server): streamed while
they are written, locked, anchored off-host, verified from the store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorder import format as fmt
from recorder.anchor_verify import check_local, verify_store
from recorder.store import StoreConfig, error_code
from recorder.store_read import pull
from recorder.uploader import Uploader
from recorder.writer import RecordingWriter

pytestmark = pytest.mark.timeout(90)


def _store(s3, prefix: str, **kw) -> StoreConfig:
    cred = Path(s3.dir) / f"cred-{prefix.replace('/', '-')}"
    if not cred.exists():
        a, s = s3.keys["gateway"]
        cred.write_text(f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n")
    return StoreConfig(
        bucket=s3.bucket,
        prefix=prefix,
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        credentials_file=cred,
        retention_mode="COMPLIANCE",
        retention_days=1,
        **kw,
    )


def _reader(s3, cfg: StoreConfig) -> StoreConfig:
    """The same store, with the read-only identity (what reviewers get)."""
    a, s = s3.keys["reader"]
    cred = Path(s3.dir) / "cred-reader"
    cred.write_text(f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n")
    return StoreConfig(**{**cfg.__dict__, "credentials_file": cred})


def _objects(s3, prefix: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    c = s3.client("admin")
    for page in c.get_paginator("list_object_versions").paginate(
        Bucket=s3.bucket, Prefix=prefix + "/"
    ):
        for v in page.get("Versions", []):
            out.setdefault(v["Key"], []).append(v)
    return out


async def _wait(pred, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _writer(path: Path, key: Ed25519PrivateKey, **kw) -> RecordingWriter:
    return RecordingWriter.create(
        path, {"session_id": path.stem}, key, "rec-1", checkpoint_interval=0.1, **kw
    )


async def test_streamed_segments_are_locked_and_whole(s3_server, tmp_path):
    """Segments go up while the recording is written (raw frames included), each written once
    with COMPLIANCE retention; the store rebuilds the file byte for byte; nobody, not even the
    bucket admin, can delete or shorten the retention of a segment; an overwrite attempt and a
    delete marker are reported while the locked original is what is read and verified; and a
    deleted local spool file changes nothing once uploaded."""
    key = Ed25519PrivateKey.generate()
    trusted = {"rec-1": key.public_key()}
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    cfg = _store(s3_server, "t1", upload_lag=0.5, anchor_interval=0.1)
    up = await Uploader(cfg, [(rec_dir, ".rec")], poll=0.05).start()
    try:
        w = _writer(rec_dir / "s1.rec", key)
        w.input(b"ls -l\r")
        w.output(os.urandom(20000))  # a raw frame (format /2)
        w.query(text="select 1", rows=1)
        await _wait(lambda: up.uploads >= 1, what="a segment while the recording is live")
        assert not w.closed
        for i in range(50):
            w.output(b"line %d\r\n" % i)
        w.close("done")
        await _wait(lambda: (rec_dir / "s1.rec") in up.finished, what="the trailer upload")
    finally:
        await up.close()
    local = (rec_dir / "s1.rec").read_bytes()
    objs = _objects(s3_server, "t1")
    segs = sorted(k for k in objs if k.startswith("t1/recordings/s1.rec/"))
    assert len(segs) >= 2, segs
    anchors = [k for k in objs if k.startswith("t1/anchors/recordings/s1.rec/")]
    assert anchors
    admin = s3_server.client("admin")
    first = objs[segs[0]][0]
    ret = admin.get_object_retention(
        Bucket=s3_server.bucket, Key=segs[0], VersionId=first["VersionId"]
    )
    assert ret["Retention"]["Mode"] == "COMPLIANCE"

    # The attacks: delete the version, shorten/downgrade its retention -> AccessDenied.
    for identity in ("admin", "gateway"):
        c = s3_server.client(identity)
        with pytest.raises(Exception) as e:
            c.delete_object(Bucket=s3_server.bucket, Key=segs[0], VersionId=first["VersionId"])
        assert error_code(e.value) == "AccessDenied"
    with pytest.raises(Exception) as e:
        admin.put_object_retention(
            Bucket=s3_server.bucket,
            Key=segs[0],
            VersionId=first["VersionId"],
            Retention={
                "Mode": "GOVERNANCE",
                "RetainUntilDate": ret["Retention"]["RetainUntilDate"],
            },
        )
    assert error_code(e.value) == "AccessDenied"

    # Deleting the local spool file does not matter: the store has it all.
    os.chmod(rec_dir / "s1.rec", 0o640)
    (rec_dir / "s1.rec").unlink()
    reader = _reader(s3_server, cfg)
    pulled, verdicts = await verify_store(reader, tmp_path / "v1", trusted)
    assert pulled.files[("recordings", "s1.rec")].path.read_bytes() == local
    [v] = verdicts
    assert v.ok, v.messages
    assert "off-host anchor" in " ".join(v.messages)

    # Overwrite attempt (a new version over the locked one) and a delete marker: reported as
    # tampering attempts; the original is what is read.
    gw = s3_server.client("gateway")
    gw.put_object(Bucket=s3_server.bucket, Key=segs[0], Body=b"forged")
    admin.delete_object(Bucket=s3_server.bucket, Key=segs[-1])
    pulled, verdicts = await verify_store(reader, tmp_path / "v2", trusted)
    assert pulled.files[("recordings", "s1.rec")].path.read_bytes() == local
    [v] = verdicts
    assert not v.ok
    text = " ".join(v.messages)
    assert "written again with other content" in text and "tried to delete" in text
    assert v.result is not None and v.result.ok  # the locked original itself verifies


def _resign(src: Path, dst: Path, key: Ed25519PrivateKey, key_id: str, edit) -> None:
    """Rewrite a recording (no raw frames) with ``edit(obj)`` applied, re-chained and re-signed
    with ``key``: what someone holding a recorder key could forge."""
    prev = fmt.ZERO_HASH
    out = []
    for seq, raw in enumerate(src.read_bytes().splitlines(keepends=True)):
        obj = json.loads(raw)
        assert fmt.RAW_LEN not in obj
        obj = edit(obj)
        obj["prev"] = prev
        if obj["kind"] in (fmt.CHECKPOINT, fmt.TRAILER):
            obj["key_id"] = key_id
            obj["sig"] = key.sign(fmt.signed_message(obj["kind"], seq, prev)).hex()
        if seq == 0:
            obj["key_id"] = key_id
        line = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        out.append(line)
        prev = hashlib.sha256(line).hexdigest()
    dst.write_bytes(b"".join(out))


async def test_resigned_recording_fails_against_anchors(s3_server, tmp_path):
    """Someone with the recorder key (stolen, or a new key slipped into the trusted set)
    rewrites a recording and signs it again: it verifies with the keys alone, but its heads do
    not match the ones anchored off-host, so it is reported as tampered; uploading the forgery
    over the store's objects only adds versions the verifier flags."""
    from recorder.verify import verify_recording

    key = Ed25519PrivateKey.generate()
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    cfg = _store(s3_server, "t2", upload_lag=0.3, anchor_interval=0.1)
    up = await Uploader(cfg, [(rec_dir, ".rec")], poll=0.05).start()
    try:
        w = _writer(rec_dir / "s2.rec", key)
        w.query(text="delete from orders where id = 7", rows=1)
        w.close("done")
        await _wait(lambda: (rec_dir / "s2.rec") in up.finished, what="upload")
    finally:
        await up.close()
    forger = Ed25519PrivateKey.generate()
    forged = tmp_path / "forged" / "s2.rec"
    forged.parent.mkdir()

    def edit(obj):
        if obj.get("kind") == "query":
            obj["text"] = "select 1"
        return obj

    _resign(rec_dir / "s2.rec", forged, forger, "rec-2", edit)
    keys = {"rec-1": key.public_key(), "rec-2": forger.public_key()}
    assert verify_recording(forged, keys).ok  # the keys alone cannot tell

    reader = _reader(s3_server, cfg)
    pulled = await pull(reader, tmp_path / "a", segments=False)
    [(_, check)] = check_local([forged], pulled)
    assert not check.ok and check.problem == "tampered", check.message
    assert "anchored off-host" in check.message
    [(_, good)] = check_local([rec_dir / "s2.rec"], pulled)
    assert good.ok, good.message

    # The forger puts the re-signed file over the stored segment(s): the store keeps the
    # locked original, and verify says someone tried.
    gw = s3_server.client("gateway")
    data = forged.read_bytes()
    for k in _objects(s3_server, "t2"):
        if k.startswith("t2/recordings/s2.rec/"):
            s, e = map(int, k.rsplit("/", 1)[1].split("-"))
            gw.put_object(Bucket=s3_server.bucket, Key=k, Body=data[s:e])
    _, verdicts = await verify_store(reader, tmp_path / "v", keys)
    [v] = verdicts
    assert not v.ok and v.problem == "tampered"
    assert "written again" in " ".join(v.messages)
