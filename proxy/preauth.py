"""Bounds on connections that have not authenticated yet (both listeners share them).

A connection counts from its accept until it authenticates or closes. One source address may
hold ``per_source`` of them, everyone together ``total``; beyond that a new connection is
closed at once, so an idle flood (slowloris) from one address cannot use up the gateway's
file descriptors. ``total`` is further capped to a quarter of the process's descriptor
limit, keeping the rest in reserve for authenticated sessions (client and upstream sockets,
recordings), the admin socket and the audit log.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable

from breakglass.proxy.logs import Sampled, log

#: The soft descriptor limit is raised to the hard limit at start-up, up to this.
NOFILE_TARGET = 1 << 20
#: Fraction of the descriptor limit that unauthenticated connections may use at most.
PREAUTH_SHARE = 4


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_TARGET if hard == resource.RLIM_INFINITY else min(hard, NOFILE_TARGET)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:
            log.warning("nofile.raise_failed", soft=soft, hard=hard, error=str(e))
    return NOFILE_TARGET if soft == resource.RLIM_INFINITY else soft


class PreAuthLimiter:
    """Counts unauthenticated connections per source address and in total."""

    def __init__(self, per_source: int, total: int, nofile: int | None = None) -> None:
        if nofile is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if nofile == resource.RLIM_INFINITY:
                nofile = NOFILE_TARGET
        self.per_source = per_source
        self.total = max(1, min(total, nofile // PREAUTH_SHARE))
        self.by_source: Counter[str] = Counter()
        self.count = 0
        self.refused = 0
        self._sampled = Sampled(1.0)  # one log line per address and cap per second at most
        self.on_refused: Callable[[str], None] | None = None  # counts refusals (metrics)

    def admit(self, source: str) -> str | None:
        """Count a new connection from ``source``; a reason to refuse it, or None."""
        if self.by_source[source] >= self.per_source:
            self._refused(source, "preauth-per-source", self.per_source)
            return "too many connections from your address are still logging in"
        if self.count >= self.total:
            self._refused(source, "preauth-total", self.total)
            return "the gateway has too many connections still logging in; try again shortly"
        self.by_source[source] += 1
        self.count += 1
        return None

    def _refused(self, source: str, reason: str, limit: int) -> None:
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused(reason)
        skipped = self._sampled.due((source, reason))
        if skipped is not None:
            log.info(
                "connection.refused", client=source, reason=reason, limit=limit,
                also_refused=skipped or None,
            )  # fmt: skip

    def release(self, source: str) -> None:
        """The connection authenticated or closed (call once per admitted connection)."""
        n = self.by_source[source] - 1
        if n > 0:
            self.by_source[source] = n
        else:
            self.by_source.pop(source, None)
        self.count = max(0, self.count - 1)
