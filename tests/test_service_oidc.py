"""The grant service with OIDC identity: ID tokens from a loopback test identity provider."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from breakglass.recorder.audit import read_audit
from tests.harness import GatewayThread
from tests.test_identity import AUDIENCE, ISSUER, LoopbackIdp
from tests.test_service_support import ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(60)


def call(url, path, body=None, token=None):
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
async def oidc_env(pg_server, tmp_path):
    idp = await LoopbackIdp().start()
    gw = GatewayThread(tmp_path / "gw", pg=pg_server)  # its config and keys; not started
    add_service_config(
        gw.dir,
        identity=f"""
[identity.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{idp.url}"
username_claim = "email"
groups_claim = "groups"
group_map = {{ "sre" = "approvers" }}
""",
    )
    svc = await asyncio.to_thread(lambda: ServiceThread(gw.dir / "config.toml").start())
    yield idp, svc, gw
    await asyncio.to_thread(svc.stop)
    await idp.runner.cleanup()


async def test_oidc_login_accepted_and_groups_mapped(oidc_env):
    idp, svc, gw = oidc_env
    login = lambda tok: asyncio.to_thread(call, svc.url, "/v1/login", {"id_token": tok})  # noqa: E731
    st, alice = await login(idp.token(email="alice@example.com", groups=["sre"]))
    assert st == 200 and alice["user"] == "alice@example.com" and alice["groups"] == ["approvers"]
    st, erin = await login(idp.token(email="erin@example.com", groups=["dev"]))
    assert st == 200 and erin["groups"] == []
    st, r = await asyncio.to_thread(
        call,
        svc.url,
        "/v1/requests",
        {"template": "db-readonly", "targets": ["shop"], "ttl": "10m", "reason": "x"},
        erin["token"],
    )
    assert st == 201, r
    # an IdP group maps to the approvers policy group: alice may approve
    st, r = await asyncio.to_thread(
        call, svc.url, f"/v1/requests/{r['id']}/approve", {"comment": "ok"}, alice["token"]
    )
    assert st == 200 and r["status"] == "approved"
    assert r["approvals"][0]["groups"] == ["approvers"]


async def test_oidc_forged_expired_wrong_audience_refused(oidc_env):
    idp, svc, gw = oidc_env
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    cases = {
        "forged": idp.token(key=other),
        "expired": idp.token(iat=now - 900, exp=now - 600),
        "wrong-audience": idp.token(aud="another-app"),
    }
    for name, tok in cases.items():
        st, body = await asyncio.to_thread(call, svc.url, "/v1/login", {"id_token": tok})
        assert st == 401, name
        assert tok not in json.dumps(body)
    # local users are enabled beside OIDC; a wrong password is refused
    st, _ = await asyncio.to_thread(
        call, svc.url, "/v1/login", {"method": "local", "username": "alice", "password": "x"}
    )
    assert st == 401
    svc.service.audit.flush()
    failed = read_audit(gw.cfg.audit_dir, type="login.failed")
    reasons = [e["reason"] for e in failed]
    for want in ("oidc: bad signature", "oidc: token expired", "oidc: wrong audience"):
        assert want in reasons
    dump = json.dumps(read_audit(gw.cfg.audit_dir))
    for tok in cases.values():
        assert tok not in dump


async def test_oidc_cannot_impersonate_a_local_approver(oidc_env):
    idp, svc, gw = oidc_env
    login = lambda tok: asyncio.to_thread(call, svc.url, "/v1/login", {"id_token": tok})  # noqa: E731
    # The reported attack: a bare, unverified "alice" from the IdP, no groups.
    st, body = await login(idp.token(email="alice", email_verified=False, groups=[]))
    assert st == 401 and "not verified" in body["error"] and body["rule"] == "login-failed"
    st, body = await login(idp.token(email="alice", email_verified=True, groups=[]))
    assert st == 401
    # A verified address is its own name, never the local user "alice".
    st, erin = await login(idp.token(email="erin@example.com", groups=[]))
    st, r = await asyncio.to_thread(
        call,
        svc.url,
        "/v1/requests",
        {"template": "db-readonly", "targets": ["shop"], "ttl": "10m", "reason": "x"},
        erin["token"],
    )
    assert st == 201
    st, imp = await login(idp.token(email="alice@example.com", groups=[]))
    assert st == 200 and imp["user"] == "alice@example.com" and imp["groups"] == []
    st, body = await asyncio.to_thread(
        call, svc.url, f"/v1/requests/{r['id']}/approve", {"comment": "x"}, imp["token"]
    )
    assert st == 403 and body["rule"] == "approver-not-allowed"


def test_config_refuses_a_name_two_sources_could_claim(tmp_path, pg_server):
    from breakglass.proxy.config import ConfigError
    from breakglass.service.api import load_service_config

    gw = GatewayThread(tmp_path / "gw", pg=pg_server)
    add_service_config(
        gw.dir,
        identity=f"""
[identity.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "http://127.0.0.1:9/jwks"
user_map = {{ "alice@example.com" = "alice" }}
""",
    )
    with pytest.raises(ConfigError) as e:
        load_service_config(gw.dir / "config.toml")
    assert "identity.oidc.user_map" in str(e.value) and "also a local user" in str(e.value)
