"""The audit log: per-process chained segments, merged reads, filters, tamper detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.recorder.audit import AuditLog, read_audit, segments, verify_audit
from breakglass.recorder.writer import RecorderError

KEY = Ed25519PrivateKey.generate()
TRUSTED = {"audit-1": KEY.public_key()}
ROOT = Path(__file__).resolve().parent.parent


def rewrite(path: Path, lines: list[bytes]) -> None:
    mode = path.stat().st_mode
    os.chmod(path, 0o640)
    path.write_bytes(b"".join(lines))
    os.chmod(path, mode)


def problems(directory: Path) -> dict[str, tuple[str | None, int | None]]:
    return {p.name: (r.problem, r.event_index) for p, r in verify_audit(directory, TRUSTED)}


@pytest.fixture
def two_logs(tmp_path: Path) -> Path:
    """Two writers (as two processes would be) appending interleaved, then closed."""
    d = tmp_path / "audit"
    gw = AuditLog(d, KEY, "audit-1")
    cli = AuditLog(d, KEY, "audit-1")
    cli.append("request.created", actor="alice", id="r1", reason="disk full on db1")
    cli.append("request.approved", actor="bob", subject="alice", id="r1")
    cli.append("grant.issued", actor="bob", subject="alice", jti="j1", target="db1")
    gw.append("session.started", user="alice", jti="j1", target="db1", session="s1")
    gw.append("access.denied", user="alice", jti="j1", text="drop table t", rule="read-only")
    cli.append("grant.revoked", actor="carol", subject="alice", jti="j1", reason="done")
    gw.append("session.killed", user="alice", session="s1", reason="grant revoked")
    gw.append("grantee.note", actor="dave", blob=b"\x00\xff")
    gw.close()
    cli.close()
    return d


def test_each_writer_has_its_own_segment_and_all_verify(two_logs):
    segs = segments(two_logs)
    assert len(segs) == 2
    for seg in segs:
        assert seg.name.endswith(".audit") and f"-{os.getpid()}-" in seg.name
    results = verify_audit(two_logs, TRUSTED)
    assert len(results) == 2 and all(r.ok for _, r in results), [r.message for _, r in results]
    assert all(r.header["log"] == "audit" for _, r in results)


def test_read_audit_merges_by_time(two_logs):
    events = read_audit(two_logs)
    assert [e["type"] for e in events] == [
        "request.created",
        "request.approved",
        "grant.issued",
        "session.started",
        "access.denied",
        "grant.revoked",
        "session.killed",
        "grantee.note",
    ]
    ts = [e["t"] for e in events]
    assert ts == sorted(ts)
    assert events[0]["reason"] == "disk full on db1" and events[0]["segment"].endswith(".audit")
    assert events[-1]["blob"] == b"\x00\xff"
    assert "kind" not in events[0] and "prev" not in events[0]


def test_read_audit_filters(two_logs):
    types = lambda **kw: [e["type"] for e in read_audit(two_logs, **kw)]  # noqa: E731
    assert types(type="grant.issued") == ["grant.issued"]
    assert types(type="grant.") == ["grant.issued", "grant.revoked"]
    assert types(type="grant") == []  # exact unless it ends with "."
    assert types(type="gran.") == []
    assert types(type="session.") == ["session.started", "session.killed"]
    assert "grantee.note" not in types(type="grant.")
    # user matches actor, subject or user
    assert types(user="bob") == ["request.approved", "grant.issued"]
    assert types(user="carol") == ["grant.revoked"]
    assert len(types(user="alice")) == 7
    assert types(user="dave") == ["grantee.note"]
    assert types(user="nobody") == []
    all_events = read_audit(two_logs)
    cut = all_events[4]["t"]
    assert types(since=cut) == [e["type"] for e in all_events[4:]]
    assert types(since=cut, user="alice", type="session.") == ["session.killed"]
    assert read_audit(two_logs.parent / "missing") == []


def test_concurrent_processes_append(tmp_path):
    d = tmp_path / "audit"
    keyfile = tmp_path / "audit.key"
    keyfile.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from breakglass.recorder.audit import AuditLog
        key = load_pem_private_key(Path({str(keyfile)!r}).read_bytes(), None)
        log = AuditLog(Path({str(d)!r}), key, "audit-1")
        for i in range(200):
            log.append("grant.issued", actor="proc" + sys.argv[1], n=i)
        log.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(n)], env=env, cwd=ROOT)
        for n in range(3)
    ]
    local = AuditLog(d, KEY, "audit-1")
    for i in range(200):
        local.append("grant.revoked", actor="local", n=i)
    local.close()
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert len(segments(d)) == 4
    assert all(r.ok for _, r in verify_audit(d, TRUSTED))
    events = read_audit(d)
    assert len(events) == 800
    for who in ("proc0", "proc1", "proc2", "local"):
        assert [e["n"] for e in events if e["actor"] == who] == list(range(200))


def _segment_lines(d: Path) -> tuple[Path, list[bytes]]:
    seg = segments(d)[0]
    return seg, seg.read_bytes().splitlines(keepends=True)


def _audit_index(lines: list[bytes], nth: int) -> int:
    idx = [i for i, line in enumerate(lines) if json.loads(line)["kind"] == "audit"]
    return idx[nth]


def test_altered_audit_event_is_detected(two_logs):
    seg, lines = _segment_lines(two_logs)
    k = _audit_index(lines, 1)
    ev = json.loads(lines[k])
    field = "actor" if "actor" in ev else "user"
    lines[k] = lines[k].replace(f'"{field}":"'.encode(), f'"{field}":"X'.encode(), 1)
    rewrite(seg, lines)
    found = problems(two_logs)
    assert found[seg.name] == ("altered", k)
    other = [v for name, v in found.items() if name != seg.name]
    assert other == [(None, None)]


def test_removed_audit_event_is_detected(two_logs):
    seg, lines = _segment_lines(two_logs)
    k = _audit_index(lines, 0)
    del lines[k]
    rewrite(seg, lines)
    assert problems(two_logs)[seg.name] == ("removed", k)


def test_reordered_audit_events_are_detected(two_logs):
    seg, lines = _segment_lines(two_logs)
    k = _audit_index(lines, 0)
    lines[k], lines[k + 1] = lines[k + 1], lines[k]
    rewrite(seg, lines)
    assert problems(two_logs)[seg.name] == ("reordered", k)


def test_truncated_audit_segment_is_detected(two_logs):
    seg, lines = _segment_lines(two_logs)
    rewrite(seg, lines[:3])
    r = dict(verify_audit(two_logs, TRUSTED))[seg]
    assert (r.problem, r.event_index) == ("truncated", 1)
    assert r.message.startswith("truncated after checkpoint 1 (event 1)")


def test_audit_signature_and_key_problems(two_logs, tmp_path):
    seg, lines = _segment_lines(two_logs)
    sig = json.loads(lines[1])["sig"]
    lines[1] = lines[1].replace(
        sig.encode(), sig[:-1].encode() + (b"0" if sig[-1] != "0" else b"1")
    )
    rewrite(seg, lines)
    assert problems(two_logs)[seg.name] == ("bad-signature", 1)
    rogue = AuditLog(two_logs, Ed25519PrivateKey.generate(), "rogue")
    rogue.append("grant.issued", actor="mallory", subject="mallory", jti="evil")
    rogue.close()
    assert problems(two_logs)[rogue.path.name] == ("unknown-key", 1)


def test_live_segment_is_reported_not_finalized(tmp_path):
    d = tmp_path / "audit"
    log = AuditLog(d, KEY, "audit-1")
    log.append("session.started", user="alice")
    log.flush()
    ((_, r),) = verify_audit(d, TRUSTED)
    assert (r.problem, r.live, r.status) == ("missing-trailer", True, "live")
    assert r.message == "live (verified through checkpoint 1, event 1)"
    assert [e["type"] for e in read_audit(d)] == ["session.started"]  # readable while live
    log.close()
    log.close()
    with pytest.raises(RecorderError):
        log.append("session.ended", user="alice")
    assert all(r.ok for _, r in verify_audit(d, TRUSTED))


def test_rotation_links_segments_and_detects_a_deleted_one(tmp_path):
    d = tmp_path / "audit"
    log = AuditLog(d, KEY, "audit-1", rotate_events=8)
    for i in range(20):
        log.append("grant.issued", actor="bob", n=i)
    log.close()
    segs = segments(d)
    assert len(segs) >= 3
    assert all(r.ok for _, r in verify_audit(d, TRUSTED))
    assert [e["n"] for e in read_audit(d)] == list(range(20))
    # delete a middle segment: the next one names it as its predecessor
    victim = sorted(segs, key=lambda p: next(iter(read_audit_seg(p))))[1]
    victim.unlink()
    bad = [(p.name, r.problem) for p, r in verify_audit(d, TRUSTED) if not r.ok]
    assert bad == [(victim.name, "removed")]


def read_audit_seg(path: Path):
    from breakglass.recorder.reader import read_events

    for e in read_events(path):
        if e["kind"] == "audit":
            yield e["n"]


def test_append_validates(tmp_path):
    log = AuditLog(tmp_path / "a", KEY, "audit-1")
    with pytest.raises(RecorderError):
        log.append("")
    with pytest.raises(RecorderError):
        log.append("x.y", prev="nope")
    log.append("x.y", when=None)
    log.close()


# ---------------------------------------------------------------- chains across segments


def _by_status(d: Path) -> dict[str, tuple[str, str | None]]:
    return {p.name: (r.status, r.problem) for p, r in verify_audit(d, TRUSTED)}


def _chain(d: Path, writer: str) -> list[Path]:
    from breakglass.recorder.audit import _first_line

    segs = [(s, _first_line(s)) for s in segments(d)]
    mine = [(h["segment_seq"], s) for s, h in segs if h and h.get("writer", "").endswith(writer)]
    return [s for _, s in sorted(mine)]


def test_a_writer_chain_continues_across_restarts_and_names_what_was_cut(tmp_path):
    d = tmp_path / "audit"
    for run in range(3):  # three gateway runs, one rotation each
        log = AuditLog(d, KEY, "audit-1", writer="gateway-gw-w0", rotate_events=6)
        for i in range(5):
            log.append("session.start", session=f"r{run}-{i}")
        log.close()
    chain = _chain(d, "/gateway-gw-w0")
    from breakglass.recorder.audit import _first_line

    headers = [_first_line(s) for s in chain]
    assert [h["segment_seq"] for h in headers] == list(range(len(chain))) and len(chain) >= 6
    assert len({h["run"] for h in headers}) == 3
    assert all(s == ("ok", None) for s in _by_status(d).values())
    # cut a finalized middle segment back to its first checkpoint
    victim = chain[2]
    lines = victim.read_bytes().splitlines(keepends=True)
    rewrite(victim, lines[:2])
    got = _by_status(d)
    assert got[victim.name] == ("tampered", "truncated")
    r = dict(verify_audit(d, TRUSTED))[victim]
    assert f"{chain[3].name} says it ended with {len(lines)} lines, it has 2" in r.message


def test_swapped_segments_are_reordered_and_the_newest_one_deleted_is_named(tmp_path):
    d = tmp_path / "audit"
    log = AuditLog(d, KEY, "audit-1", writer="gateway-gw-w0", rotate_events=5)
    for i in range(12):
        log.append("grant.revoked", jti=f"j{i}", actor="carol")
    log.close()
    chain = _chain(d, "/gateway-gw-w0")
    assert len(chain) >= 3
    # swap the contents of two middle segments (each keeps the other's name)
    a, b = chain[1], chain[2]
    da, db = a.read_bytes(), b.read_bytes()
    rewrite(a, [db])
    rewrite(b, [da])
    got = _by_status(d)
    assert ("tampered", "reordered") in got.values(), got
    rewrite(a, [da])
    rewrite(b, [db])
    assert all(s == ("ok", None) for s in _by_status(d).values())
    # the newest segment of the chain, deleted: the writer's lock file still names it
    newest = chain[-1]
    newest.unlink()
    got = _by_status(d)
    assert got[newest.name] == ("tampered", "removed")
    r = dict(verify_audit(d, TRUSTED))[d / newest.name]
    assert "lock file" in r.message and "newest segment" in r.message


def test_cli_runs_share_one_open_segment_every_run_signed(tmp_path):
    d = tmp_path / "audit"
    for i in range(30):  # thirty short CLI runs
        with AuditLog(d, KEY, "audit-1", writer="cli", shared=True) as log:
            log.append("grant.issued", actor="bob", n=i)
    segs = segments(d)
    assert len(segs) == 1
    ((_, r),) = verify_audit(d, TRUSTED)
    assert (r.status, r.good) == ("open", True), r.message
    assert r.last_checkpoint == r.events - 1  # nothing unsigned between runs
    assert [e["n"] for e in read_audit(d)] == list(range(30))
    # rotation by events: the old segment is finalized and the chain goes on
    for i in range(30, 40):
        with AuditLog(d, KEY, "audit-1", writer="cli", shared=True, rotate_events=60) as log:
            log.append("grant.issued", actor="bob", n=i)
    chain = _chain(d, "/cli")
    assert len(chain) == 2
    got = _by_status(d)
    assert got[chain[0].name] == ("ok", None) and got[chain[1].name][0] == "open"
    assert [e["n"] for e in read_audit(d)] == list(range(40))


def test_cli_chain_cut_back_between_runs_is_not_continued_and_is_named(tmp_path):
    d = tmp_path / "audit"
    for i in range(3):
        with AuditLog(d, KEY, "audit-1", writer="cli", shared=True) as log:
            log.append("grant.revoked", actor="carol", jti=f"j{i}")
    (seg,) = segments(d)
    lines = seg.read_bytes().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines[:-1]) if b'"kind":"checkpoint"' in line)
    rewrite(seg, lines[: cut + 1])  # back to the previous run's checkpoint: looks whole
    with AuditLog(d, KEY, "audit-1", writer="cli", shared=True) as log:
        log.append("grant.issued", actor="bob")
    chain = _chain(d, "/cli")
    assert len(chain) == 2 and chain[0] == seg
    got = _by_status(d)
    assert got[seg.name] == ("tampered", "truncated")
    assert got[chain[1].name][0] == "open"


def test_concurrent_cli_processes_share_the_chain(tmp_path):
    d = tmp_path / "audit"
    keyfile = tmp_path / "audit.key"
    keyfile.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from breakglass.recorder.audit import AuditLog
        key = load_pem_private_key(Path({str(keyfile)!r}).read_bytes(), None)
        for i in range(15):
            with AuditLog(Path({str(d)!r}), key, "audit-1", writer="cli", shared=True) as log:
                log.append("grant.issued", actor="proc" + sys.argv[1], n=i)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(n)], env=env, cwd=ROOT)
        for n in range(3)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert len(segments(d)) == 1
    assert all(r.good for _, r in verify_audit(d, TRUSTED))
    events = read_audit(d)
    for who in ("proc0", "proc1", "proc2"):
        assert [e["n"] for e in events if e["actor"] == who] == list(range(15))


def test_segment_of_a_dead_writer_is_vouched_for_by_its_successor(tmp_path):
    d = tmp_path / "audit"
    dead = AuditLog(d, KEY, "audit-1", writer="gateway-gw-w0")
    dead.append("session.start", session="s1")
    dead.flush()
    first = dead.path
    # the process dies: its locks go, its segment stays unfinalized
    os.close(dead._segment_fd)
    dead._segment_fd = -1
    os.close(dead._identity_fd)
    dead._identity_fd = -1
    assert _by_status(d)[first.name] == ("unfinalized", "missing-trailer")
    nxt = AuditLog(d, KEY, "audit-1", writer="gateway-gw-w0")
    nxt.append("gateway.start")
    nxt.flush()
    got = _by_status(d)
    assert got[first.name] == ("crashed", "missing-trailer")
    assert got[nxt.path.name] == ("live", "missing-trailer")
    nxt.close()
    dead._writer.close()


def test_a_deleted_newest_segment_stays_named_after_the_chain_goes_on(tmp_path):
    """Deleting the newest segment, then letting the writer start again, must not erase the
    evidence: the next segment names the deleted one (from the lock file) as its predecessor."""
    d = tmp_path / "audit"
    for i in range(3):
        with AuditLog(d, KEY, "audit-1", writer="cli", shared=True, rotate_events=8) as log:
            log.append("grant.revoked", actor="carol", jti=f"j{i}")
    newest = _chain(d, "/cli")[-1]
    newest.chmod(0o640)
    newest.unlink()
    with AuditLog(d, KEY, "audit-1", writer="cli", shared=True) as log:
        log.append("grant.issued", actor="bob")
    assert _by_status(d)[newest.name] == ("tampered", "removed")

    g = AuditLog(d, KEY, "audit-1", writer="gateway-gw-w0")
    g.append("session.start", session="s1")
    g.close()
    newest = g.path
    newest.unlink()
    g = AuditLog(d, KEY, "audit-1", writer="gateway-gw-w0")
    g.append("gateway.start")
    g.close()
    got = _by_status(d)
    assert got[newest.name] == ("tampered", "removed")
    r = dict(verify_audit(d, TRUSTED))[d / newest.name]
    assert f"{g.path.name} names it as its predecessor" in r.message
