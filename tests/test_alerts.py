"""Alerts: a real webhook receiver on loopback gets each alert once; delivery retries with
backoff and never blocks the caller; config validation; the URL (a secret) is never logged."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from breakglass.proxy.config import ConfigError
from breakglass.recorder import alerts
from breakglass.recorder.alerts import Alerter, AlertSettings, Webhook, parse_alert_settings
from tests.test_index_helpers import Recorder, tamper, write_shell_session

pytestmark = pytest.mark.timeout(30)

SECRET_PATH = "/services/T000/B000/s3cr3t-webhook-token"


class Receiver:
    """A webhook endpoint on 127.0.0.1; answers with the scripted statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[dict] = []
        self.attempts = 0
        self.statuses = list(statuses or [])
        self.release = threading.Event()
        self.release.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.release.wait(20)
                outer.attempts += 1
                status = outer.statuses.pop(0) if outer.statuses else 200
                if status == 200:
                    outer.received.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def events(self) -> list[str]:
        return [r["breakglass"]["event"] for r in self.received]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def alerter_for(receiver: Receiver, **kw) -> Alerter:
    settings = AlertSettings(
        webhooks=(Webhook("sec", receiver.url),), backoff=0.01, timeout=5.0, **kw
    )
    return Alerter(settings, gateway="test-gw")


def test_each_alert_is_delivered_once(receiver, tmp_path):
    a = alerter_for(receiver, denials=3, denials_window=60.0)
    a.notify(
        "breakglass.used", session="s1", user="ina", target="web-1", reason="outage", ticket="INC-7"
    )
    for i in range(6):  # 3 within the window fire once; more in the same session do not
        a.notify("denial", session="s2", user="erin", target="shop", text=f"drop table t{i}")
    a.notify("denial", session="s3", user="erin", target="shop")  # below the threshold
    rec = Recorder(tmp_path / "rec")
    path = write_shell_session(rec)
    tamper(path, b'"rows":40', b'"rows":41')
    a.check_recording(path, rec.trusted, user="erin", target="web-1")
    assert a.drain(10)
    a.close()
    assert sorted(receiver.events()) == ["breakglass.used", "denials", "recording.verify_failed"]
    by = {r["breakglass"]["event"]: r for r in receiver.received}
    assert "Break-glass session started by ina on web-1" in by["breakglass.used"]["text"]
    assert by["denials"]["breakglass"]["fields"]["count"] == 3
    assert "drop table" not in json.dumps(receiver.received)  # denied text is not sent
    assert by["recording.verify_failed"]["breakglass"]["fields"]["problem"] == "altered"
    assert len({r["breakglass"]["alert_id"] for r in receiver.received}) == 3


def test_denials_outside_the_window_do_not_add_up(receiver):
    a = alerter_for(receiver, denials=2, denials_window=0.001)
    a.notify("denial", session="s1")
    t = time.monotonic()
    while time.monotonic() - t < 0.01:  # let the window pass (busy wait: no sleeps)
        pass
    a.notify("denial", session="s1")
    assert a.drain(5)
    a.close()
    assert receiver.received == []


def test_retries_with_backoff_then_delivers_once(capsys):
    r = Receiver(statuses=[503, 429, 500])
    try:
        a = alerter_for(r)
        a.notify("breakglass.used", session="s1", user="ina", target="web-1")
        assert a.drain(10)
        a.close()
        assert r.attempts == 4 and len(r.received) == 1
        assert a.stats["retries"] == 3 and a.stats["delivered"] == 1
    finally:
        r.close()
    assert "s3cr3t" not in capsys.readouterr().err  # the webhook URL is never logged


def test_gives_up_on_client_errors():
    r = Receiver(statuses=[404])
    try:
        a = alerter_for(r)
        a.notify("breakglass.used", session="s1")
        assert a.drain(10)
        a.close()
        assert r.attempts == 1 and a.stats["failed"] == 1
    finally:
        r.close()


def test_notify_never_blocks_even_if_the_receiver_hangs(receiver):
    receiver.release.clear()  # the receiver accepts but does not answer
    a = alerter_for(receiver, queue_limit=2)
    t = time.monotonic()
    for i in range(50):
        a.notify("breakglass.used", session=f"s{i}")
    assert time.monotonic() - t < 0.5
    assert a.stats["dropped"] >= 47  # bounded queue: extra alerts dropped, not buffered forever
    receiver.release.set()
    assert a.drain(10)
    a.close()


def test_module_level_notify_is_a_noop_without_setup():
    alerts.install(None)
    alerts.notify("breakglass.used", session="x")  # nothing configured: nothing happens


def test_config_validation_names_the_key_path(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as e:
        parse_alert_settings(
            {
                "denials": 0,
                "denials_window": "5 minutes",
                "bogus": 1,
                "webhooks": [
                    {"url": "http://example.com/hook"},
                    {"url_env": "BG_TEST_UNSET_HOOK"},
                    {"url": "https://x.example/h", "events": ["breakglass.usd"]},
                ],
            },
            tmp_path,
        )
    text = str(e.value)
    for needle in (
        "alerts.denials:",
        "alerts.denials_window:",
        "alerts.bogus: unknown key",
        "alerts.webhooks[0].url: must be https",
        "alerts.webhooks[1].url_env: environment variable BG_TEST_UNSET_HOOK is not set",
        "alerts.webhooks[2].events: unknown alert breakglass.usd",
    ):
        assert needle in text
    assert "example.com/hook" not in text.replace("alerts.webhooks[0].url", "")
    (tmp_path / "hook").write_text("https://hooks.example/services/abc\n")
    monkeypatch.setenv("BG_TEST_HOOK", "http://127.0.0.1:9/x")
    s = parse_alert_settings(
        {
            "denials_window": "2m",
            "webhooks": [
                {"name": "a", "url_file": "hook", "events": ["review.overdue"]},
                {"name": "b", "url_env": "BG_TEST_HOOK"},
            ],
        },
        tmp_path,
    )
    assert s.denials_window == 120.0
    assert s.webhooks[0].url == "https://hooks.example/services/abc"
    assert s.webhooks[0].events == {"review.overdue"}
    assert "abc" not in repr(s)


def test_review_overdue_alert_sent_once_across_checks(receiver, tmp_path):
    from tests.test_index_helpers import make_workdir

    cfg = make_workdir(tmp_path / "bg")
    rec = Recorder.for_config(cfg)
    old = write_shell_session(rec, user="ina", breakglass=True, started_at=time.time() - 2 * 86400)
    write_shell_session(rec, user="ina", breakglass=True)  # not overdue yet
    a = alerter_for(receiver)
    assert alerts.check_overdue_reviews(cfg, a) == 1
    assert alerts.check_overdue_reviews(cfg, a) == 0  # already alerted (kept in the index)
    assert a.drain(10)
    a.close()
    assert receiver.events() == ["review.overdue"]
    assert receiver.received[0]["breakglass"]["fields"]["session"] == old.stem


def test_settings_from_the_config_document(tmp_path):
    import dataclasses

    from tests.test_index_helpers import make_workdir

    cfg = make_workdir(tmp_path / "bg")
    assert alerts.index_path(cfg) == (tmp_path / "bg" / "index.db").resolve()
    assert alerts.review_settings(cfg).deadline == 86400
    assert alerts.alert_settings(cfg).webhooks == ()
    raw = dict(cfg.raw)
    raw.update(
        index={"database": "data/idx.sqlite"},
        review={"deadline": "12h"},
        alerts={"denials": 3, "webhooks": [{"name": "local", "url": "http://127.0.0.1:9/h"}]},
    )
    cfg2 = dataclasses.replace(cfg, raw=raw)
    assert alerts.index_path(cfg2) == (tmp_path / "bg" / "data" / "idx.sqlite").resolve()
    assert alerts.review_settings(cfg2).deadline == 12 * 3600
    s = alerts.alert_settings(cfg2)
    assert s.denials == 3 and [w.name for w in s.webhooks] == ["local"]
    bad = dataclasses.replace(cfg, raw={**raw, "review": {"deadline": "soon", "x": 1}})
    with pytest.raises(ConfigError, match=r"review.deadline: .*\n.*review.x: unknown key|review.x"):
        alerts.review_settings(bad)
