"""Approvers hear about requests (signed webhooks), and people see only the requests that
concern them."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from breakglass.recorder import alerts
from tests.harness import GatewayThread
from tests.test_offboarding import session_token
from tests.test_service_support import Cli, ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(90)

SECRET = "approvers-webhook-secret-0123456789"


class SignedReceiver:
    """A loopback webhook that keeps each POST's headers and raw body."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.cond:
                    outer.posts.append((dict(self.headers), body))
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, event: str, request_id: str, timeout: float = 10) -> tuple[dict, bytes]:
        def find():
            for h, b in self.posts:
                bg = json.loads(b)["breakglass"]
                if bg["event"] == event and bg["fields"].get("request") == request_id:
                    return h, b
            return None

        with self.cond:
            assert self.cond.wait_for(lambda: find() is not None, timeout), (
                f"no {event} for {request_id}"
            )
            return find()


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("reqs")
    receiver = SignedReceiver()
    gw = GatewayThread(base / "gw", pg=pg_server)  # config and keys only
    (gw.dir / "secrets" / "webhook").write_text(SECRET + "\n")
    secrets = add_service_config(gw.dir)
    with open(gw.dir / "config.toml", "a") as f:
        f.write(
            f"""
[[alerts.webhooks]]
name = "approvers"
url = "{receiver.url}"
events = ["request.created", "request.approved", "request.denied", "request.expired"]
secret_file = "secrets/webhook"
"""
        )
    svc = ServiceThread(gw.dir / "config.toml").start()
    alerts.setup(svc.cfg)
    with pytest.MonkeyPatch.context() as mp:
        cli = Cli(base / "home", gw.dir / "config.toml", secrets, mp)
        for u in ("erin", "alice", "bob", "mallory"):
            cli.login(u, svc.url)
        yield svc, cli, receiver
    alerts.shutdown(5)
    svc.stop()


def verify(headers: dict, body: bytes) -> bool:
    return alerts.verify_payload(
        SECRET.encode(),
        headers.get(alerts.TIMESTAMP_HEADER, ""),
        headers.get(alerts.SIGNATURE_HEADER, ""),
        body,
    )


def test_approvers_are_notified_with_signed_payloads(env):
    svc, cli, receiver = env
    rid = cli.request("erin", "fix order 7", "--ticket", "OPS-7")["id"]
    h, body = receiver.wait_for("request.created", rid)
    assert verify(h, body)
    assert not verify(h, body + b" ")  # a changed body does not verify
    assert not verify(dict(h, **{alerts.TIMESTAMP_HEADER: str(int(time.time()) - 3600)}), body)
    fields = json.loads(body)["breakglass"]["fields"]
    assert fields["requester"] == "erin" and fields["ticket"] == "OPS-7"
    assert fields["approve_command"] == f"breakglass approve {rid}"
    assert f"breakglass approve {rid}" in json.loads(body)["text"]
    cli.ok("alice", "approve", rid)
    h, body = receiver.wait_for("request.approved", rid)
    assert verify(h, body) and json.loads(body)["breakglass"]["fields"]["by"] == "alice"

    rid2 = cli.request("erin", "second")["id"]
    cli.ok("bob", "deny", rid2, "--reason", "not now")
    h, body = receiver.wait_for("request.denied", rid2)
    assert verify(h, body) and json.loads(body)["breakglass"]["fields"]["by"] == "bob"

    rid3 = cli.request("erin", "third")["id"]
    st = svc.service.state
    doc = svc.call(st.get_request(rid3))
    assert svc.call(st.update_request(dict(doc, expires_at=time.time() - 1), doc["version"]))
    assert svc.call(svc.service.expire_due_requests()) >= 1  # the service's periodic sweep
    h, body = receiver.wait_for("request.expired", rid3)
    assert verify(h, body)


def test_requests_are_visible_only_to_those_concerned(env):
    svc, cli, _ = env
    rid = cli.request("erin", "private reason: customer 123", "--ticket", "SEC-1")["id"]
    seen = {u: [r["id"] for r in json.loads(cli.ok(u, "requests", "--json"))] for u in
            ("erin", "alice", "mallory")}  # fmt: skip
    assert rid in seen["erin"] and rid in seen["alice"] and rid not in seen["mallory"]
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{svc.url}/v1/requests/{rid}")
    req.add_header("Authorization", f"Bearer {session_token(cli, 'mallory')}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404
    pending = lambda u: [r["id"] for r in json.loads(cli.ok(u, "requests", "--pending", "--json"))]  # noqa: E731
    assert rid in pending("alice")
    assert rid not in pending("erin")  # nobody decides their own request
    assert rid not in pending("mallory")


def test_a_revoked_grant_shows_revoked(env):
    svc, cli, _ = env
    rid = cli.request("erin", "to be revoked")["id"]
    cli.ok("alice", "approve", rid)
    r = json.loads(cli.ok("erin", "requests", "--mine", "--json"))
    mine = next(x for x in r if x["id"] == rid)
    assert mine["status"] == "approved"
    cli.ok("erin", "grant", "revoke", mine["grant_jti"], "--reason", "done early")
    r = json.loads(cli.ok("erin", "requests", "--mine", "--json"))
    assert next(x for x in r if x["id"] == rid)["status"] == "revoked"
