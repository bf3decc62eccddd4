"""Test servers live in ``throwaway.servers`` (the demo uses them too); re-exported here."""

from breakglass.throwaway.servers import *  # noqa: F403
from breakglass.throwaway.servers import PostgresServer, ServerStartError, SshServer, free_port  # noqa: F401
