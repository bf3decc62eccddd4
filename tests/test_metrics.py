"""Prometheus metrics and health endpoints of a real gateway, scraped over HTTP after real
sessions (psql through the gateway, a refused login, a refused statement)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from breakglass.throwaway.servers import free_port
from tests.harness import GatewayThread
from tests.storage import fill, tmpfs

pytestmark = pytest.mark.timeout(90)


def _with_metrics(port: int):
    def edit(text: str) -> str:
        return text.replace(
            "\nworkers = 1\n", f'\nworkers = 1\nmetrics_listen = "127.0.0.1:{port}"\n', 1
        )

    return edit


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # loopback only
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _psql(gw: GatewayThread, token: str, sql: str):
    return gw.psql(token, "-At", "-c", sql)


def _value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")) or (
            want
            and line.startswith(name + "{")
            and all(f'{k}="{v}"' in line for k, v in labels.items())
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in metrics")


def test_metrics_count_sessions_refusals_denials_and_recorder_work(pg_server, tmp_path):
    port = free_port()
    gw = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=_with_metrics(port)).start()
    base = f"http://127.0.0.1:{port}"
    try:
        token = gw.grant()
        assert _psql(gw, token, "select 1").returncode == 0
        r = _psql(gw, token, "delete from orders")
        assert "read-only" in r.stderr
        assert _psql(gw, "not-a-grant", "select 1").returncode != 0
        gw.wait_idle()
        status, text = _get(base + "/metrics")
        assert status == 200
        assert (
            _value(
                text,
                "breakglass_sessions_total",
                protocol="postgres",
                target="shop",
                reason="closed",
            )
            == 2
        )
        assert _value(text, "breakglass_sessions_live", protocol="postgres", target="shop") == 0
        assert _value(text, "breakglass_auth_failures_total", protocol="postgres") >= 1
        assert _value(text, "breakglass_denials_total", protocol="postgres") == 1
        assert _value(text, "breakglass_recorder_written_bytes_total") > 0
        assert _value(text, "breakglass_recorder_fsyncs_total") > 0
        assert _value(text, "breakglass_recorder_committer_threads") >= 1
        assert 0 <= _value(text, "breakglass_recorder_commit_lag_seconds") < 1  # keeping up
        assert _value(text, "breakglass_statement_added_seconds_count", protocol="postgres") >= 2
        assert token not in text and "delete from orders" not in text  # no secrets, no SQL
        status, body = _get(base + "/health/live")
        assert status == 200 and json.loads(body)["status"] == "live"
        status, body = _get(base + "/health/ready")
        assert status == 200, body
        assert json.loads(body)["checks"] == {
            "listeners": "ok",
            "recordings": "ok",
            "audit": "ok",
            "state": "ok",
        }
    finally:
        gw.stop()


def test_ready_reports_a_full_recordings_directory(pg_server, tmp_path):
    port = free_port()
    gw = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=_with_metrics(port))
    with tmpfs(gw.cfg.recordings_dir, "4m"):
        gw.start()
        try:
            fill(gw.cfg.recordings_dir, leave=0)
            r = _psql(gw, gw.grant(), "select 1")
            assert r.returncode != 0 and "cannot be written" in r.stderr, r.stderr
            status, body = _get(f"http://127.0.0.1:{port}/health/ready")
            assert status == 503
            assert "cannot be written" in json.loads(body)["checks"]["recordings"]
            _, text = _get(f"http://127.0.0.1:{port}/metrics")
            assert _value(text, "breakglass_sessions_refused_total", reason="recordings") >= 1
        finally:
            gw.stop()


def test_loop_histogram_exposes_what_a_prometheus_histogram_would():
    """The statement-added histogram (observed once per client message, without
    prometheus-client's lock) reads the same as prometheus-client's own Histogram."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from breakglass.proxy.metrics import _ADDED_BUCKETS, LoopHistogram

    registry = CollectorRegistry()
    reference = Histogram("added", "help", ["protocol"], buckets=_ADDED_BUCKETS, registry=registry)
    ours = LoopHistogram("added", "help", {"protocol": "postgres"}, _ADDED_BUCKETS)
    theirs = CollectorRegistry()
    theirs.register(ours)
    values = [0.0, 0.00005, 0.00005000001, 0.0001, 0.00049, 0.001, 0.7, 1.0, 1.5, 30.0]
    for v in values:  # bounds are inclusive ("le"), one above every bound
        reference.labels("postgres").observe(v)
        ours.observe(v)

    def samples(reg):
        lines = generate_latest(reg).decode().splitlines()
        return sorted(x for x in lines if x.startswith("added_") and "_created" not in x)

    assert samples(theirs) == samples(registry)
    assert 'added_bucket{le="5e-05",protocol="postgres"} 2.0' in samples(theirs)
