"""[gateway] listen_backlog: both listeners' accept queues are sized from it (capped by the
kernel's net.core.somaxconn), and a burst of simultaneous logins with no client-side pacing
gets through with no failure. bench/expiry.py --burst does the same with 1,000 sessions."""

from __future__ import annotations

import asyncio
import re
import subprocess

import pytest

from breakglass.proxy.gateway import somaxconn
from breakglass.throwaway.servers import free_port
from tests.harness import GatewayThread

pytestmark = pytest.mark.timeout(120)


def listen_backlogs(port: int) -> list[int]:
    """The backlog of each socket listening on ``port``: ss prints it as Send-Q."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


def with_gateway_settings(**settings):
    """A config edit: SSH listener back on (no sshd is needed to listen) + [gateway] keys."""

    def edit(text: str) -> str:
        for k, v in settings.items():
            line = f"{k} = {v}\n"
            text, n = re.subn(rf"(?m)^{k} = .*\n", line, text)
            if not n:
                text = text.replace("\nworkers = 1\n", f"\nworkers = 1\n{line}", 1)
        return text.replace(
            "\nworkers = 1\n", f'\nworkers = 1\nssh_listen = "127.0.0.1:{free_port()}"\n', 1
        )

    return edit


def burst_of_logins(gw: GatewayThread, n: int) -> list:
    """``n`` logins at once, each running ``select 1``: the results (or exceptions)."""
    tokens = [gw.grant() for _ in range(n)]

    async def burst():
        async def one(token):
            c = await gw.connect_pg(token, timeout=60)
            try:
                return await c.fetchval("select 1")
            finally:
                await c.close()

        return await asyncio.gather(*(one(t) for t in tokens), return_exceptions=True)

    return asyncio.run(burst())


def test_configured_backlog_is_set_on_both_listeners(pg_server, tmp_path):
    gw = GatewayThread(
        tmp_path / "gw", pg=pg_server, edit_config=with_gateway_settings(listen_backlog=37)
    )
    gw.start()
    try:
        assert gw.cfg.listen_backlog == 37
        assert listen_backlogs(gw.pg_port) == [37]
        assert listen_backlogs(gw.ssh_port) == [37]
    finally:
        gw.stop()


def test_default_backlog_is_4096_capped_by_somaxconn(pg_server, tmp_path):
    gw = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=with_gateway_settings())
    gw.start()
    try:
        assert gw.cfg.listen_backlog == 4096
        expected = min(4096, somaxconn() or 4096)
        assert expected > 128  # what Python's listen() and asyncio's 100 would have given
        assert listen_backlogs(gw.pg_port) == [expected]
        assert listen_backlogs(gw.ssh_port) == [expected]
    finally:
        gw.stop()


def test_burst_of_simultaneous_logins_all_succeed(pg_server, tmp_path):
    n = 50
    gw = GatewayThread(
        tmp_path / "gw",
        pg=pg_server,
        edit_config=with_gateway_settings(preauth_per_source=n + 10),
    )
    gw.start()
    try:
        results = burst_of_logins(gw, n)
        assert results == [1] * n, [r for r in results if r != 1][:3]
    finally:
        gw.stop()


def test_burst_logins_queue_for_a_few_upstream_connects(pg_server, tmp_path, monkeypatch):
    """A burst does not ask the target for every backend at once (1,000 together time out on
    a small server): logins queue for UPSTREAM_CONNECTS connects per target, and all get in."""
    import breakglass.proxy.postgres.server as pg_server_module

    monkeypatch.setattr(pg_server_module, "UPSTREAM_CONNECTS", 3)
    n = 30
    gw = GatewayThread(
        tmp_path / "gw",
        pg=pg_server,
        edit_config=with_gateway_settings(preauth_per_source=n + 10),
    )
    gw.start()
    try:
        results = burst_of_logins(gw, n)
        assert results == [1] * n, [r for r in results if r != 1][:3]
        listener = gw.gw.postgres
        assert 1 <= listener.peak_connecting <= 3
        assert listener.connecting == 0
    finally:
        gw.stop()
