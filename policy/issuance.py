"""Issuance rules: turn an access request into grant claims, or refuse naming the rule."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from breakglass.policy.durations import format_duration
from breakglass.policy.grants import new_jti
from breakglass.policy.templates import Template, is_member


class IssuanceRefused(Exception):
    """A request that breaks a rule. ``rule`` is a short id, ``str(e)`` the explanation."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class AccessRequest:
    template: str
    requester: str
    targets: tuple[str, ...]
    ttl: int  # seconds
    reason: str
    ticket: str | None = None
    approved_by: tuple[str, ...] = ()
    breakglass: bool = False
    source_cidrs: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def build_claims(
    request: AccessRequest,
    templates: Mapping[str, Template],
    known_targets: Mapping[str, str],
    groups: Mapping[str, tuple[str, ...]],
    *,
    issuer: str,
    audience: str,
    now: float | None = None,
) -> dict[str, Any]:
    """Check every rule and return the claims to sign.

    ``known_targets`` maps target name -> type ("ssh" / "postgres").
    """
    tpl = templates.get(request.template)
    if tpl is None:
        known = ", ".join(sorted(templates)) or "none"
        raise IssuanceRefused(
            "unknown-template", f"no template {request.template!r} (known: {known})"
        )
    user = request.requester.strip()
    if not user:
        raise IssuanceRefused("requester", "the grant must name who it is for (--to)")
    if not request.reason or not request.reason.strip():
        raise IssuanceRefused("reason-required", "a reason is required for every grant")
    if request.ttl <= 0:
        raise IssuanceRefused("ttl", "the grant's lifetime must be positive")
    if request.ttl > tpl.max_ttl:
        raise IssuanceRefused(
            "max-ttl",
            f"template {tpl.name} allows at most {format_duration(tpl.max_ttl)}, "
            f"asked for {format_duration(request.ttl)}",
        )
    if not is_member(user, tpl.requesters, groups):
        raise IssuanceRefused(
            "requester-not-allowed", f"{user} may not request template {tpl.name}"
        )
    if tpl.breakglass and not request.breakglass:
        raise IssuanceRefused(
            "breakglass-flag",
            f"template {tpl.name} is break-glass: ask for it explicitly with --breakglass",
        )
    if request.breakglass and not tpl.breakglass:
        raise IssuanceRefused(
            "breakglass-not-allowed", f"template {tpl.name} is not a break-glass template"
        )
    if not request.targets:
        raise IssuanceRefused("target", "name at least one target")
    targets = []
    for name in request.targets:
        type_ = known_targets.get(name)
        if type_ is None:
            raise IssuanceRefused("unknown-target", f"no target named {name!r} is configured")
        if not tpl.covers(type_, name):
            raise IssuanceRefused(
                "target-not-in-template",
                f"template {tpl.name} does not cover {type_} target {name}",
            )
        if type_ == "ssh":
            if not tpl.login:
                raise IssuanceRefused("template", f"template {tpl.name} names no ssh login")
            targets.append({"type": "ssh", "name": name, "login": tpl.login})
        else:
            if not tpl.db_user:
                raise IssuanceRefused("template", f"template {tpl.name} names no db_user")
            targets.append({"type": "postgres", "name": name, "db_user": tpl.db_user})
    approvers = list(dict.fromkeys(a.strip() for a in request.approved_by if a.strip()))
    if user in approvers:
        raise IssuanceRefused("self-approval", f"{user} cannot approve their own request")
    for a in approvers:
        if not is_member(a, tpl.approvers, groups):
            raise IssuanceRefused(
                "approver-not-allowed", f"{a} may not approve template {tpl.name}"
            )
    if not tpl.breakglass and len(approvers) < tpl.approvals:
        raise IssuanceRefused(
            "approvals",
            f"template {tpl.name} needs {tpl.approvals} distinct approver(s) other than "
            f"{user}, got {len(approvers)}",
        )
    now = time.time() if now is None else now
    iat = int(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": user,
        "jti": new_jti(),
        "iat": iat,
        "nbf": iat,
        "exp": iat + request.ttl,
        "targets": targets,
        "reason": request.reason.strip(),
        "template": tpl.name,
        "approvers": approvers,
        "breakglass": tpl.breakglass,
    }
    if any(t["type"] == "ssh" for t in targets):
        claims["ssh"] = tpl.ssh.claim()
    if any(t["type"] == "postgres" for t in targets):
        claims["sql"] = tpl.sql.claim()
        if tpl.role_management:
            claims["role_management"] = True
    if request.ticket:
        claims["ticket"] = request.ticket
    if request.source_cidrs:
        claims["source_cidrs"] = list(request.source_cidrs)
    return claims
