"""``breakglass verify`` and ``breakglass audit``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from policy.durations import parse_duration
from policy.grants import utc_text
from proxy.cli.output import CliError, emit_json
from proxy.config import load_config
from proxy.context import trusted_recorder_keys

RECORDING_SUFFIXES = (".rec", ".audit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="prove recordings and audit segments whole, or say where they were altered",
        description="Verify each recording (files, or directories searched for *.rec and *.audit): "
        "hash chain, sequence, signed checkpoints and trailer. Exit 1 if any fails.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or s3://BUCKET/PREFIX")
    p.add_argument(
        "--anchors",
        metavar="s3://BUCKET/PREFIX",
        help="also check local files against the heads anchored in this store",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "audit",
        help="read the audit log",
        description="Print audit events (grants issued, refused, revoked; sessions; denials; kills), "
        "oldest first.",
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


def cmd_verify(args: argparse.Namespace) -> int:
    from recorder.verify import verify_recording

    if args.anchors or any(p.startswith("s3://") for p in args.paths):
        from proxy.cli import store_cmds  # the object store: segments and off-host anchors

        return store_cmds.cmd_verify(args)
    cfg = load_config(args.config)
    keys = trusted_recorder_keys(cfg)
    files = recording_files(args.paths)
    if not files:
        raise CliError("no recordings found (looked for *.rec and *.audit)")
    results = [(f, verify_recording(f, keys)) for f in files]
    failed = [r for _, r in results if not r.ok]
    if args.json:
        emit_json(
            [
                {
                    "path": str(f),
                    "ok": r.ok,
                    "problem": r.problem,
                    "event_index": r.event_index,
                    "message": r.message,
                    "events": r.events,
                    "checkpoints": r.checkpoints,
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
                print(f"FAIL  {f}  {r.message}")
        print(f"{len(results) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from recorder.audit import read_audit

    cfg = load_config(args.config)
    since = time.time() - parse_duration(args.since) if args.since else None
    if not cfg.audit_dir.exists():
        events = []
    else:
        events = read_audit(cfg.audit_dir, since=since, user=args.user, type=args.type)
    if args.json:
        emit_json(events)
        return 0
    skip = {"seq", "t", "kind", "prev", "type"}
    for e in events:
        fields = " ".join(
            f"{k}={v}" for k, v in e.items() if k not in skip and v not in (None, "", [])
        )
        print(f"{utc_text(e.get('t', 0))}  {e.get('type', e.get('kind')):<18} {fields}")
    if not events:
        print("no audit events match")
    return 0
