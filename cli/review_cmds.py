"""``breakglass index``, ``sessions`` (data side), ``replay``, ``export``, ``search``, ``review``.

``sessions`` is registered by admin_cmds: it calls :func:`add_sessions_options` on its parser and
uses :func:`cmd_sessions`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from breakglass.cli.output import CliError, emit_json, table
from breakglass.policy.durations import format_duration
from breakglass.policy.grants import utc_text
from breakglass.proxy.config import Config, load_config
from breakglass.proxy.context import trusted_recorder_keys

WHERE = ("input", "output", "commands", "queries")


# ------------------------------------------------------------------------------ parsing helpers

_OFFSET_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_seconds(text: str) -> float:
    """``1m30s``, ``2s``, ``0.5``, ``500ms`` -> seconds (float)."""
    s = text.strip().lower()
    try:
        v = float(s)
    except ValueError:
        pass
    else:
        if v < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
        return v
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    pos, total = 0, 0.0
    for m in _OFFSET_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise argparse.ArgumentTypeError(f"expected a time like 1m30s, 2s, 0.5 or 500ms: {text!r}")
    return total


def parse_when(text: str, now: float | None = None) -> float:
    """``1d`` / ``3h`` (that long ago) or an ISO date/time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    with contextlib.suppress(argparse.ArgumentTypeError):
        return now - parse_seconds(text)
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration ago (1d, 3h) or a date/time (2026-11-20, 2026-11-20T14:00Z): "
            f"{text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _where(text: str) -> list[str]:
    out = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in out if w not in WHERE]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(WHERE)}: {text!r}")
    return out


# ---------------------------------------------------------------------------------- registration


def add_store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        nargs="?",
        const="",
        default=None,
        metavar="s3://BUCKET/PREFIX",
        help="read the recordings and audit log from the object store (default URL: the "
        "config's [recorder.store]); what is read is checked against the off-host anchors",
    )


def add_sessions_options(p: argparse.ArgumentParser) -> None:
    """Options of ``breakglass sessions`` (the parser is created by admin_cmds)."""
    add_store_option(p)
    p.add_argument("--user", help="only sessions of this user")
    p.add_argument("--target", help="only sessions on this target")
    p.add_argument("--since", type=parse_when, help="started since: 1d, 3h, or a date/time")
    p.add_argument("--until", type=parse_when, help="started before: 1d, 3h, or a date/time")
    p.add_argument("--grant", metavar="JTI", help="only sessions under this grant (jti)")
    p.add_argument("--protocol", choices=("ssh", "postgres"))
    p.add_argument("--denied", action="store_true", help="only sessions with denials")
    p.add_argument("--breakglass", action="store_true", help="only break-glass sessions")
    p.add_argument("--live", action="store_true", help="only live sessions")
    p.add_argument("--limit", type=int, default=None, help="at most this many (newest first)")
    if "--json" not in p._option_string_actions:
        p.add_argument("--json", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="update or rebuild the session index from the recordings",
        description="Verify new and changed recordings and update the session index "
        "(`breakglass sessions` does this too). --rebuild empties it and rebuilds it from the "
        "recordings alone (plus the audit log, to notice recordings that were deleted).",
    )
    p.add_argument("--rebuild", action="store_true", help="start from an empty index")
    p.add_argument("--reverify", action="store_true", help="re-verify every recording")
    add_store_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "replay",
        help="play back a session (SSH: terminal; PostgreSQL: statement timeline)",
        description="Verify the recording, then play an SSH session in this terminal in real "
        "time (space pauses, left/right arrows seek 5 s, +/- change speed, q quits), or print "
        "the statement timeline of a PostgreSQL session. A recording that fails verification "
        "is refused unless --force.",
    )
    p.add_argument(
        "session",
        metavar="SESSION",
        help="session id (or unique part), a .rec file, or s3://BUCKET/PREFIX/SESSION",
    )
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--from", dest="start", type=parse_seconds, default=0.0, help="start at 1m30s")
    p.add_argument(
        "--idle-limit", type=parse_seconds, default=None, help="shorten pauses to at most this"
    )
    p.add_argument("--show-input", action="store_true", help="show keystrokes (reverse video)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="play the recorded control sequences unfiltered (by default clipboard, title, "
        "query and device-control sequences are shown as markers, not sent to your terminal)",
    )
    p.add_argument("--timeline", action="store_true", help="print the timeline, do not play")
    p.add_argument("--force", action="store_true", help="replay even if verification fails")
    p.add_argument("--json", action="store_true", help="timeline as JSON (with --timeline)")
    add_store_option(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "export",
        help="export a session as asciicast v2 or JSON lines",
        description="asciicast v2 (play it with `asciinema play FILE`) or JSON lines of the "
        "statements and commands. Refused if the recording fails verification, unless --force.",
    )
    p.add_argument("session", metavar="SESSION")
    p.add_argument("--format", choices=("asciicast", "jsonl"), required=True)
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--include-input", action="store_true", help="asciicast: keystrokes too")
    p.add_argument(
        "--raw",
        action="store_true",
        help="asciicast: keep every recorded control sequence (by default those that are not "
        "drawing are replaced by markers, since asciinema plays them on a terminal)",
    )
    p.add_argument("--force", action="store_true")
    add_store_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "search",
        help="find text in recorded keystrokes, output, commands and statements",
        description="Search every recording (newest first) and print each session and moment "
        "where TEXT appears.",
    )
    p.add_argument("text", metavar="TEXT")
    p.add_argument(
        "--in",
        dest="where",
        type=_where,
        default=list(WHERE),
        help="comma-separated: input, output, commands, queries (default: all)",
    )
    p.add_argument("--since", type=parse_when)
    p.add_argument("--until", type=parse_when)
    p.add_argument("--user")
    p.add_argument("--target")
    p.add_argument("-i", "--ignore-case", action="store_true")
    p.add_argument("--max", type=int, default=20, help="hits per session (default 20)")
    add_store_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "review",
        help="post-incident review of break-glass sessions",
        description="`review list [--overdue] [--all]` shows break-glass sessions waiting for "
        "review; `review SESSION --notes TEXT [--outcome ok|follow-up]` records a review in the "
        "audit log. Nobody reviews their own session.",
    )
    p.add_argument("session", metavar="SESSION|list")
    p.add_argument("--notes", help="what was checked and found")
    p.add_argument("--outcome", choices=("ok", "follow-up"), default="ok")
    p.add_argument("--overdue", action="store_true", help="list: only overdue ones")
    p.add_argument("--all", action="store_true", help="list: reviewed ones too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review)


# ------------------------------------------------------------------------------------ plumbing


def os_user() -> str:
    """Who runs this command (the real uid's name; see ``proxy.context.current_actor``)."""
    from breakglass.proxy.context import current_actor

    return current_actor()


def _open_index(cfg: Config):
    from breakglass.recorder.alerts import index_path
    from breakglass.recorder.index import SqliteIndex

    return SqliteIndex(index_path(cfg))


def _source(cfg: Config, url: str | None):
    """(config to read with, store view or None): the config itself, or with ``--store`` /
    an ``s3://`` URL the store's copy (see :func:`cli.store_cmds.store_source`)."""
    if url is None:
        return cfg, None
    from breakglass.cli.store_cmds import store_source

    rcfg, view, _only = store_source(cfg, url)
    return rcfg, view


def _refresh(cfg: Config, index, *, rebuild=False, reverify=False, with_audit=True, view=None):
    """Update the index, cross-checked with the audit log (which also supplies each session's
    facts, and notices recordings that were deleted); alert (once per session and problem) on
    recordings that fail. ``view``: ``cfg`` reads the store's copy; its verdicts (tampering
    attempts, anchors) are added to the rows."""
    from breakglass.recorder.index import refresh
    from breakglass.recorder.session_check import load_audit_facts

    keys = trusted_recorder_keys(cfg)
    facts = load_audit_facts(cfg.audit_dir, keys) if with_audit else None
    report = refresh(
        index, cfg.recordings_dir, keys, rebuild=rebuild, reverify=reverify, facts=facts
    )
    if view is not None:
        from breakglass.cli.store_cmds import apply_verdicts

        apply_verdicts(index, view, report.failed, facts)
    if report.failed:
        _alert_failures(cfg, index, report.failed)
    return report


def _alert_failures(cfg: Config, index, failed) -> None:
    from breakglass.recorder import alerts

    try:
        settings = alerts.alert_settings(cfg)
    except Exception as e:  # a broken [alerts] section must not hide the listing
        print(f"breakglass: warning: alerts not sent: {e}", file=sys.stderr)
        return
    if not settings.webhooks:
        return
    alerter = alerts.Alerter(settings, gateway=cfg.gateway_name)
    try:
        for s in failed:
            if index.mark_once(f"{alerts.VERIFY_FAILED}:{s.session_id}:{s.integrity}"):
                alerter.notify(
                    alerts.VERIFY_FAILED,
                    session=s.session_id,
                    user=s.user,
                    target=s.target,
                    problem=s.integrity,
                )
    finally:
        alerter.close(timeout=10)


def fetch_live(cfg: Config) -> list[dict[str, Any]] | None:
    """Live sessions from the gateway (every worker) running with this config, or None."""
    from breakglass.proxy.admin import admin_request, admin_sockets

    sessions: list[dict[str, Any]] | None = None
    for path in admin_sockets(cfg.admin_socket):
        try:
            reply = asyncio.run(admin_request(path, {"op": "sessions"}, timeout=3.0))
        except (OSError, TimeoutError, ValueError):
            continue
        if reply.get("ok"):
            sessions = (sessions or []) + (reply.get("sessions") or [])
    from breakglass.cli.admin_cmds import shared_live  # other gateways sharing the state

    remote = shared_live(cfg)
    if remote:
        seen = {s["id"] for s in sessions or []}
        sessions = (sessions or []) + [s for s in remote if s["id"] not in seen]
    return sessions


def _resolve(cfg: Config, index, ref: str, view=None):
    """(summary or None, path) for a session id / unique part, or a recording file."""
    from breakglass.recorder.index import SessionNotFound, summarize_recording

    p = Path(ref)
    if view is None and ref.endswith(".rec") and p.is_file():
        return summarize_recording(p, trusted_recorder_keys(cfg)), p
    _refresh(cfg, index, view=view)
    try:
        s = index.resolve(ref)
    except SessionNotFound as e:
        raise CliError(str(e)) from None
    return s, Path(s.path)


def _audit_access(cfg: Config, what: str, session: str | None, **fields: Any) -> None:
    """Record that somebody looked at a recording (best effort: warn if it cannot be written)."""
    from breakglass.proxy.context import open_audit

    try:
        audit = open_audit(cfg)
    except Exception as e:
        print(f"breakglass: warning: cannot write the audit log ({e})", file=sys.stderr)
        return
    try:
        audit.append(what, session=session, actor=os_user(), **fields)
    except Exception as e:
        print(f"breakglass: warning: cannot write the audit log ({e})", file=sys.stderr)
    finally:
        audit.close()


def _integrity_text(s) -> str:
    from breakglass.recorder.index import LIVE, OK

    if s.integrity == OK:
        return "ok"
    if s.integrity == LIVE:
        return "live"
    return s.integrity.upper()


# ------------------------------------------------------------------------------------ commands


def _locate(cfg: Config, ref: str, store: str | None):
    """(summary or None, path, store view or None) for SESSION: in the local spool, or in the
    store (``--store``, an ``s3://.../SESSION`` reference, or ``[recorder.store]`` when the
    local spool does not hold that recording, e.g. it was deleted after its upload)."""
    if ref.startswith("s3://"):
        from breakglass.cli.store_cmds import store_for, store_source

        if store_for(ref, cfg)[1] is None:
            raise CliError(f"{ref}: name a session: s3://BUCKET/PREFIX/SESSION")
        rcfg, view, only = store_source(cfg, ref)
        with _open_index(rcfg) as index:
            return (*_resolve(rcfg, index, only, view), view)
    if store is None:
        try:
            with _open_index(cfg) as index:
                summary, path = _resolve(cfg, index, ref)
            if cfg.store is None or path.is_file():
                return summary, path, None
        except CliError:
            if cfg.store is None:
                raise
        store = cfg.store.url
        print(
            f"breakglass: {ref}: not in the local spool ({cfg.recordings_dir}); reading it "
            f"from {store}",
            file=sys.stderr,
        )
    rcfg, view = _source(cfg, store)
    with _open_index(rcfg) as index:
        return (*_resolve(rcfg, index, ref, view), view)


def _verified_recording(cfg: Config, ref: str, force: bool, store: str | None = None):
    """Find SESSION, verify it (refused with exit 3 unless --force, then a loud warning),
    and return (session id, verify result, events). From the store, its verdict (tampering
    attempts, gaps, off-host anchors) counts as much as the recording's own chain."""
    from breakglass.recorder.index import LIVE
    from breakglass.recorder.replay import IntegrityRefused, check_integrity, load_events
    from breakglass.recorder.verify import TRUNCATED

    summary, path, view = _locate(cfg, ref, store)
    # a session still running, as the store holds it: up to a recent checkpoint (see
    # cli.store_cmds.apply_verdicts); shown like a local live recording
    running = view is not None and summary is not None and summary.integrity == LIVE
    try:
        result, warning = check_integrity(path, trusted_recorder_keys(cfg), force=force)
    except IntegrityRefused as e:
        if not (running and e.result.problem == TRUNCATED):
            raise CliError(str(e), code=3) from None
        result, warning = e.result, f"NOTE: {summary.problem_message}"
    if warning:
        print(warning, file=sys.stderr)
    verdict = view.verdict(path.stem) if view is not None else None
    if verdict is not None and not verdict.store_ok and not running:
        text = "; ".join(verdict.messages)
        if not force:
            raise CliError(
                f"recording {path.stem} in {view.url} FAILED verification against the store "
                f"({verdict.problem}): {text}. Refusing to use it; pass --force to override "
                "(the content may be forged).",
                code=3,
            )
        bar = "!" * 78
        print(
            f"{bar}\n!! WARNING: THIS RECORDING FAILED VERIFICATION AGAINST THE STORE "
            f"({verdict.problem}).\n!! {text}\n!! Shown because of --force.\n{bar}",
            file=sys.stderr,
        )
        if result.ok:
            result.problem = verdict.problem
    return (summary.session_id if summary else path.stem), result, load_events(path)


def cmd_index(args: argparse.Namespace) -> int:
    cfg, view = _source(load_config(args.config), args.store)
    with _open_index(cfg) as index:
        report = _refresh(
            cfg, index, rebuild=args.rebuild, reverify=args.reverify, with_audit=True, view=view
        )
        total = len(index.all())
    if args.json:
        emit_json({**report.to_dict(), "sessions": total})
    else:
        print(
            f"{total} sessions indexed ({report.verified} verified now, {report.scanned} "
            f"recordings {'in ' + view.url if view else 'on disk'}, {report.missing} missing)"
        )
        for s in report.failed or []:
            print(f"FAIL  {s.session_id}  {s.integrity}: {s.problem_message}")
    tampered = view is not None and any(not v.store_ok for v in view.problems)
    return 1 if report.failed or tampered else 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """``breakglass sessions``: finished and live sessions, newest first."""
    from breakglass.recorder.index import SessionFilter, merge_live

    cfg = load_config(args.config)
    rcfg, view = _source(cfg, getattr(args, "store", None))
    flt = SessionFilter(
        user=args.user,
        target=args.target,
        since=args.since,
        until=args.until,
        grant=args.grant,
        protocol=getattr(args, "protocol", None),
        denied=args.denied,
        breakglass=args.breakglass,
        live=False,  # liveness is decided after asking the gateway
    )
    with _open_index(rcfg) as index:
        _refresh(rcfg, index, with_audit=True, view=view)
        rows = index.query(flt)
    live = fetch_live(cfg)
    flt.live = args.live
    rows = merge_live(rows, live, flt=flt, gateway=cfg.gateway_name)
    if args.live:
        rows = [r for r in rows if r.live]
    if args.limit is not None:
        rows = rows[: args.limit]
    if args.json:
        emit_json([r.to_dict() for r in rows])
        return 0
    if live is None:
        print(
            "(no gateway answering on the admin socket: live status from the files)",
            file=sys.stderr,
        )
    if not rows:
        print("no sessions match")
        return 0
    out = []
    for r in rows:
        dur = r.duration
        out.append(
            (
                r.session_id,
                utc_text(r.started_at) if r.started_at else "?",
                r.user or "?",
                f"{r.protocol or '?'}:{r.target or '?'}",
                format_duration(dur) if dur is not None else "",
                "live" if r.live else (r.end_reason or ""),
                r.statements if r.protocol == "postgres" else r.commands,
                r.denials or "",
                "yes" if r.breakglass else "",
                _integrity_text(r),
            )
        )
    print(
        table(
            out,
            (
                "SESSION",
                "STARTED",
                "USER",
                "TARGET",
                "DURATION",
                "END",
                "CMDS",
                "DENIED",
                "BREAKGLASS",
                "INTEGRITY",
            ),
        )
    )
    bad = [r for r in rows if r.integrity not in ("ok", "live")]
    for r in bad:
        print(f"! {r.session_id}: {r.problem_message}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from breakglass.recorder.replay import (
        Player,
        TerminalKeys,
        recorded_size,
        render_timeline,
        session_timeline,
        terminal_frames,
    )

    if args.speed <= 0:
        raise CliError("--speed must be positive")
    cfg = load_config(args.config)
    sid, result, events = _verified_recording(cfg, args.session, args.force, args.store)
    _audit_access(cfg, "recording.replayed", sid, integrity=result.problem or "ok")
    header = events[0] if events else {}
    protocol = header.get("protocol")
    if protocol == "postgres" or args.timeline:
        tl = session_timeline(events)
        if args.json:
            emit_json([e.to_dict() for e in tl])
        else:
            print(
                f"session {sid}  {header.get('user')} on {protocol}:{header.get('target')} as "
                f"{header.get('account')}  started {utc_text(header.get('t', 0))}"
            )
            print(render_timeline(tl))
        return 0
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    viewer = os.get_terminal_size(sys.stdout.fileno()) if sys.stdout.isatty() else None
    frames = terminal_frames(
        events,
        show_input=args.show_input,
        idle_limit=args.idle_limit,
        raw=args.raw,
        viewer_rows=viewer.lines if viewer else None,
    )
    if args.start and (not frames or args.start > frames[-1].offset):
        last = frames[-1].offset if frames else 0.0
        raise CliError(
            f"--from {args.start:g}s is past the end of session {sid}: its last output is at "
            f"{last:.1f}s (nothing to play)"
        )
    out = sys.stdout.buffer
    keys = TerminalKeys(sys.stdin.fileno()) if interactive else None
    print(
        f"replaying session {sid}: {header.get('user')} on {header.get('target')} "
        f"({len(frames)} frames){'  [space: pause, arrows: seek, q: quit]' if keys else ''}",
        file=sys.stderr,
    )
    size = recorded_size(events)
    if viewer and size and (viewer.columns < size[0] or viewer.lines < size[1]):
        print(
            f"note: recorded at {size[0]}x{size[1]}, this terminal is "
            f"{viewer.columns}x{viewer.lines}: enlarge it to see full-screen programs as the "
            "engineer did",
            file=sys.stderr,
        )
    player = Player(
        frames,
        out,
        speed=args.speed,
        keys=keys,
        on_status=lambda s: print(f"\r\n[{s}]\r", file=sys.stderr) if keys else None,
        on_progress=_title_clock(sid) if keys else None,
    )
    try:
        if args.start:
            player.seek_offset(args.start)
        player.play()
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            player.finish()
            if keys is not None:
                out.write(b"\x1b[23;0t")  # the terminal's own title back
        if keys is not None:
            keys.close()
        with contextlib.suppress(BrokenPipeError):
            out.flush()
    return 0


def _title_clock(sid: str):
    """The replay clock and a progress bar, in the terminal's title (the screen belongs to the
    recording). The title is pushed first and restored when replay ends."""
    from breakglass.recorder.replay import progress_text

    pushed = False

    def show(pos: float, length: float) -> None:
        nonlocal pushed
        title = f"breakglass replay {sid[:12]}  {progress_text(pos, length)}"
        data = ("" if pushed else "\x1b[22;0t") + f"\x1b]2;{title}\x07"
        pushed = True
        sys.stdout.buffer.write(data.encode("utf-8", "replace"))
        sys.stdout.buffer.flush()

    return show


def cmd_export(args: argparse.Namespace) -> int:
    from breakglass.recorder.export import asciicast_lines, jsonl_lines

    cfg = load_config(args.config)
    sid, result, events = _verified_recording(cfg, args.session, args.force, args.store)
    lines = (
        asciicast_lines(events, include_input=args.include_input, raw=args.raw)
        if args.format == "asciicast"
        else jsonl_lines(events)
    )
    if args.output:
        import os

        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
    else:
        for line in lines:
            sys.stdout.write(line + "\n")
    _audit_access(
        cfg, "recording.exported", sid, format=args.format, integrity=result.problem or "ok"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from breakglass.recorder.index import SessionFilter
    from breakglass.recorder.search import search_recording

    if not args.text:
        raise CliError("nothing to search for")
    cfg = load_config(args.config)
    rcfg, view = _source(cfg, args.store)
    with _open_index(rcfg) as index:
        _refresh(rcfg, index, view=view)
        rows = index.query(
            SessionFilter(user=args.user, target=args.target, since=args.since, until=args.until)
        )
    results = []
    for s in rows:
        if not Path(s.path).is_file():
            continue
        hits = search_recording(
            Path(s.path),
            args.text,
            where=args.where,
            ignore_case=args.ignore_case,
            max_hits=args.max,
            session_id=s.session_id,
        )
        if hits:
            results.append((s, hits))
    import hashlib

    # who searched, where, and how many sessions matched; the search text itself may be a
    # secret (a leaked password being looked for), so only its hash is kept
    _audit_access(
        cfg,
        "recording.searched",
        None,
        **({"store": view.url} if view is not None else {}),
        text_sha256=hashlib.sha256(args.text.encode("utf-8", "surrogateescape")).hexdigest(),
        where=",".join(args.where),
        matched=[s.session_id for s, _ in results][:100],
    )
    if args.json:
        emit_json(
            [
                {
                    "session": s.session_id,
                    "user": s.user,
                    "target": s.target,
                    "started_at": s.started_at,
                    "integrity": s.integrity,
                    "hits": [h.to_dict() for h in hits],
                }
                for s, hits in results
            ]
        )
        return 0 if results else 1
    for s, hits in results:
        flag = "" if s.integrity in ("ok", "live") else f"  [INTEGRITY: {s.integrity.upper()}]"
        print(
            f"{s.session_id}  {s.user} on {s.protocol}:{s.target}  "
            f"{utc_text(s.started_at) if s.started_at else '?'}{flag}"
        )
        for h in hits:
            m, sec = divmod(h.offset, 60)
            mark = " DENIED" if h.denied else ""
            print(f"  +{int(m)}m{sec:06.3f}s  {h.where:<8} event {h.seq}{mark}  {h.context}")
    if not results:
        print("no matches")
        return 1
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    if args.session == "list":
        return _review_list(args)
    return _review_one(args)


def _review_list(args: argparse.Namespace) -> int:
    from breakglass.recorder.alerts import review_settings
    from breakglass.recorder.index import SessionFilter
    from breakglass.recorder.review import load_reviews, review_queue

    cfg = load_config(args.config)
    deadline = review_settings(cfg).deadline
    keys = trusted_recorder_keys(cfg)
    with _open_index(cfg) as index:
        _refresh(cfg, index, with_audit=True)
        rows = index.query(SessionFilter(breakglass=True))
    reviews = load_reviews(cfg.audit_dir, keys)
    items = review_queue(
        rows, reviews, deadline=deadline, overdue_only=args.overdue, include_reviewed=args.all
    )
    for seg in reviews.untrusted:
        print(
            f"breakglass: warning: ignored reviews in audit segment {seg}: it fails verification",
            file=sys.stderr,
        )
    if args.json:
        emit_json([i.to_dict() for i in items])
        return 0
    if not items:
        print("no break-glass sessions waiting for review" if not args.all else "none")
        return 0
    now = time.time()
    out = []
    for i in items:
        s = i.session
        due = (
            f"overdue {format_duration(now - i.due_at)}"
            if i.status == "overdue"
            else (f"in {format_duration(i.due_at - now)}" if i.status == "pending" else "")
        )
        last = i.reviews[-1] if i.reviews else None
        out.append(
            (
                s.session_id,
                s.user or "?",
                f"{s.protocol}:{s.target}",
                utc_text(s.started_at) if s.started_at else "?",
                i.status,
                due or (f"by {last.reviewer}" if last else ""),
                s.ticket or "",
                (s.reason or "")[:40],
                _integrity_text(s),
            )
        )
    print(
        table(
            out,
            (
                "SESSION",
                "USER",
                "TARGET",
                "STARTED",
                "STATUS",
                "DUE",
                "TICKET",
                "REASON",
                "INTEGRITY",
            ),
        )
    )
    return 0


def _review_one(args: argparse.Namespace) -> int:
    """Logged in to the grant service: recorded by the service, as the service user (a
    console reviewer). Otherwise recorded here, as the OS account (``os:NAME``)."""
    import urllib.parse

    from breakglass.cli.acting import as_service_user, os_actor
    from breakglass.proxy.context import open_audit
    from breakglass.recorder.review import ReviewRefused, check_review, record_review

    if args.notes is None:
        raise CliError("a review needs --notes TEXT (or use `breakglass review list`)")
    if not args.session.strip():
        raise CliError("no session id given")
    path = f"/v1/sessions/{urllib.parse.quote(args.session.strip(), safe='')}/review"
    body = {"outcome": args.outcome, "notes": args.notes}
    done = as_service_user("recording the review", "POST", path, body, local_if=(404,))
    if done is None:
        cfg = load_config(args.config)
        summary, _path, _view = _locate(cfg, args.session, None)  # local spool, else the store
        reviewer = os_actor()
        if summary is not None and summary.integrity not in ("ok", "live"):
            with _open_index(cfg) as index:  # the reviewer found it: alert (once)
                _alert_failures(cfg, index, [summary])
        try:
            check_review(summary, reviewer, args.outcome, args.notes)
        except ReviewRefused as e:
            raise CliError(str(e)) from None
        audit = open_audit(cfg)
        try:
            record_review(audit, summary, reviewer, args.outcome, args.notes)
        except ReviewRefused as e:
            raise CliError(str(e)) from None
        finally:
            audit.close()
        done = {"session": summary.session_id, "reviewer": reviewer, "outcome": args.outcome}
    if args.json:
        emit_json(done)
    else:
        print(f"reviewed {done['session']} ({done['outcome']}) by {done['reviewer']}")
    return 0
