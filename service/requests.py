"""Access requests and approvals: the pure rules (no I/O, no clock of their own).

A request moves ``pending -> approved`` (enough distinct approvers, an auto-approval rule, or
break-glass) or ``pending -> denied`` / ``pending -> expired`` (not approved within its approval
window). The grant's claims are built at the moment of approval, so its lifetime counts from
then, not from when it was asked for. Every function here takes ``now`` explicitly.

Who may request and approve what comes from the templates (``policy.templates``); auto-approval
conditions come from the service configuration (:class:`AutoApproveRule`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from breakglass.policy.issuance import AccessRequest, IssuanceRefused, build_claims
from breakglass.policy.templates import Template, is_member

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RequestRefused(IssuanceRefused):
    """A request/approval/denial that breaks a rule. ``rule`` is a short id."""


@dataclass(frozen=True)
class Identity:
    """A verified caller: who, which policy groups, and how they proved it."""

    user: str
    groups: tuple[str, ...] = ()
    method: str = "local"  # local | oidc


@dataclass(frozen=True)
class Decision:
    by: str
    at: float
    comment: str = ""
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    id: str
    requester: str
    requester_groups: tuple[str, ...]
    template: str
    targets: tuple[str, ...]
    ttl: int
    reason: str
    created_at: float
    expires_at: float  # end of the approval window
    ticket: str | None = None
    breakglass: bool = False
    status: str = PENDING
    approvals: tuple[Decision, ...] = ()
    denial: Decision | None = None
    auto_approved_by: str | None = None  # the auto-approval rule's name
    approved_at: float | None = None
    grant_jti: str | None = None
    grant_expires_at: float | None = None
    claims: Mapping[str, Any] | None = field(default=None, repr=False)
    version: int = 0

    def to_doc(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["claims"] = dict(self.claims) if self.claims is not None else None
        return d

    @classmethod
    def from_doc(cls, d: Mapping[str, Any]) -> Request:
        d = dict(d)
        d["requester_groups"] = tuple(d.get("requester_groups") or ())
        d["targets"] = tuple(d["targets"])
        d["approvals"] = tuple(_decision(a) for a in d.get("approvals") or ())
        d["denial"] = _decision(d["denial"]) if d.get("denial") else None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the claims (the token is fetched separately)."""
        d = self.to_doc()
        d.pop("claims", None)
        d.pop("version", None)
        return d


def _decision(d: Mapping[str, Any]) -> Decision:
    return Decision(
        by=d["by"],
        at=float(d["at"]),
        comment=d.get("comment", ""),
        groups=tuple(d.get("groups") or ()),
    )


def new_request_id() -> str:
    return "r-" + secrets.token_hex(8)


def effective_groups(
    groups: Mapping[str, tuple[str, ...]], identities: Iterable[tuple[str, Iterable[str]]]
) -> dict[str, tuple[str, ...]]:
    """Configured groups plus the verified callers' own groups (e.g. from an OIDC claim)."""
    out = {g: tuple(m) for g, m in groups.items()}
    for user, gs in identities:
        for g in gs:
            members = out.get(g, ())
            if user not in members:
                out[g] = (*members, user)
    return out


def _groups_for(req: Request, base: Mapping[str, tuple[str, ...]], *extra: Identity):
    ids = [(req.requester, req.requester_groups)]
    ids += [(a.by, a.groups) for a in req.approvals]
    ids += [(i.user, i.groups) for i in extra]
    return effective_groups(base, ids)


# ---------------------------------------------------------------- auto-approval


@dataclass(frozen=True)
class TimeWindow:
    """``mon-fri 09:00-18:00`` in UTC; an end before the start wraps past midnight."""

    days: frozenset[int]
    start: int  # minutes after midnight
    end: int

    @classmethod
    def parse(cls, text: str) -> TimeWindow:
        parts = text.strip().lower().split()
        if len(parts) == 1:
            day_part, time_part = "mon-sun", parts[0]
        elif len(parts) == 2:
            day_part, time_part = parts
        else:
            raise ValueError(f'expected "DAYS HH:MM-HH:MM", got {text!r}')
        days: set[int] = set()
        for chunk in day_part.split(","):
            a, _, b = chunk.partition("-")
            if a not in DAYS or (b and b not in DAYS):
                raise ValueError(f"unknown day in {text!r} (use mon..sun)")
            i, j = DAYS.index(a), DAYS.index(b or a)
            k = i
            while True:
                days.add(k)
                if k == j:
                    break
                k = (k + 1) % 7
        s, sep, e = time_part.partition("-")
        if not sep:
            raise ValueError(f'expected "HH:MM-HH:MM" in {text!r}')
        return cls(frozenset(days), _minutes(s, text), _minutes(e, text))

    def contains(self, ts: float) -> bool:
        t = datetime.fromtimestamp(ts, UTC)
        m = t.hour * 60 + t.minute
        if self.start <= self.end:
            return t.weekday() in self.days and self.start <= m < self.end
        # wraps midnight: the part after midnight belongs to the previous day's window
        if m >= self.start:
            return t.weekday() in self.days
        return m < self.end and (t.weekday() - 1) % 7 in self.days


def _minutes(s: str, text: str) -> int:
    h, sep, m = s.partition(":")
    if not (sep and h.isdigit() and m.isdigit() and int(h) <= 24 and int(m) < 60):
        raise ValueError(f"bad time {s!r} in {text!r}")
    v = int(h) * 60 + int(m)
    if v > 24 * 60:
        raise ValueError(f"bad time {s!r} in {text!r}")
    return v


@dataclass(frozen=True)
class AutoApproveRule:
    """Approve at once when every stated condition holds (unset conditions are ignored,
    but a rule must state at least one besides ``templates``)."""

    name: str
    templates: tuple[str, ...]  # template-name globs
    requesters: tuple[str, ...] = ()  # users / @groups; empty = anyone the template allows
    oncall: bool = False  # requester must be on the on-call list
    windows: tuple[TimeWindow, ...] = ()  # UTC
    max_ttl: int | None = None

    def matches(
        self,
        req: Request,
        groups: Mapping[str, tuple[str, ...]],
        oncall: Iterable[str],
        now: float,
    ) -> bool:
        if not any(fnmatch.fnmatchcase(req.template, t) for t in self.templates):
            return False
        if self.requesters and not is_member(req.requester, self.requesters, groups):
            return False
        if self.oncall and req.requester not in set(oncall):
            return False
        if self.windows and not any(w.contains(now) for w in self.windows):
            return False
        if self.max_ttl is not None and req.ttl > self.max_ttl:
            return False
        return True


# ---------------------------------------------------------------- transitions


def _relaxed(templates: Mapping[str, Template], name: str) -> dict[str, Template]:
    out = dict(templates)
    if name in out:
        out[name] = dataclasses.replace(out[name], approvals=0)
    return out


def _refused(e: IssuanceRefused) -> RequestRefused:
    return RequestRefused(e.rule, str(e))


def new_request(
    who: Identity,
    *,
    template: str,
    targets: Iterable[str],
    ttl: int,
    reason: str,
    ticket: str | None,
    breakglass: bool,
    templates: Mapping[str, Template],
    known_targets: Mapping[str, str],
    groups: Mapping[str, tuple[str, ...]],
    approval_window: int,
    now: float,
    request_id: str | None = None,
) -> Request:
    """Check every rule that does not depend on approval and return the pending request."""
    req = Request(
        id=request_id or new_request_id(),
        requester=who.user,
        requester_groups=tuple(who.groups),
        template=template,
        targets=tuple(dict.fromkeys(t.strip() for t in targets if t.strip())),
        ttl=int(ttl),
        reason=(reason or "").strip(),
        ticket=(ticket or "").strip() or None,
        breakglass=bool(breakglass),
        created_at=now,
        expires_at=now + approval_window,
    )
    try:  # every rule but the approvals themselves
        build_claims(
            _access(req, ()),
            _relaxed(templates, template),
            known_targets,
            _groups_for(req, groups),
            issuer="-",
            audience="-",
            now=now,
        )
    except IssuanceRefused as e:
        raise _refused(e) from None
    return req


def _access(req: Request, approvers: Iterable[str]) -> AccessRequest:
    return AccessRequest(
        template=req.template,
        requester=req.requester,
        targets=req.targets,
        ttl=req.ttl,
        reason=req.reason,
        ticket=req.ticket,
        approved_by=tuple(approvers),
        breakglass=req.breakglass,
    )


def expire_if_due(req: Request, now: float) -> Request:
    """A pending request past its approval window becomes expired."""
    if req.status == PENDING and now >= req.expires_at:
        return dataclasses.replace(req, status=EXPIRED)
    return req


def needs(req: Request, templates: Mapping[str, Template]) -> int:
    tpl = templates.get(req.template)
    if tpl is None:
        raise RequestRefused("unknown-template", f"template {req.template!r} no longer exists")
    return 0 if tpl.breakglass else tpl.approvals


def _check_pending(req: Request, now: float) -> None:
    if req.status == EXPIRED or (req.status == PENDING and now >= req.expires_at):
        raise RequestRefused(
            "request-expired", f"request {req.id} was not approved in time and has expired"
        )
    if req.status != PENDING:
        raise RequestRefused("not-pending", f"request {req.id} is {req.status}, not pending")


def approve(
    req: Request,
    who: Identity,
    comment: str,
    *,
    templates: Mapping[str, Template],
    groups: Mapping[str, tuple[str, ...]],
    now: float,
) -> Request:
    """Add ``who``'s approval. Returns the request, ``approved`` once enough distinct people
    other than the requester have approved (the caller then issues the grant)."""
    _check_pending(req, now)
    if who.user == req.requester:
        raise RequestRefused("self-approval", f"{who.user} cannot approve their own request")
    if any(a.by == who.user for a in req.approvals):
        raise RequestRefused("already-approved", f"{who.user} has already approved {req.id}")
    tpl = templates.get(req.template)
    if tpl is None:
        raise RequestRefused("unknown-template", f"template {req.template!r} no longer exists")
    if not is_member(who.user, tpl.approvers, _groups_for(req, groups, who)):
        raise RequestRefused(
            "approver-not-allowed", f"{who.user} may not approve template {tpl.name}"
        )
    d = Decision(by=who.user, at=now, comment=(comment or "").strip(), groups=tuple(who.groups))
    req = dataclasses.replace(req, approvals=(*req.approvals, d))
    if len(req.approvals) >= needs(req, templates):
        req = dataclasses.replace(req, status=APPROVED, approved_at=now)
    return req


def deny(
    req: Request,
    who: Identity,
    reason: str,
    *,
    templates: Mapping[str, Template],
    groups: Mapping[str, tuple[str, ...]],
    now: float,
) -> Request:
    """An approver (or the requester, withdrawing it) denies a pending request."""
    _check_pending(req, now)
    if not (reason or "").strip():
        raise RequestRefused("reason-required", "a reason is required to deny a request")
    if who.user != req.requester:
        tpl = templates.get(req.template)
        if tpl is None or not is_member(who.user, tpl.approvers, _groups_for(req, groups, who)):
            raise RequestRefused(
                "approver-not-allowed", f"{who.user} may not deny requests for {req.template}"
            )
    d = Decision(by=who.user, at=now, comment=reason.strip(), groups=tuple(who.groups))
    return dataclasses.replace(req, status=DENIED, denial=d)


def auto_approve(
    req: Request,
    rules: Iterable[AutoApproveRule],
    *,
    templates: Mapping[str, Template],
    groups: Mapping[str, tuple[str, ...]],
    oncall: Iterable[str],
    now: float,
) -> Request:
    """Approve at once a break-glass request, or one an auto-approval rule covers."""
    _check_pending(req, now)
    if req.breakglass:
        return dataclasses.replace(req, status=APPROVED, approved_at=now)
    if needs(req, templates) == 0:
        return dataclasses.replace(req, status=APPROVED, approved_at=now)
    g = _groups_for(req, groups)
    oncall = tuple(oncall)
    for rule in rules:
        if rule.matches(req, g, oncall, now):
            return dataclasses.replace(
                req, status=APPROVED, approved_at=now, auto_approved_by=rule.name
            )
    return req


def grant_claims(
    req: Request,
    *,
    templates: Mapping[str, Template],
    known_targets: Mapping[str, str],
    groups: Mapping[str, tuple[str, ...]],
    issuer: str,
    audience: str,
) -> Request:
    """Build the grant's claims for an approved request, lifetime counted from approval.

    Runs every issuance rule again (a template may have changed since the request). An
    auto-approved request's grant names the rule as its approver (``auto:NAME``).
    """
    if req.status != APPROVED or req.approved_at is None:
        raise RequestRefused("not-approved", f"request {req.id} is {req.status}")
    tpls: Mapping[str, Template] = templates
    approvers = [a.by for a in req.approvals]
    if req.auto_approved_by:
        tpls = _relaxed(templates, req.template)
    try:
        claims = build_claims(
            _access(req, approvers),
            tpls,
            known_targets,
            _groups_for(req, groups),
            issuer=issuer,
            audience=audience,
            now=req.approved_at,
        )
    except IssuanceRefused as e:
        raise _refused(e) from None
    if req.auto_approved_by:
        claims["approvers"] = [f"auto:{req.auto_approved_by}"]
    claims["request"] = req.id
    return dataclasses.replace(
        req, claims=claims, grant_jti=claims["jti"], grant_expires_at=float(claims["exp"])
    )
