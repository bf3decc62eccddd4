"""Test servers live in ``proxy.throwaway`` (the demo uses them too); re-exported here."""

from proxy.throwaway import *  # noqa: F403
from proxy.throwaway import PostgresServer, ServerStartError, SshServer, free_port  # noqa: F401
