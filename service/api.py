"""``breakglass serve``: the grant service, an asyncio HTTP JSON API (aiohttp).

It holds the issuer key and the state database. Callers authenticate (OIDC ID token, or a
local user's password + TOTP) and get a short-lived API session token; with it they ask for
access, approve or deny others' requests, fetch their grant once approved, and revoke grants.
Every request, approval, denial, issuance, revocation and login (success and failure) goes to
the audit log with the verified identity. Endpoints: docs/service-api.md.

Configuration (besides the gateway's own sections)::

    [service]
    listen = "127.0.0.1:8700"
    tls_cert = "keys/service_tls.crt"     # required unless listen is a loopback address
    tls_key = "keys/service_tls.key"
    session_ttl = "1h"                    # API session lifetime
    approval_window = "1h"                # a request not approved within this expires
    session_secret_file = "keys/service_session.key"   # shared by all service instances
    oncall_file = "oncall.txt"            # one user per line, re-read on every request
    admins = ["@security"]                # may revoke any grant
    metrics_listen = "127.0.0.1:9465"     # optional: Prometheus /metrics and /health/*
    [service.auto_approve.RULE]
    templates = ["db-readonly"]           # template-name globs
    requesters = ["@sre"]                 # optional
    oncall = true                         # optional: requester must be on call
    windows = ["mon-fri 09:00-18:00"]     # optional, UTC
    max_ttl = "30m"                       # optional

    [identity]
    users_file = "users.toml"             # local users (password + TOTP)
    [identity.oidc]                       # and/or OIDC
    issuer = "https://idp.example.com"
    audience = "breakglass"
    jwks_url = "https://idp.example.com/.well-known/jwks.json"
    username_claim = "email"
    groups_claim = "groups"
    group_map = { "idp-sre" = "approvers" }

    [state]
    url_env = "BREAKGLASS_STATE_URL"      # or url = "postgresql://..."; SQLite otherwise
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import ssl
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from breakglass.policy.durations import DurationError, parse_duration
from breakglass.policy.grants import sign_grant
from breakglass.policy.state import SqliteState
from breakglass.policy.templates import is_member
from breakglass.proxy.config import Config, ConfigError, find_config_path, parse_config
from breakglass.proxy.context import audit_grant_issued, issuer_key, open_audit
from breakglass.proxy.gateway import LIVE_STALE
from breakglass.proxy.logs import log
from breakglass.service.identity import (
    AuthFailed,
    LocalUsers,
    OidcSettings,
    OidcVerifier,
    SessionTokens,
    UsersFile,
    oidc_namespace_problems,
)
from breakglass.service.metrics import ServiceMetrics, login_reason, route_of
from breakglass.service.requests import (
    APPROVED,
    EXPIRED,
    PENDING,
    STATUSES,
    AutoApproveRule,
    Identity,
    Request,
    RequestRefused,
    TimeWindow,
    approve,
    auto_approve,
    deny,
    expire_if_due,
    grant_claims,
    new_request,
)
from breakglass.service.throttle import LoginThrottle

MY_SECTIONS = ("service", "identity")
MAX_BODY = 64 * 1024
MAX_WAIT = 60.0
IDENTITY: Any = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "identity"


# ------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8700
    tls_cert: Path | None = None
    tls_key: Path | None = None
    session_ttl: int = 3600
    approval_window: int = 3600
    session_secret_file: Path | None = None
    oncall_file: Path | None = None
    admins: tuple[str, ...] = ()
    auto_approve: tuple[AutoApproveRule, ...] = ()
    users_file: Path | None = None
    oidc: OidcSettings | None = None
    state_url: str | None = field(default=None, repr=False)
    metrics_host: str | None = None  # [service] metrics_listen: /metrics and /health/*
    metrics_port: int = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_service_settings(doc: Mapping[str, Any], base: Path) -> ServiceSettings:
    """Validate ``[service]``, ``[identity]`` and ``state.url``; problems name their key path."""
    problems: list[str] = []

    def bad(path: str, msg: str) -> None:
        problems.append(f"{path}: {msg}")

    def table(d: Any, path: str) -> dict:
        if d is None:
            return {}
        if not isinstance(d, dict):
            bad(path, "expected a table")
            return {}
        return d

    def check_keys(d: dict, path: str, allowed: tuple[str, ...]) -> None:
        for k in d:
            if k not in allowed:
                bad(f"{path}.{k}", f"unknown key (known: {', '.join(allowed)})")

    def string(d: dict, k: str, path: str, default: Any = None) -> Any:
        v = d.get(k, default)
        if v is not default and (not isinstance(v, str) or not v.strip()):
            bad(path, "expected a non-empty string")
            return default
        return v

    def strings(d: dict, k: str, path: str) -> tuple[str, ...]:
        v = d.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            bad(path, "expected a list of strings")
            return ()
        return tuple(v)

    def duration(d: dict, k: str, path: str, default: Any) -> Any:
        v = d.get(k, default)
        if v is None:
            return None
        try:
            return parse_duration(v)
        except (DurationError, TypeError, ValueError) as e:
            bad(path, str(e))
            return default if isinstance(default, int) else None

    def file(d: dict, k: str, path: str, must_exist: bool = True) -> Path | None:
        v = string(d, k, path)
        if not v:
            return None
        p = Path(v).expanduser()
        p = p if p.is_absolute() else (base / p).resolve()
        if must_exist and not p.exists():
            bad(path, f"file not found: {p}")
        return p

    svc = table(doc.get("service"), "service")
    check_keys(
        svc,
        "service",
        (
            "listen",
            "tls_cert",
            "tls_key",
            "session_ttl",
            "approval_window",
            "session_secret_file",
            "oncall_file",
            "admins",
            "auto_approve",
            "metrics_listen",
        ),
    )

    def hostport(key: str) -> tuple[str, int] | None:
        v = string(svc, key, f"service.{key}")
        if not v:
            return None
        h, sep, p = v.rpartition(":")
        h = h.strip("[]")
        if not sep or not h or not p.isdigit() or not 0 <= int(p) <= 65535:
            bad(f"service.{key}", f'expected "HOST:PORT", got {v!r}')
            return None
        return h, int(p)

    host, port = hostport("listen") or ("127.0.0.1", 8700)
    metrics_host, metrics_port = hostport("metrics_listen") or (None, 0)
    tls_cert = file(svc, "tls_cert", "service.tls_cert")
    tls_key = file(svc, "tls_key", "service.tls_key")
    if bool(tls_cert) != bool(tls_key):
        bad("service.tls_cert", "set both tls_cert and tls_key, or neither")
    if not tls_cert and not _is_loopback(host):
        bad(
            "service.tls_cert",
            f"TLS is required when listening on {host} (only loopback may be plain HTTP)",
        )
    rules = []
    for name, r in table(svc.get("auto_approve"), "service.auto_approve").items():
        path = f"service.auto_approve.{name}"
        r = table(r, path)
        check_keys(r, path, ("templates", "requesters", "oncall", "windows", "max_ttl"))
        templates = strings(r, "templates", f"{path}.templates")
        if not templates:
            bad(f"{path}.templates", "name at least one template")
        windows = []
        for i, w in enumerate(strings(r, "windows", f"{path}.windows")):
            try:
                windows.append(TimeWindow.parse(w))
            except ValueError as e:
                bad(f"{path}.windows[{i}]", str(e))
        oncall = r.get("oncall", False)
        if not isinstance(oncall, bool):
            bad(f"{path}.oncall", "expected true or false")
            oncall = False
        requesters = strings(r, "requesters", f"{path}.requesters")
        max_ttl = duration(r, "max_ttl", f"{path}.max_ttl", None)
        if not (requesters or oncall or windows):
            bad(path, "state at least one condition: requesters, oncall or windows")
        rules.append(
            AutoApproveRule(
                name=name,
                templates=templates,
                requesters=requesters,
                oncall=oncall,
                windows=tuple(windows),
                max_ttl=max_ttl,
            )
        )
    idn = table(doc.get("identity"), "identity")
    check_keys(idn, "identity", ("users_file", "oidc"))
    users_file = file(idn, "users_file", "identity.users_file", must_exist=False)
    oidc = None
    if "oidc" in idn:
        o = table(idn["oidc"], "identity.oidc")
        check_keys(
            o,
            "identity.oidc",
            (
                "issuer",
                "audience",
                "jwks_url",
                "username_claim",
                "groups_claim",
                "group_map",
                "user_map",
                "user_prefix",
                "algorithms",
            ),
        )
        for k in ("issuer", "audience", "jwks_url"):
            if k not in o:
                bad(f"identity.oidc.{k}", "missing")
        jwks = string(o, "jwks_url", "identity.oidc.jwks_url")
        if jwks and not (
            jwks.startswith("https://")
            or (
                jwks.startswith("http://")
                and _is_loopback(jwks[7:].split("/")[0].rsplit(":", 1)[0].strip("[]"))
            )
        ):
            bad("identity.oidc.jwks_url", "must be https:// (plain http only on loopback)")
        gm = table(o.get("group_map"), "identity.oidc.group_map")
        if not all(isinstance(v, str) for v in gm.values()):
            bad("identity.oidc.group_map", "values must be policy group names")
        um = table(o.get("user_map"), "identity.oidc.user_map")
        if not all(isinstance(v, str) and v for v in um.values()):
            bad("identity.oidc.user_map", "values must be policy user names")
        algs = strings(o, "algorithms", "identity.oidc.algorithms") if "algorithms" in o else None
        try:
            oidc = OidcSettings(
                issuer=string(o, "issuer", "identity.oidc.issuer") or "",
                audience=string(o, "audience", "identity.oidc.audience") or "",
                jwks_url=jwks or "",
                username_claim=string(o, "username_claim", "identity.oidc.username_claim", "email"),
                groups_claim=string(o, "groups_claim", "identity.oidc.groups_claim", "groups"),
                group_map=dict(gm),
                user_map=dict(um),
                user_prefix=string(o, "user_prefix", "identity.oidc.user_prefix", ""),
                **({"algorithms": algs} if algs else {}),
            )
        except (TypeError, ValueError) as e:
            bad("identity.oidc", str(e))
    if users_file is None and oidc is None:
        bad("identity", "configure users_file (local users) and/or [identity.oidc]")
    if oidc is not None:
        local: set[str] = set()
        if users_file is not None and users_file.exists():
            try:
                local = set(LocalUsers.load(users_file).users)
            except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
                bad("identity.users_file", str(e))
        problems.extend(oidc_namespace_problems(oidc, local))
    st = table(doc.get("state"), "state")
    state_url = None
    if "url" in st:
        state_url = string(st, "url", "state.url")
    elif "url_env" in st:
        var = string(st, "url_env", "state.url_env")
        state_url = os.environ.get(var or "")
        if var and not state_url:
            bad("state.url_env", f"environment variable {var} is not set")
    if state_url and not state_url.startswith(("postgresql://", "postgres://")):
        bad("state.url", "expected a postgresql:// URL")
    if problems:
        raise ConfigError(problems)
    return ServiceSettings(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        session_ttl=duration(svc, "session_ttl", "service.session_ttl", 3600),
        approval_window=duration(svc, "approval_window", "service.approval_window", 3600),
        session_secret_file=file(svc, "session_secret_file", "service.session_secret_file"),
        oncall_file=file(svc, "oncall_file", "service.oncall_file", must_exist=False),
        admins=strings(svc, "admins", "service.admins"),
        auto_approve=tuple(rules),
        users_file=users_file,
        oidc=oidc,
        state_url=state_url,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


def load_service_config(path: str | os.PathLike | None) -> tuple[Config, ServiceSettings]:
    """The gateway config plus the service's own sections (validated here, key paths in errors)."""
    p = find_config_path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {p}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], p) from None
    base = p.resolve().parent
    rest = {k: v for k, v in doc.items() if k not in MY_SECTIONS}
    cfg = parse_config(rest, base, p)
    try:
        settings = parse_service_settings(doc, base)
    except ConfigError as e:
        raise ConfigError(e.problems, p) from None
    return cfg, settings


def open_service_state(cfg: Config, settings: ServiceSettings):
    """PostgreSQL state when ``state.url``/``state.url_env`` is set, else the SQLite file."""
    if settings.state_url:
        from breakglass.policy.state_pg import PgState

        return PgState(settings.state_url)
    return SqliteState(cfg.state_database)


# ------------------------------------------------------------------------ the service


#: The rule an error without a more specific one carries, by HTTP status.
STATUS_RULES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    429: "rate-limited",
    500: "internal-error",
}


class ApiError(Exception):
    """An error answer: ``{"error": message, "rule": rule}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        rule: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.rule = rule or STATUS_RULES.get(status, "error")
        self.headers = headers or {}


_RULE_STATUS = {
    "not-pending": 409,
    "request-expired": 409,
    "already-approved": 409,
    "unknown-template": 400,
    "unknown-target": 400,
    "ttl": 400,
    "max-ttl": 400,
    "reason-required": 400,
    "target": 400,
    "breakglass-flag": 400,
    "breakglass-not-allowed": 400,
    "target-not-in-template": 400,
}


def _refused(e: RequestRefused) -> ApiError:
    return ApiError(_RULE_STATUS.get(e.rule, 403), str(e), e.rule)


class GrantService:
    def __init__(self, cfg: Config, settings: ServiceSettings, state, audit) -> None:
        self.cfg = cfg
        self.settings = settings
        self.state = state
        self.audit = audit
        self.kid, self.key = issuer_key(cfg)
        self.local = UsersFile(settings.users_file) if settings.users_file else None
        if self.local is not None and self.local.problem:
            raise ValueError(self.local.problem)
        self.oidc = OidcVerifier(settings.oidc) if settings.oidc else None
        self._oidc_names = set(settings.oidc.user_map.values()) if settings.oidc else set()
        if settings.session_secret_file:
            secret = settings.session_secret_file.read_bytes().strip()
        else:  # one instance: sessions end when it restarts
            secret = secrets.token_bytes(32)
        self.sessions = SessionTokens(
            secret, f"breakglass-service:{cfg.gateway_name}", settings.session_ttl
        )
        self.throttle = LoginThrottle()
        self.changed: dict[str, asyncio.Event] = {}
        self.metrics = ServiceMetrics(cfg.templates, cfg.known_targets())
        self.listening = False  # the API accepts connections (readiness)

    # -- helpers ---------------------------------------------------------------------

    def _oncall(self) -> tuple[str, ...]:
        f = self.settings.oncall_file
        if not f:
            return ()
        try:
            lines = f.read_text().splitlines()
        except OSError:
            return ()  # fail closed: nobody is on call
        return tuple(x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#"))

    def _notify_change(self, request_id: str) -> None:
        ev = self.changed.pop(request_id, None)
        if ev is not None:
            ev.set()

    async def _load(self, request_id: str) -> Request:
        doc = await self.state.get_request(request_id)
        if doc is None:
            raise ApiError(404, f"no request {request_id}")
        req = Request.from_doc(doc)
        due = expire_if_due(req, time.time())
        if due is not req and due.status == EXPIRED:
            if await self.state.update_request(due.to_doc(), req.version):
                self.audit.append(
                    "request.expired",
                    request=req.id,
                    subject=req.requester,
                    template=req.template,
                    expired_at=req.expires_at,
                )
                self._notify_change(req.id)
                self._request_event("request.expired", due)
                return Request.from_doc(dict(due.to_doc(), version=req.version + 1))
            return await self._load(request_id)
        return req

    def _request_event(self, event: str, req: Request, by: str | None = None) -> None:
        """Tell the approvers' webhooks (``request.*``), with the commands to decide."""
        self._alert(
            event,
            request=req.id,
            requester=req.requester,
            template=req.template,
            target=", ".join(req.targets),
            reason=req.reason,
            ticket=req.ticket or "",
            breakglass=req.breakglass,
            by=by or "",
            approve_command=f"breakglass approve {req.id}",
            deny_command=f"breakglass deny {req.id} --reason TEXT",
        )

    async def expire_due_requests(self) -> int:
        """Expire pending requests past their approval window (each audited and announced
        once, by whichever instance gets there first)."""
        n = 0
        for d in await self.state.list_requests(status=PENDING, limit=500):
            if time.time() >= float(d.get("expires_at", 0)):
                with contextlib.suppress(ApiError):
                    if (await self._load(d["id"])).status == EXPIRED:
                        n += 1
        return n

    async def watch_expiry(self, interval: float = 10.0) -> None:
        while True:
            try:
                await self.expire_due_requests()
            except Exception as e:  # keep sweeping; a broken state is logged
                log.error("requests.expiry_sweep_failed", error=type(e).__name__)
            await asyncio.sleep(interval)

    def _groups_with(self, who: Identity) -> dict[str, tuple[str, ...]]:
        groups = {k: tuple(v) for k, v in self.cfg.groups.items()}
        for g in who.groups:
            groups[g] = (*groups.get(g, ()), who.user)
        return groups

    def is_admin(self, who: Identity) -> bool:
        return is_member(who.user, self.settings.admins, self._groups_with(who))

    def may_decide(self, who: Identity, req: Request) -> bool:
        """An approver of the request's template, and not its requester."""
        tpl = self.cfg.templates.get(req.template)
        return (
            tpl is not None
            and who.user != req.requester
            and is_member(who.user, tpl.approvers, self._groups_with(who))
        )

    def may_see(self, who: Identity, req: Request) -> bool:
        """Requesters see their own requests, approvers those they may decide, admins all."""
        return who.user == req.requester or self.may_decide(who, req) or self.is_admin(who)

    async def _shown(self, req: Request) -> dict[str, Any]:
        """The request as the API shows it; an approved request whose grant was revoked
        says ``revoked``."""
        out = req.public()
        if req.status == APPROVED and req.grant_jti:
            rev = await self.state.revocation(req.grant_jti)
            if rev is not None:
                out["status"] = "revoked"
                out["revoked_at"] = rev.revoked_at
        return out

    def _alert(self, event: str, **fields: Any) -> None:
        try:
            from breakglass.recorder import alerts
        except ImportError:
            return
        try:
            alerts.notify(event, **fields)
        except Exception as e:  # an alert must never break issuance
            log.error("service.alert_failed", error=type(e).__name__)

    async def _issue(self, req: Request, actor: str) -> Request:
        """Build the claims of an approved request and record the grant."""
        try:
            req = grant_claims(
                req,
                templates=self.cfg.templates,
                known_targets=self.cfg.known_targets(),
                groups=self.cfg.groups,
                issuer=self.cfg.issuer_name,
                audience=self.cfg.gateway_name,
            )
        except RequestRefused as e:
            self.audit.append(
                "grant.refused",
                actor=actor,
                subject=req.requester,
                request=req.id,
                template=req.template,
                rule=e.rule,
                message=str(e),
            )
            self.metrics.refused("issue", e.rule)
            raise _refused(e) from None
        return req

    async def _after_issue(self, req: Request, actor: str) -> None:
        c = req.claims
        assert c is not None
        await self.state.record_grant(c)
        audit_grant_issued(self.audit, c, actor, request=req.id)
        self.metrics.issued(c, req.template)
        if c["breakglass"]:
            self.audit.append(
                "breakglass.used",
                actor=actor,
                subject=c["sub"],
                jti=c["jti"],
                request=req.id,
                targets=c["targets"],
                reason=c["reason"],
                ticket=c.get("ticket"),
                review="queued",
            )
            self._alert(
                "breakglass.used",
                user=c["sub"],
                target=", ".join(t["name"] for t in c["targets"]),
                session=f"grant {c['jti']} issued",
                reason=c["reason"],
                ticket=c.get("ticket") or "",
                jti=c["jti"],
            )

    # -- handlers ----------------------------------------------------------------------

    async def _verify_login(
        self,
        method: str,
        claimed: str,
        body: dict[str, Any],
        via: str = "api",
        client: str | None = None,
    ) -> Identity:
        """Check a login (API or console); a failure is logged (``login.refused``), both are
        counted in the metrics."""
        try:
            who = await self._check_login(method, claimed, body)
        except AuthFailed as e:
            self.metrics.login(str(method), via, e.reason)
            log.info(
                "login.refused",
                method=str(method)[:20],
                user=claimed or None,
                client=client,
                via=via,
                reason=login_reason(e.reason),
            )
            raise
        self.metrics.login(str(method), via)
        return who

    async def _check_login(self, method: str, claimed: str, body: dict[str, Any]) -> Identity:
        if method == "local":
            if self.local is None:
                raise AuthFailed("local users not enabled", "local login is not enabled here")
            if claimed in self._oidc_names:  # added to the file after the config loaded
                raise AuthFailed("local: name claimed by OIDC", "wrong user name, password or code")
            return await self.local.current().login(
                claimed,
                str(body.get("password") or ""),
                str(body.get("totp") or ""),
                self.state.use_totp_step,
            )
        if method == "oidc":
            if self.oidc is None:
                raise AuthFailed("oidc not enabled", "OIDC login is not enabled here")
            return await self.oidc.verify(str(body.get("id_token") or ""))
        raise AuthFailed(f"unknown method {method[:20]!r}", "unknown login method")

    async def login(self, request: web.Request) -> web.Response:
        body = await _body(request)
        client = request.remote or "?"
        method = body.get("method") or ("oidc" if "id_token" in body else "local")
        claimed = str(body.get("username") or "")[:200] if method == "local" else ""
        throttle = self.throttle
        wait = throttle.retry_after(claimed, client) if claimed else 0.0
        if wait > 0:
            self.audit.append(
                "login.failed", method=method, user=claimed, client=client, reason="backing off"
            )
            log.info("login.refused", method=method, user=claimed, client=client, reason="backoff")
            self.metrics.login(str(method), "api", "backoff")
            raise ApiError(
                429,
                f"too many failed logins for {claimed} from your address; "
                f"try again in {max(1, round(wait))} s",
                "rate-limited",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        if not throttle.begin(client):
            log.info("login.refused", method=str(method)[:20], client=client, reason="in-progress")
            self.metrics.login(str(method), "api", "in-progress")
            raise ApiError(429, "too many logins in progress from your address", "rate-limited")
        try:
            who = await self._verify_login(method, claimed, body, client=client)
        except AuthFailed as e:
            throttle.end(client)
            if claimed:
                throttle.pair_failed(claimed, client)
            delay = throttle.address_failed(client)
            self.audit.append(
                "login.failed", method=method, user=claimed or None, client=client, reason=e.reason
            )
            if delay:  # a slow answer, not a refusal of anyone else's correct login
                await asyncio.sleep(delay)
            raise ApiError(401, e.public, "login-failed") from None
        throttle.end(client)
        if claimed:
            throttle.pair_succeeded(claimed, client)
        token, exp = self.sessions.issue(who)
        self.audit.append(
            "login.succeeded",
            actor=who.user,
            method=who.method,
            groups=list(who.groups),
            client=client,
        )
        return _json(
            {"token": token, "expires_at": exp, "user": who.user, "groups": list(who.groups)}
        )

    async def authenticate(self, token: str) -> Identity:
        """The caller of an API request, checked against what holds *now*: a session ended
        by logout, or whose user was disabled or removed since, is refused; a local user's
        groups are read from the users file as it is now, not as they were at login."""
        who, sid, issued = self.sessions.session_of(token)
        ended = await self.state.sessions_ended([f"user:{who.user}", f"session:{sid}"])
        if ended is not None and issued <= ended:
            raise AuthFailed("session: ended", "session ended; log in again")
        if who.method == "local":
            user = self.local.current().active(who.user) if self.local is not None else None
            if user is None or who.user in self._oidc_names:
                raise AuthFailed("session: user gone", "session ended; log in again")
            who = Identity(user=user.name, groups=user.groups, method="local")
        return who

    def reload_users(self) -> None:
        """SIGHUP: read the users file again now."""
        log.info("service.reload", signal="SIGHUP", users_file=self.local is not None)
        if self.local is None:
            return
        ok = self.local.reload()
        if ok:
            log.info("users.reloaded", users=len(self.local.users.users))
        else:  # fail closed: no local user is active until the file is fixed
            log.error("users.reload_failed", problem=self.local.problem)

    async def logout(self, request: web.Request) -> web.Response:
        """End the calling session (the token stops working at once, on every instance)."""
        who: Identity = request[IDENTITY]
        _, sid, _ = self.sessions.session_of(_bearer(request))
        await self.state.end_sessions(f"session:{sid}", time.time())
        self.audit.append("logout", actor=who.user)
        return _json({"ok": True, "user": who.user})

    async def whoami(self, request: web.Request) -> web.Response:
        who: Identity = request[IDENTITY]
        return _json({"user": who.user, "groups": list(who.groups), "method": who.method})

    async def templates(self, request: web.Request) -> web.Response:
        return _json(
            [
                {
                    "name": t.name,
                    "description": t.description,
                    "targets": [str(p) for p in t.targets],
                    "max_ttl": t.max_ttl,
                    "approvals": 0 if t.breakglass else t.approvals,
                    "breakglass": t.breakglass,
                }
                for t in self.cfg.templates.values()
            ]
        )

    async def create_request(self, request: web.Request) -> web.Response:
        who: Identity = request[IDENTITY]
        body = await _body(request)
        targets = body.get("targets")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ApiError(400, "targets must be a list of target names", "target")
        try:
            ttl = parse_duration(body.get("ttl"))
        except (DurationError, TypeError, ValueError) as e:
            raise ApiError(400, f"ttl: {e}", "ttl") from None
        now = time.time()
        try:
            req = new_request(
                who,
                template=str(body.get("template") or ""),
                targets=targets,
                ttl=ttl,
                reason=str(body.get("reason") or ""),
                ticket=str(body["ticket"]) if body.get("ticket") else None,
                breakglass=body.get("breakglass") is True,
                templates=self.cfg.templates,
                known_targets=self.cfg.known_targets(),
                groups=self.cfg.groups,
                approval_window=self.settings.approval_window,
                now=now,
            )
        except RequestRefused as e:
            self.audit.append(
                "request.refused",
                actor=who.user,
                template=body.get("template"),
                targets=targets,
                rule=e.rule,
                message=str(e),
            )
            self.metrics.request_refused(body, targets, e.rule)
            raise _refused(e) from None
        self.audit.append(
            "request.created",
            actor=who.user,
            request=req.id,
            template=req.template,
            targets=list(req.targets),
            ttl=req.ttl,
            reason=req.reason,
            ticket=req.ticket,
            breakglass=req.breakglass,
        )
        req = auto_approve(
            req,
            self.settings.auto_approve,
            templates=self.cfg.templates,
            groups=self.cfg.groups,
            oncall=self._oncall(),
            now=now,
        )
        if req.status == APPROVED:
            self.audit.append(
                "request.approved",
                actor=who.user if req.breakglass else f"auto:{req.auto_approved_by or 'template'}",
                request=req.id,
                subject=req.requester,
                breakglass=req.breakglass,
                rule=req.auto_approved_by,
            )
            req = await self._issue(req, who.user)
        await self.state.create_request(req.to_doc())
        if req.claims is not None:
            await self._after_issue(req, who.user)
        self.metrics.request(req, "pending" if req.status == PENDING else req.status)
        if req.status == PENDING:
            self._request_event("request.created", req)
        elif req.status == APPROVED:
            by = who.user if req.breakglass else f"auto:{req.auto_approved_by or 'template'}"
            self._request_event("request.approved", req, by)
        return _json(req.public(), status=201)

    async def list_requests(self, request: web.Request) -> web.Response:
        who: Identity = request[IDENTITY]
        q = request.query
        status = q.get("status") or (PENDING if q.get("pending") else None)
        if status and status not in STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(STATUSES)}")
        try:
            limit = max(1, min(500, int(q.get("limit", "100"))))
        except ValueError:
            raise ApiError(400, "limit must be a number") from None
        pending_for_me = bool(q.get("pending"))  # what this approver may decide now
        docs = await self.state.list_requests(
            requester=who.user if q.get("mine") else None,
            status=None if status in (EXPIRED, "revoked") else status,
            limit=500 if not q.get("mine") else limit,
        )
        out = []
        for d in docs:
            req = Request.from_doc(d)
            if req.status == PENDING and time.time() >= req.expires_at:
                req = await self._load(req.id)
            if not self.may_see(who, req):
                continue
            if pending_for_me and not (req.status == PENDING and self.may_decide(who, req)):
                continue
            shown = await self._shown(req)
            if status and shown["status"] != status:
                continue
            out.append(shown)
            if len(out) >= limit:
                break
        return _json(out)

    async def get_request(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        try:
            wait = min(MAX_WAIT, float(request.query.get("wait", "0")))
        except ValueError:
            raise ApiError(400, "wait must be a number of seconds") from None
        deadline = time.monotonic() + wait
        req = await self._load(rid)
        if not self.may_see(request[IDENTITY], req):  # not even whether it exists
            raise ApiError(404, f"no request {rid}")
        while req.status == PENDING and time.monotonic() < deadline:
            ev = self.changed.setdefault(rid, asyncio.Event())
            # Woken at once by a change here; another instance's change is seen within 1 s.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), min(1.0, max(0.0, deadline - time.monotonic())))
            req = await self._load(rid)
        return _json(await self._shown(req))

    async def _decide(self, request: web.Request, kind: str) -> web.Response:
        who: Identity = request[IDENTITY]
        rid = request.match_info["id"]
        body = await _body(request)
        for _ in range(10):  # compare-and-set: retry when another decision got there first
            req = await self._load(rid)
            now = time.time()
            try:
                if kind == "approve":
                    new = approve(
                        req,
                        who,
                        str(body.get("comment") or ""),
                        templates=self.cfg.templates,
                        groups=self.cfg.groups,
                        now=now,
                    )
                else:
                    new = deny(
                        req,
                        who,
                        str(body.get("reason") or ""),
                        templates=self.cfg.templates,
                        groups=self.cfg.groups,
                        now=now,
                    )
            except RequestRefused as e:
                self.audit.append(
                    f"{kind}.refused",
                    actor=who.user,
                    request=rid,
                    subject=req.requester,
                    rule=e.rule,
                    message=str(e),
                )
                self.metrics.refused(kind, e.rule)
                raise _refused(e) from None
            if new.status == APPROVED:
                new = await self._issue(new, who.user)
            if await self.state.update_request(new.to_doc(), req.version):
                break
        else:
            raise ApiError(503, "the request is being changed by others; try again")
        if kind == "approve":
            self.audit.append(
                "request.approved",
                actor=who.user,
                request=rid,
                subject=new.requester,
                comment=new.approvals[-1].comment,
                complete=new.status == APPROVED,
            )
        else:
            self.audit.append(
                "request.denied",
                actor=who.user,
                request=rid,
                subject=new.requester,
                reason=new.denial.comment if new.denial else "",
            )
        self.metrics.decided(new, kind, new.status == APPROVED)
        if new.claims is not None:
            await self._after_issue(new, who.user)
        if new.status == APPROVED:
            self._request_event("request.approved", new, who.user)
        elif new.status != PENDING:
            self._request_event("request.denied", new, who.user)
        self._notify_change(rid)
        return _json(new.public())

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, "approve")

    async def deny(self, request: web.Request) -> web.Response:
        return await self._decide(request, "deny")

    async def fetch_grant(self, request: web.Request) -> web.Response:
        who: Identity = request[IDENTITY]
        req = await self._load(request.match_info["id"])
        if req.requester != who.user:
            self.audit.append(
                "grant.fetch_refused", actor=who.user, request=req.id, reason="not the requester"
            )
            raise ApiError(403, "only the requester can fetch the grant", "not-requester")
        if req.status != APPROVED or req.claims is None:
            raise ApiError(409, f"request {req.id} is {req.status}; no grant", "not-approved")
        c = req.claims
        if time.time() >= c["exp"]:
            raise ApiError(410, "the grant has expired", "expired")
        if await self.state.revocation(c["jti"]):
            raise ApiError(410, "the grant has been revoked", "revoked")
        if await self.state.get_grant(c["jti"]) is None:  # every signed grant is recorded
            await self.state.record_grant(c)
        token = sign_grant(c, self.key, self.kid)
        self.audit.append("grant.fetched", actor=who.user, jti=c["jti"], request=req.id)
        return _json(
            {
                "token": token,
                "jti": c["jti"],
                "expires_at": c["exp"],
                "targets": c["targets"],
                "request": req.id,
            }
        )

    async def revoke(self, request: web.Request) -> web.Response:
        who: Identity = request[IDENTITY]
        jti = request.match_info["jti"]
        body = await _body(request)
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise ApiError(400, "a reason is required to revoke a grant", "reason-required")
        g = await self.state.get_grant(jti)
        groups = {k: v for k, v in self.cfg.groups.items()}
        for gname in who.groups:
            groups[gname] = (*groups.get(gname, ()), who.user)
        tpl = self.cfg.templates.get(g.template) if g and g.template else None
        allowed = (
            is_member(who.user, self.settings.admins, groups)
            or (g is not None and g.subject == who.user)
            or (tpl is not None and is_member(who.user, tpl.approvers, groups))
        )
        if not allowed:
            self.audit.append(
                "revoke.refused", actor=who.user, jti=jti, reason="not allowed to revoke"
            )
            raise ApiError(403, "you may not revoke this grant", "not-allowed")
        rev = await self.state.revoke(jti, reason, who.user)
        self.metrics.revocations.inc()
        self.audit.append(
            "grant.revoked",
            actor=who.user,
            jti=jti,
            subject=g.subject if g else None,
            reason=rev.reason,
        )
        return _json(
            {"jti": rev.jti, "revoked_at": rev.revoked_at, "reason": rev.reason, "actor": rev.actor}
        )

    async def live_sessions(self, request: web.Request) -> web.Response:
        """Admins: live sessions on every gateway sharing the state."""
        who: Identity = request[IDENTITY]
        if not self.is_admin(who):
            raise ApiError(403, "only service admins see live sessions", "not-allowed")
        if isinstance(self.state, SqliteState):  # gateways publish only to shared state
            return _json(await self._this_host_live())
        return _json(await self.state.live_sessions(time.time() - LIVE_STALE))

    async def _this_host_live(self) -> list[dict[str, Any]]:
        """Live sessions of the gateway running with this config on this host (admin socket)."""
        from breakglass.proxy.admin import admin_request, admin_sockets

        out: list[dict[str, Any]] = []
        for path in admin_sockets(self.cfg.admin_socket):
            try:
                reply = await admin_request(path, {"op": "sessions"})
            except (OSError, TimeoutError, ValueError):
                continue  # not running, or not ours to talk to (mode 0600)
            for s in reply.get("sessions") or []:
                out.append(dict(s, gateway_instance=self.cfg.gateway_name))
        return out

    async def kill_session(self, request: web.Request) -> web.Response:
        """Admins: end a live session on whichever gateway runs it (within a second): through
        the shared state, or on the gateway of this host (its admin socket), attributed to
        the caller's service identity."""
        from breakglass.proxy.admin import match_session

        who: Identity = request[IDENTITY]
        body = await _body(request)
        ref = request.match_info["id"]
        if not self.is_admin(who):
            self.audit.append("kill.refused", actor=who.user, session=ref)
            raise ApiError(403, "only service admins may kill sessions", "not-allowed")
        reason = str(body.get("reason") or "").strip()
        live: dict[str, dict] = {}
        if not isinstance(self.state, SqliteState):  # gateways publish only to shared state
            live = {s["id"]: s for s in await self.state.live_sessions(time.time() - LIVE_STALE)}
        try:
            sid = match_session(ref, live)
        except LookupError as e:
            if "ambiguous" in str(e) or not ref.strip():
                raise ApiError(404, str(e), "not-found") from None
            reply = await self._kill_on_this_host(ref, who.user, reason)
            if reply is None:
                raise ApiError(404, str(e), "not-found") from None
            return _json(reply)
        await self.state.request_kill(sid, who.user, reason, time.time())
        self.audit.append("kill.requested", actor=who.user, session=sid, reason=reason)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # bounded: the owning gateway polls every 0.25 s
            await asyncio.sleep(0.1)
            if sid not in {s["id"] for s in await self.state.live_sessions(time.time() - 60)}:
                gateway = live[sid].get("gateway_instance")
                return _json({"killed": sid, "gateway": gateway, "actor": who.user})
        raise ApiError(504, f"the gateway running {sid} has not confirmed the kill yet", "pending")

    async def _kill_on_this_host(self, ref: str, actor: str, reason: str) -> dict | None:
        """Kill through the admin socket of the gateway running with this config on this host
        (SQLite state publishes no live sessions), or None if it has no such session."""
        from breakglass.proxy.admin import admin_request, admin_sockets

        for path in admin_sockets(self.cfg.admin_socket):
            try:
                reply = await admin_request(
                    path, {"op": "kill", "session": ref, "actor": actor, "reason": reason}
                )
            except (OSError, TimeoutError, ValueError):
                continue  # not running, or not ours to talk to (mode 0600)
            if reply.get("found") is False:
                continue  # another worker's, perhaps
            if not reply.get("ok"):
                raise ApiError(404, str(reply.get("error") or "no such live session"), "not-found")
            self.audit.append("kill.requested", actor=actor, session=reply["killed"], reason=reason)
            return {"killed": reply["killed"], "gateway": self.cfg.gateway_name, "actor": actor}
        return None

    async def review_session(self, request: web.Request) -> web.Response:
        """Console reviewers: record the post-incident review of a break-glass session, as the
        console's review form does, attributed to the caller's service identity (never one's
        own session; no "ok" for a recording that fails verification)."""
        from breakglass.recorder.review import ReviewRefused, record_review
        from breakglass.service.console.web import console_reviewers

        who: Identity = request[IDENTITY]
        body = await _body(request)
        ref = request.match_info["id"]
        reviewers = console_reviewers(self.cfg, tuple(self.settings.admins))
        if not is_member(who.user, reviewers, self._groups_with(who)):
            self.audit.append(
                "review.refused", actor=who.user, session=ref, reason="not a reviewer"
            )
            raise ApiError(
                403,
                "only console reviewers ([console] reviewers) may review sessions",
                "not-allowed",
            )
        summary = await asyncio.to_thread(self._reviewed_session, ref)
        outcome, notes = str(body.get("outcome") or "ok"), str(body.get("notes") or "")
        try:
            record_review(self.audit, summary, who.user, outcome, notes)
        except ReviewRefused as e:
            raise ApiError(409, str(e), "review-refused") from None
        await asyncio.to_thread(self.audit.flush)
        return _json({"session": summary.session_id, "reviewer": who.user, "outcome": outcome})

    def _reviewed_session(self, ref: str) -> Any:
        """The session ``ref`` names (whole id or unique part) from the index, refreshed and
        cross-checked with the audit log; one that fails verification is alerted (once)."""
        from breakglass.cli.review_cmds import _alert_failures, _open_index, _refresh
        from breakglass.recorder.index import SessionNotFound

        with _open_index(self.cfg) as index:
            _refresh(self.cfg, index)
            try:
                summary = index.resolve(ref)
            except SessionNotFound as e:
                raise ApiError(404, str(e), "not-found") from None
            if summary.integrity not in ("ok", "live"):
                _alert_failures(self.cfg, index, [summary])
        return summary

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, headers={"Cache-Control": "no-store"})


def _error(
    status: int, message: str, rule: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The one error shape: ``{"error": ..., "rule": ...}``."""
    return web.json_response(
        {"error": message, "rule": rule},
        status=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


PUBLIC = {"/v1/login", "/healthz"}


def build_app(service: GrantService) -> web.Application:
    def _user_of(request: web.Request) -> str | None:
        """The API caller, or the console's logged-in user (its session cookie)."""
        who = request.get(IDENTITY)
        if who is None and request.path.startswith("/console/"):
            from breakglass.service.console.web import SESSION_COOKIE

            with contextlib.suppress(Exception):  # the log line must never break a request
                who = service.sessions.verify(request.cookies.get(SESSION_COOKIE, ""))
        return who.user if who is not None else None

    @web.middleware
    async def access_log(request: web.Request, handler):
        """One structured line per request, and the HTTP metrics. Never a header, cookie,
        body or query string (tokens, passwords); the path only when it matched a route
        and is short (an id in it), else just the route: a token pasted into a URL stays
        out of the log."""
        t0 = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            seconds = time.monotonic() - t0
            user = _user_of(request)
            route = route_of(request)
            path = request.path if route is not None and len(request.path) <= 96 else None
            service.metrics.answered(request.method, route or "unmatched", status, seconds)
            log.info(
                "service.access",
                method=request.method if len(request.method) <= 16 else "?",
                path=path,
                route=route or "unmatched",
                status=status,
                user=user,
                client=request.remote,
                ms=round(seconds * 1000, 1),
            )

    @web.middleware
    async def errors_and_auth(request: web.Request, handler):
        try:
            if request.path not in PUBLIC and not request.path.startswith("/console/"):
                auth = request.headers.get("Authorization", "")
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise ApiError(401, "log in first (breakglass login)")
                try:
                    request[IDENTITY] = await service.authenticate(token.strip())
                except AuthFailed as e:
                    raise ApiError(401, e.public) from None
            return await handler(request)
        except ApiError as e:
            return _error(e.status, str(e), e.rule, e.headers)
        except web.HTTPException as e:
            if e.status >= 400:
                return _error(e.status, e.reason, STATUS_RULES.get(e.status, "error"))
            raise
        except Exception as e:  # fail closed, never a traceback to the client
            log.error("service.error", path=request.path, error=type(e).__name__)
            return _error(500, "internal error", "internal-error")

    app = web.Application(middlewares=[access_log, errors_and_auth], client_max_size=MAX_BODY)
    s = service
    app.router.add_get("/healthz", s.health)
    app.router.add_post("/v1/login", s.login)
    app.router.add_post("/v1/logout", s.logout)
    app.router.add_get("/v1/whoami", s.whoami)
    app.router.add_get("/v1/templates", s.templates)
    app.router.add_post("/v1/requests", s.create_request)
    app.router.add_get("/v1/requests", s.list_requests)
    app.router.add_get("/v1/requests/{id}", s.get_request)
    app.router.add_post("/v1/requests/{id}/approve", s.approve)
    app.router.add_post("/v1/requests/{id}/deny", s.deny)
    app.router.add_get("/v1/requests/{id}/grant", s.fetch_grant)
    app.router.add_post("/v1/grants/{jti}/revoke", s.revoke)
    app.router.add_get("/v1/sessions/live", s.live_sessions)
    app.router.add_post("/v1/sessions/{id}/kill", s.kill_session)
    app.router.add_post("/v1/sessions/{id}/review", s.review_session)
    from breakglass.service.console import setup_console  # the web console: its own cookie login

    setup_console(app, s)
    return app


@dataclass
class RunningService:
    service: GrantService
    runner: web.AppRunner
    url: str
    port: int
    tasks: list[asyncio.Task] = field(default_factory=list)
    metrics_server: Any = None  # service.metrics.MetricsServer with metrics_listen

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    async def stop(self) -> None:
        self.service.listening = False
        for t in self.tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.runner.cleanup()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        self.service.audit.close()
        await self.service.state.close()


async def start_service(
    cfg: Config, settings: ServiceSettings, *, state=None, port: int | None = None
) -> RunningService:
    """Start listening; returns once connections are accepted. ``port=0`` picks a free port."""
    state = state if state is not None else open_service_state(cfg, settings)
    audit = open_audit(cfg, role="service")
    try:
        try:
            service = GrantService(cfg, settings, state, audit)
        except (OSError, ValueError) as e:
            raise ConfigError([f"identity/service: {e}"], cfg.path) from None
        ssl_ctx = None
        if settings.tls_cert and settings.tls_key:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ssl_ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        runner = web.AppRunner(build_app(service), access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, settings.host, settings.port if port is None else port, ssl_context=ssl_ctx
        )
        await site.start()
        metrics_server = None
        if settings.metrics_host is not None:
            from breakglass.service.metrics import start_metrics_server

            try:
                metrics_server = await start_metrics_server(
                    service, settings.metrics_host, settings.metrics_port
                )
            except OSError as e:
                await runner.cleanup()
                where = f"{settings.metrics_host}:{settings.metrics_port}"
                raise ConfigError(
                    [f"service.metrics_listen: cannot listen on {where}: {e.strerror}"], cfg.path
                ) from None
            except BaseException:
                await runner.cleanup()
                raise
    except BaseException:
        audit.close()
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_ctx else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    service.listening = True
    log.info("service.listening", address=f"{host}:{bound}", tls=ssl_ctx is not None)
    audit.append("service.start", gateway=cfg.gateway_name, url=f"{scheme}://{host}:{bound}")
    sweeper = asyncio.ensure_future(service.watch_expiry())
    return RunningService(
        service, runner, f"{scheme}://{host}:{bound}", bound, [sweeper], metrics_server
    )


async def run_service(cfg: Config, settings: ServiceSettings, ready: Any = None) -> None:
    """Run until SIGINT/SIGTERM."""
    alerter = None
    try:
        from breakglass.recorder import alerts

        alerter = alerts.setup(cfg)
    except ImportError:
        pass
    from breakglass.proxy.gateway import wait_for_stop_signal

    running = await start_service(cfg, settings)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, running.service.reload_users)
    if ready is not None:
        ready(running)
    signame = None
    try:
        signame = await wait_for_stop_signal()
    finally:
        log.info("service.stopping", signal=signame)
        await running.stop()
        if alerter is not None:
            from breakglass.recorder import alerts

            alerts.shutdown()
        log.info("service.stopped")
