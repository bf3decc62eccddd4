"""Grant-service logins: guessing slows the guesser and locks nobody else out."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import pyotp
import pytest

from breakglass.service.throttle import LoginThrottle
from tests.harness import GatewayThread
from tests.test_identity import AUDIENCE, ISSUER, LoopbackIdp
from tests.test_service_support import PASSWORDS, ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(90)


def post(url: str, path: str, body: dict, source: str = "127.0.0.1") -> tuple[int, dict, dict]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=20, source_address=(source, 0))
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read()), dict(r.getheaders())
    finally:
        c.close()


@pytest.fixture
async def env(pg_server, tmp_path):
    idp = await LoopbackIdp().start()
    gw = GatewayThread(tmp_path / "gw", pg=pg_server)  # config and keys only
    secrets = add_service_config(
        gw.dir,
        identity=f"""
[identity.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{idp.url}"
username_claim = "email"
""",
    )
    svc = await asyncio.to_thread(lambda: ServiceThread(gw.dir / "config.toml").start())
    yield idp, svc, secrets
    await asyncio.to_thread(svc.stop)
    await idp.runner.cleanup()


async def test_guessing_against_an_approver_locks_nobody_out(env):
    idp, svc, secrets = env
    bad = {"method": "local", "username": "alice", "password": "guess", "totp": "000000"}
    results = []
    for _ in range(12):
        st, body, headers = await asyncio.to_thread(post, svc.url, "/v1/login", bad, "127.0.0.9")
        results.append(st)
    assert results[:5] == [401] * 5
    assert 429 in results  # the guesser backs off...
    st, body, headers = await asyncio.to_thread(post, svc.url, "/v1/login", bad, "127.0.0.9")
    assert st == 429 and body["rule"] == "rate-limited" and int(headers["Retry-After"]) >= 1
    # ...while alice logs in from her own address at once,
    good = {
        "method": "local",
        "username": "alice",
        "password": PASSWORDS["alice"],
        "totp": pyotp.TOTP(secrets["alice"]).now(),
    }
    st, body, _ = await asyncio.to_thread(post, svc.url, "/v1/login", good, "127.0.0.1")
    assert st == 200 and body["user"] == "alice"
    # and a valid OIDC login from the guessing address itself (an office behind NAT) is
    # accepted at once, never refused for someone else's failures.
    t0 = time.monotonic()
    st, body, _ = await asyncio.to_thread(
        post, svc.url, "/v1/login", {"id_token": idp.token(email="erin@example.com")}, "127.0.0.9"
    )
    assert st == 200 and body["user"] == "erin@example.com"
    assert time.monotonic() - t0 < 2


async def test_spraying_many_names_from_one_address_is_slowed():
    now = [0.0]
    t = LoginThrottle(address_limit=3, clock=lambda: now[0])
    delays = [t.address_failed("10.0.0.1") for _ in range(6)]
    assert delays[:3] == [0, 0, 0] and 0 < delays[3] < delays[4] < delays[5] <= t.answer_max
    assert t.address_failed("10.0.0.2") == 0  # other addresses are not affected
    for _ in range(t.pair_limit):
        t.pair_failed("bob", "10.0.0.1")
    assert t.retry_after("bob", "10.0.0.1") > 0
    assert t.retry_after("bob", "10.0.0.2") == 0 and t.retry_after("carol", "10.0.0.1") == 0
    now[0] += 3600
    assert t.retry_after("bob", "10.0.0.1") == 0
    assert all(t.begin("x") for _ in range(t.in_flight)) and not t.begin("x")
    t.end("x")
    assert t.begin("x")


async def test_one_error_shape_and_an_access_log_without_tokens(env):
    import urllib.error
    import urllib.request

    from structlog.testing import capture_logs

    idp, svc, _ = env

    def call(path: str, method: str = "GET", data: bytes | None = None, token: str = ""):
        req = urllib.request.Request(svc.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    id_token = idp.token(email="erin@example.com")
    with capture_logs() as logs:
        st, body, _ = await asyncio.to_thread(post, svc.url, "/v1/login", {"id_token": id_token})
        assert st == 200
        session = body["token"]
        cases = [
            (("/v1/whoami",), 401, "unauthenticated"),
            (("/v1/nope", "GET", None, session), 404, "not-found"),
            (("/healthz", "DELETE"), 405, "method-not-allowed"),
            (("/v1/login", "POST", b"x" * (2 << 20)), 413, "too-large"),
            (("/v1/requests/zzz", "GET", None, session), 404, "not-found"),
        ]
        for args, status, rule in cases:
            st, body = await asyncio.to_thread(call, *args)
            assert st == status and body.get("rule") == rule and body.get("error"), (args, body)
    access = [e for e in logs if e["event"] == "service.access"]
    assert len(access) == 1 + len(cases)
    assert access[0]["status"] == 200 and access[0]["path"] == "/v1/login"
    assert any(e["user"] == "erin@example.com" for e in access)
    dump = json.dumps(logs, default=str)
    assert id_token not in dump and session not in dump
