"""The gateway's SSH connection to a target: its own key, the target's host key checked.

The host key is verified against the target's configured ``known_hosts`` file and nothing
else (no ~/.ssh/config, no ~/.ssh/known_hosts, no agent). Unknown or changed keys are
refused with a message the engineer sees; verification is never skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import asyncssh

from breakglass.proxy.config import SshTarget

#: Flow-control tuning for the bulk path (target -> gateway): a large receive window keeps
#: the target's sshd streaming while the gateway records and forwards.
UPSTREAM_WINDOW = 16 * 1024 * 1024
UPSTREAM_MAX_PKTSIZE = 256 * 1024
CONNECT_TIMEOUT = 10.0

#: AES-GCM first: asyncssh runs it in OpenSSL (chacha20-poly1305 costs more per packet there).
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
    "chacha20-poly1305@openssh.com",
)


class UpstreamError(Exception):
    """Why the target could not be reached; ``message`` is safe to show the engineer."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind  # host-key | auth | unreachable | error


def _read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    try:
        text = path.read_text()
    except OSError as e:
        raise UpstreamError(
            f"the gateway cannot read its known_hosts file for this target ({e.strerror})",
            "host-key",
        ) from None
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError):
        raise UpstreamError(
            "the gateway's known_hosts file for this target is not valid", "host-key"
        ) from None


async def connect_upstream(
    target: SshTarget,
    login: str,
    *,
    timeout: float = CONNECT_TIMEOUT,
    client_factory: Callable[[], asyncssh.SSHClient] | None = None,
) -> asyncssh.SSHClientConnection:
    """Log in to ``target`` as ``login`` with the gateway's key; raise :class:`UpstreamError`."""
    key_path = target.logins.get(login)
    if key_path is None:
        raise UpstreamError(
            f"the gateway holds no credentials for login {login!r} on {target.name}", "auth"
        )
    known = _read_known_hosts(target.known_hosts)
    where = f"{target.name} ({target.host}:{target.port})"
    try:
        client_key = asyncssh.read_private_key(str(key_path))
    except (OSError, asyncssh.KeyImportError, ValueError):
        raise UpstreamError(
            f"the gateway cannot load its key for login {login!r} on {target.name}", "auth"
        ) from None
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            username=login,
            client_factory=client_factory,
            client_keys=[client_key],
            known_hosts=known,
            config=None,
            agent_path=None,
            agent_forwarding=False,
            x11_forwarding=False,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            preferred_auth="publickey",
            x509_trusted_certs=None,
            encryption_algs=ENCRYPTION_ALGS,
            compression_algs=["none"],
            window=UPSTREAM_WINDOW,
            max_pktsize=UPSTREAM_MAX_PKTSIZE,
            connect_timeout=timeout,
            login_timeout=timeout,
            keepalive_interval=30,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise UpstreamError(
            f"the host key of {where} is not in the gateway's known_hosts or has changed; "
            "refusing to connect (an operator must verify and update it)",
            "host-key",
        ) from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(
            f"{where} refused the gateway's key for login {login!r}", "auth"
        ) from None
    except TimeoutError:
        raise UpstreamError(f"{where} did not answer in time", "unreachable") from None
    except OSError as e:
        raise UpstreamError(
            f"cannot reach {where}: {e.strerror or type(e).__name__}", "unreachable"
        ) from None
    except asyncssh.Error as e:
        raise UpstreamError(f"SSH to {where} failed: {e.reason}", "error") from None
    return conn
