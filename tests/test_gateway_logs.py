"""The gateway's log: JSON lines only (no plain-text line mixed in), refused logins logged,
no token in it; the state database is private."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from breakglass.policy.state import SqliteState
from breakglass.throwaway.workdir import build_local_workdir
from tests.pg_client import RawClient, error_of

pytestmark = pytest.mark.timeout(90)


def test_json_log_has_only_json_and_logs_refusals(pg_server, tmp_path):
    cfg = build_local_workdir(tmp_path / "gw", pg=pg_server, ssh=None, name="test-gw")
    p = subprocess.Popen(
        [sys.executable, "-m", "breakglass.cli.main", "-c", str(cfg.path), "gateway",
         "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded wait for the listener
            assert p.poll() is None and time.monotonic() < deadline
            try:
                socket.create_connection(("127.0.0.1", cfg.postgres_listen.port), 1).close()
                break
            except OSError:
                time.sleep(0.05)
        secret = "not-a-grant-but-still-secret-" + "x" * 20

        async def refused() -> dict:
            c = await RawClient.connect(cfg.postgres_listen.port, cfg.tls_cert)
            try:
                return error_of(await c.login("erin", secret))
            finally:
                c.close()

        assert asyncio.run(refused())["C"] == "28000"
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines]  # every line is JSON
    names = [e["event"] for e in events]
    assert "gateway.ready" in names
    refusal = next(e for e in events if e["event"] == "auth.refused")
    assert refusal["protocol"] == "postgres" and refusal["client"] == "127.0.0.1"
    assert secret not in err.decode()


def test_state_database_is_private(tmp_path):
    path = tmp_path / "state.db"
    SqliteState(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # an older, world-readable one is fixed on open
    SqliteState(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
