"""Decode the events of a recording (for replay, export, search). Does NOT verify: use
:func:`recorder.verify.verify_recording` first when it matters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import format as fmt
from .format import RecorderError

__all__ = ["read_events", "RecorderError"]


def read_events(path: Path, *, include_signatures: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the events of the recording at ``path`` as dicts, in file order.

    Every event has ``seq``, ``t`` (float seconds since the epoch), ``kind`` and ``prev``, plus
    its fields; ``data`` of ``input``/``output`` events and every ``{"$b": ...}`` value come back
    as ``bytes``. Checkpoints and the trailer are skipped unless ``include_signatures``.
    An incomplete last line (a recording still being written) is ignored; any other line that
    does not decode raises ``RecorderError``.
    """
    with open(path, "rb") as f:
        for index, raw in enumerate(f):
            if not raw.endswith(b"\n"):
                return  # torn tail of a live (or cut) recording
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise RecorderError(f"{path}: line {index} is not valid JSON: {exc}") from None
            if not isinstance(obj, dict) or "kind" not in obj:
                raise RecorderError(f"{path}: line {index} is not an event")
            if not include_signatures and obj["kind"] in (fmt.CHECKPOINT, fmt.TRAILER):
                continue
            try:
                yield fmt.decode_event(obj)
            except ValueError as exc:
                raise RecorderError(f"{path}: line {index} has bad base64: {exc}") from None
