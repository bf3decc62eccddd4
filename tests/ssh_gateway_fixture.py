"""The ``ssh_gateway`` fixture: a real gateway in a thread in front of the test sshd
(:class:`breakglass.throwaway.ssh_gateway.GatewayHarness`)."""

from __future__ import annotations

import pytest

from breakglass.throwaway.servers import SshServer
from breakglass.throwaway.ssh_gateway import LOOPBACK, GatewayHarness  # noqa: F401


@pytest.fixture(scope="session")
def ssh_gateway(ssh_server: SshServer):
    """A running gateway in front of ``ssh_server`` (see :class:`GatewayHarness`)."""
    harness = GatewayHarness(ssh_server).start()
    yield harness
    harness.stop()
