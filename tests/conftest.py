"""Shared fixtures. Thin wrappers: the servers themselves live in tests/servers.py."""

from __future__ import annotations

import os

import pytest

from tests.servers import PostgresServer, ServerStartError, SshServer


def _unavailable(reason: str) -> None:
    """Skip, or fail when CI demands real servers (BREAKGLASS_REQUIRE_SERVERS=1)."""
    if os.environ.get("BREAKGLASS_REQUIRE_SERVERS") == "1":
        pytest.fail(f"BREAKGLASS_REQUIRE_SERVERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _start(server, kind: str):
    reason = server.unavailable_reason()
    if reason:
        _unavailable(reason)
    try:
        server.start()
    except ServerStartError as e:
        pytest.fail(f"could not start the test {kind}:\n{e}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL 15 on 127.0.0.1 with db `shop`, roles app_ro/app_rw/app_md5."""
    # room for the 100-session expiry test beside everything else
    server = _start(PostgresServer(settings={"max_connections": "300"}), "PostgreSQL server")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ssh_server():
    """A real OpenSSH sshd on 127.0.0.1 accepting `ssh_server.client_key` for the current user."""
    server = _start(SshServer(), "OpenSSH server")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server enforcing Object Lock (SeaweedFS) on 127.0.0.1; bucket ``s3_server.bucket``
    has Object Lock and versioning; identities admin, gateway (write) and reader (read)."""
    from breakglass.throwaway.s3 import S3Server

    server = _start(S3Server(), "S3 server (SeaweedFS)")
    yield server
    server.stop()
