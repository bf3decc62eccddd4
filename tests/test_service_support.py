"""Helpers shared by the grant-service tests (no tests here): a fresh state database on the
test PostgreSQL, local users, and a running grant service."""

from __future__ import annotations

import secrets

import asyncpg


def fresh_state_db(pg_server, prefix: str = "bgstate") -> str:
    """Create an empty database for state on ``pg_server``; return its DSN (superuser)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    pg_server.query(f"CREATE DATABASE {name}")
    return pg_server.dsn("postgres", name)


async def drop_state_db(pg_server, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(**pg_server.connect_kwargs("postgres"))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


# ---------------------------------------------------------------- a running grant service

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import Future  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pyotp  # noqa: E402

from breakglass.service.identity import add_local_user  # noqa: E402

SERVICE_TOML = """
[service]
listen = "127.0.0.1:0"
approval_window = "15m"
session_ttl = "10m"
admins = ["@security"]
oncall_file = "oncall.txt"
{extra}

[identity]
users_file = "users.toml"
{identity}
"""

PASSWORDS = {
    "erin": "erin-password-1",
    "alice": "alice-password-1",
    "bob": "bob-password-12",
    "ina": "ina-password-123",
    "mallory": "mallory-password",
}


def add_service_config(directory: Path, extra: str = "", identity: str = "") -> dict[str, str]:
    """Append the service's sections to DIR/config.toml; create local users; return the
    users' TOTP secrets."""
    directory = Path(directory)
    with open(directory / "config.toml", "a") as f:
        f.write(SERVICE_TOML.format(extra=extra, identity=identity))
    groups = {"alice": ("approvers",), "bob": ("approvers",), "ina": ("incident-managers",)}
    return {
        u: add_local_user(directory / "users.toml", u, pw, groups.get(u, ()))
        for u, pw in PASSWORDS.items()
    }


class ServiceThread:
    """The grant service on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, config: Path, state=None) -> None:
        from breakglass.service.api import load_service_config

        self.cfg, self.settings = load_service_config(config)
        self.state = state
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running = None

    def start(self) -> ServiceThread:
        from breakglass.service.api import start_service

        self._thread.start()
        self.running = self.call(start_service(self.cfg, self.settings, state=self.state, port=0))
        return self

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def service(self):
        return self.running.service

    def call(self, coro: Any, timeout: float = 20) -> Any:
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        if self.running is not None:
            self.call(self.running.stop())
            self.running = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Cli:
    """Run ``breakglass`` commands in-process as one of several people (own config dir)."""

    def __init__(self, home: Path, config: Path, secrets: dict[str, str], monkeypatch) -> None:
        self.home, self.config, self.secrets, self.mp = Path(home), config, secrets, monkeypatch
        import breakglass.cli.main as main
        from breakglass.cli import service_cmds

        if service_cmds not in main.MODULES:  # until the CLI registers the module itself
            monkeypatch.setattr(main, "MODULES", (*main.MODULES, service_cmds))

    def run(self, user: str, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        from breakglass.cli.main import main

        self.mp.setenv("XDG_CONFIG_HOME", str(self.home / user))
        out, err = io.StringIO(), io.StringIO()
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            _stdin(stdin),
        ):
            try:
                rc = main(["-c", str(self.config), *argv])
            except SystemExit as e:  # argparse usage errors
                rc = e.code if isinstance(e.code, int) else 2
        return rc, out.getvalue(), err.getvalue()

    def ok(self, user: str, *argv: str, stdin: str = "") -> str:
        rc, out, err = self.run(user, *argv, stdin=stdin)
        assert rc == 0, f"breakglass {' '.join(argv)} as {user}: rc={rc}\n{out}\n{err}"
        return out

    def request(
        self,
        user: str,
        reason: str,
        *extra: str,
        template: str = "db-readonly",
        target: str = "shop",
        duration: str = "10m",
    ) -> dict:
        """``breakglass request ... --json`` as ``user``; returns the request it printed."""
        out = self.ok(
            user,
            "request",
            "-t",
            template,
            "--target",
            target,
            "--for",
            duration,
            "--reason",
            reason,
            *extra,
            "--json",
        )
        return json.loads(out)

    def login(self, user: str, server: str, code: str | None = None) -> str:
        code = code or pyotp.TOTP(self.secrets[user]).now()
        return self.ok(
            user,
            "login",
            "--server",
            server,
            "--user",
            user,
            "--password-stdin",
            "--totp",
            code,
            stdin=PASSWORDS[user] + "\n",
        )


@contextlib.contextmanager
def _stdin(text: str):
    old = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = old
