"""Human durations: ``90s``, ``30m``, ``1h30m``, ``2d`` <-> seconds."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")


class DurationError(ValueError):
    """A duration string that cannot be understood."""


def parse_duration(text: str | int | float) -> int:
    """Return whole seconds for ``text`` (``"30m"``, ``"1h30m"``, ``"45"`` = seconds)."""
    if isinstance(text, bool):
        raise DurationError(f"expected a duration like 30m, got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise DurationError(f"duration must not be negative: {text}")
        return int(text)
    s = str(text).strip().lower()
    if s.isdigit():
        return int(s)
    pos, total = 0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise DurationError(f"expected a duration like 90s, 30m, 1h30m or 2d, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``; ``42`` -> ``42s``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
