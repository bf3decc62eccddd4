"""Issuance rules: each bad request is refused naming its rule."""

from __future__ import annotations

import pytest

from breakglass.policy.issuance import AccessRequest, IssuanceRefused, build_claims
from breakglass.policy.templates import SqlAccess, SshAccess, TargetPattern, Template

TEMPLATES = {
    "db-readonly": Template(
        name="db-readonly",
        description="",
        targets=(TargetPattern("postgres", "orders*"),),
        max_ttl=3600,
        approvals=1,
        requesters=("*",),
        approvers=("@leads",),
        db_user="app_ro",
        sql=SqlAccess("read-only"),
    ),
    "two-man": Template(
        name="two-man",
        description="",
        targets=(TargetPattern("ssh", "web-*"),),
        max_ttl=1800,
        approvals=2,
        requesters=("@sre",),
        approvers=("@leads", "carol"),
        login="deploy",
        ssh=SshAccess(commands=("uptime",)),
    ),
    "breakglass": Template(
        name="breakglass",
        description="",
        targets=(TargetPattern("ssh", "*"), TargetPattern("postgres", "*")),
        max_ttl=7200,
        approvals=0,
        requesters=("@im",),
        breakglass=True,
        login="deploy",
        db_user="app_rw",
        ssh=SshAccess(shell=True),
        sql=SqlAccess("all"),
    ),
}
TARGETS = {"orders": "postgres", "orders-eu": "postgres", "web-1": "ssh", "billing": "postgres"}
GROUPS = {"leads": ("alice", "bob"), "sre": ("erin", "frank"), "im": ("ina",)}


def issue(**kw):
    base = dict(
        template="db-readonly",
        requester="erin",
        targets=("orders",),
        ttl=1800,
        reason="INC-1 investigate",
        approved_by=("alice",),
    )
    base.update(kw)
    return build_claims(
        AccessRequest(**base), TEMPLATES, TARGETS, GROUPS, issuer="bg", audience="gw", now=1000
    )


def refused(rule: str, **kw) -> IssuanceRefused:
    with pytest.raises(IssuanceRefused) as e:
        issue(**kw)
    assert e.value.rule == rule, str(e.value)
    return e.value


def test_good_request():
    c = issue()
    assert c["sub"] == "erin" and c["aud"] == "gw" and c["iss"] == "bg"
    assert c["exp"] - c["iat"] == 1800
    assert c["targets"] == [{"type": "postgres", "name": "orders", "db_user": "app_ro"}]
    assert c["sql"] == {"mode": "read-only", "tables": []}
    assert "ssh" not in c
    assert c["approvers"] == ["alice"]


def test_self_approval():
    e = refused("self-approval", approved_by=("erin",))
    assert "erin" in str(e)


def test_self_approval_does_not_count_towards_quorum():
    refused("self-approval", template="two-man", targets=("web-1",), approved_by=("alice", "erin"))


def test_too_long():
    e = refused("max-ttl", ttl=7200)
    assert "1h" in str(e)


def test_missing_reason():
    refused("reason-required", reason="   ")


def test_requester_not_allowed():
    refused(
        "requester-not-allowed",
        template="two-man",
        targets=("web-1",),
        requester="zed",
        approved_by=("alice", "bob"),
    )


def test_breakglass_by_someone_not_allowed():
    refused(
        "requester-not-allowed",
        template="breakglass",
        requester="erin",
        approved_by=(),
        breakglass=True,
    )


def test_breakglass_requires_explicit_flag():
    refused("breakglass-flag", template="breakglass", requester="ina", approved_by=())


def test_breakglass_flag_on_normal_template():
    refused("breakglass-not-allowed", breakglass=True)


def test_breakglass_needs_no_approval():
    c = issue(
        template="breakglass",
        requester="ina",
        approved_by=(),
        breakglass=True,
        targets=("web-1", "orders"),
    )
    assert c["breakglass"] is True
    assert c["ssh"]["shell"] is True and c["sql"]["mode"] == "all"


def test_not_enough_distinct_approvers():
    e = refused("approvals", template="two-man", targets=("web-1",), approved_by=("alice", "alice"))
    assert "2 distinct" in str(e)
    issue(template="two-man", targets=("web-1",), approved_by=("alice", "carol"))


def test_approver_not_allowed():
    refused("approver-not-allowed", approved_by=("mallory",))


def test_unknown_template_and_targets():
    refused("unknown-template", template="nope")
    refused("unknown-target", targets=("nope",))
    refused("target-not-in-template", targets=("billing",))
    refused("target-not-in-template", targets=("web-1",))


def test_ticket_and_cidrs_carried():
    c = issue(ticket="INC-42", source_cidrs=("10.0.0.0/8",))
    assert c["ticket"] == "INC-42" and c["source_cidrs"] == ["10.0.0.0/8"]
