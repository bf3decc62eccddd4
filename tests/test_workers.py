"""Several gateway processes on one port: sessions, kill and cancel work whichever worker
accepted the connection (a CancelRequest is forwarded to the worker that issued the key)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import asyncpg
import pytest

from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant
from tests.harness import run_cli
from tests.pg_client import client_tls

pytestmark = pytest.mark.timeout(120)


def bg(config, *args):
    return run_cli(config, *args)


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (one per worker with SO_REUSEPORT)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


@pytest.fixture(scope="module")
def two_workers(pg_server, tmp_path_factory):
    d = tmp_path_factory.mktemp("workers") / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=None, name="test-gw")
    path = d / "config.toml"
    path.write_text(path.read_text().replace("\nworkers = 1\n", "\nworkers = 2\n", 1))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "breakglass.cli.main",
            "-c",
            str(path),
            "gateway",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sockets = [d / "run/admin.sock.0", d / "run/admin.sock.1"]
    deadline = time.monotonic() + 30
    while not all(s.exists() for s in sockets):  # bounded: both workers are up
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    port = cfg.postgres_listen.port
    while listening_sockets(port) < 2:  # bounded: both workers' listeners are up
        assert time.monotonic() < deadline, "the workers' listeners did not start"
        time.sleep(0.05)
    yield cfg, path
    proc.terminate()
    proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read().decode()


async def test_sessions_kill_and_cancel_across_workers(two_workers):
    cfg, path = two_workers
    token = issue_local_grant(cfg, "db-readonly", "shop", ttl=600)
    conns = [
        await asyncpg.connect(
            host="127.0.0.1",
            port=cfg.postgres_listen.port,
            user="erin",
            password=token,
            database="shop",
            ssl=client_tls(cfg.tls_cert),
        )
        for _ in range(8)
    ]
    try:
        live = json.loads(bg(path, "sessions", "--live", "--json").stdout)
        assert len(live) == 8
        # Each cancel arrives on a new connection that either worker may accept.
        for conn in conns:
            t0 = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("select pg_sleep(30)", timeout=0.3)
            assert time.monotonic() - t0 < 1.5
            assert await conn.fetchval("select 1") == 1
        for s in live[:4]:
            r = bg(path, "kill", s["session_id"])
            assert r.returncode == 0, r.stderr
        remaining = json.loads(bg(path, "sessions", "--live", "--json").stdout)
        assert len(remaining) == 4
    finally:
        for c in conns:
            c.terminate()
    recordings = list(cfg.recordings_dir.glob("*.rec"))
    from breakglass.recorder.reader import read_events

    deadline = time.monotonic() + 10
    cancels = []
    while time.monotonic() < deadline:  # bounded: recordings close shortly after the clients go
        try:
            cancels = [e for f in recordings for e in read_events(f) if e["kind"] == "cancel"]
        except Exception:
            cancels = []
        if len(cancels) == 8:
            break
        time.sleep(0.1)
    assert len(cancels) == 8
    assert {e.get("worker") for e in cancels} == {0, 1}, cancels
    assert os.path.exists(cfg.admin_socket.with_name("admin.sock.1"))
