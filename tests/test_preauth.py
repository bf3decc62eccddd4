"""Pre-authentication slowloris: idle connections cannot use up the gateway's descriptors.

A real gateway process with a low ``nofile`` limit, flooded with real idle loopback TCP
connections (no SSH version line, no PostgreSQL startup packet); real SSH and PostgreSQL
logins from another address, an open session and the admin socket keep working."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from breakglass.proxy.admin import admin_request
from breakglass.proxy.preauth import PreAuthLimiter
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant
from tests.pg_client import RawClient, error_of

pytestmark = pytest.mark.timeout(120)

NOFILE = 256  # the gateway process's limit (soft = hard: it cannot raise it)
FLOOD = 400  # idle connections from one address: far more than NOFILE


def _flood(port: int, n: int, source: str) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:  # a full backlog: also a refusal
            s.close()
            continue
        out.append(s)
    return out


def _accept_queues_drained(ports: tuple[int, ...], timeout: float = 10.0) -> None:
    """Wait until the gateway has taken every queued connection off its listeners (the
    accept queues are listen_backlog deep: a flood lands there rather than being dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
        queued = [
            int(f[1])
            for f in (line.split() for line in out.splitlines())
            if len(f) >= 4 and f[3].rsplit(":", 1)[-1] in {str(p) for p in ports}
        ]
        if not any(queued):
            return
        time.sleep(0.02)  # bounded poll of the kernel's queue length
    raise AssertionError(f"accept queues still hold {queued} after {timeout}s")


def _still_open(socks: list[socket.socket], wait: float = 0.5) -> int:
    """How many of ``socks`` the gateway has not closed (EOF/RST) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    open_ = set(socks)
    while open_ and time.monotonic() < deadline:
        for s in list(open_):
            s.settimeout(0.01)
            try:
                while True:
                    data = s.recv(4096)
                    if not data:
                        open_.discard(s)
                        break
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                open_.discard(s)
    return len(open_)


class GatewayProcess:
    def __init__(self, directory: Path, pg, ssh, extra: dict[str, str] | None = None) -> None:
        self.cfg = build_local_workdir(directory, pg=pg, ssh=ssh, name="test-gw")
        path = directory / "config.toml"
        if extra:  # e.g. {"banner_timeout": '"3s"'}: replaces the starter config's line
            text = path.read_text()
            for key, value in extra.items():
                text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
            path.write_text(text)
        self.path = path

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "breakglass.cli.main", "-c", str(path), "gateway"],
            preexec_fn=limit,
            stdout=subprocess.DEVNULL,
            stderr=open(directory / "gateway.log", "wb"),  # noqa: SIM115 - read on failure
            env=dict(os.environ),
        )
        deadline = time.monotonic() + 30
        for port in (self.cfg.postgres_listen.port, self.cfg.ssh_listen.port):
            while True:  # bounded wait until the listener accepts
                assert self.proc.poll() is None, (directory / "gateway.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "gateway did not start"
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    async def ssh(self, token: str, source: str = "127.0.0.1") -> str:
        host_key = asyncssh.read_private_key(str(self.cfg.ssh_host_key))
        known = asyncssh.import_known_hosts(
            f"[127.0.0.1]:{self.cfg.ssh_listen.port} "
            f"{host_key.export_public_key().decode().strip()}\n"
        )
        async with asyncssh.connect(
            "127.0.0.1",
            self.cfg.ssh_listen.port,
            username="web-1",
            password=token,
            known_hosts=known,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password",
            connect_timeout=10,
            local_addr=(source, 0),
        ) as conn:
            return (await conn.run("echo alive", check=True)).stdout

    async def pg_ok(self, token: str) -> bool:
        c = await RawClient.connect(self.cfg.postgres_listen.port, self.cfg.tls_cert)
        try:
            return error_of(await c.login("erin", token)) is None
        finally:
            c.close()


@pytest.fixture
def gwp(pg_server, ssh_server, tmp_path):
    g = GatewayProcess(tmp_path / "gw", pg_server, ssh_server, {"banner_timeout": '"3s"'})
    yield g
    g.stop()


def test_idle_flood_from_one_address_locks_nobody_out(gwp):
    ssh_grant = issue_local_grant(gwp.cfg, "ssh-shell", "web-1")
    pg_grant = issue_local_grant(gwp.cfg, "db-readonly", "shop")

    async def scenario() -> None:
        # An authenticated session open before the flood.
        host_key = asyncssh.read_private_key(str(gwp.cfg.ssh_host_key))
        known = asyncssh.import_known_hosts(
            f"[127.0.0.1]:{gwp.cfg.ssh_listen.port} "
            f"{host_key.export_public_key().decode().strip()}\n"
        )
        async with asyncssh.connect(
            "127.0.0.1",
            gwp.cfg.ssh_listen.port,
            username="web-1",
            password=ssh_grant,
            known_hosts=known,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password",
        ) as live:
            ssh_flood = await asyncio.to_thread(_flood, gwp.cfg.ssh_listen.port, FLOOD, "127.0.0.5")
            pg_flood = await asyncio.to_thread(
                _flood, gwp.cfg.postgres_listen.port, FLOOD // 4, "127.0.0.5"
            )
            try:
                ports = (gwp.cfg.ssh_listen.port, gwp.cfg.postgres_listen.port)
                await asyncio.to_thread(_accept_queues_drained, ports)
                held = await asyncio.to_thread(_still_open, ssh_flood + pg_flood)
                assert held <= 32, f"{held} idle connections from one address held"
                # Everyone else still gets in, on both protocols, and the open session works.
                assert await gwp.ssh(ssh_grant, source="127.0.0.1") == "alive\n"
                assert await gwp.pg_ok(pg_grant)
                assert (await live.run("echo still", check=True)).stdout == "still\n"
                reply = await admin_request(gwp.cfg.admin_socket, {"op": "sessions"})
                assert reply["ok"] and len(reply["sessions"]) >= 1
                # The idle ones that were admitted are dropped at the banner timeout.
                assert await asyncio.to_thread(_still_open, ssh_flood, 8) == 0
            finally:
                for s in ssh_flood + pg_flood:
                    s.close()

    asyncio.run(scenario())


def test_total_cap_is_kept_within_the_descriptor_limit():
    lim = PreAuthLimiter(per_source=2, total=10_000, nofile=256)
    assert lim.total == 64  # a quarter of the descriptors, the rest kept for sessions
    assert lim.admit("a") is None and lim.admit("a") is None
    assert "your address" in lim.admit("a")
    for i in range(62):
        assert lim.admit(f"s{i}") is None
    assert "too many connections still logging in" in lim.admit("fresh")
    lim.release("a")
    assert lim.admit("fresh") is None


def test_soft_nofile_is_raised_at_start():
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "from proxy.preauth import raise_nofile_limit\n"
        "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    got, now, hard = map(int, out)
    assert got == now > 64 and now == min(hard, 1 << 20)
