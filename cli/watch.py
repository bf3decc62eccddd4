"""``breakglass watch SESSION``: follow a live session, read-only.

The gateway writes each event to the session's recording before it forwards anything, so
following the recording shows what the engineer sees as it happens. The watcher asks the
gateway (admin socket op ``watch``) to tell the engineer, which it does with a terminal line
(SSH) or a NOTICE (PostgreSQL), recorded like the gateway's other messages; the watch is an
audit event. Nothing the watcher types reaches the session: stdin is not read.

A session that runs on another gateway sharing this config's PostgreSQL state is watched
through that state (:mod:`proxy.watch_relay`): the owning gateway tells the engineer and
copies the recording, which is followed from a private local copy in the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from breakglass.cli.output import CliError
from breakglass.proxy.config import load_config

POLL = 0.1  # seconds between reads of the recording: well inside the 1 s promise


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "watch",
        help="follow a live session (SSH output, PostgreSQL statements), read-only",
        description="Follow a live session on this gateway as it happens. The engineer is told "
        "that you are watching; the watch is audited. Ctrl-C stops watching (the session "
        "goes on).",
    )
    p.add_argument("session", metavar="SESSION", help="live session id (or a unique part)")
    p.add_argument("--raw", action="store_true", help="SSH: do not filter control sequences")
    p.set_defaults(func=cmd_watch)


async def _live(cfg: Any, ref: str) -> tuple[str, dict[str, Any], Path | None]:
    """(session id, its info, the admin socket of the gateway on this host running it) — or
    no socket when it runs on another gateway sharing this config's PostgreSQL state."""
    from breakglass.proxy.admin import admin_request, admin_sockets, match_session

    local: dict[str, tuple[Path, dict[str, Any]]] = {}
    for sock in admin_sockets(cfg.admin_socket):
        try:
            reply = await admin_request(sock, {"op": "sessions"}, timeout=3.0)
        except (OSError, TimeoutError, ValueError):
            continue
        for s in reply.get("sessions") or []:
            if isinstance(s.get("id"), str):
                local[s["id"]] = (sock, s)
    if local:
        with contextlib.suppress(LookupError):
            sid = match_session(ref, local)
            return sid, local[sid][1], local[sid][0]
    remote = {s["id"]: s for s in await _shared_live(cfg) if isinstance(s.get("id"), str)}
    try:
        sid = match_session(ref, {**remote, **{k: v for k, (_, v) in local.items()}})
    except LookupError as e:
        where = "on this gateway" if not cfg.state_url else "on any gateway sharing the state"
        raise CliError(f"{e} {where} (see `breakglass sessions --live`)") from None
    if sid in local:
        return sid, local[sid][1], local[sid][0]
    return sid, remote[sid], None


async def _shared_live(cfg: Any) -> list[dict[str, Any]]:
    from breakglass.proxy.context import open_state
    from breakglass.proxy.gateway import LIVE_STALE

    if not cfg.state_url:
        return []
    state = open_state(cfg)
    try:
        return await state.live_sessions(time.time() - LIVE_STALE)
    except Exception as e:
        raise CliError(f"cannot read the live sessions from the state database: {e}") from None
    finally:
        await state.close()


def _statement_line(ev: dict[str, Any], pending: dict[int, str]) -> str | None:
    from breakglass.recorder.replay import _one_line

    kind = ev.get("kind")
    if kind == "query":
        n = ev.get("n")
        if isinstance(n, int):
            pending[n] = _one_line(str(ev.get("text", "")), 200)
        return f"> {_one_line(str(ev.get('text', '')))}"
    if kind == "result":
        err = ev.get("error")
        if isinstance(err, dict):
            return f"  ERROR {err.get('sqlstate')} {_one_line(str(err.get('message')))}"
        rows = ev.get("rows")
        dur = ev.get("duration_ms")
        bits = [str(ev.get("tag") or "")]
        if isinstance(rows, int):
            bits.append(f"{rows} rows")
        if isinstance(dur, int | float):
            bits.append(f"{dur:.1f} ms")
        return "  " + "  ".join(b for b in bits if b)
    if kind == "decision" and ev.get("allowed") is False:
        return f"  DENIED {_one_line(str(ev.get('text', '')))}: {ev.get('message') or ''}"
    if kind == "notice":
        return f"  [{ev.get('severity')}] {_one_line(str(ev.get('message', '')))}"
    return None


def cmd_watch(args: argparse.Namespace) -> int:
    from breakglass.cli.review_cmds import _audit_access, os_user
    from breakglass.proxy.admin import admin_request

    cfg = load_config(args.config)
    sid, info, sock = asyncio.run(_live(cfg, args.session))
    actor = os_user()
    where = "" if sock is not None else f" on {info.get('gateway_instance') or 'another gateway'}"
    _audit_access(
        cfg,
        "session.watched",
        sid,
        user=info.get("user"),
        target=info.get("target"),
        gateway=info.get("gateway_instance") if sock is None else None,
    )
    try:
        if sock is not None:
            path = Path(str(info.get("recording") or ""))
            if not path.is_file():
                raise CliError(f"session {sid}: its recording {path} is not readable here")
            reply = asyncio.run(
                admin_request(sock, {"op": "watch", "session": sid, "actor": actor})
            )
            if not reply.get("ok"):
                raise CliError(f"session {sid}: {reply.get('error')}")
            reason = asyncio.run(_follow(path, sid, info, where, args.raw))
        else:
            reason = asyncio.run(_follow_remote(cfg, sid, info, actor, where, args.raw))
    except KeyboardInterrupt:
        return 0
    if reason is not None:
        print(f"session {sid} ended: {reason}", file=sys.stderr)
    return 0


async def _follow_remote(
    cfg: Any, sid: str, info: dict[str, Any], actor: str, where: str, raw: bool
) -> str | None:
    """A session on another gateway: its recording copied through the shared state."""
    from breakglass.proxy.context import open_state
    from breakglass.proxy.watch_relay import RemoteWatch, WatchFailed

    state = open_state(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="breakglass-watch-"))  # 0700: the copy is private
    try:
        rw = RemoteWatch(await state.pool(), sid, actor, "cli", tmp / f"{sid}.rec")
        try:
            await rw.start()
        except WatchFailed as e:
            raise CliError(str(e)) from None
        try:
            return await _follow(rw.path, sid, info, where, raw, pull=rw.pull)
        finally:
            await rw.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        await state.close()


async def _follow(
    path: Path,
    sid: str,
    info: dict[str, Any],
    where: str,
    raw: bool,
    pull: Callable[[], Awaitable[int]] | None = None,
) -> str | None:
    """Print the session as it is recorded (what came before the watch first); the end
    reason, or None if the watch was stopped."""
    from breakglass.recorder.replay import END_RESET
    from breakglass.recorder.tail import Tail
    from breakglass.recorder.term_filter import TerminalFilter

    protocol = info.get("protocol")
    print(
        f"watching session {sid}{where}: {info.get('user')} on {protocol}:{info.get('target')} "
        "(read-only; the engineer has been told; Ctrl-C stops)",
        file=sys.stderr,
    )
    out = sys.stdout.buffer
    screen = None if raw else TerminalFilter()
    pending: dict[int, str] = {}
    tail = Tail(path)
    reason = None
    try:
        while True:
            if pull is not None:
                await pull()
            for ev in tail.poll():
                kind = ev.get("kind")
                if kind == "end":
                    reason = ev.get("reason")
                if protocol == "postgres":
                    line = _statement_line(ev, pending)
                    if line is not None:
                        out.write((line + "\n").encode("utf-8", "replace"))
                elif kind == "output" and isinstance(ev.get("data"), bytes):
                    data = ev["data"] if screen is None else screen.feed(ev["data"])
                    out.write(data)
            out.flush()
            if tail.finished:
                break
            await asyncio.sleep(POLL)
    finally:
        tail.close()
        if protocol != "postgres":
            out.write(END_RESET)
        out.flush()
    return reason
