"""Reading commands on the object store (a real SeaweedFS server with Object Lock): `sessions`,
`replay`, `export`, `search`, `index` read `s3://` (or `[recorder.store]`) as they read a
directory, with what they read checked against the bucket's history and the off-host anchors."""

from __future__ import annotations

import json
import os

import pytest

from tests.harness import GatewayThread
from tests.test_store import _acli, _connect, _gateway_config, _objects, _segment_ends, _wait

pytestmark = pytest.mark.timeout(120)


def _audit_start_in_store(s3, prefix: str, gw: GatewayThread, sid: str) -> bool:
    """The store holds the local audit log through the signed line after ``sid``'s start."""
    for log in gw.cfg.audit_dir.glob("*.audit"):
        data = log.read_bytes()
        at = data.find(b'"session.start"')
        while at >= 0 and sid.encode() not in data[at : data.find(b"\n", at)]:
            at = data.find(b'"session.start"', at + 1)
        if at < 0:
            continue
        signed = data.find(b'"kind":"checkpoint"', at)
        if signed < 0:
            return False
        covered = data.find(b"\n", signed) + 1
        ends = _segment_ends(s3, prefix, log.name, area="audit")
        return bool(ends) and ends[-1] >= covered
    return False


async def _recorded_session(s3, pg, tmp_path, prefix: str, needle: str, live_check=False):
    """A psql session through a real gateway streaming to the store, all of it uploaded;
    the gateway stopped. Returns (gateway, session id, local recording)."""
    gw = GatewayThread(tmp_path / "gw", pg=pg, edit_config=_gateway_config(s3, prefix))
    gw.start()
    try:
        conn = await _connect(gw.cfg, gw.grant(ttl=600))
        sid = gw.sessions()[0]["id"]
        assert await conn.fetchval(f"select count(*) /* {needle} */ from orders") >= 0
        if live_check:  # the store while the session runs: listed, live, not called ok
            await _wait(lambda: _segment_ends(s3, prefix, f"{sid}.rec"), what="a first segment")
            # the store's audit log says the session started (its upload can trail the
            # recording's: until then the store alone cannot tell running from truncated)
            await _wait(lambda: _audit_start_in_store(s3, prefix, gw, sid), what="the audit")
            env = {**s3.env("reader"), "XDG_CACHE_HOME": str(tmp_path / "cache-live")}
            r = await _acli(gw.dir / "config.toml", "sessions", "--store", "--json", env=env)
            assert r.returncode == 0, r.stdout + r.stderr
            [row] = [x for x in json.loads(r.stdout) if x["session_id"] == sid]
            assert row["integrity"] == "live" and row["live"], row
            assert "in the store through its last checkpoint" in row["problem_message"], row
            r = await _acli(
                gw.dir / "config.toml", "export", sid, "--store", "--format", "jsonl", env=env
            )
            assert r.returncode == 0 and needle in r.stdout, r.stdout + r.stderr
            assert "NOTE: in the store through its last checkpoint" in r.stderr
        await conn.close()
        gw.wait_idle()
        rec = gw.cfg.recordings_dir / f"{sid}.rec"
        # finalized (trailer written, made read-only) before its size is the one to wait for
        await _wait(lambda: not rec.stat().st_mode & 0o222, what="the recording finalized")
        size = rec.stat().st_size
        await _wait(
            lambda: (_segment_ends(s3, prefix, f"{sid}.rec") or [0])[-1] == size,
            timeout=30,
            what="the recording up to its trailer in the store",
        )
    finally:
        gw.stop()
    return gw, sid, rec


async def test_reading_commands_read_the_store(s3_server, pg_server, tmp_path):
    """A session recorded through a real gateway streaming to the store; the local spool is
    deleted. `sessions --store`, `search --store`, `index --store`, `export s3://.../SESSION`
    and plain `replay SESSION` (not in the spool: read from [recorder.store]) work from the
    store with read-only credentials; a copy altered in the local cache is fetched again; an
    object written over a locked one in the store is reported by every command, and replay
    and export refuse the recording unless --force."""
    prefix = "rd1"
    gw, sid, rec = await _recorded_session(
        s3_server, pg_server, tmp_path, prefix, "needle-rd1", live_check=True
    )
    original = rec.read_bytes()
    rec.unlink()  # the local spool is gone: only the store has the recording
    cfg_path = gw.dir / "config.toml"
    cache = tmp_path / "cache"
    env = {**s3_server.env("reader"), "XDG_CACHE_HOME": str(cache)}
    url = f"s3://{s3_server.bucket}/{prefix}"

    r = await _acli(cfg_path, "sessions", "--json", env=env)  # the local view: gone
    [row] = [x for x in json.loads(r.stdout) if x["session_id"] == sid]
    assert row["integrity"] == "missing", row

    r = await _acli(cfg_path, "sessions", "--store", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    [row] = [x for x in json.loads(r.stdout) if x["session_id"] == sid]
    assert row["integrity"] == "ok" and row["user"] == "erin" and row["statements"] >= 1, row
    [copy] = cache.glob(f"breakglass/store/*/recordings/{sid}.rec")
    assert copy.read_bytes() == original
    assert oct(copy.parent.parent.stat().st_mode & 0o777) == "0o700"

    r = await _acli(cfg_path, "search", "needle-rd1", "--store", url, env=env)
    assert r.returncode == 0 and sid in r.stdout and "INTEGRITY" not in r.stdout, r.stdout
    r = await _acli(cfg_path, "index", "--store", "--rebuild", env=env)
    assert r.returncode == 0 and f"in {url}" in r.stdout, r.stdout + r.stderr

    r = await _acli(cfg_path, "replay", sid, env=env)  # not in the spool: from [recorder.store]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "needle-rd1" in r.stdout and f"reading it from {url}" in r.stderr
    r = await _acli(cfg_path, "export", f"{url}/{sid}", "--format", "jsonl", env=env)
    assert r.returncode == 0 and "needle-rd1" in r.stdout, r.stdout + r.stderr

    # The cached copy is altered on disk: it no longer matches the store's ETags and is
    # fetched again (the altered text is never shown).
    os.chmod(copy, 0o640)
    copy.write_bytes(original.replace(b"needle-rd1", b"needle-XXX"))
    r = await _acli(cfg_path, "export", sid, "--store", "--format", "jsonl", env=env)
    assert r.returncode == 0 and "needle-rd1" in r.stdout and "needle-XXX" not in r.stdout
    assert copy.read_bytes() == original

    # Each look at the recording is in the (local) audit log, with the store searched.
    r = await _acli(cfg_path, "audit", "--type", "recording.", "--json")
    kinds = [(e["type"], e.get("session"), e.get("store")) for e in json.loads(r.stdout)]
    assert ("recording.replayed", sid, None) in kinds
    assert ("recording.searched", None, url) in kinds

    # An object written over a locked segment (gateway credentials can put, not delete):
    # the locked original is what is read, and every command says the store was tampered.
    segs = sorted(k for k in _objects(s3_server, prefix) if k.startswith(f"{prefix}/recordings/"))
    s3_server.client("gateway").put_object(Bucket=s3_server.bucket, Key=segs[0], Body=b"forged")
    r = await _acli(cfg_path, "sessions", "--store", "--json", env=env)
    [row] = [x for x in json.loads(r.stdout) if x["session_id"] == sid]
    assert row["integrity"] == "tampered", row
    assert "written again with other content" in row["problem_message"]
    r = await _acli(cfg_path, "sessions", "--store", env=env)
    assert "TAMPERED" in r.stdout and "written again" in r.stderr, r.stdout + r.stderr
    r = await _acli(cfg_path, "search", "needle-rd1", "--store", env=env)
    assert "[INTEGRITY: TAMPERED]" in r.stdout, r.stdout
    r = await _acli(cfg_path, "replay", sid, "--store", env=env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "FAILED verification against the store" in r.stderr and "needle" not in r.stdout
    r = await _acli(cfg_path, "export", f"{url}/{sid}", "--format", "jsonl", "--force", env=env)
    assert r.returncode == 0 and "needle-rd1" in r.stdout and "forged" not in r.stdout
    assert "WARNING: THIS RECORDING FAILED VERIFICATION AGAINST THE STORE" in r.stderr
    r = await _acli(cfg_path, "index", "--store", env=env)
    assert r.returncode == 1 and f"FAIL  {sid}  tampered" in r.stdout, r.stdout + r.stderr


async def test_store_option_needs_a_store(pg_server, tmp_path):
    """`--store` without a URL on a config with no [recorder.store]: a clear error, no
    traceback; an `s3://` reference to replay must name a session."""
    from breakglass.throwaway.workdir import build_local_workdir

    build_local_workdir(tmp_path / "w", pg=pg_server, ssh=None)
    cfg = tmp_path / "w" / "config.toml"
    r = await _acli(cfg, "sessions", "--store")
    assert r.returncode == 1 and "--store needs s3://BUCKET/PREFIX" in r.stderr, r.stderr
    r = await _acli(cfg, "replay", "s3://some-bucket")
    assert r.returncode == 1 and "name a session" in r.stderr, r.stderr
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    r = await _acli(
        cfg, "sessions", "--store", "s3://some-bucket/p", env={"XDG_CACHE_HOME": str(blocked)}
    )
    assert r.returncode == 1 and "cannot create the store cache" in r.stderr, r.stderr


async def test_rewritten_recording_in_the_store_fails_against_the_anchors(
    s3_server, pg_server, tmp_path
):
    """Someone with the gateway's S3 credentials and its recorder key rewrites a recording
    (a statement replaced), signs it again and uploads it as one longer segment (a new object
    name, so no later version gives it away): its own chain and signatures verify, but its
    heads do not match the anchors written while the session ran, so `sessions --store`
    lists it as tampered and `replay` refuses it."""
    from breakglass.proxy.context import recorder_key
    from tests.test_store import _resign

    prefix = "rd2"
    gw, sid, rec = await _recorded_session(s3_server, pg_server, tmp_path, prefix, "needle-rd2")
    key = recorder_key(gw.cfg)
    forged = tmp_path / "forged.rec"

    def edit(obj):
        if obj.get("kind") == "query":
            obj["text"] = obj["text"].replace("needle-rd2", "an innocent comment, longer")
        return obj

    _resign(rec, forged, key, gw.cfg.recorder_key_id, edit)
    data = forged.read_bytes()
    assert len(data) > rec.stat().st_size  # longer than the original: its segment wins
    key_name = f"{prefix}/recordings/{sid}.rec/{0:016d}-{len(data):016d}"
    s3_server.client("gateway").put_object(Bucket=s3_server.bucket, Key=key_name, Body=data)
    await _wait(lambda: key_name in _objects(s3_server, prefix), what="the forged object listed")
    cfg_path = gw.dir / "config.toml"
    env = {**s3_server.env("reader"), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    r = await _acli(cfg_path, "sessions", "--store", "--json", env=env)
    [row] = [x for x in json.loads(r.stdout) if x["session_id"] == sid]
    listing = sorted(k for k in _objects(s3_server, prefix) if f"/{sid}.rec/" in k)
    copies = [
        (p.name, b"innocent" in p.read_bytes())  # which one the reader rebuilt
        for p in (tmp_path / "cache").glob(f"breakglass/store/*/recordings/{sid}.rec")
    ]
    assert row["integrity"] == "tampered", (row, listing, copies, r.stderr)
    # Either story is caught: the forgery (longest, so rebuilt) by the anchors, and the two
    # segments disagreeing on the same bytes by the reader itself.
    caught = ("anchored off-host", "disagrees with the segments before it")
    assert any(c in row["problem_message"] for c in caught), row
    r = await _acli(cfg_path, "replay", sid, "--store", env=env)
    assert r.returncode == 3 and any(c in r.stderr for c in caught), r.stdout + r.stderr
    assert "innocent" not in r.stdout
    r = await _acli(cfg_path, "verify", f"s3://{s3_server.bucket}/{prefix}/{sid}", env=env)
    assert r.returncode == 1 and any(c in r.stdout for c in caught), r.stdout  # as verify says
