"""``breakglass verify`` and ``breakglass audit``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from breakglass.cli.output import CliError, emit_json
from breakglass.policy.durations import parse_duration
from breakglass.policy.grants import utc_text
from breakglass.proxy.config import load_config
from breakglass.proxy.context import trusted_recorder_keys

RECORDING_SUFFIXES = (".rec", ".audit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="prove recordings and audit segments whole, or say where they were altered",
        description="Verify each recording (files, or directories searched for *.rec and *.audit): "
        "hash chain, sequence, signed checkpoints and trailer; each recording's header against "
        "its file name and the audit log's session.start/session.end; each audit writer's chain "
        "of segments. Live recordings and open audit segments are reported as live (verified "
        "through their last checkpoint). Exit 1 if anything is tampered, incomplete or "
        "unfinalized.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or s3://BUCKET/PREFIX")
    p.add_argument(
        "--anchors",
        metavar="s3://BUCKET/PREFIX",
        help="also check local files against the heads anchored in this store",
    )
    p.add_argument(
        "--finished", action="store_true", help="only finished recordings and segments (skip live)"
    )
    p.add_argument(
        "--audit-dir",
        metavar="DIR",
        help="the audit log to cross-check recordings with (default: the config's)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "audit",
        help="read the audit log",
        description="Print audit events (grants issued, refused, revoked; sessions; denials; kills), "
        "oldest first. Warns (and exits 1) if a segment is missing or tampered.",
    )
    p.add_argument("--since", help="only events newer than this, e.g. 1h, 2d")
    p.add_argument("--user", help="only events whose actor, subject or user is USER")
    p.add_argument("--type", help="event type, e.g. grant.issued, or a prefix like grant.")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)


def recording_files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in RECORDING_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise CliError(f"{p}: no such file or directory")
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _covers(d: Path, target: Path) -> bool:
    """``d`` is ``target`` or one of its parents (``verify WORKDIR`` covers its recordings)."""
    try:
        return target.resolve().is_relative_to(d.resolve())
    except OSError:
        return False


def verify_paths(cfg, paths: list[str], audit_dir: Path | None) -> list:
    """(path, VerifyResult) for every recording and segment under ``paths``, cross-checked."""
    from breakglass.recorder.audit import verify_audit
    from breakglass.recorder.session_check import check_session, load_audit_facts, session_id_of

    keys = trusted_recorder_keys(cfg)
    files = recording_files(paths)
    dirs = [Path(p) for p in paths if Path(p).is_dir()]
    facts = load_audit_facts(audit_dir, keys) if audit_dir is not None else None
    results: list = []
    audit_by_dir: dict[Path, list] = {}
    for f in files:
        if f.suffix != ".audit":
            results.append((f, check_session(f, keys, facts)))
            continue
        parent = f.parent.resolve()
        if parent not in audit_by_dir:
            if facts is not None and _same(parent, facts.directory):
                audit_by_dir[parent] = facts.results
            else:
                audit_by_dir[parent] = verify_audit(parent, keys)
        for seg, r in audit_by_dir[parent]:
            if seg.name == f.name:
                results.append((f, r))
    # segments that are gone: named by their successor or their writer's lock file
    for parent, rs in audit_by_dir.items():
        if any(_covers(d, parent) for d in dirs):
            results += [(seg, r) for seg, r in rs if not seg.exists()]
    # revocations the state database holds but no audit segment does (a segment deleted)
    if facts is not None and any(_covers(d, facts.directory) for d in dirs):
        results += _unaudited_revocations(cfg, facts)
    # recordings that are gone: the audit log recorded their session
    if facts is not None and any(_covers(d, cfg.recordings_dir) for d in dirs):
        from breakglass.recorder.verify import VerifyResult

        present = {session_id_of(f) for f in files if f.suffix == ".rec"}
        for sid, sf in sorted(facts.sessions.items()):
            if sid in present or sf.start is None or not sf.start.signed:
                continue
            gone = cfg.recordings_dir / f"{sid}.rec"
            r = VerifyResult(path=gone, ok=False, problem="removed")
            r.message = (
                f"tampered: the recording is gone; the audit log records session {sid} "
                f"({sf.start.where})"
            )
            results.append((gone, r))
    return results


def _unaudited_revocations(cfg, facts) -> list:
    """Cross-check with the state database: every revocation has its ``grant.revoked`` event
    (deleting the newest segment of a chain, lock file and all, still shows here)."""
    import asyncio

    from breakglass.proxy.context import open_state
    from breakglass.recorder.verify import VerifyResult

    async def revocations():
        state = open_state(cfg)
        try:
            return await state.revocations_since(0)
        finally:
            await state.close()

    try:
        revs = asyncio.run(revocations())
    except Exception as e:  # the state database is optional for verifying files
        print(f"breakglass: warning: state database not cross-checked: {e}", file=sys.stderr)
        return []
    out = []
    for rev in revs:
        if rev.jti in facts.revocations:
            continue
        r = VerifyResult(path=facts.directory, ok=False, problem="removed")
        r.message = (
            f"tampered: the state database records the revocation of grant {rev.jti} (by "
            f"{rev.actor} at {utc_text(rev.revoked_at)}) but no audit segment holds its "
            "grant.revoked event (a segment was deleted)"
        )
        out.append((facts.directory, r))
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    from breakglass.recorder.verify import STATUS_LIVE, STATUS_OPEN

    if args.anchors or any(p.startswith("s3://") for p in args.paths):
        from breakglass.cli import store_cmds  # the object store: segments and off-host anchors

        return store_cmds.cmd_verify(args)
    cfg = load_config(args.config)
    audit_dir = Path(args.audit_dir) if args.audit_dir else cfg.audit_dir
    if args.audit_dir and not audit_dir.is_dir():
        raise CliError(f"--audit-dir {audit_dir}: no such directory")
    if not recording_files(args.paths):
        raise CliError("no recordings found (looked for *.rec and *.audit)")
    results = verify_paths(cfg, args.paths, audit_dir)
    if args.finished:
        results = [(f, r) for f, r in results if r.status not in (STATUS_LIVE, STATUS_OPEN)]
    failed = [r for _, r in results if not r.good]
    if args.json:
        emit_json(
            [
                {
                    "path": str(f),
                    "ok": r.ok,
                    "status": r.status,
                    "problem": r.problem,
                    "event_index": r.event_index,
                    "message": r.message,
                    "events": r.events,
                    "checkpoints": r.checkpoints,
                    "last_checkpoint": r.last_checkpoint,
                }
                for f, r in results
            ]
        )
    else:
        for f, r in results:
            if r.ok:
                print(
                    f"OK    {f}  ({r.events} events, {r.checkpoints} checkpoints, signed trailer)"
                )
            else:
                text = r.message if r.message.startswith(r.status) else f"{r.status}: {r.message}"
                print(f"{'FAIL' if not r.good else r.status.upper():<5} {f}  {text}")
        live = sum(1 for _, r in results if r.good and not r.ok)
        print(f"{len(results) - len(failed) - live} ok, {len(failed)} failed, {live} live or open")
    return 1 if failed else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from breakglass.recorder.audit import read_audit, verify_audit

    cfg = load_config(args.config)
    since = time.time() - parse_duration(args.since) if args.since else None
    if not cfg.audit_dir.exists():
        events, bad = [], []
    else:
        events = read_audit(cfg.audit_dir, since=since, user=args.user, type=args.type)
        bad = [
            (p, r) for p, r in verify_audit(cfg.audit_dir, trusted_recorder_keys(cfg)) if not r.good
        ]
    for p, r in bad:
        print(
            f"breakglass: warning: audit segment {p.name}: {r.status}: {r.message}", file=sys.stderr
        )
    code = 1 if any(r.status == "tampered" for _, r in bad) else 0
    if args.json:
        emit_json(events)
        return code
    skip = {"seq", "t", "kind", "prev", "type"}
    for e in events:
        fields = " ".join(
            f"{k}={v}" for k, v in e.items() if k not in skip and v not in (None, "", [])
        )
        print(f"{utc_text(e.get('t', 0))}  {e.get('type', e.get('kind')):<18} {fields}")
    if not events:
        print("no audit events match")
    return code
