"""``breakglass demo``: everything on an embedded default, in one command.

Starts a throwaway PostgreSQL with sample data (and a throwaway sshd when the
machine has one), a working directory with fresh keys, the gateway, the grant
service with the web console (a demo reviewer login), a loopback alert sink
that prints alerts, and demo grants; prints the exact client lines to try and
writes them to DIR/demo.env.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from breakglass.proxy.config import Config
from breakglass.proxy.gateway import run_async, run_gateway
from breakglass.throwaway.servers import PostgresServer, ServerStartError, SshServer, free_port
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant

DEMO_REVIEWER = "rita"


class DemoError(Exception):
    pass


def _write_token(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def prepare_directory(directory: str | None) -> Path:
    if directory is None:
        return Path(tempfile.mkdtemp(prefix="breakglass-demo-"))
    d = Path(directory).resolve()
    if d.exists() and any(d.iterdir()):
        raise DemoError(f"{d} is not empty; pass --dir with a new or empty directory")
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_servers(with_ssh: bool = True) -> tuple[PostgresServer, SshServer | None, list[str]]:
    notes = []
    reason = PostgresServer.unavailable_reason()
    if reason:
        raise DemoError(
            f"the demo needs a local PostgreSQL server binary: {reason} (apt-get install postgresql)"
        )
    try:
        pg = PostgresServer().start()
    except ServerStartError as e:
        raise DemoError(f"could not start the throwaway PostgreSQL:\n{e}") from None
    ssh = None
    if with_ssh:
        reason = SshServer.unavailable_reason()
        if reason:
            notes.append(f"SSH target skipped: {reason} (apt-get install openssh-server)")
        else:
            try:
                ssh = SshServer().start()
            except ServerStartError as e:
                notes.append(f"SSH target skipped: {e}")
    return pg, ssh, notes


def start_alert_sink() -> tuple[ThreadingHTTPServer, str]:
    """A loopback webhook that prints the gateway's alerts (so `breakglass drill` can pass)."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
            try:
                text = json.loads(body).get("text", "")
            except ValueError:
                text = "(unreadable alert)"
            print(f"alert: {text}", file=sys.stderr, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, name="alert-sink", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/alerts"


def add_service_and_console(d: Path, alert_url: str) -> tuple[str, str, str]:
    """The grant service (with the console) on a loopback port, a demo reviewer in the
    `security` group, and the alert sink as a webhook. Returns (service URL, reviewer's
    password, TOTP secret)."""
    from breakglass.service.identity import add_local_user

    port = free_port()
    with open(d / "config.toml", "a") as f:
        f.write(
            f"""
[service]
listen = "127.0.0.1:{port}"
admins = ["@security"]

[identity]
users_file = "users.toml"

[console]
reviewers = ["@security"]

[[alerts.webhooks]]
name = "demo-sink"
url = "{alert_url}"
"""
        )
    password = secrets.token_urlsafe(12)
    totp = add_local_user(d / "users.toml", DEMO_REVIEWER, password, ("security",))
    _write_token(d / "reviewer.txt", f"user {DEMO_REVIEWER}\npassword {password}\ntotp {totp}")
    return f"http://127.0.0.1:{port}", password, totp


def write_demo_files(d: Path, cfg: Config, ssh: SshServer | None) -> dict[str, str]:
    grants = d / "grants"
    grants.mkdir(mode=0o700, exist_ok=True)
    env: dict[str, str] = {
        "BREAKGLASS_CONFIG": str(d / "config.toml"),
        "BREAKGLASS_RECORDINGS": str(cfg.recordings_dir),
    }
    assert cfg.postgres_listen
    ro = _write_token(
        grants / "readonly.token", issue_local_grant(cfg, "db-readonly", "shop", ttl=3600)
    )
    _write_token(
        grants / "expired.token",
        issue_local_grant(cfg, "db-readonly", "shop", ttl=60, now=time.time() - 3600),
    )
    env.update(
        BREAKGLASS_PG_PORT=str(cfg.postgres_listen.port),
        BREAKGLASS_PG_DSN=(
            f"host={cfg.postgres_listen.host} port={cfg.postgres_listen.port} user=erin dbname=shop "
            f"sslmode=verify-full sslrootcert={cfg.tls_cert}"
        ),
        BREAKGLASS_PG_GRANT=str(ro),
        BREAKGLASS_PG_EXPIRED_GRANT=str(grants / "expired.token"),
    )
    if ssh is not None and cfg.ssh_listen:
        ops = _write_token(
            grants / "ops-commands.token", issue_local_grant(cfg, "ops-commands", "web-1", ttl=1800)
        )
        shell = _write_token(
            grants / "breakglass-shell.token",
            issue_local_grant(cfg, "breakglass", "web-1", user="ina", ttl=3600, breakglass=True),
        )
        env.update(
            BREAKGLASS_SSH_PORT=str(cfg.ssh_listen.port),
            BREAKGLASS_SSH_TARGET="web-1",
            BREAKGLASS_SSH_GRANT=str(ops),
            BREAKGLASS_SSH_SHELL_GRANT=str(shell),
        )
    if cfg.metrics_listen:
        m = cfg.metrics_listen
        env["BREAKGLASS_METRICS_URL"] = f"http://{m.host}:{m.port}/metrics"
    (d / "demo.env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    )
    return env


def add_service_env(d: Path, env: dict[str, str], url: str) -> None:
    env.update(BREAKGLASS_SERVICE_URL=url, BREAKGLASS_CONSOLE_URL=url + "/console/")
    (d / "demo.env").write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    )


def instructions(d: Path, env: dict[str, str]) -> str:
    c = f"breakglass -c {d / 'config.toml'}"
    dsn = env["BREAKGLASS_PG_DSN"]
    lines = [
        "",
        f"breakglass demo is running in {d}",
        "",
        "PostgreSQL (the grant is the password; TLS is required and verified):",
        f'  PGPASSWORD="$(cat {env["BREAKGLASS_PG_GRANT"]})" psql "{dsn}" -c "select count(*) from orders"',
        f'  PGPASSWORD="$(cat {env["BREAKGLASS_PG_GRANT"]})" psql "{dsn}" -c "delete from orders"      # refused: read-only',
        f'  PGPASSWORD="$(cat {env["BREAKGLASS_PG_EXPIRED_GRANT"]})" psql "{dsn}"                      # refused: grant expired',
        f"  {c} psql shop --grant-file {env['BREAKGLASS_PG_GRANT']}        # interactive",
    ]
    if "BREAKGLASS_SSH_PORT" in env:
        port = env["BREAKGLASS_SSH_PORT"]
        lines += [
            "",
            "SSH (paste the grant at the password prompt, or use the front door):",
            f"  {c} ssh web-1 --grant-file {env['BREAKGLASS_SSH_GRANT']} uptime",
            f"  {c} ssh web-1 --grant-file {env['BREAKGLASS_SSH_GRANT']} 'uptime; id'   # refused: metacharacter",
            f"  {c} ssh web-1 --grant-file {env['BREAKGLASS_SSH_GRANT']}                # restricted shell: type help",
            f"  {c} ssh web-1 --grant-file {env['BREAKGLASS_SSH_SHELL_GRANT']}          # break-glass shell (as ina)",
            f"  ssh -p {port} -o UserKnownHostsFile={d / 'known_hosts'} web-1@127.0.0.1 uptime   # paste the grant",
        ]
    lines += [
        "",
        "Security:",
        f"  {c} sessions                 # live sessions",
        f"  {c} watch SESSION            # follow a live session (the engineer is told)",
        f"  {c} kill SESSION",
        f"  {c} verify {env['BREAKGLASS_RECORDINGS']}",
        f"  {c} audit --since 1h",
        f"  {c} report access --since 1d            # recertification (--format csv|json|html)",
        f"  {c} drill --target shop                 # break-glass drill, end to end",
    ]
    if "BREAKGLASS_METRICS_URL" in env:
        url = env["BREAKGLASS_METRICS_URL"]
        lines += [
            f"  curl -s {url} | grep ^breakglass_        # Prometheus metrics",
            f"  curl -s {url.removesuffix('/metrics')}/health/ready",
        ]
    if "BREAKGLASS_CONSOLE_URL" in env:
        creds = d / "reviewer.txt"
        code = (
            'python3 -c \'import pyotp,sys; c=dict(x.split(" ",1) for x in open(sys.argv[1]));'
            f' print(pyotp.TOTP(c["totp"].strip()).now())\' {creds}'
        )
        lines += [
            "",
            f"Web console: open {env['BREAKGLASS_CONSOLE_URL']} and log in as {DEMO_REVIEWER}",
            f"  password and TOTP secret: {creds}",
            f"  a TOTP code: {code}",
        ]
    lines += [
        "",
        f"Variables for scripts: . {d / 'demo.env'}",
        "Ctrl-C stops the demo (recordings stay in the directory).",
    ]
    return "\n".join(lines)


async def _gateway_and_service(cfg: Config, d: Path, ready) -> None:
    from breakglass.service.api import load_service_config, start_service

    scfg, settings = load_service_config(d / "config.toml")
    service = await start_service(scfg, settings)
    try:
        await run_gateway(cfg, ready)
    finally:
        await service.stop()


def run_demo(directory: str | None, *, with_ssh: bool = True) -> int:
    from breakglass.proxy.logs import configure_logging

    configure_logging("console", "warning")
    d = prepare_directory(directory)
    pg, ssh, notes = start_servers(with_ssh)
    try:
        cfg = build_local_workdir(d, pg=pg, ssh=ssh, name="demo", metrics=True)
        if ssh is not None:
            # known_hosts for the engineer's own ssh client: the gateway's host key
            import asyncssh

            host_key = (
                asyncssh.read_private_key(str(cfg.ssh_host_key))
                .export_public_key()
                .decode()
                .strip()
            )
            assert cfg.ssh_listen
            (d / "known_hosts").write_text(f"[127.0.0.1]:{cfg.ssh_listen.port} {host_key}\n")
        sink, alert_url = start_alert_sink()
        url, _password, _totp = add_service_and_console(d, alert_url)
        from breakglass.proxy.config import load_config

        cfg = load_config(d / "config.toml")
        env = write_demo_files(d, cfg, ssh)
        add_service_env(d, env, url)

        def ready(_gw) -> None:
            for n in notes:
                print(f"note: {n}", file=sys.stderr)
            print(instructions(d, env), flush=True)

        run_async(_gateway_and_service(cfg, d, ready))
        sink.shutdown()
    finally:
        if ssh is not None:
            ssh.stop()
        pg.stop()
    print("demo stopped", file=sys.stderr)
    return 0
