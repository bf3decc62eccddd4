"""HTML of the console's pages. Every value that comes from a recording, the index, the audit
log or the request is escaped with :func:`e`; pages carry no inline script or event handler."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from breakglass.policy.drill import is_drill
from breakglass.policy.grants import utc_text

CSRF_SLOT = "\x00csrf\x00"  # replaced by the CSRF token when the page is sent
PREFIX = "/console/"


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _csrf_field() -> str:
    return f'<input type="hidden" name="csrf" value="{CSRF_SLOT}">'


def layout(title: str, body: str, who: Any, csrf: str) -> str:
    nav = ""
    if who is not None:
        nav = (
            f'<nav><a href="{PREFIX}sessions">Sessions</a> <a href="{PREFIX}review">Review queue</a>'
            f' <span class="who">{e(who.user)}</span>'
            f'<form method="post" action="{PREFIX}logout" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}"><button>Log out</button></form>'
            "</nav>"
        )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)} · breakglass</title>"
        f"<link rel='stylesheet' href='{PREFIX}static/vendor/xterm.css'>"
        f"<link rel='stylesheet' href='{PREFIX}static/console.css'></head><body>"
        f"<header><b>breakglass</b> console {nav}</header><main><h1>{e(title)}</h1>{body}</main>"
        f"<script src='{PREFIX}static/vendor/xterm.js'></script>"
        f"<script src='{PREFIX}static/console.js'></script></body></html>"
    )


def login_form(error: str) -> str:
    err = f'<p class="error" id="login-error">{e(error)}</p>' if error else ""
    return (
        f"{err}<form method='post' action='{PREFIX}login' id='login'>{_csrf_field()}"
        "<label>User <input name='username' id='username' autocomplete='username'></label>"
        "<label>Password <input type='password' name='password' id='password' "
        "autocomplete='current-password'></label>"
        "<label>TOTP code <input name='totp' id='totp' inputmode='numeric' "
        "autocomplete='one-time-code'></label>"
        "<details><summary>or an OIDC ID token</summary>"
        "<label>ID token <input name='id_token' id='id_token'></label></details>"
        "<button id='login-submit'>Log in</button></form>"
    )


def message_page(title: str, text: str, back: str) -> str:
    return f"<p class='error' id='message'>{e(text)}</p><p><a href='{e(back)}'>Back</a></p>"


# ---------------------------------------------------------------------------- sessions


def parse_filters(q: Mapping[str, str]) -> dict[str, Any]:
    from breakglass.cli.review_cmds import parse_when

    out: dict[str, Any] = {}
    for k in ("user", "target"):
        if q.get(k):
            out[k] = q[k][:200]
    for k in ("since", "until"):
        if q.get(k):
            try:
                out[k] = parse_when(q[k])
            except Exception:  # a bad filter shows everything rather than an error page
                pass
    out["denied"] = q.get("denied") == "1"
    out["breakglass"] = q.get("breakglass") == "1"
    if q.get("integrity") in ("ok", "failed", "live"):
        out["integrity"] = q["integrity"]
    return out


def _integrity_badge(s: Any) -> str:
    if s.live:
        return "<span class='badge live'>live</span>"
    if s.integrity == "ok":
        return "<span class='badge ok'>verified</span>"
    return f"<span class='badge bad'>{e(str(s.integrity).upper())}</span>"


def _checkbox(q: Mapping[str, str], name: str, label: str) -> str:
    on = " checked" if q.get(name) == "1" else ""
    return f"<label><input type='checkbox' name='{name}' value='1'{on}> {label}</label>"


def sessions_page(rows: list[Any], q: Mapping[str, str]) -> str:
    integ = q.get("integrity", "")
    opts = "".join(
        f"<option value='{v}'{' selected' if integ == v else ''}>{label}</option>"
        for v, label in (("", "any"), ("ok", "verified"), ("failed", "failed"), ("live", "live"))
    )
    form = (
        "<form method='get' id='filters' class='filters'>"
        f"<label>User <input name='user' value='{e(q.get('user', ''))}'></label>"
        f"<label>Target <input name='target' value='{e(q.get('target', ''))}'></label>"
        f"<label>Since <input name='since' placeholder='1d or 2026-11-20' "
        f"value='{e(q.get('since', ''))}'></label>"
        f"<label>Until <input name='until' value='{e(q.get('until', ''))}'></label>"
        f"{_checkbox(q, 'breakglass', 'break-glass')}{_checkbox(q, 'denied', 'with denials')}"
        f"<label>Integrity <select name='integrity'>{opts}</select></label>"
        "<button id='filter-submit'>Filter</button></form>"
    )
    trs = []
    for s in rows:
        dur = s.duration
        flags = []
        if s.breakglass:
            flags.append("<span class='badge bg'>break-glass</span>")
        if is_drill(s.ticket, s.reason):
            flags.append("<span class='badge drill'>DRILL</span>")
        trs.append(
            "<tr class='session-row'>"
            f"<td><a href='{PREFIX}sessions/{quote(s.session_id)}'>{e(s.session_id)}</a></td>"
            f"<td>{e(utc_text(s.started_at) if s.started_at else '?')}</td>"
            f"<td>{e(s.user)}</td><td>{e(s.protocol)}:{e(s.target)}</td>"
            f"<td>{e(f'{dur:.0f} s' if dur is not None else '')}</td>"
            f"<td>{e('live' if s.live else s.end_reason)}</td>"
            f"<td>{s.statements if s.protocol == 'postgres' else s.commands}</td>"
            f"<td>{s.denials or ''}</td><td>{''.join(flags)}</td><td>{_integrity_badge(s)}</td>"
            "</tr>"
        )
    table = (
        "<table id='sessions'><tr><th>session</th><th>started</th><th>user</th><th>target</th>"
        "<th>duration</th><th>end</th><th>cmds</th><th>denied</th><th></th><th>integrity</th>"
        "</tr>" + "".join(trs) + "</table>"
    )
    return form + (table if rows else "<p id='no-sessions'>No sessions match.</p>")


def marker_label(entry: Any) -> str:
    if entry.what == "command":
        return f"{entry.protocol or 'command'}: {entry.text}"
    if entry.what == "denied":
        return f"DENIED {entry.protocol or ''}: {entry.text}"
    if entry.what == "sftp":
        return f"sftp {entry.text}"
    return f"{entry.what}: {entry.message or entry.text}"


def _meta(s: Any) -> str:
    rows = [
        ("user", s.user),
        ("target", f"{s.protocol}:{s.target} as {s.account}"),
        ("client", s.client),
        ("gateway", s.gateway),
        ("grant", s.grant_jti),
        ("template", s.template),
        ("reason", s.reason),
        ("ticket", s.ticket),
        (
            "break-glass",
            "yes" + (" (DRILL)" if is_drill(s.ticket, s.reason) else "") if s.breakglass else "no",
        ),
        ("started", utc_text(s.started_at) if s.started_at else "?"),
        ("ended", (utc_text(s.ended_at) if s.ended_at else "") + f" {s.end_reason or ''}"),
        ("commands / statements / denials", f"{s.commands} / {s.statements} / {s.denials}"),
    ]
    return (
        "<table class='meta'>"
        + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def session_page(
    s: Any, result: Any, warning: str | None, events: list[Any], force: bool, live: bool = False
) -> str:
    from breakglass.recorder.replay import statement_timeline

    sid = quote(s.session_id)
    if result.ok:
        banner = (
            "<div class='verify ok' id='verify'>Recording VERIFIED: "
            f"{result.events} events, hash chain, {result.checkpoints} signed checkpoints and "
            "signed trailer</div>"
        )
    elif not events:
        banner = (
            f"<div class='verify bad' id='verify'>Recording FAILED verification: {e(warning)}</div>"
            f"<p><a id='force-link' href='{PREFIX}sessions/{sid}?force=1'>Show it anyway "
            "(the content may be forged)</a></p>"
        )
    else:
        cls = "live" if (warning or "").startswith("NOTE") else "bad"
        banner = f"<div class='verify {cls}' id='verify'>{e(warning)}</div>"
    body = banner + _meta(s)
    if not events:
        return body
    f = "?force=1" if force else ""
    if s.protocol == "postgres":
        url = f"{PREFIX}api/sessions/{sid}/timeline{f}" if live else None
        return body + timeline_html(statement_timeline(events), url)
    return body + (
        f"<section id='player' data-cast='{PREFIX}api/sessions/{sid}/cast{f}'>"
        "<div class='controls'><button id='play' type='button'>Play</button>"
        "<label>Speed <select id='speed'><option>0.5</option><option selected>1</option>"
        "<option>2</option><option>4</option><option>8</option><option>16</option></select>"
        "</label><input type='range' id='seek' min='0' max='0' step='any' value='0'>"
        "<span id='clock'>0:00 / 0:00</span>"
        "<label><input type='checkbox' id='show-input'> show typed input</label></div>"
        "<div id='terminal'></div><ol id='markers'></ol></section>"
    )


def timeline_row(x: Any, live: bool = False) -> dict[str, Any]:
    """One timeline entry as plain text fields (the page escapes them; the live view's script
    puts them in the page as text, never HTML)."""
    from breakglass.recorder.replay import _params_text

    err = ""
    if x.error:
        err = f"{x.error.get('sqlstate', '')} {x.error.get('message', '')}"
    if x.what == "denied":
        err = f"rule {x.rule}: {x.message or ''}"
    text = x.text if x.what != "gateway" else x.message
    params = _params_text(x.params) if x.params not in (None, [], "") else ""
    cls = {"denied": "denied", "gateway": "gateway"}.get(x.what, "")
    if x.error:
        cls = "error"
    pending = x.outcome == "no result"  # in a live session: still running
    return {
        "t": f"{x.offset:.3f}",
        "outcome": "running" if pending and live else str(x.outcome),
        "text": "" if text is None else str(text),
        "params": params,
        "rows": "" if x.rows is None else str(x.rows),
        "duration": "" if x.duration_ms is None else f"{x.duration_ms:.1f} ms",
        "error": err,
        "cls": cls,
        "search": " ".join(str(v) for v in (text, params, err, x.outcome)).lower(),
        "pending": pending,
    }


TIMELINE_CELLS = ("t", "outcome", "text", "params", "rows", "duration", "error")


def timeline_html(entries: list[Any], live_url: str | None = None) -> str:
    trs = []
    for x in entries:
        r = timeline_row(x, live_url is not None)
        cells = "".join(
            f"<td><pre>{e(r[k])}</pre></td>" if k == "text" else f"<td>{e(r[k])}</td>"
            for k in TIMELINE_CELLS
        )
        trs.append(f"<tr class='stmt {r['cls']}' data-search='{e(r['search'])}'>{cells}</tr>")
    live = ""
    if live_url is not None:  # the live view's script follows it (see console.js)
        live = (
            f" data-live='{e(live_url)}' data-next='{len(entries)}'"
            f" data-pending='{first_pending(entries)}'"
        )
    status = "<p id='timeline-status' class='live'>LIVE</p>" if live_url is not None else ""
    return (
        f"{status}<label>Search statements <input id='timeline-search' type='search'></label>"
        f"<table id='timeline'{live}><tr><th>s</th><th>outcome</th><th>statement</th>"
        "<th>parameters</th><th>rows</th><th>duration</th><th>error / denial</th></tr>"
        + "".join(trs)
        + "</table>"
    )


def first_pending(entries: list[Any], window: int = 100) -> int:
    """The first of the last ``window`` entries still waiting for its result (or the count):
    a live view asks again from there."""
    start = max(0, len(entries) - window)
    for i in range(start, len(entries)):
        if timeline_row(entries[i])["pending"]:
            return i
    return len(entries)


# ------------------------------------------------------------------------------ review


def review_page(items: list[Any], q: Mapping[str, str]) -> str:
    done = q.get("done")
    head = f"<p class='ok' id='review-done'>Review of {e(done)} recorded.</p>" if done else ""
    link = urlencode({"all": "1"})
    head += f"<p><a href='{PREFIX}review?{link}'>Include reviewed sessions</a></p>"
    if not items:
        return head + "<p id='queue-empty'>No break-glass sessions waiting for review.</p>"
    out = [
        head,
        "<table id='queue'><tr><th>session</th><th>user</th><th>target</th>"
        "<th>started</th><th>status</th><th>ticket / reason</th><th>review</th></tr>",
    ]
    for i in items:
        s = i.session
        sid = quote(s.session_id)
        drill = " <span class='badge drill'>DRILL</span>" if is_drill(s.ticket, s.reason) else ""
        form = ""
        if not i.reviews:
            form = (
                f"<form method='post' action='{PREFIX}review/{sid}' class='review-form'>"
                f"{_csrf_field()}<textarea name='notes' required placeholder='what you checked'>"
                "</textarea><select name='outcome'><option value='ok'>ok</option>"
                "<option value='follow-up'>follow-up</option></select>"
                "<button>Record review</button></form>"
            )
        else:
            last = i.reviews[-1]
            form = f"{e(last.outcome)} by {e(last.reviewer)}: {e(last.notes)}"
        out.append(
            f"<tr class='queue-row' data-session='{e(s.session_id)}'>"
            f"<td><a href='{PREFIX}sessions/{sid}'>{e(s.session_id)}</a>{drill}</td>"
            f"<td>{e(s.user)}</td><td>{e(s.protocol)}:{e(s.target)}</td>"
            f"<td>{e(utc_text(s.started_at) if s.started_at else '?')}</td>"
            f"<td class='status {e(i.status)}'>{e(i.status)}</td>"
            f"<td>{e(s.ticket)} {e(s.reason)}</td><td>{form}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)
