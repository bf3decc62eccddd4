"""A real breakglass gateway (SSH listener) in a background thread, in front of the test sshd.

The gateway runs on its own event loop in a thread so tests can drive real blocking
clients (OpenSSH ssh/scp/sftp through subprocess or pexpect) and asyncssh clients
(``asyncio.run`` in the test thread) against it.

Targets in the generated config (all the same test sshd):
  web-1        known_hosts holds the sshd's real host key
  web-unknown  empty known_hosts (unknown host key)
  web-changed  known_hosts holds some other key for that address (changed host key)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh

from breakglass.cli.initdir import ISSUER_KID, init_workdir, render_config
from breakglass.policy.grants import new_jti, sign_grant
from breakglass.policy.keys import load_private_key
from breakglass.proxy.config import load_config
from breakglass.recorder.reader import read_events
from breakglass.throwaway.servers import SshServer, free_port

LOOPBACK = "127.0.0.1"

TARGETS = """
[targets.ssh.web-1]
host = "127.0.0.1"
port = {port}
known_hosts = "keys/known_hosts"
[targets.ssh.web-1.logins.{login}]
private_key = "keys/upstream_ssh_key"
[targets.ssh.web-1.logins.deploy]
private_key = "keys/upstream_ssh_key"

[targets.ssh.web-unknown]
host = "127.0.0.1"
port = {port}
known_hosts = "keys/empty_known_hosts"
[targets.ssh.web-unknown.logins.{login}]
private_key = "keys/upstream_ssh_key"
[targets.ssh.web-unknown.logins.deploy]
private_key = "keys/upstream_ssh_key"

[targets.ssh.web-changed]
host = "127.0.0.1"
port = {port}
known_hosts = "keys/changed_known_hosts"
[targets.ssh.web-changed.logins.{login}]
private_key = "keys/upstream_ssh_key"
[targets.ssh.web-changed.logins.deploy]
private_key = "keys/upstream_ssh_key"

[targets.postgres.orders]
host = "127.0.0.1"
port = 5432
database = "orders"
[targets.postgres.orders.users.app_ro]
password_env = "BREAKGLASS_TEST_UNUSED"
[targets.postgres.orders.users.app_rw]
password_env = "BREAKGLASS_TEST_UNUSED"
"""

ASKPASS = """#!/bin/sh
# Test askpass: answers breakglass prompts with the grant in $BREAKGLASS_TEST_GRANT_FILE.
case "$1" in
  *"Grant token:"*|*"password:"*) IFS= read -r line < "$BREAKGLASS_TEST_GRANT_FILE" && printf '%s\\n' "$line" ;;
  *) exit 1 ;;
esac
"""


class GatewayHarness:
    def __init__(self, sshd: SshServer, *, warn_before: str = "2s", auth_limit: int = 20) -> None:
        self.sshd = sshd
        self.dir = Path(tempfile.mkdtemp(prefix="breakglass-gw-"))
        self.port = free_port()
        text = render_config(
            gateway_name="test-gw",
            ssh_listen=f"127.0.0.1:{self.port}",
            targets=TARGETS.format(port=sshd.port, login=sshd.login),
        )
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("postgres_listen"))
        text = text.replace('warn_before_expiry = "2m"', f'warn_before_expiry = "{warn_before}"')
        text = text.replace("failed_auth_limit = 10", f"failed_auth_limit = {auth_limit}")
        init_workdir(self.dir, config_text=text + "\n")
        keys = self.dir / "keys"
        (keys / "known_hosts").write_text(sshd.known_hosts_line + "\n")
        (keys / "empty_known_hosts").write_text("")
        other = asyncssh.generate_private_key("ssh-ed25519")
        (keys / "changed_known_hosts").write_text(
            f"[{sshd.host}]:{sshd.port} " + other.export_public_key().decode()
        )
        sshd.authorize_key((keys / "upstream_ssh_key.pub").read_text())
        self.cfg = load_config(self.dir / "config.toml")
        self.issuer_key = load_private_key(keys / f"{ISSUER_KID}.key")
        host_key = asyncssh.read_private_key(str(keys / "gateway_ssh_host_key"))
        self.host_key_line = host_key.export_public_key().decode().strip()
        self.known_hosts = self.dir / "client_known_hosts"
        self.known_hosts.write_text(f"[{LOOPBACK}]:{self.port} {self.host_key_line}\n")
        self.askpass = self.dir / "askpass.sh"
        self.askpass.write_text(ASKPASS)
        self.askpass.chmod(0o700)
        self.grants_dir = self.dir / "grants"
        self.grants_dir.mkdir(mode=0o700)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.gw: Any = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> GatewayHarness:
        from breakglass.proxy.gateway import start_gateway

        started = threading.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                self.gw = await start_gateway(self.cfg)
            except BaseException as e:  # reported to the starting thread
                errors.append(e)
                started.set()
                return
            started.set()
            await self._stop.wait()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(main())
            finally:
                self.loop.close()

        self._thread = threading.Thread(target=run, name="gateway", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("gateway did not start")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        from breakglass.proxy.gateway import stop_gateway

        if self.gw is not None and self.loop is not None:
            with contextlib.suppress(Exception):
                self.call(stop_gateway(self.gw), timeout=15)
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)
        shutil.rmtree(self.dir, ignore_errors=True)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def in_loop(self, fn: Any, *args: Any) -> Any:
        async def wrap() -> Any:
            return fn(*args)

        return self.call(wrap())

    # ---------------------------------------------------------------- grants

    def claims(
        self,
        *,
        commands: Sequence[str] = (),
        shell: bool = False,
        forwarding: bool = False,
        sftp: bool = False,
        ttl: float = 600,
        target: str = "web-1",
        login: str | None = None,
        sub: str = "erin",
        **extra: Any,
    ) -> dict[str, Any]:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": "breakglass",
            "aud": "test-gw",
            "sub": sub,
            "jti": new_jti(),
            "iat": int(now),
            "nbf": int(now),
            "exp": now + ttl,
            "targets": [{"type": "ssh", "name": target, "login": login or self.sshd.login}],
            "ssh": {
                "commands": list(commands),
                "shell": shell,
                "forwarding": forwarding,
                "sftp": sftp,
            },
            "reason": "INC-42 disk full",
            "ticket": "INC-42",
            "template": "test",
            "approvers": ["bob"],
            "breakglass": False,
        }
        claims.update(extra)
        return claims

    def sign(self, claims: dict[str, Any]) -> str:
        return sign_grant(claims, self.issuer_key, ISSUER_KID)

    def token(self, **kw: Any) -> str:
        return self.sign(self.claims(**kw))

    def grant_file(self, token: str) -> Path:
        path = self.grants_dir / f"grant-{new_jti()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return path

    # ---------------------------------------------------------------- clients

    def client_options(self, log_level: str = "ERROR") -> list[str]:
        """OpenSSH options (``-o ...``) for ssh/scp/sftp to the gateway: its host key pinned,
        no keys or agent, the grant from askpass."""
        opts = {
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "UpdateHostKeys": "no",
            "PubkeyAuthentication": "no",
            "PreferredAuthentications": "keyboard-interactive,password",
            "IdentityAgent": "none",
            "NumberOfPasswordPrompts": "1",
            "ConnectTimeout": "10",
            "LogLevel": log_level,
        }
        out = ["-F", "/dev/null"]
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def ssh_argv(
        self,
        username: str,
        *remote: str,
        options: Sequence[str] = (),
        tty: bool | None = None,
        log_level: str = "ERROR",
        bind: str | None = None,
    ) -> list[str]:
        argv = ["ssh", "-p", str(self.port), *self.client_options(log_level)]
        if bind:
            argv += ["-b", bind]
        if tty is True:
            argv.append("-tt")
        elif tty is False:
            argv.append("-T")
        argv += [*options, "-l", username, LOOPBACK, *remote]
        return argv

    def client_env(self, grant_file: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SSH_", "BREAKGLASS_")) and k != "DISPLAY"
        }
        env.update(
            SSH_ASKPASS=str(self.askpass),
            SSH_ASKPASS_REQUIRE="force",
            BREAKGLASS_TEST_GRANT_FILE=str(grant_file),
        )
        env.update(extra or {})
        return env

    def ssh(
        self,
        token: str,
        *remote: str,
        username: str | None = None,
        input: bytes | None = None,
        timeout: float = 60,
        **kw: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real OpenSSH client through the gateway (grant via SSH_ASKPASS)."""
        gf = self.grant_file(token)
        try:
            return subprocess.run(
                self.ssh_argv(username or "web-1", *remote, **kw),
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                env=self.client_env(gf),
                timeout=timeout,
            )
        finally:
            gf.unlink(missing_ok=True)

    async def connect(self, token: str, username: str = "web-1", **kw: Any) -> Any:
        """An asyncssh client connection through the gateway (grant as the password)."""
        return await asyncssh.connect(
            LOOPBACK,
            self.port,
            username=username,
            password=token,
            known_hosts=asyncssh.import_known_hosts(self.known_hosts.read_text()),
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password",
            connect_timeout=10,
            **kw,
        )

    # ---------------------------------------------------------------- recordings

    def recordings(self, jti: str) -> list[Path]:
        out = []
        for p in sorted(self.cfg.recordings_dir.glob("*.rec")):
            with contextlib.suppress(Exception):
                first = next(read_events(p))
                if first.get("grant_jti") == jti:
                    out.append(p)
        return out

    def events(self, jti: str) -> list[dict[str, Any]]:
        """Events of the (single, finished) recording of grant ``jti``."""
        paths = self.recordings(jti)
        assert len(paths) == 1, f"expected one recording for {jti}, found {paths}"
        return list(read_events(paths[0]))

    def wait_session_ended(self, jti: str, timeout: float = 10) -> None:
        """Wait (bounded) until no live session uses grant ``jti`` and its recording is final."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.in_loop(
                lambda: [s for s in self.gw.registry.sessions.values() if s.grant.jti == jti]
            )
            if not live:
                return
            time.sleep(0.02)  # bounded poll of another thread's state
        raise AssertionError(f"session of grant {jti} still live after {timeout}s")

    def live_sessions(self, jti: str) -> list[Any]:
        return self.in_loop(
            lambda: [s for s in self.gw.registry.sessions.values() if s.grant.jti == jti]
        )
