"""Who acts, for the commands that act on sessions (``kill``, ``review``).

The rule: with a usable grant-service session (``breakglass login``), the command goes through
the service, which checks the session token and the user's rights and acts as that user; the
name comes from the service, never from the stored session file. Otherwise (not logged in, the
session expired or ended, the service unreachable, or, where the caller allows it, the service
cannot see the session) the command acts locally and names the OS account unambiguously as
``os:NAME``, with a warning saying why when a stored session could not be used.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from breakglass.cli.output import CliError

OS_PREFIX = "os:"
SERVICE_TIMEOUT = 20.0  # the service's kill waits up to 3 s for the owning gateway


def os_actor() -> str:
    """The OS account running this command, as an actor: ``os:NAME`` (the real uid's name)."""
    from breakglass.proxy.context import current_actor

    return OS_PREFIX + current_actor()


def _warn(text: str) -> None:
    print(f"breakglass: warning: {text}", file=sys.stderr)


def as_service_user(
    what: str, method: str, path: str, body: Any = None, *, local_if: tuple[int, ...] = ()
) -> Any | None:
    """Call the grant service with the stored session and return its answer, or None when
    there is no usable service identity and the caller should act locally as
    :func:`os_actor` (``what`` names the action for the warning, e.g. "killing it").

    A refusal by the service (403, 409, ...) is raised as a :class:`CliError`: a logged-in
    user the service refuses does not quietly act under another name. ``local_if`` lists
    statuses that also mean "do it locally" (e.g. 404: the service cannot see the session)."""
    from breakglass.cli.service_cmds import Client, ServiceCallFailed, _load_session

    session = _load_session()
    token, server = session.get("token"), session.get("server")
    if not token or not server:
        return None  # never logged in (or logged out): the OS account, no warning
    local = f"{what} as {os_actor()}"
    try:
        expires = float(session.get("expires_at", 0))
    except (TypeError, ValueError):
        expires = 0.0
    if expires <= time.time():
        _warn(f"your grant-service session has expired (`breakglass login`); {local}")
        return None
    try:
        client = Client(str(server), str(token), session.get("ca_file"))
        return client.call(method, path, body, timeout=SERVICE_TIMEOUT)
    except ServiceCallFailed as e:
        if e.status is None or e.status == 401 or e.status in local_if:
            _warn(f"grant service: {e}; {local}")
            return None
        raise
    except CliError as e:  # e.g. a stored plain-HTTP URL to a remote host
        _warn(f"grant service: {e}; {local}")
        return None
