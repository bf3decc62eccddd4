"""Follow a recording while it is written (``breakglass watch``). Does not verify: what follows
the last signed checkpoint of a live recording is not signed yet.

:class:`Tail` keeps its place in the file; each :meth:`Tail.poll` returns the events that
were completed since the last call (a torn last line or frame is read again next time).

Must not import proxy/ or policy/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import format as fmt
from .format import RecorderError

__all__ = ["Tail"]


class Tail:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "rb")  # noqa: SIM115 - kept open while following
        self._framed: bool | None = None
        self.finished = False  # the trailer (or end event) was read

    def close(self) -> None:
        self._f.close()

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            start = self._f.tell()
            raw = self._f.readline()
            if not raw.endswith(b"\n"):
                self._f.seek(start)
                return out
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise RecorderError(f"{self.path}: not valid JSON at byte {start}: {e}") from None
            if not isinstance(obj, dict) or "kind" not in obj:
                raise RecorderError(f"{self.path}: not an event at byte {start}")
            if self._framed is None:
                self._framed = obj.get("format") != fmt.FORMAT_V1
            payload = None
            if self._framed:
                size = fmt.frame_length(obj)
                if size is not None:
                    payload = self._f.read(size)
                    if len(payload) < size:
                        self._f.seek(start)
                        return out
            if obj["kind"] == fmt.TRAILER:
                self.finished = True
                continue
            if obj["kind"] == fmt.CHECKPOINT:
                continue
            ev = fmt.decode_event(obj, payload)
            if ev.get("kind") == fmt.END:
                self.finished = True
            out.append(ev)
