"""The grant service end to end: real HTTP on 127.0.0.1, local users with password + TOTP,
the real CLI, a real gateway and a real PostgreSQL session with the fetched grant."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import urllib.request

import asyncpg
import jwt
import pyotp
import pytest

from breakglass.cli.service_cmds import find_stored_grant, grants_dir
from breakglass.recorder.audit import read_audit
from breakglass.service.requests import Request
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_service_support import PASSWORDS, Cli, ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("svc")
    gw = GatewayThread(base / "gw", pg=pg_server).start()
    secrets = add_service_config(
        base / "gw",
        extra="""
[service.auto_approve.oncall-readonly]
templates = ["db-readonly"]
requesters = ["@approvers"]
oncall = true
max_ttl = "30m"
""",
    )
    (base / "gw" / "oncall.txt").write_text("bob\n")
    svc = ServiceThread(base / "gw" / "config.toml").start()
    with pytest.MonkeyPatch.context() as mp:
        cli = Cli(base / "home", base / "gw" / "config.toml", secrets, mp)
        for u in ("erin", "alice", "bob", "ina"):
            cli.login(u, svc.url)
        yield gw, svc, cli
    svc.stop()
    gw.stop()


def audit(gw, type_):
    svc_dir = gw.cfg.audit_dir
    return read_audit(svc_dir, type=type_)


async def test_request_approve_fetch_and_use(env):
    gw, svc, cli = env
    out = cli.request("erin", "fix order 42", "--ticket", "OPS-1", duration="20m")
    rid = out["id"]
    assert out["status"] == "pending"
    # The grant is not there before approval.
    rc, _, err = cli.run("erin", "grant", "get", rid)
    assert rc != 0 and "pending" in err
    pending = json.loads(cli.ok("alice", "requests", "--pending", "--json"))
    assert rid in [r["id"] for r in pending]
    t_approve = time.time()
    out = cli.ok("alice", "approve", rid, "--comment", "ok", "--json")
    approved = json.loads(out)
    assert approved["status"] == "approved" and approved["approvals"][0]["by"] == "alice"
    # Only the requester can fetch it.
    rc, _, err = cli.run("alice", "grant", "get", rid)
    assert rc != 0 and "only the requester" in err
    cli.ok("erin", "grant", "get", rid)
    cli.mp.setenv("XDG_CONFIG_HOME", str(cli.home / "erin"))
    token = find_stored_grant("shop", "postgres")
    assert token
    files = list(grants_dir().glob("*.jwt"))
    assert files and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(grants_dir().stat().st_mode) == 0o700
    assert find_stored_grant("shop", "ssh") is None and find_stored_grant("other") is None
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "erin" and claims["approvers"] == ["alice"]
    assert claims["ticket"] == "OPS-1" and claims["request"] == rid
    # lifetime counted from approval
    assert abs(claims["iat"] - t_approve) < 5 and claims["exp"] - claims["iat"] == 20 * 60
    # A real PostgreSQL session through the gateway with it.
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    try:
        assert await conn.fetchval("select count(*) from customers") > 0
    finally:
        await conn.close()
    # Audited with verified identities; no secrets in the log.
    await asyncio.to_thread(svc.service.audit.flush)
    issued = [e for e in audit(gw, "grant.issued") if e.get("jti") == claims["jti"]]
    assert issued and issued[0]["actor"] == "alice" and issued[0]["subject"] == "erin"
    assert any(
        e.get("request") == rid and e["actor"] == "erin" for e in audit(gw, "request.created")
    )
    assert any(e.get("request") == rid for e in audit(gw, "grant.fetched"))
    dump = json.dumps(read_audit(gw.cfg.audit_dir))
    assert token not in dump
    for pw in PASSWORDS.values():
        assert pw not in dump
    for s in cli.secrets.values():
        assert s not in dump


def test_self_approval_refused(env):
    gw, svc, cli = env
    rid = cli.request("alice", "mine")["id"]
    rc, _, err = cli.run("alice", "approve", rid)
    assert rc != 0 and "cannot approve their own request" in err and "self-approval" in err
    rc, _, err = cli.run("erin", "approve", rid)  # not an approver
    assert rc != 0 and "approver-not-allowed" in err
    assert svc.call(svc.service.state.get_request(rid))["status"] == "pending"


def test_expired_request_cannot_be_approved(env):
    gw, svc, cli = env
    rid = cli.request("erin", "late")["id"]
    st = svc.service.state
    doc = svc.call(st.get_request(rid))
    # The approval window has passed (rewritten in the state rather than waited for).
    past = dict(doc, expires_at=time.time() - 1)
    assert svc.call(st.update_request(past, doc["version"]))
    rc, _, err = cli.run("alice", "approve", rid)
    assert rc != 0 and "request-expired" in err
    assert svc.call(st.get_request(rid))["status"] == "expired"
    rc, _, err = cli.run("erin", "grant", "get", rid)
    assert rc != 0 and "expired" in err


def test_denied_request_yields_no_grant(env):
    gw, svc, cli = env
    rid = cli.request("erin", "maybe")["id"]
    rc, _, err = cli.run("bob", "deny", rid)  # --reason is required
    assert rc != 0
    out = json.loads(cli.ok("bob", "deny", rid, "--reason", "use the replica", "--json"))
    assert out["status"] == "denied" and out["denial"]["by"] == "bob"
    rc, _, err = cli.run("alice", "approve", rid)
    assert rc != 0 and "denied" in err
    rc, _, err = cli.run("erin", "grant", "get", rid)
    assert rc != 0 and "denied" in err and "no grant" in err
    req = Request.from_doc(svc.call(svc.service.state.get_request(rid)))
    assert req.claims is None and req.grant_jti is None


def test_breakglass_at_once_alerted_and_queued_for_review(env):
    gw, svc, cli = env
    rc, _, err = cli.run(
        "erin",
        "request",
        "-t",
        "breakglass",
        "--target",
        "shop",
        "--for",
        "10m",
        "--reason",
        "outage",
        "--breakglass",
    )
    assert rc != 0 and "requester-not-allowed" in err
    out = cli.request("ina", "outage INC-9", "--breakglass", "--wait", template="breakglass")
    assert out["status"] == "approved" and out["breakglass"] and out["grant_file"]
    svc.service.audit.flush()
    used = [
        e
        for e in read_audit(gw.cfg.audit_dir, type="breakglass.used")
        if e.get("request") == out["id"]
    ]
    assert used and used[0]["review"] == "queued" and used[0]["subject"] == "ina"


def test_auto_approval_for_oncall_approver(env):
    gw, svc, cli = env
    # bob is on call and in @approvers: approved at once, by the rule
    out = cli.request("bob", "on-call check", duration="15m")
    assert out["status"] == "approved" and out["auto_approved_by"] == "oncall-readonly"
    # erin may not revoke bob's grant; bob may revoke his own
    rc, _, err = cli.run("erin", "grant", "revoke", out["grant_jti"], "--reason", "x")
    assert rc != 0 and "may not revoke" in err
    cli.ok("bob", "grant", "revoke", out["grant_jti"], "--reason", "done early")
    assert svc.call(svc.service.state.revocation(out["grant_jti"])).actor == "bob"
    # alice is not on call: she waits for someone
    out = cli.request("alice", "check", duration="15m")
    assert out["status"] == "pending"


def test_login_requires_totp_and_refuses_wrong_or_replayed(env):
    gw, svc, cli = env

    def login(body):
        req = urllib.request.Request(
            svc.url + "/v1/login",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    base = {"method": "local", "username": "mallory", "password": PASSWORDS["mallory"]}
    assert login(base)[0] == 401  # no code
    totp = pyotp.TOTP(cli.secrets["mallory"])
    wrong = "000000" if totp.now() != "000000" else "111111"
    assert login(dict(base, totp=wrong))[0] == 401
    code = totp.now()
    st, body = login(dict(base, totp=code))
    assert st == 200 and body["user"] == "mallory"
    st, body = login(dict(base, totp=code))
    assert st == 401 and "already used" in body["error"]
    assert login(dict(base, password="nope", totp=totp.now()))[0] == 401
    svc.service.audit.flush()
    failed = [
        e for e in read_audit(gw.cfg.audit_dir, type="login.failed") if e.get("user") == "mallory"
    ]
    reasons = {e["reason"] for e in failed}
    assert {
        "local: TOTP code missing",
        "local: wrong TOTP code",
        "local: TOTP code replayed",
    } <= reasons
    assert any(
        e.get("actor") == "mallory" for e in read_audit(gw.cfg.audit_dir, type="login.succeeded")
    )
    # A forged session token is refused.
    req = urllib.request.Request(
        svc.url + "/v1/whoami", headers={"Authorization": "Bearer " + body.get("token", "x.y.z")}
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401


def test_bad_input_is_refused_cleanly(env):
    gw, svc, cli = env
    for data, ctype in (
        (b"{not json", "application/json"),
        (b"[1,2]", "application/json"),
        (b"x" * 100_000, "application/json"),
    ):
        req = urllib.request.Request(
            svc.url + "/v1/login", data=data, method="POST", headers={"Content-Type": ctype}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code in (400, 413)
    req = urllib.request.Request(svc.url + "/v1/requests")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
