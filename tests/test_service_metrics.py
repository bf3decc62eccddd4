"""The grant service's Prometheus metrics, scraped over HTTP from a real running service
after real logins (good and bad), requests, approvals, denials, refusals, break-glass
grants and a break-glass drill; labels bounded (nothing a caller typed becomes a label) and
no secret in the exposition."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request

import pyotp
import pytest

from breakglass.service.metrics import login_reason
from tests.harness import GatewayThread
from tests.test_metrics import _value
from tests.test_service_support import PASSWORDS, ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(90)


def _http(url: str, method: str = "GET", body: dict | None = None, token: str | None = None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:  # loopback only
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Api:
    def __init__(self, url: str, totp: dict[str, str]) -> None:
        self.url, self.totp, self.tokens = url, totp, {}

    def login(self, user: str, password: str | None = None, code: str | None = None):
        body = {
            "method": "local",
            "username": user,
            "password": PASSWORDS.get(user, "x") if password is None else password,
            "totp": code if code is not None else pyotp.TOTP(self.totp[user]).now(),
        }
        status, text = _http(self.url + "/v1/login", "POST", body)
        if status == 200:
            self.tokens[user] = json.loads(text)["token"]
        return status, text

    def call(self, user: str, method: str, path: str, body: dict | None = None):
        status, text = _http(self.url + path, method, body, self.tokens[user])
        return status, json.loads(text) if text else None


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("svcm")
    gw = GatewayThread(base / "gw", pg=pg_server).start()
    totp = add_service_config(base / "gw", extra='metrics_listen = "127.0.0.1:0"')
    svc = ServiceThread(base / "gw" / "config.toml").start()
    try:
        yield gw, svc, Api(svc.url, totp)
    finally:
        svc.stop()
        gw.stop()


def _scrape(svc) -> str:
    status, text = _http(f"http://127.0.0.1:{svc.running.metrics_port}/metrics")
    assert status == 200
    return text


def test_service_metrics_count_logins_requests_decisions_and_breakglass(env):
    gw, svc, api = env
    m = f"http://127.0.0.1:{svc.running.metrics_port}"
    # Logins: three good ones, and failures for three different reasons.
    for u in ("erin", "alice", "ina"):
        assert api.login(u)[0] == 200
    assert api.login("mallory", password="wrong-password-" + "m" * 8)[0] == 401
    assert api.login("nobody-" + secrets.token_hex(4), code="123456")[0] == 401
    stale = pyotp.TOTP(api.totp["mallory"]).at(time.time() - 3600)
    assert api.login("mallory", code=stale)[0] == 401
    # A request approved by alice, one denied, one refused (unknown template: its name,
    # which the caller chose, must not become a label), and a refused self-approval.
    body = {"template": "db-readonly", "targets": ["shop"], "ttl": "10m", "reason": "INC-1"}
    status, r1 = api.call("erin", "POST", "/v1/requests", body)
    assert status == 201 and r1["status"] == "pending"
    status, out = api.call("alice", "POST", f"/v1/requests/{r1['id']}/approve", {"comment": "ok"})
    assert status == 200 and out["status"] == "approved"
    status, grant = api.call("erin", "GET", f"/v1/requests/{r1['id']}/grant")
    assert status == 200 and grant["token"]
    status, r2 = api.call("erin", "POST", "/v1/requests", body)
    status, out = api.call("alice", "POST", f"/v1/requests/{r2['id']}/deny", {"reason": "no"})
    assert status == 200 and out["status"] == "denied"
    made_up = "tpl-" + secrets.token_hex(6)
    status, out = api.call("erin", "POST", "/v1/requests", dict(body, template=made_up))
    assert status == 400 and out["rule"] == "unknown-template"
    status, r3 = api.call("alice", "POST", "/v1/requests", body)
    status, out = api.call("alice", "POST", f"/v1/requests/{r3['id']}/approve", {})
    assert status == 403 and out["rule"] == "self-approval"
    # Break-glass: a real emergency and a drill, both granted at once.
    bg = {"template": "breakglass", "targets": ["shop"], "ttl": "30m", "breakglass": True}
    status, out = api.call("ina", "POST", "/v1/requests", dict(bg, reason="outage INC-9"))
    assert status == 201 and out["status"] == "approved"
    drill = dict(bg, reason="DRILL: quarterly", ticket="DRILL-20261201T000000Z")
    status, out = api.call("ina", "POST", "/v1/requests", drill)
    assert status == 201 and out["status"] == "approved"
    status, out = api.call("erin", "POST", "/v1/requests", dict(bg, reason="not mine"))
    assert status == 403  # erin is no incident manager
    bg_rule = out["rule"]
    status, _ = api.call("erin", "GET", "/no-such-" + grant["token"])
    assert status == 404

    text = _scrape(svc)
    v = lambda name, **labels: _value(text, name, **labels)  # noqa: E731
    assert v("breakglass_service_logins_total", method="local", via="api", outcome="succeeded") == 3
    assert v("breakglass_service_logins_total", method="local", via="api", outcome="failed") == 3
    for reason in ("local: wrong password", "local: unknown user", "local: wrong TOTP code"):
        assert v("breakglass_service_login_failures_total", reason=login_reason(reason)) == 1
    req = "breakglass_service_requests_total"
    assert v(req, template="db-readonly", target="shop", breakglass="false", outcome="pending") == 3
    assert v(req, template="unknown", target="shop", outcome="refused") == 1
    assert v(req, template="breakglass", breakglass="true", outcome="approved") == 1
    assert v(req, template="breakglass", breakglass="drill", outcome="approved") == 1
    assert v(req, template="breakglass", breakglass="true", outcome="refused") == 1
    assert v("breakglass_service_approvals_total", template="db-readonly", complete="true") == 1
    assert v("breakglass_service_denials_total", template="db-readonly") == 1
    ref = "breakglass_service_refusals_total"
    assert v(ref, stage="approve", rule="self-approval") == 1
    assert v(ref, stage="request", rule="unknown-template") == 1
    assert v(ref, stage="request", rule=bg_rule) == 1
    grants = "breakglass_service_grants_issued_total"
    assert v(grants, template="db-readonly", breakglass="false") == 1
    assert v(grants, template="breakglass", breakglass="true") == 1
    assert v(grants, template="breakglass", breakglass="drill") == 1
    uses = "breakglass_service_breakglass_uses_total"
    assert v(uses, template="breakglass", target="shop", drill="false") == 1
    assert v(uses, template="breakglass", target="shop", drill="true") == 1
    http = "breakglass_service_http_requests_total"
    assert v(http, method="POST", route="/v1/requests/{id}/approve", status="200") == 1
    assert v(http, method="POST", route="/v1/requests/{id}/approve", status="403") == 1
    assert v(http, method="GET", route="unmatched", status="404") == 1
    assert v("breakglass_service_http_request_seconds_count", route="/v1/login") == 6
    # Nothing a caller sent, and no secret, is in the exposition.
    assert made_up not in text and "nobody-" not in text and "INC-" not in text
    assert grant["token"] not in text and "DRILL:" not in text
    for user, token in api.tokens.items():
        assert token not in text and PASSWORDS[user] not in text
    # Health on the same listener.
    status, body = _http(m + "/health/live")
    assert status == 200 and json.loads(body)["status"] == "live"
    status, body = _http(m + "/health/ready")
    assert status == 200 and json.loads(body)["checks"] == {"listener": "ok", "state": "ok"}
    # The API's own port does not serve the metrics (engineers reach it).
    assert _http(svc.url + "/metrics")[0] == 401


def test_revocation_and_unbounded_reasons_stay_bounded(env):
    gw, svc, api = env
    if "erin" not in api.tokens:
        assert api.login("erin")[0] == 200
    before = _scrape(svc)
    body = {"template": "db-readonly", "targets": ["shop"], "ttl": "10m", "reason": "r"}
    _, r = api.call("erin", "POST", "/v1/requests", body)
    if "alice" not in api.tokens:
        assert api.login("alice")[0] == 200
    _, out = api.call("alice", "POST", f"/v1/requests/{r['id']}/approve", {})
    status, _ = api.call("erin", "POST", f"/v1/grants/{out['grant_jti']}/revoke", {"reason": "x"})
    assert status == 200
    # Unknown login methods with made-up names never become label values.
    for _ in range(3):
        status, _ = _http(
            api.url + "/v1/login", "POST", {"method": "m-" + secrets.token_hex(6), "username": "x"}
        )
        assert status == 401
    # The web console's login form counts too (via="console").
    with urllib.request.urlopen(api.url + "/console/login", timeout=20) as r:
        cookie = next(
            c.split(";")[0] for c in r.headers.get_all("Set-Cookie") if "csrf" in c.lower()
        )
    csrf = cookie.split("=", 1)[1]
    form = urllib.parse.urlencode(
        {"username": "bob", "password": "not-bobs", "totp": "123456", "csrf": csrf}
    ).encode()
    req = urllib.request.Request(api.url + "/console/login", data=form, headers={"Cookie": cookie})
    with urllib.request.urlopen(req, timeout=20) as r:
        assert "wrong user name, password or code" in r.read().decode()
    text = _scrape(svc)
    assert (
        _value(text, "breakglass_service_login_failures_total", via="console",
               reason="local-wrong-password") == 1
    )  # fmt: skip
    try:
        old = _value(before, "breakglass_service_revocations_total")
    except AssertionError:
        old = 0
    assert _value(text, "breakglass_service_revocations_total") == old + 1
    assert (
        _value(
            text, "breakglass_service_login_failures_total", method="other", reason="unknown-method"
        )
        == 3
    )
    assert "m-" not in "".join(
        ln for ln in text.splitlines() if ln.startswith("breakglass_service_login")
    )


def test_metrics_listen_is_validated(tmp_path):
    from breakglass.proxy.config import ConfigError
    from breakglass.service.api import parse_service_settings

    (tmp_path / "users.toml").write_text("")
    doc = {"service": {"metrics_listen": "9465"}, "identity": {"users_file": "users.toml"}}
    with pytest.raises(ConfigError) as e:
        parse_service_settings(doc, tmp_path)
    assert any("service.metrics_listen" in p and "HOST:PORT" in p for p in e.value.problems)
    doc["service"]["metrics_listen"] = "[::1]:9465"
    s = parse_service_settings(doc, tmp_path)
    assert (s.metrics_host, s.metrics_port) == ("::1", 9465)


def test_metrics_port_in_use_is_a_clear_error(pg_server, tmp_path):
    import socket

    from breakglass.proxy.config import ConfigError
    from breakglass.throwaway.workdir import build_local_workdir

    build_local_workdir(tmp_path / "gw", pg=pg_server, ssh=None, name="test-gw")
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        add_service_config(tmp_path / "gw", extra=f'metrics_listen = "127.0.0.1:{port}"')
        svc = ServiceThread(tmp_path / "gw" / "config.toml")
        try:
            with pytest.raises(ConfigError) as e:
                svc.start()
        finally:
            svc.stop()
        assert f"service.metrics_listen: cannot listen on 127.0.0.1:{port}" in str(e.value)
    finally:
        busy.close()
