"""``breakglass watch SESSION``: follow a live session, read-only.

The gateway writes each event to the session's recording before it forwards anything, so
following the recording shows what the engineer sees as it happens. The watcher asks the
gateway (admin socket op ``watch``) to tell the engineer, which it does with a terminal line
(SSH) or a NOTICE (PostgreSQL), recorded like the gateway's other messages; the watch is an
audit event. Nothing the watcher types reaches the session: stdin is not read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from proxy.cli.output import CliError
from proxy.config import load_config

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


async def _live(cfg: Any, ref: str) -> tuple[str, dict[str, Any], Path]:
    from proxy.admin import admin_request, admin_sockets

    matches: list[tuple[Path, dict[str, Any]]] = []
    for sock in admin_sockets(cfg.admin_socket):
        try:
            reply = await admin_request(sock, {"op": "sessions"}, timeout=3.0)
        except (OSError, TimeoutError, ValueError):
            continue
        for s in reply.get("sessions") or []:
            if s.get("id") == ref or str(s.get("id", "")).endswith(ref):
                matches.append((sock, s))
    if not matches:
        raise CliError(f"no live session {ref} on this gateway (see `breakglass sessions --live`)")
    if len(matches) > 1:
        raise CliError(f"{ref} matches {len(matches)} live sessions; give more of the id")
    sock, info = matches[0]
    return info["id"], info, sock


def _statement_line(ev: dict[str, Any], pending: dict[int, str]) -> str | None:
    from recorder.replay import _one_line

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
    from proxy.admin import admin_request
    from proxy.cli.review_cmds import _audit_access, os_user
    from recorder.replay import END_RESET
    from recorder.tail import Tail
    from recorder.term_filter import TerminalFilter

    cfg = load_config(args.config)
    sid, info, sock = asyncio.run(_live(cfg, args.session))
    path = Path(str(info.get("recording") or ""))
    if not path.is_file():
        raise CliError(f"session {sid}: its recording {path} is not readable here")
    actor = os_user()
    _audit_access(cfg, "session.watched", sid, user=info.get("user"), target=info.get("target"))
    reply = asyncio.run(admin_request(sock, {"op": "watch", "session": sid, "actor": actor}))
    if not reply.get("ok"):
        raise CliError(f"session {sid}: {reply.get('error')}")
    protocol = info.get("protocol")
    print(
        f"watching session {sid}: {info.get('user')} on {protocol}:{info.get('target')} "
        "(read-only; the engineer has been told; Ctrl-C stops)",
        file=sys.stderr,
    )
    out = sys.stdout.buffer
    screen = None if args.raw else TerminalFilter()
    pending: dict[int, str] = {}
    tail = Tail(path)
    reason = None
    try:
        # what happened before the watch started, then live
        while True:
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
            time.sleep(POLL)
    except KeyboardInterrupt:
        pass
    finally:
        tail.close()
        if protocol != "postgres":
            out.write(END_RESET)
        out.flush()
    if reason is not None:
        print(f"session {sid} ended: {reason}", file=sys.stderr)
    return 0
