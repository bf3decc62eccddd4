"""One log stream: the real gateway and grant service run as processes with
``--log-format json``; real clients log in, are refused (bad grant, expired grant,
throttled, pre-auth caps, bad password), request, approve and use a grant; SIGHUP and
SIGTERM. Every stderr line is a JSON object, the events are there, and no grant, session
token, password or secret query string used in the test appears anywhere in the output."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyotp
import pytest

from breakglass.service.identity import add_local_user
from breakglass.throwaway.servers import free_port
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant
from tests.test_metrics import _value
from tests.test_service_metrics import _http
from tests.test_service_support import PASSWORDS, add_service_config

pytestmark = pytest.mark.timeout(120)


class LogProcess:
    """``breakglass -c CONFIG COMMAND --log-format json``, its stderr read line by line."""

    def __init__(self, config: Path, *command: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "breakglass.cli.main", "-c", str(config), *command,
             "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ),
        )  # fmt: skip
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for raw in self.p.stderr:
            with self.changed:
                self.lines.append(raw.decode())
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def events(self) -> list[dict]:
        with self.changed:
            lines = list(self.lines)
        return [json.loads(ln) for ln in lines if ln.strip()]  # every line is JSON

    def wait_for(self, pred: Callable[[dict], bool], what: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for ln in self.lines:
                    if ln.strip() and pred(json.loads(ln)):
                        return json.loads(ln)
                left = deadline - time.monotonic()
                assert left > 0 and (self.p.poll() is None or self.reader.is_alive()), (
                    f"no {what} in the log:\n{''.join(self.lines)}"
                )
                self.changed.wait(min(left, 1.0))

    def event(self, name: str, **fields) -> dict:
        return self.wait_for(
            lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()),
            f"{name} {fields}",
        )

    def stop(self) -> str:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        self.p.wait(30)
        self.reader.join(10)
        return "".join(self.lines)


def _psql(port: int, token: str, sslmode: str = "require", sql: str = "select 1"):
    env = dict(os.environ, PGPASSWORD=token, PGSSLMODE=sslmode, PGCONNECT_TIMEOUT="10")
    return subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "erin", "-d", "shop",
         "-At", "-c", sql],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


def _console_login(url: str, user: str, password: str, totp_secret: str) -> str:
    """Log in through the console's form; its session cookie as ``name=value``."""
    with urllib.request.urlopen(url + "/console/login", timeout=20) as r:
        csrf = next(c.split(";")[0] for c in r.headers.get_all("Set-Cookie") if "csrf" in c.lower())
    form = urllib.parse.urlencode(
        {"username": user, "password": password, "totp": pyotp.TOTP(totp_secret).now(),
         "csrf": csrf.split("=", 1)[1]}
    ).encode()  # fmt: skip
    req = urllib.request.Request(url + "/console/login", data=form, headers={"Cookie": csrf})
    try:
        urllib.request.build_opener(_NoRedirect).open(req, timeout=20)
    except urllib.error.HTTPError as e:  # 303 to the sessions page, with the cookie
        assert e.code == 303, e.read()
        return next(c.split(";")[0] for c in e.headers.get_all("Set-Cookie") if "console" in c)
    raise AssertionError("the console login did not redirect")


def _edit(path: Path, **values: object) -> None:
    text = path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    path.write_text(text)


def test_gateway_and_service_log_one_json_stream_without_secrets(pg_server, tmp_path):
    d = tmp_path / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=None, name="test-gw")
    _edit(d / "config.toml", failed_auth_limit=1, preauth_per_source=2)
    gw_metrics = free_port()
    _edit(d / "config.toml", workers=f'1\nmetrics_listen = "127.0.0.1:{gw_metrics}"')
    totp = add_service_config(d, extra='metrics_listen = "127.0.0.1:0"')
    sam_pw = "sam-password-" + secrets.token_hex(8)
    sam_totp = add_local_user(d / "users.toml", "sam", sam_pw, ("security",))
    gw = LogProcess(cfg.path, "gateway")
    svc = LogProcess(cfg.path, "serve")
    secret_query = "q-" + secrets.token_hex(16)
    fake_grant = "not-a-grant-but-secret-" + secrets.token_hex(16)
    secrets_used = [fake_grant, secret_query, sam_pw, *PASSWORDS.values()]
    try:
        gw.event("gateway.ready")
        gw.event("postgres.listening")
        gw.event("admin.listening")
        url = svc.event("service.ready")["url"]
        svc.event("service.listening")
        svc.event("metrics.listening", process="service")
        port = cfg.postgres_listen.port

        # --- grant service: a failed and good logins, a request approved, the grant fetched
        def login(user: str, password: str) -> tuple[int, dict]:
            body = {"method": "local", "username": user, "password": password,
                    "totp": pyotp.TOTP(totp[user]).now()}  # fmt: skip
            status, text = _http(url + "/v1/login", "POST", body)
            return status, json.loads(text)

        assert login("erin", "wrong-" + PASSWORDS["erin"])[0] == 401
        secrets_used.append("wrong-" + PASSWORDS["erin"])
        tokens = {u: login(u, PASSWORDS[u])[1]["token"] for u in ("erin", "alice")}
        secrets_used += tokens.values()
        body = {"template": "db-readonly", "targets": ["shop"], "ttl": "10m", "reason": "INC-3"}
        status, text = _http(url + "/v1/requests", "POST", body, tokens["erin"])
        rid = json.loads(text)["id"]
        assert _http(url + f"/v1/requests/{rid}/approve", "POST", {}, tokens["alice"])[0] == 200
        status, text = _http(url + f"/v1/requests/{rid}/grant", token=tokens["erin"])
        grant = json.loads(text)["token"]
        secrets_used.append(grant)
        # Secrets where careless clients put them: a query string and a URL path.
        assert _http(url + f"/v1/requests?limit=5&token={secret_query}", token=tokens["erin"])[
            0
        ] == 200  # fmt: skip
        assert _http(url + "/v1/requests/" + grant, token=tokens["erin"])[0] == 404
        assert _http(url + "/" + grant)[0] in (401, 404)

        # --- the web console: a reviewer logs in; the access log names them, not the cookie
        cookie = _console_login(url, "sam", sam_pw, sam_totp)
        secrets_used.append(cookie.split("=", 1)[1])
        req = urllib.request.Request(url + "/console/sessions", headers={"Cookie": cookie})
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.status == 200
        page = svc.wait_for(
            lambda e: e.get("event") == "service.access" and e.get("path") == "/console/sessions",
            "the console page's access line",
        )
        assert page["user"] == "sam" and page["status"] == 200

        # --- gateway: the fetched grant works; refusals of every kind are logged
        r = _psql(port, grant)
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
        assert _psql(port, fake_grant).returncode != 0
        expired = issue_local_grant(cfg, "db-readonly", "shop", now=time.time() - 3600)
        secrets_used.append(expired)
        r = _psql(port, expired)  # the second failure from this address: answered late
        assert r.returncode != 0 and "expired" in r.stderr
        r = _psql(port, grant, sslmode="disable")  # the grant would cross the wire in clear
        assert r.returncode != 0 and "sslmode=verify-full" in r.stderr
        idle = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(2)]
        try:  # two connections still logging in: the third one is refused at once
            third = socket.create_connection(("127.0.0.1", port), 5)
            third.settimeout(10)
            assert b"still logging in" in third.recv(4096)
            third.close()
        finally:
            for s in idle:
                s.close()

        refused = gw.event("auth.refused", kind="malformed")
        assert refused["protocol"] == "postgres" and refused["client"] == "127.0.0.1"
        late = gw.event("auth.refused", kind="expired")
        assert late["delayed"] > 0  # throttled
        plain = gw.event("connection.refused", reason="tls-required")
        assert plain["protocol"] == "postgres" and plain["client"] == "127.0.0.1"
        cap = gw.event("connection.refused", reason="preauth-per-source")
        assert cap["client"] == "127.0.0.1" and cap["limit"] == 2
        status, text = _http(f"http://127.0.0.1:{gw_metrics}/metrics")
        assert status == 200
        refusals = "breakglass_connections_refused_total"
        assert _value(text, refusals, reason="preauth-per-source") == 1
        failed = svc.event("login.refused", user="erin")
        assert failed["reason"] == "local-wrong-password"
        access = [e for e in svc.events() if e["event"] == "service.access"]
        approve = next(e for e in access if e.get("route") == "/v1/requests/{id}/approve")
        assert approve["method"] == "POST" and approve["status"] == 200
        assert approve["user"] == "alice" and approve["path"] == f"/v1/requests/{rid}/approve"
        assert isinstance(approve["ms"], float)
        login_lines = [e for e in access if e.get("route") == "/v1/login"]
        assert [e["status"] for e in login_lines] == [401, 200, 200]
        assert any(e["route"] == "unmatched" and e["path"] is None for e in access)
        # A query string is never logged; a long path (a token) neither.
        assert all("?" not in (e.get("path") or "") for e in access)

        # --- reload and shutdown
        gw.p.send_signal(signal.SIGHUP)
        svc.p.send_signal(signal.SIGHUP)
        reload = gw.event("gateway.reload")
        assert reload["applied"] is False and reload["level"] == "warning"
        svc.event("service.reload")
        svc.event("users.reloaded")
        assert gw.p.poll() is None and svc.p.poll() is None  # SIGHUP ends neither
    finally:
        gw_out, svc_out = gw.stop(), svc.stop()
    assert gw.p.returncode == 0 and svc.p.returncode == 0
    assert gw.event("gateway.stopping")["signal"] == "SIGTERM"
    gw.event("gateway.stopped")
    assert svc.event("service.stopping")["signal"] == "SIGTERM"
    svc.event("service.stopped")
    for p in (gw, svc):
        assert p.events()  # every line parses as one JSON object
    for s in secrets_used:
        assert s not in gw_out and s not in svc_out, s[:12]


def test_library_log_records_join_the_json_stream():
    """What libraries log through the standard ``logging`` module (aiohttp, asyncssh,
    asyncio) comes out as JSON lines too, not as Python's plain last-resort text."""
    code = (
        "import logging; from proxy.logs import configure_logging, log; "
        "configure_logging('json', 'info'); "
        "logging.getLogger('asyncio').error('Task exception was never retrieved %s', 42); "
        "logging.getLogger('asyncssh').info('a command line'); "
        "log.info('ours', n=1)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
        env=dict(os.environ),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(ln) for ln in r.stderr.splitlines() if ln.strip()]
    assert [e["event"] for e in events] == ["Task exception was never retrieved 42", "ours"]
    assert events[0]["logger"] == "asyncio" and events[0]["level"] == "error"
    assert r.stdout == ""
