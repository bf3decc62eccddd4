"""``breakglass init DIR``: keys, a self-signed TLS certificate and a starter config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from breakglass.policy.keys import generate_private_key, write_private_key, write_public_key
from breakglass.proxy.tls_files import TlsFiles, self_signed

ISSUER_KID = "issuer-1"
RECORDER_KID = "recorder-1"

# Every file `init` creates, relative to DIR. Nothing is overwritten.
FILES = (
    "config.toml",
    f"keys/{ISSUER_KID}.key",
    f"keys/{ISSUER_KID}.pub",
    f"keys/{RECORDER_KID}.key",
    f"keys/{RECORDER_KID}.pub",
    "keys/gateway_ssh_host_key",
    "keys/gateway_tls.crt",
    "keys/gateway_tls.key",
    "keys/upstream_ssh_key",
    "keys/upstream_ssh_key.pub",
    "keys/known_hosts",
)


class InitError(Exception):
    pass


def render_config(
    *,
    gateway_name: str = "prod",
    ssh_listen: str = "127.0.0.1:2222",
    postgres_listen: str = "127.0.0.1:6432",
    incident_managers: tuple[str, ...] = ("ina",),
    approvers: tuple[str, ...] = ("alice", "bob"),
    targets: str | None = None,
) -> str:
    """The starter config; ``config.example.toml`` is this text with the defaults."""
    im = ", ".join(f'"{u}"' for u in incident_managers)
    ap = ", ".join(f'"{u}"' for u in approvers)
    return CONFIG_TEMPLATE.format(
        gateway_name=gateway_name,
        ssh_listen=ssh_listen,
        postgres_listen=postgres_listen,
        incident_managers=im,
        approvers=ap,
        issuer_kid=ISSUER_KID,
        recorder_kid=RECORDER_KID,
        targets=(targets if targets is not None else DEFAULT_TARGETS).strip() + "\n",
    )


DEFAULT_TARGETS = """
# An SSH target. The gateway logs in with its own key for each login; put
# keys/upstream_ssh_key.pub into that login's authorized_keys on the host, and the
# host's public key into keys/known_hosts (`ssh-keyscan -p PORT HOST >> keys/known_hosts`).
# An unknown or changed host key is refused; it is never skipped.
[targets.ssh.web-1]
host = "127.0.0.1"
port = 22
known_hosts = "keys/known_hosts"
[targets.ssh.web-1.logins.deploy]
private_key = "keys/upstream_ssh_key"

# A PostgreSQL target. Credentials for each db_user live only here, read from a
# file (password_file) or an environment variable (password_env) when a session starts.
[targets.postgres.orders]
host = "127.0.0.1"
port = 5432
database = "orders"
tls = "disable"            # disable | verify-full (TLS, server certificate checked against ca_file)
# ca_file = "keys/orders-ca.pem"
record_parameters = true   # record Bind parameters of each statement
# How often PostgreSQL checks that the gateway's connection is still there while a statement
# runs (client_connection_check_interval, set at login): a statement does not run on once the
# gateway is gone (killed, or the expiry watch cut the connection). PostgreSQL 14 or later;
# "0s" for an older server, which refuses the setting.
connection_check = "1s"
[targets.postgres.orders.users.app_ro]
password_env = "BREAKGLASS_ORDERS_APP_RO_PASSWORD"
[targets.postgres.orders.users.app_rw]
password_env = "BREAKGLASS_ORDERS_APP_RW_PASSWORD"
"""

CONFIG_TEMPLATE = """\
# breakglass configuration. Relative paths are relative to this file.
# `breakglass init DIR` writes a ready-to-edit copy with fresh keys.

[gateway]
# The gateway cluster's name: grants must carry it as their audience (aud).
name = "{gateway_name}"
# Where engineers connect. Remove a line to disable that listener.
ssh_listen = "{ssh_listen}"
postgres_listen = "{postgres_listen}"
# The gateway's own SSH host key (OpenSSH format) and TLS certificate for Postgres clients.
ssh_host_key = "keys/gateway_ssh_host_key"
tls_cert = "keys/gateway_tls.crt"
tls_key = "keys/gateway_tls.key"
# Local admin socket used by `breakglass sessions` and `breakglass kill`.
admin_socket = "run/admin.sock"
# Warn the engineer this long before their grant expires.
warn_before_expiry = "2m"
# Clock-skew allowance for a grant's nbf (at most 30s). Expiry is always strict.
leeway = "5s"
# Failed authentications per source address per minute before refusals are answered late
# (backoff; a valid grant is never refused or delayed because of others' failures).
failed_auth_limit = 10
# Connections still logging in, per source address and in total over both listeners (the
# total is also held to a quarter of the file-descriptor limit, which the gateway raises to
# the hard limit at start-up, so sessions and the admin socket always have descriptors).
preauth_per_source = 32
preauth_total = 1024
# An SSH client that has not sent its version line within this is disconnected.
banner_timeout = "10s"
# Gateway processes sharing the listening ports (SO_REUSEPORT); each has its own admin
# socket (admin.sock.N) and cancel requests are routed to the right one.
workers = 1
# Prometheus /metrics and /health/live, /health/ready (worker N listens on port + N).
# metrics_listen = "127.0.0.1:9464"

[issuer]
# Grants carry this as iss. signing_key is only needed where grants are issued.
name = "breakglass"
key_id = "{issuer_kid}"
signing_key = "keys/{issuer_kid}.key"

# Issuer public keys the gateway trusts, by key id (kid). List old and new
# keys side by side while rotating. A key vouches for grants whose iss is issuer.name,
# or for another issuer: partner-1 = {{ key = "keys/partner-1.pub", issuer = "partner" }}
[issuer.trusted_keys]
{issuer_kid} = "keys/{issuer_kid}.pub"

[recorder]
# One write-once recording per session, and the hash-chained audit log.
directory = "recordings"
audit_directory = "audit"
# The recorder signs checkpoints and trailers with this key.
key_id = "{recorder_kid}"
signing_key = "keys/{recorder_kid}.key"
# A signed checkpoint every checkpoint_interval seconds or checkpoint_events events.
checkpoint_interval = 1.0
checkpoint_events = 1000
# Every event is written to the recording file before anything is forwarded (a killed
# gateway loses nothing); fsync is group-committed: a host crash loses at most this many
# seconds.
commit_interval = 0.05

# Recorder public keys `breakglass verify` trusts, by key id.
[recorder.trusted_keys]
{recorder_kid} = "keys/{recorder_kid}.pub"

# Immutable storage: stream recordings and the audit log, while sessions run, to S3-compatible
# object storage with Object Lock, and anchor every signed checkpoint there (README:
# "Recordings on immutable storage"). The local directories above are the spool. Credentials
# come from the environment (AWS_ACCESS_KEY_ID, an instance role) or credentials_file,
# never from this file.
# [recorder.store]
# url = "s3://breakglass-recordings/gateway-1"
# endpoint_url = "https://s3.eu-west-1.amazonaws.com"  # SeaweedFS, MinIO, Ceph RGW: theirs
# region = "eu-west-1"
# credentials_file = "/etc/breakglass/s3-credentials"  # AWS format; profile = "..." picks one
# retention = "compliance:400d"  # or "governance:30d"; set on every object at upload
# upload_lag = 5                 # seconds the store may trail a session
# spool_limit = "4GiB"           # bytes waiting for upload before sessions are refused

[state]
# Embedded SQLite database: grants issued, revocations, requests.
database = "state.db"
# Several gateways and the grant service share a PostgreSQL database instead
# (revocations then reach every gateway through LISTEN/NOTIFY):
# url_env = "BREAKGLASS_STATE_URL"   # or url = "postgresql://..."

# The grant service (`breakglass serve`): [service], [identity] and auto-approval
# rules are described in docs/service-api.md.

[index]
# Session index for `sessions`, `search` and `review`; a cache: `breakglass index --rebuild`
# rebuilds it from the recordings.
database = "index.db"

[review]
# Break-glass sessions not reviewed this long after they started are overdue (and alerted).
deadline = "24h"

[alerts]
# N denied commands/statements in one session within the window -> one alert for that session.
denials = 5
denials_window = "5m"
# Delivery retries: backoff in seconds, doubling, capped at 5 min. Alerts never slow a session.
retries = 8
backoff = 1.0
timeout = 5.0
queue_limit = 1000
# Slack-compatible webhooks. The URL is a secret: prefer url_env or url_file.
# Plain http only to 127.0.0.1/::1/localhost.
# [[alerts.webhooks]]
# name = "security-slack"
# url_env = "BREAKGLASS_SLACK_WEBHOOK"
# events = ["breakglass.used", "denials", "recording.verify_failed", "review.overdue"]

[groups]
# Named groups, used as "@name" in templates.
incident-managers = [{incident_managers}]
approvers = [{approvers}]

# Access templates map common production tasks to least privilege.
#   targets    "ssh:GLOB" / "postgres:GLOB" over configured target names
#   max_ttl    longest grant this template may issue
#   approvals  distinct approvers needed (never the requester)
#   requesters / approvers   user names, "@group", or "*"
#   breakglass no approval; only for the named requesters; always audited for review

[templates.db-readonly]
description = "Read-only SQL on a production database"
targets = ["postgres:*"]
db_user = "app_ro"
sql = {{ mode = "read-only", tables = [] }}   # tables: e.g. ["public.*", "billing.invoices"]
max_ttl = "1h"
approvals = 1
requesters = ["*"]
approvers = ["@approvers"]

[templates.ops-commands]
description = "A few read-only diagnostic commands on a production host"
targets = ["ssh:*"]
login = "deploy"
ssh = {{ commands = ["uptime", "df -h", "journalctl -u * -n *", "systemctl status *", "cat /var/log/app/*"], shell = false, forwarding = false, sftp = false }}
max_ttl = "30m"
approvals = 1
requesters = ["*"]
approvers = ["@approvers"]

[templates.breakglass]
description = "Emergency: full shell and all SQL, no approval, reviewed afterwards"
targets = ["ssh:*", "postgres:*"]
login = "deploy"
db_user = "app_rw"
ssh = {{ commands = [], shell = true, forwarding = false, sftp = false }}
sql = {{ mode = "all" }}
max_ttl = "2h"
approvals = 0
breakglass = true
requesters = ["@incident-managers"]

{targets}"""


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init_workdir(
    directory: Path,
    config_text: str | None = None,
    *,
    hostnames: Sequence[str] = (),
    tls: TlsFiles | None = None,
) -> list[Path]:
    """Create keys and config in ``directory``; refuse if any of our files exist.

    The gateway's TLS certificate is ``tls`` (an existing certificate and key, already
    checked) or a new self-signed one for localhost, 127.0.0.1, ::1 and ``hostnames``.
    """
    directory = Path(directory)
    clashes = [f for f in FILES if (directory / f).exists()]
    if clashes:
        raise InitError(
            f"{directory} already has {', '.join(clashes)}; refusing to overwrite (choose a new directory)"
        )
    if tls is None:
        tls = self_signed(hostnames)
    (directory / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "run").mkdir(exist_ok=True, mode=0o700)
    keys = directory / "keys"
    for kid in (ISSUER_KID, RECORDER_KID):
        priv = generate_private_key()
        write_private_key(keys / f"{kid}.key", priv)
        write_public_key(keys / f"{kid}.pub", priv.public_key())
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    _write_secret(keys / "gateway_ssh_host_key", host_key.export_private_key())
    upstream = asyncssh.generate_private_key("ssh-ed25519", comment="breakglass-gateway")
    _write_secret(keys / "upstream_ssh_key", upstream.export_private_key())
    _write_public(keys / "upstream_ssh_key.pub", upstream.export_public_key())
    _write_public(keys / "known_hosts", b"")
    _write_secret(keys / "gateway_tls.key", tls.key_pem)
    _write_public(keys / "gateway_tls.crt", tls.cert_pem)
    _write_public(directory / "config.toml", (config_text or render_config()).encode())
    return [directory / f for f in FILES]
