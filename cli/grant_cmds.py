"""``breakglass grant issue|inspect`` and ``breakglass revoke``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import jwt

from breakglass.cli.output import CliError, emit_json
from breakglass.policy.durations import format_duration, parse_duration
from breakglass.policy.grants import Grant, Refusal, sign_grant, utc_text
from breakglass.policy.issuance import AccessRequest, IssuanceRefused, build_claims
from breakglass.proxy.config import load_config
from breakglass.proxy.context import (
    audit_grant_issued,
    current_actor,
    grant_verifier,
    issuer_key,
    open_audit,
    open_state,
)
from breakglass.recorder.format import RecorderError


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "grant", help="issue and inspect grants", description="Issue and inspect grants."
    )
    gsub = g.add_subparsers(dest="grant_command", metavar="COMMAND")
    gsub.required = True

    p = gsub.add_parser(
        "issue",
        help="check the template's rules and sign a grant",
        description="Check the template's rules (ttl, requester, approvers, reason, break-glass), "
        "sign a grant with the issuer key, record it, and print the token alone on stdout.",
    )
    p.add_argument("--template", "-t", required=True)
    p.add_argument("--to", required=True, metavar="USER", help="the engineer the grant is for")
    p.add_argument("--target", required=True, action="append", metavar="NAME", help="repeatable")
    p.add_argument(
        "--ttl", required=True, help="lifetime, e.g. 30m (at most the template's max_ttl)"
    )
    p.add_argument("--reason", required=True)
    p.add_argument("--ticket")
    p.add_argument("--approved-by", action="append", default=[], metavar="USER", help="repeatable")
    p.add_argument("--breakglass", action="store_true", help="use a break-glass template")
    p.add_argument("--source-cidr", action="append", default=[], metavar="CIDR", help="repeatable")
    p.set_defaults(func=cmd_issue)

    p = gsub.add_parser(
        "inspect",
        help="show a grant's claims and whether it verifies now",
        description="Print the claims of TOKEN (or of the token in FILE, or read it from stdin "
        "with '-') and whether it verifies against this gateway's trusted keys now.",
    )
    p.add_argument("token", nargs="?", default="-", metavar="TOKEN|FILE|-")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "revoke",
        help="revoke a grant (live sessions end within a second)",
        description="Revoke the grant JTI. Gateways end its live sessions within a second.",
    )
    p.add_argument("jti", metavar="JTI")
    p.add_argument("--reason", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_revoke)


def cmd_issue(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    request = AccessRequest(
        template=args.template,
        requester=args.to,
        targets=tuple(args.target),
        ttl=parse_duration(args.ttl),
        reason=args.reason,
        ticket=args.ticket,
        approved_by=tuple(args.approved_by),
        breakglass=args.breakglass,
        source_cidrs=tuple(args.source_cidr),
    )
    kid, key = issuer_key(cfg)
    try:
        audit = open_audit(cfg)
    except (RecorderError, OSError) as e:  # e.g. the audit directory is read-only
        raise CliError(f"{e}; no grant was issued (nothing can be issued unaudited)") from None
    try:
        try:
            claims = build_claims(
                request,
                cfg.templates,
                cfg.known_targets(),
                cfg.groups,
                issuer=cfg.issuer_name,
                audience=cfg.gateway_name,
            )
        except IssuanceRefused as e:
            unaudited = ""
            try:
                audit.append(
                    "grant.refused",
                    actor=current_actor(),
                    subject=request.requester,
                    template=request.template,
                    targets=list(request.targets),
                    rule=e.rule,
                    message=str(e),
                )
            except RecorderError as fault:  # refused all the same; say what was not recorded
                unaudited = f" (the refusal could not be audited: {fault})"
            raise CliError(f"refused ({e.rule}): {e}{unaudited}") from None
        token = sign_grant(claims, key, kid)
        _issue_atomically(cfg, audit, claims, token)
    finally:
        audit.close()
    return 0


def _issue_atomically(cfg, audit, claims: dict, token: str) -> None:
    """Stored, audited and printed, or none of them: a grant that could not be audited is
    removed from the state again, and one whose token could not be printed is revoked."""
    state = open_state(cfg)
    actor = current_actor()

    async def store(undo: bool = False) -> None:
        try:  # one event loop for every use of the state (asyncpg pools are bound to one)
            if undo:
                await state.forget_grant(claims["jti"])
            else:
                await state.record_grant(claims)
        finally:
            await state.close()

    asyncio.run(store())
    try:
        audit_grant_issued(audit, claims, actor)
        audit.flush()
    except Exception:
        state = open_state(cfg)
        asyncio.run(store(undo=True))
        raise CliError("the grant could not be audited, so it was not issued") from None
    try:
        print(
            f"grant {claims['jti']} for {claims['sub']} ({claims['template']}), "
            f"expires {utc_text(claims['exp'])}",
            file=sys.stderr,
        )
        print(token, flush=True)
    except OSError:
        state = open_state(cfg)

        async def revoke() -> None:
            try:
                await state.revoke(claims["jti"], "the token could not be delivered", actor)
            finally:
                await state.close()

        asyncio.run(revoke())
        audit.append(
            "grant.revoked", actor=actor, jti=claims["jti"], subject=claims["sub"],
            reason="the token could not be delivered",
        )  # fmt: skip
        raise CliError("the token could not be printed, so the grant was revoked") from None


def _is_file(arg: str) -> bool:
    try:
        return Path(arg).expanduser().is_file()
    except (OSError, ValueError):  # e.g. a token longer than a file name may be
        return False


def _read_token(arg: str) -> str:
    """``-`` (stdin), a file holding the token, or the token itself."""
    if arg == "-":
        token = sys.stdin.read()
    elif _is_file(arg):
        try:
            token = Path(arg).expanduser().read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read {arg}: {getattr(e, 'strerror', e)}") from None
    else:
        token = arg
    token = token.strip()
    if not token:
        raise CliError("no token given (pass TOKEN or pipe it to `breakglass grant inspect -`)")
    return token


def cmd_inspect(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    token = _read_token(args.token)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise CliError(f"not a grant token: {e}") from None
    state = open_state(cfg)

    async def lookup() -> bool:
        try:  # one event loop for every use of the state (asyncpg pools are bound to one)
            jti = claims.get("jti")
            return isinstance(jti, str) and await state.revocation(jti) is not None
        finally:
            await state.close()

    revoked = asyncio.run(lookup())
    result = grant_verifier(cfg, lambda _jti: revoked).verify(token)
    ok = isinstance(result, Grant)
    if args.json:
        emit_json(
            {
                "header": header,
                "claims": claims,
                "valid": ok,
                "refusal": None if ok else {"kind": str(result.kind), "message": result.message},
            }
        )
        return 0 if ok else 1
    now = time.time()
    print(f"grant      {claims.get('jti')}  (kid {header.get('kid')}, alg {header.get('alg')})")
    print(f"subject    {claims.get('sub')}")
    print(f"issuer     {claims.get('iss')}  audience {claims.get('aud')}")
    for k in ("iat", "nbf", "exp"):
        v = claims.get(k)
        if isinstance(v, int | float):
            rel = format_duration(abs(v - now))
            print(f"{k:<10} {utc_text(v)}  ({'in ' + rel if v > now else rel + ' ago'})")
    for t in claims.get("targets") or []:
        print(f"target     {t.get('type')}:{t.get('name')} as {t.get('login') or t.get('db_user')}")
    if claims.get("ssh"):
        s = claims["ssh"]
        print(
            f"ssh        shell={s.get('shell')} forwarding={s.get('forwarding')} sftp={s.get('sftp')}"
        )
        for c in s.get("commands") or []:
            print(f"  command  {c}")
    if claims.get("sql"):
        print(
            f"sql        mode={claims['sql'].get('mode')} tables={claims['sql'].get('tables') or 'any'}"
        )
    print(f"template   {claims.get('template')}  break-glass={claims.get('breakglass', False)}")
    print(f"reason     {claims.get('reason')}  ticket={claims.get('ticket')}")
    print(f"approvers  {', '.join(claims.get('approvers') or []) or '-'}")
    if ok:
        print("status     VALID now")
        return 0
    assert isinstance(result, Refusal)
    print(f"status     NOT VALID: {result.message} ({result.kind})")
    return 1


def cmd_revoke(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if not args.reason.strip():
        raise CliError("a reason is required to revoke a grant")
    state = open_state(cfg)

    async def run():
        try:
            known = await state.get_grant(args.jti)
            rev = await state.revoke(args.jti, args.reason.strip(), current_actor())
            return known, rev
        finally:
            await state.close()

    known, rev = asyncio.run(run())
    audit = open_audit(cfg)
    try:
        audit.append(
            "grant.revoked",
            actor=rev.actor,
            jti=rev.jti,
            subject=known.subject if known else None,
            reason=rev.reason,
        )
    finally:
        audit.close()
    if args.json:
        emit_json(
            {
                "jti": rev.jti,
                "revoked_at": rev.revoked_at,
                "reason": rev.reason,
                "actor": rev.actor,
                "known": bool(known),
            }
        )
        return 0
    who = (
        f" (issued to {known.subject})"
        if known
        else " (not issued by this state database; revoked anyway)"
    )
    print(f"revoked {rev.jti}{who} at {utc_text(rev.revoked_at)}")
    return 0
