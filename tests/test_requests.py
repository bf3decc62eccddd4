"""The pure request/approval rules in service.requests."""

from __future__ import annotations

import calendar
import dataclasses

import pytest

from breakglass.policy.templates import SqlAccess, TargetPattern, Template
from breakglass.service.requests import (
    APPROVED,
    DENIED,
    EXPIRED,
    PENDING,
    AutoApproveRule,
    Identity,
    Request,
    RequestRefused,
    TimeWindow,
    approve,
    auto_approve,
    deny,
    expire_if_due,
    grant_claims,
    new_request,
)

T0 = calendar.timegm((2026, 3, 2, 10, 0, 0))  # a Monday, 10:00 UTC

TEMPLATES = {
    "db": Template(
        name="db",
        description="",
        targets=(TargetPattern("postgres", "*"),),
        max_ttl=3600,
        approvals=1,
        requesters=("*",),
        approvers=("@approvers",),
        db_user="app_ro",
        sql=SqlAccess(),
    ),
    "db2": Template(
        name="db2",
        description="",
        targets=(TargetPattern("postgres", "*"),),
        max_ttl=3600,
        approvals=2,
        requesters=("*",),
        approvers=("@approvers", "carol"),
        db_user="app_rw",
    ),
    "bg": Template(
        name="bg",
        description="",
        targets=(TargetPattern("postgres", "*"),),
        max_ttl=7200,
        approvals=0,
        breakglass=True,
        requesters=("@incident-managers",),
        db_user="app_rw",
    ),
}
GROUPS = {"approvers": ("alice", "bob"), "incident-managers": ("ina",)}
TARGETS = {"shop": "postgres"}
ERIN, ALICE, BOB, CAROL = (Identity(u) for u in ("erin", "alice", "bob", "carol"))


def req(template="db", who=ERIN, ttl=1800, now=T0, **kw) -> Request:
    return new_request(
        who,
        template=template,
        targets=["shop"],
        ttl=ttl,
        reason="fix orders",
        ticket=kw.pop("ticket", None),
        breakglass=kw.pop("breakglass", False),
        templates=TEMPLATES,
        known_targets=TARGETS,
        groups=GROUPS,
        approval_window=kw.pop("window", 900),
        now=now,
    )


def ok(r, who, now=T0 + 60, comment=""):
    return approve(r, who, comment, templates=TEMPLATES, groups=GROUPS, now=now)


def test_request_checked_at_creation():
    r = req()
    assert r.status == PENDING and r.expires_at == T0 + 900 and r.id.startswith("r-")
    with pytest.raises(RequestRefused) as e:
        req(ttl=7200)
    assert e.value.rule == "max-ttl"
    with pytest.raises(RequestRefused) as e:
        req("nope")
    assert e.value.rule == "unknown-template"
    with pytest.raises(RequestRefused) as e:
        req("bg", breakglass=True)  # erin is no incident manager
    assert e.value.rule == "requester-not-allowed"


def test_approval_then_grant_counts_from_approval():
    r = ok(req(), ALICE, now=T0 + 600)
    assert r.status == APPROVED and r.approved_at == T0 + 600
    r = grant_claims(
        r, templates=TEMPLATES, known_targets=TARGETS, groups=GROUPS, issuer="i", audience="gw"
    )
    assert r.claims["iat"] == T0 + 600 and r.claims["exp"] == T0 + 600 + 1800
    assert r.claims["approvers"] == ["alice"] and r.claims["sub"] == "erin"
    assert r.claims["request"] == r.id and r.grant_jti == r.claims["jti"]
    # round trip through the stored document
    assert Request.from_doc(r.to_doc()) == r
    assert "claims" not in r.public()


def test_self_approval_refused():
    r = req(who=ALICE)
    with pytest.raises(RequestRefused) as e:
        ok(r, ALICE)
    assert e.value.rule == "self-approval"


def test_non_approver_refused_and_group_from_identity_counts():
    with pytest.raises(RequestRefused) as e:
        ok(req(), Identity("dave"))
    assert e.value.rule == "approver-not-allowed"
    # dave's verified identity (e.g. an OIDC group claim) puts him in @approvers
    r = ok(req(), Identity("dave", ("approvers",)))
    assert r.status == APPROVED
    grant_claims(
        r, templates=TEMPLATES, known_targets=TARGETS, groups=GROUPS, issuer="i", audience="gw"
    )


def test_n_distinct_approvers():
    r = ok(req("db2"), ALICE)
    assert r.status == PENDING
    with pytest.raises(RequestRefused) as e:
        ok(r, ALICE)
    assert e.value.rule == "already-approved"
    r = ok(r, CAROL)
    assert r.status == APPROVED
    assert [a.by for a in r.approvals] == ["alice", "carol"]


def test_expired_request_cannot_be_approved():
    r = req(window=300)
    with pytest.raises(RequestRefused) as e:
        ok(r, ALICE, now=T0 + 301)
    assert e.value.rule == "request-expired"
    assert expire_if_due(r, T0 + 301).status == EXPIRED
    assert expire_if_due(r, T0 + 299).status == PENDING
    with pytest.raises(RequestRefused) as e:
        ok(expire_if_due(r, T0 + 301), ALICE, now=T0 + 302)
    assert e.value.rule in ("not-pending", "request-expired")


def test_denied_request_yields_no_grant():
    r = deny(req(), BOB, "not now", templates=TEMPLATES, groups=GROUPS, now=T0 + 5)
    assert r.status == DENIED and r.denial.by == "bob"
    with pytest.raises(RequestRefused):
        ok(r, ALICE)
    with pytest.raises(RequestRefused) as e:
        grant_claims(
            r, templates=TEMPLATES, known_targets=TARGETS, groups=GROUPS, issuer="i", audience="gw"
        )
    assert e.value.rule == "not-approved"
    with pytest.raises(RequestRefused):
        deny(req(), Identity("dave"), "no", templates=TEMPLATES, groups=GROUPS, now=T0)
    with pytest.raises(RequestRefused) as e:
        deny(req(), BOB, " ", templates=TEMPLATES, groups=GROUPS, now=T0)
    assert e.value.rule == "reason-required"
    # the requester may withdraw their own request
    assert deny(req(), ERIN, "done", templates=TEMPLATES, groups=GROUPS, now=T0).status == DENIED


def auto(r, rules, oncall=(), now=T0):
    return auto_approve(r, rules, templates=TEMPLATES, groups=GROUPS, oncall=oncall, now=now)


def test_auto_approval_conditions():
    rule = AutoApproveRule(
        "oncall-hours",
        templates=("db*",),
        requesters=("@oncall-eligible",),
        oncall=True,
        windows=(TimeWindow.parse("mon-fri 09:00-18:00"),),
        max_ttl=1800,
    )
    groups = dict(GROUPS, **{"oncall-eligible": ("erin",)})

    def run(r=None, oncall=("erin",), now=T0, g=groups):
        r = r or req(now=now)
        return auto_approve(r, [rule], templates=TEMPLATES, groups=g, oncall=oncall, now=now)

    a = run()
    assert a.status == APPROVED and a.auto_approved_by == "oncall-hours"
    a = grant_claims(
        a, templates=TEMPLATES, known_targets=TARGETS, groups=groups, issuer="i", audience="gw"
    )
    assert a.claims["approvers"] == ["auto:oncall-hours"]
    assert run(oncall=()).status == PENDING  # not on call
    assert run(now=T0 + 9 * 3600).status == PENDING  # 19:00
    assert run(now=T0 + 5 * 86400).status == PENDING  # Saturday
    assert run(g=GROUPS).status == PENDING  # not in the group
    assert run(r=req(ttl=3600)).status == PENDING  # longer than the rule allows


def test_breakglass_approved_at_once():
    r = req("bg", who=Identity("ina"), breakglass=True)
    a = auto(r, [])
    assert a.status == APPROVED and a.approved_at == T0
    a = grant_claims(
        a, templates=TEMPLATES, known_targets=TARGETS, groups=GROUPS, issuer="i", audience="gw"
    )
    assert a.claims["breakglass"] is True and a.claims["approvers"] == []


def test_time_windows():
    w = TimeWindow.parse("fri 22:00-06:00")
    fri = T0 + 4 * 86400  # Friday 10:00
    assert not w.contains(fri)
    assert w.contains(fri + 12 * 3600 + 30 * 60)  # Fri 22:30
    assert w.contains(fri + 19 * 3600)  # Sat 05:00
    assert not w.contains(fri + 21 * 3600)  # Sat 07:00
    assert TimeWindow.parse("09:00-17:00").contains(T0)
    assert TimeWindow.parse("sat-mon 09:00-17:00").contains(T0)  # wraps the week
    for bad in ("funday 09:00-10:00", "mon 9-10", "mon 25:00-26:00", "a b c"):
        with pytest.raises(ValueError):
            TimeWindow.parse(bad)


def test_template_change_rechecked_at_issuance():
    r = ok(req(), ALICE)
    shrunk = dict(TEMPLATES, db=dataclasses.replace(TEMPLATES["db"], max_ttl=600))
    with pytest.raises(RequestRefused) as e:
        grant_claims(
            r, templates=shrunk, known_targets=TARGETS, groups=GROUPS, issuer="i", audience="gw"
        )
    assert e.value.rule == "max-ttl"
