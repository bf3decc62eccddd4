"""Alerts raised by a real gateway: break-glass use and repeated denials reach a loopback webhook."""

from __future__ import annotations

import threading

import asyncpg
import pytest

from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_alerts import Receiver

pytestmark = pytest.mark.timeout(60)


class Inbox(list):
    """The receiver's list of alerts, with an event per arrival (no sleeping to wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def append(self, item) -> None:
        with self.changed:
            super().append(item)
            self.changed.notify_all()

    def wait_for(self, event: str, timeout: float = 10) -> dict:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(r["breakglass"]["event"] == event for r in self), timeout
            )
        assert ok, f"no {event} alert; got {[r['breakglass']['event'] for r in self]}"
        return next(r for r in self if r["breakglass"]["event"] == event)


@pytest.fixture
def receiver():
    r = Receiver()
    r.received = Inbox()
    yield r
    r.close()


@pytest.fixture
def gw(pg_server, tmp_path, receiver):
    def add_webhook(text: str) -> str:
        text = text.replace("denials = 5\n", "denials = 2\n")
        return text + f'\n[[alerts.webhooks]]\nname = "sec"\nurl = "{receiver.url}"\n'

    g = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=add_webhook).start()
    yield g
    g.stop()


async def connect(gw, token, user):
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user=user,
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )


async def test_breakglass_session_raises_an_alert(gw, receiver):
    conn = await connect(gw, gw.grant("breakglass", user="ina", breakglass=True), "ina")
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
    alert = receiver.received.wait_for("breakglass.used")
    fields = alert["breakglass"]["fields"]
    assert (
        fields["user"] == "ina" and fields["target"] == "shop" and fields["protocol"] == "postgres"
    )
    assert "ina" in alert["text"]


async def test_repeated_denials_raise_one_alert(gw, receiver):
    conn = await connect(gw, gw.grant(), "erin")
    try:
        for _ in range(3):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("delete from orders")
    finally:
        await conn.close()
    alert = receiver.received.wait_for("denials")
    assert alert["breakglass"]["fields"]["user"] == "erin"
    gw.wait_idle()
    assert [r["breakglass"]["event"] for r in receiver.received].count("denials") == 1
