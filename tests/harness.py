"""A real gateway in a background thread (own event loop), for tests that use real clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import asyncssh

from breakglass.proxy.config import Config, load_config
from breakglass.proxy.gateway import Gateway, start_gateway, stop_gateway
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant


class GatewayThread:
    def __init__(
        self, directory: Path, *, pg=None, ssh=None, edit_config=None, loop_factory=None
    ) -> None:
        self.dir = Path(directory)
        self.cfg: Config = build_local_workdir(self.dir, pg=pg, ssh=ssh, name="test-gw")
        if edit_config is not None:  # e.g. add webhooks: text -> text
            path = self.dir / "config.toml"
            path.write_text(edit_config(path.read_text()))
            self.cfg = load_config(path)
        # loop_factory: e.g. uvloop.new_event_loop, the loop `breakglass gateway` runs on
        self.loop = (loop_factory or asyncio.new_event_loop)()
        self.gw: Gateway | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)

    def start(self) -> GatewayThread:
        self._thread.start()
        self.gw = self.call(start_gateway(self.cfg), timeout=30)
        return self

    def call(self, coro: Any, timeout: float = 10) -> Any:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        if self.gw is not None:
            self.call(stop_gateway(self.gw), timeout=15)
            self.gw = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def pg_port(self) -> int:
        assert self.cfg.postgres_listen
        return self.cfg.postgres_listen.port

    @property
    def ssh_port(self) -> int:
        assert self.cfg.ssh_listen
        return self.cfg.ssh_listen.port

    async def connect_pg(self, token: str, user: str = "erin", **kw: Any) -> Any:
        """An asyncpg connection through this gateway (TLS verified against its certificate)."""
        import asyncpg

        from tests.pg_client import client_tls

        return await asyncpg.connect(
            host="127.0.0.1",
            port=self.pg_port,
            user=user,
            password=token,
            database="shop",
            ssl=client_tls(self.dir / "keys/gateway_tls.crt"),
            **kw,
        )

    def psql(self, token: str, *args: str, input: str | None = None) -> Any:
        """The real psql through this gateway as erin (no psqlrc, stop on the first error)."""
        import subprocess

        env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require", PGCONNECT_TIMEOUT="10")
        return subprocess.run(
            ["psql", "-X", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "erin", "-d"]
            + ["shop", "-v", "ON_ERROR_STOP=1", *args],
            input=input,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def grant(self, template: str = "db-readonly", target: str = "shop", **kw: Any) -> str:
        return issue_local_grant(self.cfg, template, target, **kw)

    def flush_audit(self) -> None:
        """Make the gateway's buffered audit events durable, so a reader sees them."""
        self.call(asyncio.to_thread(self.gw.audit.flush))

    def wait_idle(self, timeout: float = 10) -> None:
        """Wait until every session has ended and its recording is closed."""
        self.call(asyncio.wait_for(self.gw.registry.wait_idle(), timeout), timeout + 1)

    def sessions(self) -> list[dict]:
        async def _list():
            return [s.info() for s in self.gw.registry.sessions.values()]

        return self.call(_list())


def stall_loop(loop: asyncio.AbstractEventLoop, at: float, seconds: float) -> None:
    """Block a gateway's event loop thread from ``at`` (wall clock) for ``seconds``, as a
    loop saturated by other sessions or starved of CPU by the host would be: it runs no
    callbacks meanwhile (the GIL stays free for other threads, as it would be)."""

    def arm() -> None:
        loop.call_later(max(0.0, at - time.time()), time.sleep, seconds)

    loop.call_soon_threadsafe(arm)


def _ss(*args: str) -> str:
    return subprocess.run(["ss", "-tnH", *args], capture_output=True, text=True, check=True).stdout


def established(port: int, peer_port: int) -> bool:
    """A gateway's side (local ``port``) of the connection from ``peer_port`` is open (``ss``)."""
    return bool(
        _ss("state", "established", f"( sport = :{port} and dport = :{peer_port} )").strip()
    )


def local_port_of(pid: int, port: int) -> int:
    """The local port of process ``pid``'s connection to ``port`` on loopback (``ss``)."""
    for line in _ss("-p", "state", "established", f"( dport = :{port} )").splitlines():
        if f"pid={pid}," in line:
            return int(line.split()[2].rsplit(":", 1)[1])
    raise AssertionError(f"process {pid} has no connection to port {port}")


def ssh_client_command(
    directory: Path, cfg: Config, token: str, *remote: str, login_target: str = "web-1"
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for OpenSSH's ``ssh`` to the gateway of ``cfg`` (working
    directory ``directory``): its host key pinned, no keys or agent, the grant given by a
    private askpass helper (never on the command line)."""
    import asyncssh

    kh = directory / "client_known_hosts"
    key = asyncssh.read_private_key(str(cfg.ssh_host_key))
    port = cfg.ssh_listen.port
    kh.write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n")
    gf = directory / "client_grant"
    gf.write_text(token + "\n")
    gf.chmod(0o600)
    askpass = directory / "askpass.sh"
    askpass.write_text('#!/bin/sh\nIFS= read -r line < "$GRANT_FILE" && printf "%s\\n" "$line"\n')
    askpass.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", GRANT_FILE=str(gf))
    argv = ["ssh", "-F", "/dev/null", "-p", str(port), "-T"]
    for k, v in {
        "UserKnownHostsFile": str(kh),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "PubkeyAuthentication": "no",
        "PreferredAuthentications": "keyboard-interactive,password",
        "IdentityAgent": "none",
        "NumberOfPasswordPrompts": "1",
        "LogLevel": "ERROR",
    }.items():
        argv += ["-o", f"{k}={v}"]
    return argv + ["-l", login_target, "127.0.0.1", *remote], env


@contextlib.asynccontextmanager
async def ssh_connect(gw: GatewayThread, target: str, password: str):
    """An asyncssh connection through ``gw``'s SSH listener (its real host key checked)."""
    host_key = asyncssh.read_private_key(str(gw.cfg.ssh_host_key)).convert_to_public()
    async with asyncssh.connect(
        "127.0.0.1",
        gw.ssh_port,
        username=target,
        password=password,
        known_hosts=([host_key], [], []),
        client_keys=None,
        agent_path=None,
        config=None,
        preferred_auth="password",
    ) as conn:
        yield conn


@contextlib.asynccontextmanager
async def ssh_shell(gw: GatewayThread, target: str, password: str, timeout: float = 15):
    """An interactive 100x30 pty shell through ``gw``: ``(process, until)``, where
    ``await until(marker[, bound])`` reads the output until ``marker`` has shown (each read
    bounded by ``bound``, default ``timeout``) and returns the time it did; ``until.output()`` is all it read so far."""
    async with ssh_connect(gw, target, password) as conn:
        proc = await conn.create_process(term_type="xterm", term_size=(100, 30), encoding=None)
        seen = b""

        async def until(marker: bytes, bound: float = timeout) -> float:
            nonlocal seen
            while marker not in seen:
                seen += await asyncio.wait_for(proc.stdout.read(4096), bound)
            return time.monotonic()

        until.output = lambda: seen  # type: ignore[attr-defined]
        yield proc, until


#: ``breakglass`` as a subprocess, from this interpreter (the installed package).
CLI = [sys.executable, "-m", "breakglass.cli.main"]


def run_cli(
    config: Path | str | None, *args: str, input: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``breakglass [-c CONFIG] ARGS...`` to completion (bounded), capturing its output."""
    cmd = CLI + (["-c", str(config)] if config is not None else []) + list(args)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
        env=env if env is not None else dict(os.environ),
    )
