"""``breakglass drill`` and ``breakglass watch`` (the security team's console commands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from breakglass.cli import drill_run, watch

    drill_run.register(sub)
    watch.register(sub)
