"""Console login with an OIDC ID token, in headless Chromium, against the loopback identity
provider of tests/test_service_oidc.py (its JWKS over HTTP; tokens signed with its keys).

Only console reviewers get in: an IdP user whose group maps to `security` (the default
`[console] reviewers` are the service admins, `@security`) is admitted; a user of another
group is refused; forged, expired and wrong-audience tokens are refused and never echoed; all
of it is audited."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from breakglass.recorder.audit import read_audit
from tests.harness import GatewayThread
from tests.test_console import chromium_driver, wait
from tests.test_identity import AUDIENCE, ISSUER, LoopbackIdp
from tests.test_service_support import ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("console-oidc")
    loop = asyncio.new_event_loop()
    idp = loop.run_until_complete(LoopbackIdp().start())
    import threading

    t = threading.Thread(target=loop.run_forever, daemon=True)  # the IdP answers JWKS fetches
    t.start()
    gw = GatewayThread(base / "gw", pg=pg_server)  # its config and keys; not started
    add_service_config(
        gw.dir,
        identity=f"""
[identity.oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{idp.url}"
username_claim = "email"
groups_claim = "groups"
group_map = {{ "sre" = "approvers", "secops" = "security" }}
""",
    )
    svc = ServiceThread(gw.dir / "config.toml").start()
    driver = chromium_driver(base)
    try:
        yield {"idp": idp, "svc": svc, "gw": gw, "driver": driver}
    finally:
        driver.quit()
        svc.stop()
        asyncio.run_coroutine_threadsafe(idp.runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


def oidc_login(env, token: str) -> None:
    d = env["driver"]
    d.delete_all_cookies()
    d.get(env["svc"].url + "/console/login")
    d.find_element("css selector", "details summary").click()  # "or an OIDC ID token"
    d.find_element("id", "id_token").send_keys(token)
    d.find_element("id", "login-submit").click()


def audit(env, kind: str) -> list[dict]:
    svc = env["svc"]
    svc.call(asyncio.to_thread(svc.service.audit.flush))
    return [e for e in read_audit(env["gw"].cfg.audit_dir, type=kind) if e.get("via") != "api"]


def test_reviewer_logs_in_with_an_oidc_id_token(env):
    d, idp, svc = env["driver"], env["idp"], env["svc"]
    oidc_login(env, idp.token(email="rita@example.com", groups=["secops", "everyone"]))
    wait(d, lambda d: d.find_elements("id", "filters"))
    assert d.current_url.endswith("/console/sessions")
    assert d.find_element("css selector", "header .who").text == "rita@example.com"
    ok = [e for e in audit(env, "login.succeeded") if e.get("actor") == "rita@example.com"]
    assert ok and ok[-1]["method"] == "oidc" and ok[-1]["via"] == "console"
    assert ok[-1]["groups"] == ["security"]  # only the mapped group
    # the review queue opens too; logging out ends it
    d.get(svc.url + "/console/review")
    wait(d, lambda d: d.find_elements("id", "queue-empty") or d.find_elements("id", "queue"))
    d.find_element("css selector", "nav form button").click()
    wait(d, lambda d: d.current_url.endswith("/console/login"))
    d.get(svc.url + "/console/sessions")
    assert d.current_url.endswith("/console/login")


def test_oidc_user_outside_the_reviewers_is_refused(env):
    d, idp, svc = env["driver"], env["idp"], env["svc"]
    # a real IdP user, mapped to approvers (may approve requests), but not a console reviewer
    oidc_login(env, idp.token(email="erin@example.com", groups=["sre"]))
    err = wait(d, lambda d: d.find_element("id", "login-error"))
    assert "erin@example.com may not open the console" in err.text
    d.get(svc.url + "/console/sessions")
    assert d.current_url.endswith("/console/login")  # no console session was given
    refused = [e for e in audit(env, "console.refused") if e.get("actor") == "erin@example.com"]
    assert refused and refused[-1]["reason"] == "not a console reviewer"
    # an unmapped IdP group named like the policy group gives nothing
    oidc_login(env, idp.token(email="mallory@example.com", groups=["security"]))
    err = wait(d, lambda d: d.find_element("id", "login-error"))
    assert "may not open the console" in err.text


def test_bad_oidc_tokens_are_refused_and_never_echoed(env):
    d, idp, svc = env["driver"], env["idp"], env["svc"]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    cases = {
        "oidc: bad signature": idp.token(email="rita@example.com", groups=["secops"], key=other),
        "oidc: token expired": idp.token(
            email="rita@example.com", groups=["secops"], iat=now - 900, exp=now - 600
        ),
        "oidc: wrong audience": idp.token(
            email="rita@example.com", groups=["secops"], aud="another-app"
        ),
        "not verified": idp.token(email="rita@example.com", groups=["secops"],
                                  email_verified=False),
    }  # fmt: skip
    for reason, tok in cases.items():
        oidc_login(env, tok)
        err = wait(d, lambda d: d.find_element("id", "login-error"))
        assert err.text, reason
        assert tok not in d.page_source
        d.get(svc.url + "/console/sessions")
        assert d.current_url.endswith("/console/login"), reason
    failed = audit(env, "login.failed")
    reasons = " | ".join(str(e.get("reason")) for e in failed if e.get("via") == "console")
    for want in cases:
        assert want in reasons, reasons
    dump = json.dumps(read_audit(env["gw"].cfg.audit_dir))
    for tok in cases.values():
        assert tok not in dump
