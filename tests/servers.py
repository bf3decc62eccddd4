"""Test servers live in ``throwaway.servers`` (the demo uses them too); re-exported here."""

from throwaway.servers import *  # noqa: F403
from throwaway.servers import PostgresServer, ServerStartError, SshServer, free_port  # noqa: F401
