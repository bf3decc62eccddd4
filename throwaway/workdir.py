"""A working directory wired to local throwaway servers: used by `breakglass demo` and the tests."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from breakglass.cli.initdir import ISSUER_KID, init_workdir, render_config
from breakglass.policy.grants import sign_grant
from breakglass.policy.issuance import AccessRequest, build_claims
from breakglass.policy.keys import load_private_key
from breakglass.proxy.config import Config, load_config
from breakglass.throwaway.servers import PostgresServer, SshServer, free_port


def _secret_file(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)


def local_targets_toml(directory: Path, pg: PostgresServer | None, ssh: SshServer | None) -> str:
    """Target sections for ``pg`` (as ``shop``) and ``ssh`` (as ``web-1``); writes password files."""
    parts = []
    if ssh is not None:
        parts.append(
            f"""
[targets.ssh.web-1]
host = "{ssh.host}"
port = {ssh.port}
known_hosts = "keys/known_hosts"
[targets.ssh.web-1.logins.{ssh.login}]
private_key = "keys/upstream_ssh_key"
"""
        )
    if pg is not None:
        secrets = directory / "secrets"
        secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        users = []
        for role in ("app_ro", "app_rw", "app_md5"):
            _secret_file(secrets / f"shop-{role}", pg.passwords[role])
            users.append(
                f'[targets.postgres.shop.users.{role}]\npassword_file = "secrets/shop-{role}"'
            )
        parts.append(
            f"""
[targets.postgres.shop]
host = "{pg.host}"
port = {pg.port}
database = "{pg.database}"
record_parameters = true
"""
            + "\n".join(users)
        )
    return "\n".join(parts)


def build_local_workdir(
    directory: Path,
    *,
    pg: PostgresServer | None,
    ssh: SshServer | None,
    ssh_port: int | None = None,
    pg_port: int | None = None,
    name: str = "demo",
    metrics: bool = False,
) -> Config:
    """``breakglass init`` + targets on the local servers + the gateway's key authorised on sshd."""
    ssh_listen = f"127.0.0.1:{ssh_port or free_port()}"
    pg_listen = f"127.0.0.1:{pg_port or free_port()}"
    login = ssh.login if ssh is not None else "deploy"
    text = render_config(
        gateway_name=name,
        ssh_listen=ssh_listen,
        postgres_listen=pg_listen,
        incident_managers=("ina",),
        approvers=("alice", "bob"),
        targets=local_targets_toml(Path(directory), pg, ssh),
    )
    text = text.replace('login = "deploy"', f'login = "{login}"')
    # A few extra templates the tests and the demo use.
    text += EXTRA_TEMPLATES.format(login=login)
    if ssh is None:
        text = text.replace(f'ssh_listen = "{ssh_listen}"\n', "")
    if pg is None:
        text = text.replace(f'postgres_listen = "{pg_listen}"\n', "")
    if metrics:  # Prometheus /metrics and /health/* on loopback
        text = text.replace(
            "\nworkers = 1\n", f'\nworkers = 1\nmetrics_listen = "127.0.0.1:{free_port()}"\n', 1
        )
    init_workdir(Path(directory), text)
    if ssh is not None:
        (Path(directory) / "keys/known_hosts").write_text(ssh.known_hosts_line + "\n")
        ssh.authorize_key((Path(directory) / "keys/upstream_ssh_key.pub").read_text().strip())
    return load_config(Path(directory) / "config.toml")


EXTRA_TEMPLATES = """
[templates.db-readwrite]
description = "Read-write SQL (no DDL)"
targets = ["postgres:*"]
db_user = "app_rw"
sql = {{ mode = "read-write" }}
max_ttl = "1h"
approvals = 1
requesters = ["*"]
approvers = ["@approvers"]

[templates.ssh-shell]
description = "Interactive shell (recorded)"
targets = ["ssh:*"]
login = "{login}"
ssh = {{ shell = true }}
max_ttl = "1h"
approvals = 1
requesters = ["*"]
approvers = ["@approvers"]
"""


def issue_local_grant(
    cfg: Config,
    template: str,
    target: str,
    *,
    user: str = "erin",
    ttl: int = 600,
    approved_by: tuple[str, ...] = ("alice",),
    breakglass: bool = False,
    now: float | None = None,
    **overrides: Any,
) -> str:
    """Sign a grant with the working directory's issuer key, through the normal rules."""
    claims = build_claims(
        AccessRequest(
            template=template,
            requester=user,
            targets=(target,),
            ttl=ttl,
            reason="demo" if template != "breakglass" else "incident",
            approved_by=() if breakglass else approved_by,
            breakglass=breakglass,
        ),
        cfg.templates,
        cfg.known_targets(),
        cfg.groups,
        issuer=cfg.issuer_name,
        audience=cfg.gateway_name,
        now=now if now is not None else time.time(),
    )
    claims.update(overrides)
    assert cfg.issuer_signing_key is not None
    return sign_grant(
        claims, load_private_key(cfg.issuer_signing_key), cfg.issuer_key_id or ISSUER_KID
    )
