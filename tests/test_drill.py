"""`breakglass drill` against a real gateway (PostgreSQL and OpenSSH targets, a loopback
webhook): every step passes and is timed, and everything the drill leaves is marked DRILL;
a gateway whose break-glass use would alert nobody fails the drill at the `alerts` step
(in tests/test_report.py, whose gateway has no webhooks)."""

from __future__ import annotations

import json

import pytest

from tests.harness import GatewayThread
from tests.test_alerts import Receiver
from tests.test_alerts_gateway import Inbox
from tests.test_report import cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    r.received = Inbox()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gw(pg_server, ssh_server, tmp_path_factory, receiver):
    def add_webhook(text: str) -> str:
        return text + f'\n[[alerts.webhooks]]\nname = "sec"\nurl = "{receiver.url}"\n'

    g = GatewayThread(
        tmp_path_factory.mktemp("drill") / "gw",
        pg=pg_server,
        ssh=ssh_server,
        edit_config=add_webhook,
    ).start()
    yield g
    g.stop()


def test_drill_passes_end_to_end_and_is_marked_everywhere(gw, receiver):
    ssh_target = next(iter(gw.cfg.ssh_targets))
    rc, out, err = cli(gw, "drill", "--target", "shop", "--target", ssh_target, "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"], (res, err)
    steps = [(s["step"], s["target"]) for s in res["steps"]]
    per_target = ["connect", "command", "end", "verify", "alerts", "review"]
    assert steps == [("grant", f"shop,{ssh_target}")] + [
        (s, t) for t in ("shop", ssh_target) for s in per_target
    ]
    assert all(s["seconds"] >= 0 for s in res["steps"])
    assert 0 < res["request_to_first_command"] < 30
    assert res["ticket"].startswith("DRILL-") and len(res["sessions"]) == 2

    # alerts: delivered to the webhook, labelled DRILL
    alerts = [r for r in receiver.received if r["breakglass"]["event"] == "breakglass.used"]
    assert {a["breakglass"]["fields"]["session"] for a in alerts} >= set(res["sessions"])
    for a in alerts:
        assert ": [DRILL] Break-glass session started" in a["text"]
        assert a["breakglass"]["fields"]["drill"] is True
    # review queue and sessions: the ticket says DRILL
    rc, out, _ = cli(gw, "review", "list", "--json")
    queued = {i["session"]["session_id"]: i["session"] for i in json.loads(out)}
    assert all(queued[s]["ticket"] == res["ticket"] for s in res["sessions"])
    # report: flagged as a drill, not counted as break-glass use
    rc, out, _ = cli(gw, "report", "access", "--since", "1h", "--format", "json")
    rep = json.loads(out)
    (row,) = [r for r in rep["grants"] if r["ticket"] == res["ticket"]]
    assert row["drill"] and "drill" in row["flags"] and row["approval"] == "BREAK-GLASS (drill)"
    assert "repeated-breakglass" not in row["flags"]
    # metrics: drills are counted apart from real break-glass sessions
    metrics = gw.gw.metrics.exposition().decode()
    assert 'breakglass="drill"' in metrics and 'target="shop"' in metrics
    # audit: the drill itself
    rc, out, _ = cli(gw, "audit", "--type", "drill.", "--json")
    assert [e["type"] for e in json.loads(out)][-1] == "drill.completed"

    rc, out, err = cli(gw, "drill", "--target", "shop")
    assert rc == 0 and "drill PASSED" in out and "request to first command" in out
