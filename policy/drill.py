"""How a break-glass drill is recognised everywhere (sessions, review, report, alerts).

A drill's grant carries ``ticket = "DRILL-<time>"`` and a reason starting with ``DRILL:``.
Both travel with the grant into the state database, the audit log, every recording's header
and the session index, so every view can tell a drill from a real emergency without a schema
change. The drill runner itself is :mod:`cli.drill_run`.
"""

from __future__ import annotations

import time
from typing import Any

DRILL_TICKET_PREFIX = "DRILL-"
DRILL_REASON_PREFIX = "DRILL:"


def is_drill(ticket: Any = None, reason: Any = None) -> bool:
    """True for a drill's grant, session or alert fields."""
    return (isinstance(ticket, str) and ticket.startswith(DRILL_TICKET_PREFIX)) or (
        isinstance(reason, str) and reason.startswith(DRILL_REASON_PREFIX)
    )


def drill_ticket(now: float | None = None) -> str:
    return DRILL_TICKET_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time()))
