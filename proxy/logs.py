"""One log stream: structlog, readable in a terminal, JSON lines otherwise (production).

Everything goes to stderr in the one format: our own events, and what libraries log through
the standard ``logging`` module (aiohttp, asyncssh, asyncio, the PostgreSQL state's watcher),
which is rendered by the same processors (with a ``logger`` field) instead of Python's plain
"last resort" lines. Stdout is left to commands (they print tokens and JSON there).

Events never carry a grant, a password, a session token, a cookie or a query string: callers
pass identifiers (users, sessions, jtis, rules, reasons), never secrets.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

#: A handler we installed on the root logger (replaced when logging is configured again).
_HANDLER_ATTR = "_breakglass_handler"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(fmt: str = "auto", level: str = "info", stdlib: bool = True) -> None:
    """``fmt`` is ``auto`` (console on a TTY, JSON otherwise), ``console`` or ``json``.
    ``stdlib``: also render the standard library's log records (commands that run a
    service do; importing this module does not touch the root logger)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        tail: list[Any] = []
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [structlog.processors.format_exc_info]  # a traceback as one string field
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,  # so a command can reconfigure after import
    )
    if not stdlib:
        return
    # The standard library's records, in the same format on the same stream.
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    setattr(handler, _HANDLER_ATTR, True)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_ATTR, False):
            root.removeHandler(h)
    root.addHandler(handler)
    # Libraries log at WARNING and above only: their INFO lines (asyncssh logs every command
    # it sees) belong in recordings, not in the operator's log.
    root.setLevel(max(numeric, logging.WARNING))


class Sampled:
    """At most one log line per key per ``interval`` seconds, each saying how many were
    left out since the last (a flood of refused connections must not flood the log)."""

    def __init__(self, interval: float = 1.0, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.last: dict[Any, float] = {}
        self.skipped: dict[Any, int] = {}

    def due(self, key: Any) -> int | None:
        """None: leave this one out; otherwise log it, with this many left out before it."""
        now = time.monotonic()
        t = self.last.get(key)
        if t is not None and now - t < self.interval:
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return None
        if len(self.last) >= self.max_keys and key not in self.last:
            self.last.clear()  # bounded memory under a scan from many addresses
            self.skipped.clear()
        self.last[key] = now
        return self.skipped.pop(key, 0)


# Logs never go to stdout (commands print tokens and JSON there): until a command
# configures logging, use the readable format on stderr.
if not structlog.is_configured():
    configure_logging("auto", stdlib=False)

log = structlog.get_logger("breakglass")
