"""structlog setup: readable in a terminal, JSON lines otherwise (production)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """``fmt`` is ``auto`` (console on a TTY, JSON otherwise), ``console`` or ``json``."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,  # so a command can reconfigure after import
    )


# Logs never go to stdout (commands print tokens and JSON there): until a command
# configures logging, use the readable format on stderr.
if not structlog.is_configured():
    configure_logging("auto")

log = structlog.get_logger("breakglass")
