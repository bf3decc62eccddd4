"""Prometheus metrics and health endpoints of the grant service (``breakglass serve``).

``[service] metrics_listen = "127.0.0.1:9465"`` serves, on a listener of its own (never on
the API's port, which every engineer reaches; plain HTTP, no authentication, like the
gateway's ``metrics_listen``: bind it to loopback or a monitoring network):

* ``/metrics``: Prometheus text format (prometheus-client);
* ``/health/live``: 200 while the process serves its event loop;
* ``/health/ready``: 200 when the API listens and the state database answers, else 503.

Labels are bounded and never secret: template and target names only when the config knows
them (anything else a caller typed is ``unknown``), rules and reasons from the code (a
login failure's reason with every quoted or parenthesised part taken out), HTTP routes as
their templates (``/v1/requests/{id}``). No user names, tokens, passwords or request
reasons. Drills (ticket ``DRILL-...`` or a ``DRILL:`` reason) carry ``breakglass="drill"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from breakglass.policy.drill import is_drill
from breakglass.proxy.metrics import serve_metrics, state_check

UNKNOWN = "unknown"
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
#: Distinct login-failure reasons kept as labels; any further one is counted as "other".
MAX_REASONS = 64


def breakglass_kind(breakglass: bool, ticket: Any = None, reason: Any = None) -> str:
    """The ``breakglass`` label, as on the gateway: ``false``, ``true`` or ``drill``."""
    if not breakglass:
        return "false"
    return "drill" if is_drill(ticket, reason) else "true"


def login_reason(reason: str) -> str:
    """A bounded label for an ``AuthFailed.reason``: its fixed words, slugged
    (``local: wrong TOTP code`` -> ``local-wrong-totp-code``; quoted or parenthesised
    parts, which may carry what a caller sent, are dropped)."""
    text = re.sub(r"\(.*?\)|'[^']*'|\"[^\"]*\"", " ", reason or "")
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:48] or "other"


class ServiceMetrics:
    """One registry per grant service (tests run several services in one process)."""

    def __init__(self, templates: Any = (), targets: Any = ()) -> None:
        self.templates = set(templates)
        self.targets = set(targets)
        self._reasons: set[str] = set()
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "breakglass_service_requests",
            "Access requests, once per target named, by what happened at once: "
            "pending (waits for approval), approved (auto-approval or break-glass) or refused",
            ["template", "target", "breakglass", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "breakglass_service_refusals",
            "Requests, approvals, denials and issuances refused, by stage and rule",
            ["stage", "rule"],
            registry=r,
        )
        self.approvals = Counter(
            "breakglass_service_approvals",
            'Approvals by people (complete="true": the one that approved the request)',
            ["template", "complete"],
            registry=r,
        )
        self.denials = Counter(
            "breakglass_service_denials", "Requests denied", ["template"], registry=r
        )
        self.grants = Counter(
            "breakglass_service_grants_issued",
            "Grants issued (signed and recorded)",
            ["template", "breakglass"],
            registry=r,
        )
        self.breakglass_uses = Counter(
            "breakglass_service_breakglass_uses",
            'Break-glass grants issued, once per target (drill="true" for drills)',
            ["template", "target", "drill"],
            registry=r,
        )
        self.revocations = Counter(
            "breakglass_service_revocations", "Grants revoked through the service", registry=r
        )
        self.logins = Counter(
            "breakglass_service_logins",
            "Logins to the API and the console, by outcome",
            ["method", "via", "outcome"],
            registry=r,
        )
        self.login_failures = Counter(
            "breakglass_service_login_failures",
            "Failed or refused logins, by reason (backoff: refused while backing off)",
            ["method", "via", "reason"],
            registry=r,
        )
        self.http = Counter(
            "breakglass_service_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "breakglass_service_http_request_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )

    # -- bounded labels ------------------------------------------------------------------

    def _template(self, name: Any) -> str:
        return name if isinstance(name, str) and name in self.templates else UNKNOWN

    def _target(self, name: Any) -> str:
        return name if isinstance(name, str) and name in self.targets else UNKNOWN

    def _targets(self, names: Any) -> list[str]:
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list | tuple) or not names:
            return [UNKNOWN]
        return sorted({self._target(n) for n in names})

    # -- events --------------------------------------------------------------------------

    def request(self, req: Any, outcome: str) -> None:
        kind = breakglass_kind(req.breakglass, req.ticket, req.reason)
        for t in self._targets(list(req.targets)):
            self.requests.labels(self._template(req.template), t, kind, outcome).inc()

    def request_refused(self, body: dict[str, Any], targets: Any, rule: str) -> None:
        kind = breakglass_kind(
            body.get("breakglass") is True, body.get("ticket"), body.get("reason")
        )
        for t in self._targets(targets):
            self.requests.labels(self._template(body.get("template")), t, kind, "refused").inc()
        self.refused("request", rule)

    def refused(self, stage: str, rule: str) -> None:
        self.refusals.labels(stage, rule).inc()

    def decided(self, req: Any, kind: str, complete: bool) -> None:
        tpl = self._template(req.template)
        if kind == "approve":
            self.approvals.labels(tpl, "true" if complete else "false").inc()
        else:
            self.denials.labels(tpl).inc()

    def issued(self, claims: Any, template: Any) -> None:
        tpl = self._template(template)
        kind = breakglass_kind(bool(claims.get("breakglass")), claims.get("ticket"),
                               claims.get("reason"))  # fmt: skip
        self.grants.labels(tpl, kind).inc()
        if kind != "false":
            names = [t.get("name") for t in claims.get("targets") or ()]
            for t in self._targets(names):
                self.breakglass_uses.labels(tpl, t, "true" if kind == "drill" else "false").inc()

    def login(self, method: str, via: str, reason: str | None = None) -> None:
        """A login: succeeded when ``reason`` is None, else failed for that reason."""
        method = method if method in ("local", "oidc") else "other"
        if reason is None:
            self.logins.labels(method, via, "succeeded").inc()
            return
        self.logins.labels(method, via, "failed").inc()
        label = login_reason(reason)
        if label not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                label = "other"
            else:
                self._reasons.add(label)
        self.login_failures.labels(method, via, label).inc()

    def answered(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _HTTP_METHODS else "other"
        self.http.labels(method, route, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_of(request: Any) -> str | None:
    """The matched route's template (``/v1/requests/{id}``), None when nothing matched."""
    try:
        resource = request.match_info.route.resource
    except AttributeError:
        return None
    if resource is None or request.match_info.http_exception is not None:
        return None
    return resource.canonical


async def start_metrics_server(service: Any, host: str, port: int) -> MetricsServer:
    """Serve /metrics and /health/* for ``service`` on HOST:PORT (0: a free port)."""

    async def checks() -> dict[str, str]:
        return {
            "listener": "ok" if service.listening else "not listening yet",
            "state": await state_check(service.state),
        }

    runner, bound = await serve_metrics(
        host,
        port,
        service.metrics.exposition,
        {"status": "live", "gateway": service.cfg.gateway_name},
        checks,
        "service",
    )
    return MetricsServer(runner, bound)


@dataclass
class MetricsServer:
    runner: Any
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()
