"""The access recertification report: who had what access, when, why, approved by whom, and
whether it was used.

One row per grant issued in the period, built from three sources that each hold part of it:

- the state database: grants issued (subject, targets, template, times, reason, ticket,
  approvers, break-glass) and revocations;
- the audit log: ``grant.issued`` events (a grant the state database lacks, e.g. after a state
  move, still appears) and post-incident reviews;
- the session index (refreshed and verified from the recordings): sessions per grant with
  their statements, commands, denials and integrity.

Privileges come from the grant's template in the current config (the grant was signed from it).
:func:`build_report` is pure (inputs in, a :class:`Report` out); rendering is separate.
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from breakglass.policy.drill import is_drill
from breakglass.policy.grants import utc_text
from breakglass.policy.state import IssuedGrant, Revocation
from breakglass.policy.templates import Template
from breakglass.recorder.index import LIVE, OK, SessionSummary
from breakglass.recorder.review import ReviewSet

FORMATS = ("table", "csv", "json", "html")
#: More break-glass grants than this for one user in the period is flagged.
REPEATED_BREAKGLASS = 1

NEVER_USED = "never-used"
REPEATED = "repeated-breakglass"
OVERDUE = "review-overdue"
INTEGRITY = "integrity-failed"
DRILL = "drill"


@dataclass
class GrantRow:
    jti: str
    user: str
    targets: list[str]
    template: str | None
    privileges: str
    issued_at: float
    expires_at: float
    status: str  # active | expired | revoked
    ended_at: float | None
    revoked_by: str | None
    revoke_reason: str | None
    reason: str
    ticket: str | None
    approved_by: list[str]
    breakglass: bool
    drill: bool
    sessions: list[str] = field(default_factory=list)
    statements: int = 0
    commands: int = 0
    denials: int = 0
    review: str = ""  # break-glass: ok | follow-up | pending | overdue (+ reviewer)
    integrity_failed: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def approval(self) -> str:
        if self.breakglass:
            return "BREAK-GLASS" + (" (drill)" if self.drill else "")
        return ", ".join(self.approved_by) or "(none recorded)"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["approval"] = self.approval
        return d


@dataclass
class Summary:
    key: str
    grants: int = 0
    breakglass: int = 0
    drills: int = 0
    never_used: int = 0
    sessions: int = 0
    statements: int = 0
    commands: int = 0
    denials: int = 0
    overdue_reviews: int = 0
    users: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["users"] = sorted(self.users)
        return d


@dataclass
class Report:
    since: float
    until: float
    generated_at: float
    rows: list[GrantRow]
    by_user: list[Summary]
    by_target: list[Summary]
    warnings: list[str]
    filters: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "generated_at": self.generated_at,
            "filters": self.filters,
            "warnings": self.warnings,
            "grants": [r.to_dict() for r in self.rows],
            "by_user": [s.to_dict() for s in self.by_user],
            "by_target": [s.to_dict() for s in self.by_target],
        }


def describe_privileges(template: Template | None, targets: list[dict[str, Any]]) -> str:
    """``postgres read-only on orders,customers`` / ``ssh commands: systemctl status *``."""
    if template is None:
        return "(template not in the current config)"
    kinds = {t.get("type") for t in targets}
    bits = []
    if "postgres" in kinds:
        tables = ",".join(template.sql.tables) if template.sql.tables else "all tables"
        bits.append(f"sql {template.sql.mode} on {tables}")
    if "ssh" in kinds:
        ssh = template.ssh
        if ssh.shell:
            bits.append("ssh shell")
        if ssh.commands:
            bits.append("ssh commands: " + "; ".join(ssh.commands))
        bits += [f"ssh {x}" for x in ("forwarding", "sftp") if getattr(ssh, x)]
        if not ssh.shell and not ssh.commands:
            bits.append("ssh (no commands)")
    return " | ".join(bits) or "(none)"


def _grant_from_audit(e: Mapping[str, Any]) -> IssuedGrant | None:
    try:
        return IssuedGrant(
            jti=str(e["jti"]),
            subject=str(e["subject"]),
            template=e.get("template"),
            targets=list(e.get("targets") or []),
            issued_at=float(e["t"]),
            expires_at=float(e["expires_at"]),
            reason=str(e.get("reason") or ""),
            ticket=e.get("ticket"),
            breakglass=bool(e.get("breakglass")),
            approvers=list(e.get("approvers") or []),
        )
    except (KeyError, TypeError, ValueError):
        return None


def build_report(
    *,
    grants: Iterable[IssuedGrant],
    audit_grants: Iterable[Mapping[str, Any]],
    revocations: Mapping[str, Revocation],
    sessions: Iterable[SessionSummary],
    reviews: ReviewSet,
    templates: Mapping[str, Template],
    since: float,
    until: float,
    review_deadline: float,
    user: str | None = None,
    target: str | None = None,
    now: float | None = None,
) -> Report:
    now = time.time() if now is None else now
    by_jti: dict[str, IssuedGrant] = {g.jti: g for g in grants}
    for e in audit_grants:
        g = _grant_from_audit(e)
        if g is not None and g.jti not in by_jti:
            by_jti[g.jti] = g
    sessions_by_jti: dict[str, list[SessionSummary]] = {}
    for s in sessions:
        if s.grant_jti:
            sessions_by_jti.setdefault(s.grant_jti, []).append(s)

    rows: list[GrantRow] = []
    for g in sorted(by_jti.values(), key=lambda g: (g.issued_at, g.jti)):
        if not since <= g.issued_at < until:
            continue
        names = [str(t.get("name")) for t in g.targets]
        if user and g.subject != user:
            continue
        if target and target not in names:
            continue
        rev = revocations.get(g.jti)
        if rev is not None and rev.revoked_at < g.expires_at:
            status, ended = "revoked", rev.revoked_at
        elif g.expires_at <= now:
            status, ended = "expired", g.expires_at
        else:
            status, ended = "active", None
        row = GrantRow(
            jti=g.jti,
            user=g.subject,
            targets=[f"{t.get('type')}:{t.get('name')}" for t in g.targets],
            template=g.template,
            privileges=describe_privileges(templates.get(g.template or ""), g.targets),
            issued_at=g.issued_at,
            expires_at=g.expires_at,
            status=status,
            ended_at=ended,
            revoked_by=rev.actor if status == "revoked" and rev else None,
            revoke_reason=rev.reason if status == "revoked" and rev else None,
            reason=g.reason,
            ticket=g.ticket,
            approved_by=list(g.approvers),
            breakglass=g.breakglass,
            drill=is_drill(g.ticket, g.reason),
        )
        reviews_state: list[str] = []
        for s in sorted(sessions_by_jti.get(g.jti, []), key=lambda s: s.started_at or 0.0):
            row.sessions.append(s.session_id)
            row.statements += s.statements
            row.commands += s.commands
            row.denials += s.denials
            if s.integrity not in (OK, LIVE):
                row.integrity_failed.append(f"{s.session_id} ({s.integrity})")
            if s.breakglass:
                rs = reviews.by_session.get(s.session_id, [])
                if rs:
                    reviews_state.append(f"{rs[-1].outcome} by {rs[-1].reviewer}")
                elif now >= (s.started_at or 0.0) + review_deadline:
                    reviews_state.append("overdue")
                else:
                    reviews_state.append("pending")
        row.review = "; ".join(reviews_state) if g.breakglass else ""
        if not row.sessions and status != "active":
            row.flags.append(NEVER_USED)
        if "overdue" in reviews_state:
            row.flags.append(OVERDUE)
        if row.integrity_failed:
            row.flags.append(INTEGRITY)
        if row.drill:
            row.flags.append(DRILL)
        rows.append(row)

    real_breakglass: dict[str, int] = {}
    for r in rows:
        if r.breakglass and not r.drill:
            real_breakglass[r.user] = real_breakglass.get(r.user, 0) + 1
    for r in rows:
        if r.breakglass and not r.drill and real_breakglass[r.user] > REPEATED_BREAKGLASS:
            r.flags.append(REPEATED)

    by_user: dict[str, Summary] = {}
    by_target: dict[str, Summary] = {}
    for r in rows:
        for s in [by_user.setdefault(r.user, Summary(r.user))] + [
            by_target.setdefault(t, Summary(t)) for t in r.targets
        ]:
            s.grants += 1
            s.breakglass += int(r.breakglass and not r.drill)
            s.drills += int(r.drill)
            s.never_used += int(NEVER_USED in r.flags)
            s.sessions += len(r.sessions)
            s.statements += r.statements
            s.commands += r.commands
            s.denials += r.denials
            s.overdue_reviews += int(OVERDUE in r.flags)
            s.users.add(r.user)
    return Report(
        since=since,
        until=until,
        generated_at=now,
        rows=rows,
        by_user=sorted(by_user.values(), key=lambda s: s.key),
        by_target=sorted(by_target.values(), key=lambda s: s.key),
        warnings=[],
        filters={"user": user, "target": target},
    )


# ------------------------------------------------------------------------------------ rendering

COLUMNS = (
    "user",
    "targets",
    "template",
    "privileges",
    "issued",
    "expires",
    "status",
    "ended",
    "reason",
    "ticket",
    "approval",
    "sessions",
    "statements",
    "commands",
    "denials",
    "review",
    "flags",
    "jti",
)


def _cells(r: GrantRow) -> list[str]:
    ended = ""
    if r.status == "revoked":
        ended = f"revoked {utc_text(r.ended_at)} by {r.revoked_by}: {r.revoke_reason}"
    elif r.ended_at is not None:
        ended = f"expired {utc_text(r.ended_at)}"
    return [
        r.user,
        ", ".join(r.targets),
        r.template or "",
        r.privileges,
        utc_text(r.issued_at),
        utc_text(r.expires_at),
        r.status,
        ended,
        r.reason,
        r.ticket or "",
        r.approval,
        str(len(r.sessions)),
        str(r.statements),
        str(r.commands),
        str(r.denials),
        r.review,
        ",".join(r.flags),
        r.jti,
    ]


_SUMMARY_COLUMNS = (
    "grants",
    "breakglass",
    "drills",
    "never_used",
    "sessions",
    "statements",
    "commands",
    "denials",
    "overdue_reviews",
)


def _period(rep: Report) -> str:
    return f"{utc_text(rep.since)} .. {utc_text(rep.until)}"


def render_json(rep: Report) -> str:
    return json.dumps(rep.to_dict(), indent=2, sort_keys=True, default=str)


def render_csv(rep: Report) -> str:
    out = io.StringIO()
    for w in rep.warnings:  # said in the report itself, before any row
        out.write(f"# WARNING: {w}\n")
    wr = csv.writer(out)
    wr.writerow(COLUMNS)
    for r in rep.rows:
        wr.writerow(_cells(r))
    return out.getvalue()


def render_table(rep: Report) -> str:
    from breakglass.cli.output import table

    lines = [f"Access recertification report, {_period(rep)}  ({len(rep.rows)} grants)"]
    lines += [f"!! WARNING: {w}" for w in rep.warnings]
    lines.append("")
    for r in rep.rows:
        c = dict(zip(COLUMNS, _cells(r), strict=True))
        flags = f"  [{c['flags']}]" if c["flags"] else ""
        lines.append(f"{c['issued']}  {c['user']} -> {c['targets']}  ({c['template']}){flags}")
        lines.append(f"    privileges: {c['privileges']}")
        lines.append(f"    until {c['expires']}  {c['status']}  {c['ended']}".rstrip())
        lines.append(f"    reason: {c['reason']}  ticket: {c['ticket'] or '-'}")
        lines.append(f"    approval: {c['approval']}")
        used = (
            f"{c['sessions']} sessions, {c['statements']} statements, "
            f"{c['commands']} commands, {c['denials']} denials"
        )
        lines.append(f"    used: {used}" + (f"  review: {c['review']}" if c["review"] else ""))
        lines.append(f"    grant {c['jti']}")
    for title, sums in (("Per user", rep.by_user), ("Per target", rep.by_target)):
        lines += ["", title]
        lines.append(
            table(
                [[s.key, *(getattr(s, k) for k in _SUMMARY_COLUMNS)] for s in sums],
                ("NAME", *(k.upper().replace("_", " ") for k in _SUMMARY_COLUMNS)),
            )
        )
    return "\n".join(lines)


_CSS = (
    "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #bbb;padding:4px 6px;vertical-align:top;text-align:left}"
    ".warn{background:#fdd;border:2px solid #c00;padding:8px;font-weight:bold}"
    ".flag{color:#a00;font-weight:bold}"
)


def render_html(rep: Report) -> str:
    """A standalone page; every value is escaped (reasons and names are user input)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">",
        f"<title>Access recertification {e(_period(rep))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Access recertification report</h1><p>{e(_period(rep))}, generated "
        f"{e(utc_text(rep.generated_at))}, {len(rep.rows)} grants</p>",
    ]
    parts += [f"<p class='warn'>WARNING: {e(w)}</p>" for w in rep.warnings]
    parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
    for r in rep.rows:
        cells = _cells(r)
        parts.append(
            "<tr>"
            + "".join(
                f"<td class='flag'>{e(v)}</td>" if c == "flags" and v else f"<td>{e(v)}</td>"
                for c, v in zip(COLUMNS, cells, strict=True)
            )
            + "</tr>"
        )
    parts.append("</table>")
    for title, sums in (("Per user", rep.by_user), ("Per target", rep.by_target)):
        parts.append(f"<h2>{title}</h2><table><tr><th>name</th>")
        parts.append("".join(f"<th>{e(k)}</th>" for k in _SUMMARY_COLUMNS) + "</tr>")
        for s in sums:
            parts.append(
                f"<tr><td>{e(s.key)}</td>"
                + "".join(f"<td>{getattr(s, k)}</td>" for k in _SUMMARY_COLUMNS)
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json, "html": render_html}
