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
    its fields; ``data`` of ``input``/``output`` events (base64 in the line, or a raw frame
    after it) and every ``{"$b": ...}`` value come back as ``bytes``. Checkpoints and the
    trailer are skipped unless ``include_signatures``.
    An incomplete last event (a recording still being written) is ignored; any other event
    that does not decode raises ``RecorderError``.
    """
    framed = False
    with open(path, "rb") as f:
        index = 0
        while raw := f.readline():
            if not raw.endswith(b"\n"):
                return  # torn tail of a live (or cut) recording
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                raise RecorderError(f"{path}: line {index} is not valid JSON: {exc}") from None
            if not isinstance(obj, dict) or "kind" not in obj:
                raise RecorderError(f"{path}: line {index} is not an event")
            if index == 0:
                framed = obj.get("format") != fmt.FORMAT_V1
            index += 1
            payload = None
            if framed:
                try:
                    size = fmt.frame_length(obj)
                except ValueError as exc:
                    raise RecorderError(f"{path}: event {index - 1}: {exc}") from None
                if size is not None:
                    payload = f.read(size)
                    if len(payload) < size:
                        return  # torn frame at the tail
            if not include_signatures and obj["kind"] in (fmt.CHECKPOINT, fmt.TRAILER):
                continue
            try:
                yield fmt.decode_event(obj, payload)
            except ValueError as exc:
                raise RecorderError(f"{path}: line {index - 1} has bad base64: {exc}") from None
