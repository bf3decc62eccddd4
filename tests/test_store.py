"""Recordings and audit segments on S3 with Object Lock (a real SeaweedFS server): streamed while
they are written, locked, anchored off-host, verified from the store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.recorder import format as fmt
from breakglass.recorder.anchor_verify import check_local, verify_store
from breakglass.recorder.store import StoreConfig, error_code
from breakglass.recorder.store_read import pull
from breakglass.recorder.uploader import Uploader
from breakglass.recorder.writer import RecordingWriter
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant
from tests.harness import GatewayThread
from tests.pg_client import client_tls

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
    evil = "t1/recordings/.evil.rec/0000000000000000-0000000000000005"
    gw.put_object(Bucket=s3_server.bucket, Key=evil, Body=b"evil!")
    pulled, verdicts = await verify_store(reader, tmp_path / "v2", trusted)
    assert pulled.files[("recordings", "s1.rec")].path.read_bytes() == local
    v, planted = verdicts
    assert (
        not planted.ok
        and planted.name == evil
        and "not a name a gateway writes" in (planted.messages[0])
    )
    assert not (tmp_path / "v2" / "recordings" / ".evil.rec").exists()
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
    from breakglass.recorder.verify import verify_recording

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


# --------------------------------------------------------------------------- a real gateway


def _gateway_config(s3, prefix: str, **store) -> callable:
    """``edit_config`` for GatewayThread/build_local_workdir: a store under ``prefix``."""
    a, s = s3.keys["gateway"]
    cred = Path(s3.dir) / f"cred-gw-{prefix}"
    cred.write_text(f"[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\n")
    opts = {
        "url": f"s3://{s3.bucket}/{prefix}",
        "endpoint_url": s3.endpoint_url,
        "region": s3.region,
        "credentials_file": str(cred),
        "retention": "compliance:1d",
        "upload_lag": 0.5,
        "anchor_interval": 0.1,
        "timeout": 2,
        **store,
    }

    def edit(text: str) -> str:
        text = text.replace("checkpoint_interval = 1.0", "checkpoint_interval = 0.1", 1)
        body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items())
        return text + "\n[recorder.store]\n" + body

    return edit


class _Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


_cli_lock = threading.Lock()


def _cli(config: Path, *args: str, env: dict | None = None) -> _Ran:
    """``breakglass -c CONFIG ARGS`` in this process (the interpreter start-up of a subprocess
    costs seconds here), with ``env`` set for its duration (e.g. read-only S3 credentials)."""
    from breakglass.cli.main import main

    with _cli_lock, contextlib.redirect_stdout(io.StringIO()) as out:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            saved = {k: os.environ.get(k) for k in env or {}}
            os.environ.update(env or {})
            try:
                rc = main(["-c", str(config), *args])
            except SystemExit as e:
                rc = int(e.code or 0)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
    return _Ran(rc, out.getvalue(), err.getvalue())


async def _acli(config: Path, *args: str, env: dict | None = None) -> _Ran:
    return await asyncio.to_thread(_cli, config, *args, env=env)


async def _connect(cfg, token: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=cfg.postgres_listen.port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(cfg.tls_cert),
    )


def _segment_ends(s3, prefix: str, name: str, area: str = "recordings") -> list[int]:
    base = f"{prefix}/{area}/{name}/"
    return sorted(int(k.rsplit("-", 1)[1]) for k in _objects(s3, prefix) if k.startswith(base))


async def test_gateway_streams_survives_store_outage_and_reads_back(s3_server, pg_server, tmp_path):
    """A real gateway streams a psql session to the store while it runs; the store stops
    answering: the session goes on against the local spool; the store comes back: uploads
    resume, and `breakglass verify s3://...` (read-only credentials) passes for the recording
    and the audit log; `store pull` rebuilds them for every reading command."""
    gw = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=_gateway_config(s3_server, "g1"))
    gw.start()
    try:
        conn = await _connect(gw.cfg, gw.grant(ttl=600))
        sid = gw.sessions()[0]["id"]
        assert await conn.fetchval("select count(*) from orders") >= 0
        await _wait(lambda: _segment_ends(s3_server, "g1", f"{sid}.rec"), what="first segment")
        s3_server.pause()
        try:
            t0 = time.monotonic()
            for i in range(20):  # the store is down: the session does not notice
                assert await conn.fetchval("select $1::int + 1", i) == i + 1
            assert time.monotonic() - t0 < 5
        finally:
            s3_server.resume()
        await conn.close()
        gw.wait_idle()
        size = (gw.cfg.recordings_dir / f"{sid}.rec").stat().st_size
        await _wait(
            lambda: (_segment_ends(s3_server, "g1", f"{sid}.rec") or [0])[-1] == size,
            timeout=30,
            what="uploads to resume and reach the trailer",
        )
    finally:
        gw.stop()
    cfg_path = gw.dir / "config.toml"
    reader = s3_server.env("reader")
    # Each gateway start is recorded in the store, locked like the rest.
    assert any(k.startswith("g1/gateways/test-gw/") for k in _objects(s3_server, "g1"))
    r = await _acli(cfg_path, "verify", f"s3://{s3_server.bucket}/g1", env=reader)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"recordings/{sid}.rec" in r.stdout and "/audit/" in r.stdout
    assert "off-host anchor" in r.stdout
    r = await _acli(cfg_path, "verify", f"s3://{s3_server.bucket}/g1/{sid}", "--json", env=reader)
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = json.loads(r.stdout)
    assert row["ok"] and row["name"] == f"{sid}.rec" and row["anchors"] > 0
    # The gateway's own credentials cannot read the store (least privilege).
    r = await _acli(
        cfg_path, "verify", f"s3://{s3_server.bucket}/g1/{sid}", env=s3_server.env("gateway")
    )
    assert r.returncode != 0 and "AccessDenied" in r.stdout + r.stderr
    # Reading commands: pull, then point the config at the pulled copy.
    pulled = tmp_path / "pulled"
    r = await _acli(
        cfg_path, "store", "pull", f"s3://{s3_server.bucket}/g1", str(pulled), env=reader
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (pulled / "recordings" / f"{sid}.rec").read_bytes() == (
        gw.cfg.recordings_dir / f"{sid}.rec"
    ).read_bytes()
    text = cfg_path.read_text().replace(
        'directory = "recordings"', f'directory = "{pulled}/recordings"', 1
    )
    text = text.replace('audit_directory = "audit"', f'audit_directory = "{pulled}/audit"', 1)
    reading = gw.dir / "reading.toml"
    reading.write_text(text)
    r = await _acli(reading, "sessions", "--json")
    assert r.returncode == 0, r.stderr
    assert sid in r.stdout
    r = await _acli(reading, "search", "orders")
    assert r.returncode == 0 and sid in r.stdout, r.stdout + r.stderr
    r = await _acli(reading, "audit", "--type", "session.start")
    assert r.returncode == 0 and sid in r.stdout, r.stdout + r.stderr
    r = await _acli(reading, "export", sid, "--format", "jsonl")
    assert r.returncode == 0 and "count(*) from orders" in r.stdout, r.stdout + r.stderr
    r = await _acli(reading, "index", "--rebuild")
    assert r.returncode == 0, r.stdout + r.stderr


async def test_spool_full_ends_sessions_and_refuses_new_ones(s3_server, pg_server, tmp_path):
    """The store is down and the spool passes its limit: the running session is ended with a
    clear message, a new one is refused; everything the client saw is in the local recording;
    once the store is back and the spool drains, sessions are allowed again."""
    gw = GatewayThread(
        tmp_path / "gw",
        pg=pg_server,
        edit_config=_gateway_config(s3_server, "g2", spool_limit="4KiB"),
    )
    gw.start()
    try:
        conn = await _connect(gw.cfg, gw.grant(ttl=600))
        sid = gw.sessions()[0]["id"]
        s3_server.pause()
        answered: list[int] = []
        try:
            pad = "x" * 200
            ended = (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,  # the FATAL arrived while a query was in flight
                OSError,
            )
            with pytest.raises(ended) as e:
                for i in range(400):  # bounded: the spool passes 4 KiB within a few queries
                    assert await conn.fetchval(f"select {i} as n /* {pad} */") == i
                    answered.append(i)
                    await asyncio.sleep(0.02)
            assert gw.gw.uploader.spool_full(), repr(e.value)
            with pytest.raises(asyncpg.PostgresError) as e:
                await _connect(gw.cfg, gw.grant(ttl=600))
            assert "is not keeping up" in str(e.value) and "new sessions refused" in str(e.value)
        finally:
            s3_server.resume()
        from breakglass.recorder.reader import read_events

        gw.wait_idle()
        texts = " ".join(
            str(ev.get("text", ""))
            for ev in read_events(gw.cfg.recordings_dir / f"{sid}.rec")
            if ev["kind"] == "query"
        )
        assert answered and all(f"select {i} as n" in texts for i in answered)
        await _wait(lambda: not gw.gw.uploader.spool_full(), timeout=30, what="spool to drain")
        conn = await _connect(gw.cfg, gw.grant(ttl=600))
        assert await conn.fetchval("select 1") == 1
        await conn.close()
    finally:
        gw.stop()
    events = await _acli(gw.dir / "config.toml", "audit", "--type", "store.", "--json")
    types = [e["type"] for e in json.loads(events.stdout)]
    assert "store.spool_full" in types and "store.spool_ok" in types
    ends = await _acli(gw.dir / "config.toml", "audit", "--type", "session.end", "--json")
    [end] = [e for e in json.loads(ends.stdout) if e["session"] == sid]
    assert "spool" in end["reason"], end


async def test_kill_9_gateway_then_verify_names_the_gap(s3_server, pg_server, tmp_path):
    """kill -9 of a real gateway process mid-session: the store holds what was uploaded, and
    `verify s3://` names the events anchored off-host but never uploaded; after a restart the
    pending uploads resume and the store holds the recording up to its last checkpoint."""
    d = tmp_path / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=None, name="test-gw")
    path = d / "config.toml"
    path.write_text(_gateway_config(s3_server, "g3", upload_lag=3)(path.read_text()))
    from breakglass.proxy.config import load_config

    cfg = load_config(path)

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "breakglass.cli.main",
                "-c",
                str(path),
                "gateway",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return proc

    proc = start()
    try:
        deadline = time.monotonic() + 90  # a loaded CI machine takes a while to import
        conn = None
        while conn is None:  # bounded: the gateway is up
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                conn = await _connect(cfg, issue_local_grant(cfg, "db-readonly", "shop", ttl=600))
            except OSError:
                assert time.monotonic() < deadline, "gateway did not start"
                await asyncio.sleep(0.1)
        [rec] = list(cfg.recordings_dir.glob("*.rec"))
        name = rec.name
        await _wait(lambda: _segment_ends(s3_server, "g3", name), what="first segment")
        seen: dict[str, int] = {}

        def anchored_beyond() -> int | None:
            """The uploaded end, if an anchor lies past it (anchored, not yet uploaded)."""
            c = s3_server.client("admin")
            uploaded = _segment_ends(s3_server, "g3", name)[-1]
            for k in _objects(s3_server, f"g3/anchors/recordings/{name}"):
                if k not in seen:
                    body = c.get_object(Bucket=s3_server.bucket, Key=k)["Body"].read()
                    seen[k] = json.loads(body)["end"]
            return uploaded if max(seen.values(), default=0) > uploaded else None

        for _ in range(300):  # bounded: keep the session busy until the window is there
            await conn.fetchval("select count(*) from orders")
            uploaded = anchored_beyond()
            if uploaded is not None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no anchor ever got ahead of the uploaded segments")
        proc.kill()  # kill -9: no shutdown, no final upload
        proc.wait(10)
        conn.terminate()
        reader = s3_server.env("reader")
        r = await _acli(path, "verify", f"s3://{s3_server.bucket}/g3/{rec.stem}", env=reader)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "are missing: the gateway anchored them off-host" in r.stdout, r.stdout
        assert "truncated" in r.stdout or "not finalized" in r.stdout, r.stdout

        proc = start()  # the restarted gateway resumes the pending upload
        size = rec.stat().st_size
        await _wait(
            lambda: _segment_ends(s3_server, "g3", name)[-1] > uploaded,
            timeout=30,
            what="resumed upload",
        )
        r = await _acli(path, "verify", f"s3://{s3_server.bucket}/g3/{rec.stem}", env=reader)
        assert r.returncode == 1  # still no trailer: the writer died
        assert "are missing" not in r.stdout, r.stdout  # every anchored event is there now
        assert "truncated" in r.stdout, r.stdout
        assert _segment_ends(s3_server, "g3", name)[-1] <= size
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


async def test_file_cut_back_by_the_writer_is_rescanned(s3_server, tmp_path):
    """The writer cuts a failed write back off the file (disk full): the uploader forgets what
    it scanned past the new end and uploads only what the file still holds."""
    from breakglass.recorder.uploader import _Scan, scan_file

    key = Ed25519PrivateKey.generate()
    src = tmp_path / "src.rec"
    w = _writer(src, key, checkpoint_events=3)
    for i in range(12):
        w.query(text=f"select {i}")
    w.close("done")
    data = src.read_bytes()
    with open(src, "rb") as fh:
        heads = scan_file(fh, _Scan(), len(data))
    rec_dir = tmp_path / "recordings"
    rec_dir.mkdir()
    path = rec_dir / "s4.rec"
    path.write_bytes(b"")  # a session just started: its bytes wait upload_lag from here
    cfg = _store(s3_server, "t4", upload_lag=60)
    up = await Uploader(cfg, [(rec_dir, ".rec")], poll=0.05).start()
    try:
        await _wait(lambda: path in up.files, what="the uploader to follow the file")
        path.write_bytes(data[: heads[-2].end])  # live: no trailer yet
        await _wait(
            lambda: path in up.files and up.files[path].scan.offset == heads[-2].end,
            what="the scan",
        )
        f = up.files[path]  # let the pass that scanned it finish its anchor (and upload)
        await _wait(lambda: up.anchors >= 1 and f.task is not None and f.task.done(), what="ship")
        os.truncate(path, heads[1].end)
        await _wait(lambda: up.files[path].scan.offset == heads[1].end, what="the re-scan")
        assert up.uploads == 0  # nothing went up before the lag: the cut is mended locally
    finally:
        await up.close()
    assert _segment_ends(s3_server, "t4", "s4.rec") == [heads[1].end]


async def test_gateway_refuses_to_start_on_a_store_that_refuses(s3_server, pg_server, tmp_path):
    """A bucket that does not exist (or no Object Lock, or wrong credentials): the gateway says
    so at start instead of accepting sessions it could never store."""
    from breakglass.proxy.config import ConfigError

    edit = _gateway_config(s3_server, "g5")
    gw = GatewayThread(
        tmp_path / "bad",
        pg=pg_server,
        edit_config=lambda t: edit(t).replace(f"s3://{s3_server.bucket}/", "s3://no-such-bucket/"),
    )
    with pytest.raises(ConfigError) as e:
        gw.start()
    gw.stop()
    text = str(e.value)
    assert "recorder.store:" in text and "refuses a locked upload" in text
    assert "NoSuchBucket" in text or "AccessDenied" in text  # SeaweedFS says the latter
