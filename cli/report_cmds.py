"""``breakglass report access``: the access recertification report (see recorder/report.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from breakglass.cli.output import CliError
from breakglass.proxy.config import Config, load_config
from breakglass.proxy.context import open_state, trusted_recorder_keys

#: Grants read from the state database, newest first (a quarter of a large team fits).
MAX_GRANTS = 1_000_000


def register(sub: argparse._SubParsersAction) -> None:
    from breakglass.cli.review_cmds import parse_when
    from breakglass.recorder.report import FORMATS

    p = sub.add_parser(
        "report",
        help="reports for security reviews (access recertification)",
        description="`report access`: one row per grant issued in the period: who held it, "
        "target, template and privileges, issued/expires/ended, reason and ticket, approvers "
        "or break-glass, use (sessions, statements, commands, denials) and the review outcome; "
        "summaries per user and per target; flags for grants never used, repeated break-glass "
        "use and overdue reviews. Refused while recordings in the period fail verification, "
        "unless --force (the report then says so).",
    )
    p.add_argument("kind", choices=("access",), help="the report to build")
    p.add_argument("--since", type=parse_when, default=None, help="90d (default) or a date")
    p.add_argument("--until", type=parse_when, default=None, help="default: now")
    p.add_argument("--user", help="only grants held by USER")
    p.add_argument("--target", help="only grants for TARGET")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (new file, mode 0600)")
    p.add_argument(
        "--force",
        action="store_true",
        help="build it even if recordings fail verification (the report carries a warning)",
    )
    p.set_defaults(func=cmd_report)


async def _state_inputs(cfg: Config, since: float):
    state = open_state(cfg)
    try:
        grants = await state.list_grants(limit=MAX_GRANTS)
        revocations = {r.jti: r for r in await state.revocations_since(since)}
    finally:
        await state.close()
    return grants, revocations


def build_access_report(cfg: Config, args: argparse.Namespace):
    from breakglass.cli.review_cmds import _open_index, _refresh
    from breakglass.recorder.alerts import review_settings
    from breakglass.recorder.audit import read_audit
    from breakglass.recorder.report import build_report
    from breakglass.recorder.review import load_reviews

    now = time.time()
    since = args.since if args.since is not None else now - 90 * 86400
    until = args.until if args.until is not None else now
    if until <= since:
        raise CliError("--until must be after --since")
    grants, revocations = asyncio.run(_state_inputs(cfg, since))
    audit_grants = (
        read_audit(cfg.audit_dir, type="grant.issued", since=since)
        if cfg.audit_dir.is_dir()
        else []
    )
    with _open_index(cfg) as index:
        _refresh(cfg, index, with_audit=True)
        sessions = index.all()
    reviews = load_reviews(cfg.audit_dir, trusted_recorder_keys(cfg))
    rep = build_report(
        grants=grants,
        audit_grants=audit_grants,
        revocations=revocations,
        sessions=sessions,
        reviews=reviews,
        templates=cfg.templates,
        since=since,
        until=until,
        review_deadline=review_settings(cfg).deadline,
        user=args.user,
        target=args.target,
        now=now,
    )
    failed = [f for r in rep.rows for f in r.integrity_failed]
    if failed:
        listed = ", ".join(failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        if not args.force:
            raise CliError(
                f"{len(failed)} recording(s) of sessions in this report FAIL verification "
                f"({listed}); their use counts cannot be trusted. Investigate with "
                "`breakglass sessions` and `breakglass verify`, or pass --force to build the "
                "report anyway (it will say so).",
                code=3,
            )
        rep.warnings.append(
            f"built with --force although {len(failed)} recording(s) FAIL verification: {listed}. "
            "Their sessions' counts may be forged or incomplete."
        )
    for seg in reviews.untrusted:
        rep.warnings.append(f"reviews in audit segment {seg} ignored: it fails verification")
    return rep


def cmd_report(args: argparse.Namespace) -> int:
    from breakglass.cli.review_cmds import _audit_access
    from breakglass.recorder.report import RENDERERS

    cfg = load_config(args.config)
    rep = build_access_report(cfg, args)
    text = RENDERERS[args.format](rep)
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CliError(f"{args.output} exists; not overwriting it") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    _audit_access(
        cfg,
        "report.generated",
        None,
        report="access",
        since=rep.since,
        until=rep.until,
        filters=rep.filters,
        format=args.format,
        grants=len(rep.rows),
        forced=bool(rep.warnings and args.force),
    )
    return 0
