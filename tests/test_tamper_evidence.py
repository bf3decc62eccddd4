"""Verification that cannot be fooled: tampering with real recordings made by a real gateway
(and with its audit log) is named as tampering, and the session stays visible everywhere.

Each attack is done to the files exactly as an attacker with root on the gateway host would:
truncate a finished recording back to a checkpoint and make it writable again, copy another
session's recording over a victim's file name, alter a break-glass header, delete an audit
segment holding ``grant.revoked``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import asyncpg
import pytest

from breakglass.cli.main import main as cli_main
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_alerts import Receiver
from tests.test_alerts_gateway import Inbox

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    r.received = Inbox()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory, receiver):
    def add_webhook(text: str) -> str:
        return text + f'\n[[alerts.webhooks]]\nname = "sec"\nurl = "{receiver.url}"\n'

    g = GatewayThread(
        tmp_path_factory.mktemp("tamper") / "gw", pg=pg_server, edit_config=add_webhook
    ).start()
    yield g
    g.stop()


def cli(capsys, gw: GatewayThread, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli_main(["-c", str(gw.dir / "config.toml"), *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def cli_json(capsys, gw: GatewayThread, *argv: str):
    rc, out, err = cli(capsys, gw, *argv, "--json")
    return rc, json.loads(out) if out.strip() else None


async def connect(gw: GatewayThread, token: str, user: str) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user=user,
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )


def run_sessions(gw: GatewayThread, *specs: tuple[str, str, bool]) -> dict[str, str]:
    """One real psql-protocol session per (user, marker, breakglass); returns user -> session id."""

    async def one(user: str, marker: str, bg: bool) -> None:
        template = "breakglass" if bg else "db-readonly"
        c = await connect(gw, gw.grant(template, user=user, breakglass=bg), user)
        try:
            for i in range(3):
                assert await c.fetchval(f"select '{marker}-{i}'") == f"{marker}-{i}"
        finally:
            await c.close()

    async def all_of() -> None:
        await asyncio.gather(*(one(*s) for s in specs))

    before = set((gw.cfg.recordings_dir).glob("*.rec"))
    asyncio.run(all_of())
    gw.wait_idle()
    wait_audit_signed(gw)
    out = {}
    for p in set(gw.cfg.recordings_dir.glob("*.rec")) - before:
        header = json.loads(p.open("rb").readline())
        out[header["user"]] = header["session_id"]
    assert len(out) == len(specs)
    return out


def wait_audit_signed(gw: GatewayThread, timeout: float = 10) -> None:
    """Until the gateway's audit segment is signed to its end (its next checkpoint is due at
    most ``checkpoint_interval`` after an event): only signed audit facts fill the index."""
    from breakglass.proxy.context import trusted_recorder_keys
    from breakglass.recorder.audit import verify_audit

    gw.flush_audit()
    keys = trusted_recorder_keys(gw.cfg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [r for _, r in verify_audit(gw.cfg.audit_dir, keys) if r.status == "live"]
        if live and all(r.last_checkpoint == r.events - 1 for r in live):
            return
        gw.flush_audit()
    raise AssertionError("the gateway's audit segment was not signed to its end in time")


def rec_path(gw: GatewayThread, sid: str) -> Path:
    return gw.cfg.recordings_dir / f"{sid}.rec"


def verdicts(capsys, gw: GatewayThread, *paths: Path, extra: tuple[str, ...] = ()):
    rc, rows = cli_json(capsys, gw, "verify", *map(str, paths), *extra)
    return rc, {Path(r["path"]).name: r for r in rows}


def test_truncated_copied_and_altered_recordings_are_tampered_and_stay_listed(gw, capsys, receiver):
    ids = run_sessions(
        gw,
        ("erin", "victim-a", False),
        ("fay", "victim-b", False),
        ("mallory", "attacker", False),
        ("ina", "incident", True),
    )
    paths = {u: rec_path(gw, sid) for u, sid in ids.items()}
    rc, found = verdicts(capsys, gw, *paths.values())
    assert rc == 0 and all(r["status"] == "ok" for r in found.values()), found

    # 1. erin's finished recording cut back to its first checkpoint, made writable again
    p = paths["erin"]
    lines = p.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[1])["kind"] == "checkpoint"
    p.chmod(0o640)
    p.write_bytes(b"".join(lines[:2]))
    # 2. mallory's recording copied over fay's file name
    paths["fay"].chmod(0o640)
    shutil.copyfile(paths["mallory"], paths["fay"])
    paths["fay"].chmod(0o440)
    # 3. ina's break-glass header altered to say it was not break-glass
    p = paths["ina"]
    data = p.read_bytes()
    assert b'"breakglass":true' in data.split(b"\n", 1)[0]
    p.chmod(0o640)
    p.write_bytes(data.replace(b'"breakglass":true', b'"breakglass":false', 1))
    p.chmod(0o440)

    rc, found = verdicts(capsys, gw, gw.cfg.recordings_dir)
    assert rc == 1
    erin = found[paths["erin"].name]
    assert (erin["status"], erin["problem"]) == ("tampered", "truncated")
    assert "the audit log says the session ended" in erin["message"]
    assert "session.end reason=" in erin["message"]
    assert "verified through checkpoint 1, event 1" in erin["message"]
    assert "writer died" not in erin["message"]
    fay = found[paths["fay"].name]
    assert (fay["status"], fay["problem"]) == ("tampered", "renamed")
    assert f"header names session '{ids['mallory']}'" in fay["message"]
    ina = found[paths["ina"].name]
    assert (ina["status"], ina["problem"], ina["event_index"]) == ("tampered", "altered", 0)
    assert found[paths["mallory"].name]["status"] == "ok"
    rc, out, _ = cli(capsys, gw, "verify", str(gw.cfg.recordings_dir))
    assert rc == 1
    assert f"FAIL  {paths['fay']}  tampered: the header names session" in out

    # the index takes the facts from the audit log: every session stays listed, flagged
    rc, rows = cli_json(capsys, gw, "sessions")
    by_id = {r["session_id"]: r for r in rows}
    assert by_id[ids["erin"]]["integrity"] == "truncated"
    assert by_id[ids["fay"]]["integrity"] == "renamed"
    assert by_id[ids["fay"]]["user"] == "fay"  # the audit log's, not the copied header's
    assert by_id[ids["ina"]]["integrity"] == "altered"
    for flt in (("--breakglass",), ("--user", "ina"), ("--since", "1h")):
        rc, rows = cli_json(capsys, gw, "sessions", *flt)
        row = next(r for r in rows if r["session_id"] == ids["ina"])
        assert row["breakglass"] and row["user"] == "ina" and row["integrity"] == "altered"
    rc, rows = cli_json(capsys, gw, "sessions", "--user", "fay")
    assert [r["session_id"] for r in rows] == [ids["fay"]]

    # the review queue keeps it, flagged; a reviewer can record a follow-up (not "ok")
    rc, queue = cli_json(capsys, gw, "review", "list")
    item = next(q for q in queue if q["session"]["session_id"] == ids["ina"])
    assert item["session"]["integrity"] == "altered" and item["status"] == "pending"
    rc, _, err = cli(capsys, gw, "review", ids["ina"], "--notes", "looks fine")
    assert rc == 1 and "does not verify (altered)" in err
    rc, out, err = cli(
        capsys, gw, "review", ids["ina"], "--notes", "header altered", "--outcome", "follow-up"
    )
    assert rc == 0, err
    # the index (and the reviewer) found the failures: one alert per session and problem
    receiver.received.wait_for("recording.verify_failed")
    got = [
        (r["breakglass"]["fields"]["session"], r["breakglass"]["fields"]["problem"])
        for r in receiver.received
        if r["breakglass"]["event"] == "recording.verify_failed"
    ]
    for want in ((ids["erin"], "truncated"), (ids["fay"], "renamed"), (ids["ina"], "altered")):
        assert got.count(want) == 1, got


def test_deleted_audit_segment_holding_a_revocation_is_named(gw, capsys):
    rc, out, err = cli(
        capsys,
        gw,
        "grant",
        "issue",
        "-t",
        "db-readonly",
        "--to",
        "erin",
        "--target",
        "shop",
        "--reason",
        "t",
        "--approved-by",
        "bob",
        "--ttl",
        "10m",
    )
    assert rc == 0, err
    rc, info = cli_json(capsys, gw, "grant", "inspect", out.strip())
    jti = info["claims"]["jti"]
    rc, out, err = cli(capsys, gw, "revoke", jti, "--reason", "left the company")
    assert rc == 0, err
    audit = gw.cfg.audit_dir
    holding = [
        p
        for p in audit.glob("*.audit")
        if b'"type":"grant.revoked"' in p.read_bytes() and jti.encode() in p.read_bytes()
    ]
    assert len(holding) == 1
    rc, found = verdicts(capsys, gw, audit)
    assert rc == 0, found
    assert found[holding[0].name]["status"] in ("ok", "open")
    saved = holding[0].read_bytes()
    holding[0].chmod(0o640)
    holding[0].unlink()
    rc, found = verdicts(capsys, gw, audit)
    assert rc == 1
    gone = found[holding[0].name]
    assert (gone["status"], gone["problem"]) == ("tampered", "removed")
    rc, out, err = cli(capsys, gw, "audit", "--type", "grant.")
    assert rc == 1
    assert f"audit segment {holding[0].name}: tampered: segment {holding[0].name} is missing" in err
    # the attacker also removes the writer's lock file: the state database still knows
    locks = {p: p.read_bytes() for p in audit.glob(".*.lock")}
    for p in locks:
        p.unlink()
    rc, out, _ = cli(capsys, gw, "verify", str(audit))
    assert rc == 1
    assert f"the state database records the revocation of grant {jti}" in out
    assert "no audit segment holds its grant.revoked event" in out
    for p, data in locks.items():
        p.write_bytes(data)
    holding[0].write_bytes(saved)  # put it back for the next tests
    rc, found = verdicts(capsys, gw, audit)
    assert rc == 0, found


def test_verify_on_a_live_gateway_exits_0_and_says_live(gw, capsys):
    async def scenario():
        c = await connect(gw, gw.grant("db-readonly", user="lena"), "lena")
        try:
            assert await c.fetchval("select 'live-marker'") == "live-marker"
            live = [s for s in await asyncio.to_thread(gw.sessions) if s["user"] == "lena"]
            rec = Path(live[0]["recording"])
            gw.flush_audit()
            rc, found = await asyncio.to_thread(verdicts, capsys, gw, rec, gw.cfg.audit_dir)
            assert rc == 0, [(r["status"], r["message"]) for r in found.values()]
            assert found[rec.name]["status"] == "live"
            assert found[rec.name]["message"].startswith("live (verified through checkpoint ")
            gw_seg = [
                r for r in found.values() if r["path"].endswith(".audit") and r["status"] == "live"
            ]
            assert len(gw_seg) == 1 and "live (verified through checkpoint" in gw_seg[0]["message"]
            rc, out, _ = await asyncio.to_thread(cli, capsys, gw, "verify", str(rec))
            assert rc == 0 and f"LIVE  {rec}  live (verified through checkpoint" in out
            rc, found = await asyncio.to_thread(
                verdicts, capsys, gw, rec, gw.cfg.audit_dir, extra=("--finished",)
            )
            assert rc == 0 and rec.name not in found
            assert all(r["status"] not in ("live", "open") for r in found.values())
        finally:
            await c.close()

    asyncio.run(scenario())
    gw.wait_idle()


def _dead_session(gw: GatewayThread, sid: str, *, failure: str | None) -> Path:
    """A session whose writer is gone: its recording (by the real writer) has no trailer, and
    the audit log (finalized segments, so no live writer) says how it ended, if at all."""
    from breakglass.proxy.context import recorder_key
    from breakglass.recorder.audit import AuditLog
    from breakglass.recorder.writer import RecordingWriter

    cfg = gw.cfg
    key = recorder_key(cfg)
    header = {
        "session_id": sid,
        "user": "nora",
        "target": "shop",
        "protocol": "postgres",
        "grant_jti": "j-" + sid,
        "breakglass": False,
        "started_at": time.time(),
    }
    w = RecordingWriter.create(cfg.recordings_dir / f"{sid}.rec", header, key, cfg.recorder_key_id)
    w.query(text="select 1", tag="SELECT 1", rows=1)
    w.flush()
    audit = AuditLog(cfg.audit_dir, key, cfg.recorder_key_id)
    audit.append(
        "session.start",
        session=sid,
        user="nora",
        target="shop",
        protocol="postgres",
        jti="j-" + sid,
        breakglass=False,
    )
    if failure is not None:
        audit.append("session.recording_failed", session=sid, error=failure)
        audit.append("session.end", session=sid, reason="recorder-failed")
    audit.close()
    # the writer is abandoned here (flushed, never closed), as a killed gateway leaves it
    return w.path


def test_unfinalized_recordings_storage_failure_vs_dead_writer(gw, capsys):
    failed = _dead_session(
        gw, "20261201T000000Z-00000000f1", failure="[Errno 28] No space left on device"
    )
    died = _dead_session(gw, "20261201T000000Z-00000000d1", failure=None)
    rc, found = verdicts(capsys, gw, failed, died)
    assert rc == 1
    f = found[failed.name]
    assert f["status"] == "incomplete"
    assert f["message"].startswith(
        "incomplete: storage failure, proven by session.recording_failed (audit segment "
    )
    assert (
        "No space left on device" in f["message"]
        and "verified through checkpoint 1" in f["message"]
    )
    d = found[died.name]
    assert d["status"] == "unfinalized"
    assert d["message"].startswith("not finalized: writer died (no session.end in the audit log")
    rc, rows = cli_json(capsys, gw, "sessions", "--user", "nora")
    assert {r["session_id"]: r["integrity"] for r in rows} == {
        failed.stem: "incomplete",
        died.stem: "unfinalized",
    }


def test_lines_swapped_around_a_raw_frame_are_reordered(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from breakglass.recorder.verify import verify_recording
    from breakglass.recorder.writer import RecordingWriter

    key = Ed25519PrivateKey.generate()
    trusted = {"k": key.public_key()}

    def make(name: str) -> tuple[Path, list[bytes]]:
        w = RecordingWriter.create(tmp_path / name, {"session_id": name}, key, "k", raw_min=64)
        w.input(b"cat big\r")
        w.output(b"x" * 100 + b"\n" + b"y" * 50)  # a raw frame, with a newline inside
        w.output(b"$ ")
        w.close()
        data, out, pos = w.path.read_bytes(), [], 0
        while pos < len(data):
            nl = data.index(b"\n", pos) + 1
            end = nl + json.loads(data[pos:nl]).get("raw_len", 0)
            out.append(data[pos:end])
            pos = end
        return w.path, out

    for n, (a, b, lines_only) in enumerate(
        [(2, 3, False), (3, 4, False), (2, 3, True), (3, 4, True)]
    ):
        path, events = make(f"r{n}.rec")
        assert b'"raw_len"' in events[3]
        if lines_only:  # swap the two lines, each frame stays where it was
            la, fa = events[a].split(b"\n", 1)
            lb, fb = events[b].split(b"\n", 1)
            events[a], events[b] = lb + b"\n" + fa, la + b"\n" + fb
        else:  # swap the two events, a frame moves with its line
            events[a], events[b] = events[b], events[a]
        path.chmod(0o640)
        path.write_bytes(b"".join(events))
        path.chmod(0o440)
        r = verify_recording(path, trusted)
        assert (r.problem, r.event_index) == ("reordered", a), r.message


def test_recording_the_audit_log_never_saw_is_unaudited_while_the_gateway_runs(gw, capsys):
    """A finished recording with no session.start anywhere (the segment holding it deleted,
    or a recording planted from elsewhere) fails, even while a gateway writes the log."""
    from breakglass.proxy.context import recorder_key
    from breakglass.recorder.writer import RecordingWriter

    sid = "20261201T000000Z-00000000a1"
    header = {
        "session_id": sid,
        "user": "olga",
        "target": "shop",
        "protocol": "postgres",
        "grant_jti": "j-planted",
        "breakglass": False,
        "started_at": time.time() - 60,
    }
    w = RecordingWriter.create(
        gw.cfg.recordings_dir / f"{sid}.rec", header, recorder_key(gw.cfg), gw.cfg.recorder_key_id
    )
    w.query(text="select 1", tag="SELECT 1", rows=1)
    w.close("closed")
    rc, found = verdicts(capsys, gw, w.path, gw.cfg.audit_dir)
    assert any(r["status"] == "live" for r in found.values())  # the gateway is writing
    r = found[w.path.name]
    assert (rc, r["status"], r["problem"]) == (1, "tampered", "unaudited")
    assert f"the audit log has no session.start for session {sid}" in r["message"]


def test_verify_with_a_missing_audit_dir_says_so(gw, capsys, tmp_path):
    rc, out, err = cli(
        capsys, gw, "verify", str(gw.cfg.recordings_dir), "--audit-dir", str(tmp_path / "nope")
    )
    assert rc == 1 and "--audit-dir" in err and "no such directory" in err
    assert "Traceback" not in err


def test_recording_cut_by_a_real_storage_fault_is_incomplete_not_tampered(
    pg_server, tmp_path, capsys
):
    """The recordings filesystem turns read-only under a live session: the recording cannot
    be finalized, and the audit log's session.recording_failed proves why. The first failing
    call is a write (EROFS) or, when the committer's fsync of bytes written before the abort
    comes first, that fsync (ext4 answers EIO once its journal is aborted): either is the
    kernel's own word for the fault, and the one that came first is the one recorded."""
    from tests.storage import abort_ext4, ext4, remount_fresh

    gw = GatewayThread(tmp_path / "gw", pg=pg_server)
    image = tmp_path / "recordings.img"
    with ext4(gw.cfg.recordings_dir, image):
        gw.start()
        try:

            async def scenario():
                c = await connect(gw, gw.grant(user="erin"), "erin")
                try:
                    assert await c.fetchval("select 'before'") == "before"
                    abort_ext4(gw.cfg.recordings_dir)
                    with pytest.raises(Exception, match="recording"):
                        await c.fetchval("select 'after'")
                finally:
                    await c.close(timeout=5)

            asyncio.run(scenario())
            gw.wait_idle()
            wait_audit_signed(gw)
            remount_fresh(image, gw.cfg.recordings_dir)
            (rec,) = gw.cfg.recordings_dir.glob("*.rec")
            rc, found = verdicts(capsys, gw, rec)
        finally:
            gw.stop()
    r = found[rec.name]
    assert (rc, r["status"]) == (1, "incomplete"), r
    assert r["message"].startswith(
        "incomplete: storage failure, proven by session.recording_failed (audit segment "
    )
    message = r["message"]
    assert (
        "[Errno 30] Read-only file system" in message or "[Errno 5] Input/output error" in message
    )
    assert "verified through checkpoint" in message


def test_deleted_recording_is_named_by_verify_of_the_workdir(gw, capsys):
    ids = run_sessions(gw, ("pia", "to-be-deleted", False))
    victim = rec_path(gw, ids["pia"])
    victim.chmod(0o640)
    victim.unlink()
    rc, out, _ = cli(capsys, gw, "verify", str(gw.dir))
    assert rc == 1
    assert (
        f"FAIL  {victim}  tampered: the recording is gone; the audit log records session "
        f"{ids['pia']}" in out
    )
    rc, rows = cli_json(capsys, gw, "sessions", "--user", "pia")
    assert [(r["session_id"], r["integrity"]) for r in rows] == [(ids["pia"], "missing")]
