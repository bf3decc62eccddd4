"""The upload lag to the object store on the gateway's Prometheus endpoint: a real gateway
streaming to a real SeaweedFS server, scraped over HTTP while the server is up, stopped and
back."""

from __future__ import annotations

import asyncio
import time

import pytest

from breakglass.throwaway.servers import free_port
from tests.harness import GatewayThread
from tests.test_metrics import _get, _value, _with_metrics
from tests.test_store import _connect, _gateway_config

pytestmark = pytest.mark.timeout(120)


async def _scrape(port: int) -> str:
    status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return text


async def _until(port: int, pred, what: str, timeout: float = 30.0) -> str:
    """Scrape until ``pred(text)`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await _scrape(port)
        if pred(text):
            return text
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
            line for line in text.splitlines() if line.startswith("breakglass_store_")
        )
        await asyncio.sleep(0.1)


def _store(text: str, name: str) -> float:
    return _value(text, f"breakglass_store_{name}")


async def test_upload_lag_is_scraped_grows_while_the_store_is_down_and_recovers(
    s3_server, pg_server, tmp_path
):
    port = free_port()
    store_edit = _gateway_config(s3_server, "m1")
    gw = GatewayThread(
        tmp_path / "gw",
        pg=pg_server,
        edit_config=lambda text: _with_metrics(port)(store_edit(text)),
    ).start()
    try:
        conn = await _connect(gw.cfg, gw.grant(ttl=600))
        assert await conn.fetchval("select 1") == 1
        await conn.close()
        gw.wait_idle()
        # Store up: everything goes up within the lag; nothing waits.
        text = await _until(
            port,
            lambda t: (
                _store(t, "pending_bytes") == 0
                and _store(t, "uploads_total") >= 1
                and _store(t, "anchors_total") >= 1
            ),
            "the session's recording in the store",
        )
        assert _store(text, "upload_lag_seconds") == 0
        assert _store(text, "spool_full") == 0
        assert _store(text, "upload_failures_total") == 0
        assert _store(text, "last_upload_timestamp_seconds") > time.time() - 60
        uploads = _store(text, "uploads_total")

        # Store down (SIGSTOP): the session goes on; the lag and the pending bytes grow,
        # and the failed attempts are counted.
        s3_server.pause()
        try:
            conn = await _connect(gw.cfg, gw.grant(ttl=600))
            for i in range(5):
                assert await conn.fetchval("select $1::int * 2", i) == 2 * i
            await conn.close()
            gw.wait_idle()
            first = await _until(
                port,
                lambda t: _store(t, "pending_bytes") > 0 and _store(t, "upload_lag_seconds") > 1,
                "bytes waiting for the stopped store",
            )
            text = await _until(
                port,
                lambda t: (
                    _store(t, "upload_lag_seconds") >= _store(first, "upload_lag_seconds") + 2
                    and _store(t, "upload_failures_total") >= 1
                ),
                "the lag to grow and uploads to fail",
            )
            assert _store(text, "pending_files") >= 1
            assert _store(text, "pending_bytes") >= _store(first, "pending_bytes")
            assert _store(text, "uploads_total") == uploads
            lag_down = _store(text, "upload_lag_seconds")
        finally:
            s3_server.resume()

        # Store back: the backlog drains, the lag returns to 0; the longest wait is kept.
        text = await _until(
            port,
            lambda t: _store(t, "pending_bytes") == 0 and _store(t, "upload_lag_seconds") == 0,
            "the backlog to drain",
            timeout=60,
        )
        assert _store(text, "uploads_total") > uploads
        assert _store(text, "upload_lag_max_seconds") >= lag_down
    finally:
        gw.stop()


async def test_no_store_metrics_without_a_store(pg_server, tmp_path):
    port = free_port()
    gw = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=_with_metrics(port)).start()
    try:
        text = await _scrape(port)
        assert "breakglass_recorder_written_bytes" in text
        assert "breakglass_store_" not in text
    finally:
        gw.stop()
