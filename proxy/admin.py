"""Local admin socket: ``breakglass sessions`` and ``breakglass kill`` talk to the gateway here.

One JSON object per line each way. Requests: ``{"op": "sessions"}``,
``{"op": "kill", "session": ID, "actor": USER, "reason": TEXT}``, ``{"op": "alerts"}``.
The socket is created mode 0600: only the gateway's OS user may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from breakglass.proxy.logs import log
from breakglass.proxy.sessions import SessionRegistry

MAX_REQUEST = 64 * 1024


async def _handle(
    registry: SessionRegistry,
    on_cancel: Any,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        if len(line) > MAX_REQUEST:
            reply: dict[str, Any] = {"ok": False, "error": "request too large"}
        else:
            reply = await _dispatch(registry, on_cancel, line)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        reply = {"ok": False, "error": "bad request"}
    try:
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await writer.drain()
    finally:
        writer.close()


MIN_PARTIAL_ID = 4


def match_session(ref: str, ids: Any) -> str:
    """The one id that ``ref`` names: the whole id, or a unique prefix or suffix of at least
    four characters (as ``breakglass replay`` and the index resolve them). An empty or
    ambiguous reference is refused: it must never pick a session by accident."""
    ref = ref.strip() if isinstance(ref, str) else ""
    if not ref:
        raise LookupError("no session id given")
    ids = list(ids)
    if ref in ids:
        return ref
    if len(ref) < MIN_PARTIAL_ID:
        raise LookupError(f"no live session {ref} (give the whole id or at least 4 characters)")
    matches = [i for i in ids if i.startswith(ref) or i.endswith(ref)]
    if not matches:
        raise LookupError(f"no live session {ref}")
    if len(matches) > 1:
        raise LookupError(f"session {ref} is ambiguous ({len(matches)} live sessions match)")
    return matches[0]


async def _dispatch(registry: SessionRegistry, on_cancel: Any, line: bytes) -> dict[str, Any]:
    try:
        req = json.loads(line)
        op = req.get("op")
    except (ValueError, AttributeError):
        return {"ok": False, "error": "request is not a JSON object"}
    if op == "sessions":
        return {"ok": True, "sessions": [s.info() for s in registry.sessions.values()]}
    if op == "kill":
        sid, actor = req.get("session"), req.get("actor") or "admin"
        if not isinstance(sid, str):
            return {"ok": False, "error": "kill needs a session id"}
        try:
            match = match_session(sid, registry.sessions)
        except LookupError as e:
            return {"ok": False, "error": str(e), "found": False}
        await registry.kill(match, str(actor), str(req.get("reason") or ""))
        return {"ok": True, "killed": match}
    if op == "watch":  # someone follows the session: the engineer is told, within a second
        sid, actor = req.get("session"), str(req.get("actor") or "someone")[:100]
        s = registry.sessions.get(sid) if isinstance(sid, str) else None
        if s is None:
            return {"ok": False, "error": f"no live session {sid}"}
        from breakglass.proxy.watch_relay import tell_engineer

        tell_engineer(s, actor)
        return {"ok": True, "recording": s.info().get("recording")}
    if op == "alerts":  # the latest alerts and their delivery counts (used by drills)
        from breakglass.recorder import alerts

        a = alerts.current()
        recent = [dict(r) for r in a.recent] if a is not None else []
        return {"ok": True, "enabled": bool(a and a.enabled), "alerts": recent}
    if op == "cancel" and on_cancel is not None:  # a CancelRequest another worker received
        try:
            pid, key = int(req["pid"]), bytes.fromhex(str(req["key"]))
        except (KeyError, ValueError, TypeError):
            return {"ok": False, "error": "cancel needs pid and key"}
        return {"ok": True, "cancelled": await on_cancel(pid, key)}
    return {"ok": False, "error": f"unknown op {op!r}"}


async def start_admin_server(
    path: Path, registry: SessionRegistry, on_cancel: Any = None
) -> asyncio.AbstractServer:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _handle(registry, on_cancel, r, w), path=str(path)
        )
    finally:
        os.umask(old)
    log.info("admin.listening", socket=str(path))
    return server


async def admin_request(
    path: Path, request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """Send one request to a running gateway's admin socket."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    return json.loads(line)


def worker_socket(base: Path, worker: int, workers: int) -> Path:
    """The admin socket of one gateway worker (``admin.sock``, or ``admin.sock.N`` with workers)."""
    return base if workers == 1 else base.with_name(f"{base.name}.{worker}")


def admin_sockets(base: Path) -> list[Path]:
    """Every admin socket of the gateway configured with ``base``: one per worker."""
    found = [base] if base.exists() else []
    found += sorted(p for p in base.parent.glob(base.name + ".*") if p.suffix[1:].isdigit())
    return found
