"""Prometheus metrics and health endpoints of a gateway process.

``[gateway] metrics_listen = "127.0.0.1:9464"`` serves, on the gateway's own event loop:

* ``/metrics``: Prometheus text format (prometheus-client);
* ``/health/live``: 200 while the process serves its event loop;
* ``/health/ready``: 200 when the listeners are up, recordings and the audit log can be
  written and the state database answers; 503 with the failing checks otherwise.

With ``workers = N`` worker I listens on port + I. Nothing here ever carries a grant, a
password or a statement's text: labels are protocols, targets, rules and reasons.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from breakglass.proxy.logs import log
from breakglass.recorder import committer
from breakglass.recorder.writer import STATS as RECORDER_STATS

#: Seconds the gateway adds to a statement (judging, recording, the write): small buckets.
_ADDED_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0)


class GatewayMetrics:
    """One registry per gateway process (tests run several gateways in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_live = Gauge(
            "breakglass_sessions_live", "Live sessions", ["protocol", "target"], registry=r
        )
        self.sessions_total = Counter(
            "breakglass_sessions",
            "Sessions ended, by end reason",
            ["protocol", "target", "reason"],
            registry=r,
        )
        self.sessions_started = Counter(
            "breakglass_sessions_started",
            'Sessions started (break-glass ones apart; breakglass="drill" for drills)',
            ["protocol", "target", "breakglass"],
            registry=r,
        )
        self.auth_failures = Counter(
            "breakglass_auth_failures",
            "Refused logins, by reason",
            ["protocol", "reason"],
            registry=r,
        )
        self.denials = Counter(
            "breakglass_denials",
            "Refused statements and commands, by rule",
            ["protocol", "rule"],
            registry=r,
        )
        self.pg_added = LoopHistogram(
            "breakglass_statement_added_seconds",
            "Time the gateway adds to a client message on its way upstream (judge, record, write)",
            {"protocol": "postgres"},
            _ADDED_BUCKETS,
        )
        r.register(self.pg_added)
        self.refused_sessions = Counter(
            "breakglass_sessions_refused",
            "Sessions refused after a valid grant (storage or audit log unavailable)",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "breakglass_connections_refused",
            "Connections closed before login: over the pre-auth caps (per source, total)",
            ["reason"],
            registry=r,
        )
        r.register(_RecorderCollector())

    def watch_store(self, uploader: Any) -> None:
        """Expose the upload lag to ``[recorder.store]`` (recorder.uploader.Uploader)."""
        self.registry.register(_StoreCollector(uploader))

    def session_started(
        self, protocol: str, target: str, breakglass: bool, drill: bool = False
    ) -> None:
        self.sessions_live.labels(protocol, target).inc()
        kind = "drill" if drill else ("true" if breakglass else "false")
        self.sessions_started.labels(protocol, target, kind).inc()

    def session_ended(self, protocol: str, target: str, reason: str) -> None:
        self.sessions_live.labels(protocol, target).dec()
        self.sessions_total.labels(protocol, target, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LoopHistogram:
    """A histogram observed on the event loop's thread only (once per PostgreSQL client
    message), without prometheus-client's per-observation lock and bucket loop; exposed as a
    Prometheus histogram at scrape time."""

    def __init__(
        self, name: str, text: str, labels: dict[str, str], buckets: tuple[float, ...]
    ) -> None:
        self.name, self.text, self.labels = name, text, labels
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds
        self.sum += seconds

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        m = HistogramMetricFamily(self.name, self.text, labels=list(self.labels))
        buckets, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        m.add_metric(list(self.labels.values()), buckets, self.sum)
        yield m


class _RecorderCollector:
    """The recorder's process-wide counters (kept by recorder/writer.py without a metrics
    dependency), read at scrape time."""

    #: (metric name, help, family, how to read it off the stats)
    METRICS = (
        ("written_bytes", "Bytes handed to the kernel by recordings and the audit log",
         CounterMetricFamily, lambda s: s.bytes_written),
        ("writes", "write/writev calls", CounterMetricFamily, lambda s: s.writes),
        ("write_seconds", "Time spent in write/writev", CounterMetricFamily,
         lambda s: s.write_seconds),
        ("fsyncs", "fsync calls (group commits)", CounterMetricFamily, lambda s: s.fsyncs),
        ("fsync_seconds", "Time spent in fsync", CounterMetricFamily, lambda s: s.fsync_seconds),
        ("fsync_max_seconds", "Slowest fsync so far", GaugeMetricFamily, lambda s: s.fsync_max),
        ("queue_bytes", "Bytes appended but not yet written, over live recordings",
         GaugeMetricFamily, lambda s: s.pending_bytes()),
        ("failures", "Recordings that failed to write", CounterMetricFamily,
         lambda s: s.failures),
        ("committer_threads", "Threads fsyncing and signing recordings (more than 1: behind)",
         GaugeMetricFamily, lambda s: committer.threads()),
        ("commit_lag_seconds", "How long the most overdue fsync or checkpoint is past its time",
         GaugeMetricFamily, lambda s: committer.lag()),
    )  # fmt: skip

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        for name, text, family, read in self.METRICS:
            m = family(f"breakglass_recorder_{name}", text)
            m.add_metric([], read(RECORDER_STATS))
            yield m


class _StoreCollector:
    """How far the object store trails the local spool (read off the uploader at scrape time)."""

    METRICS = (
        ("upload_lag_seconds", "Seconds the oldest byte not yet in the store has waited",
         GaugeMetricFamily, "lag"),
        ("pending_bytes", "Bytes of recordings and audit segments not yet in the store",
         GaugeMetricFamily, "pending_bytes"),
        ("pending_files", "Recordings and audit segments with bytes not yet in the store",
         GaugeMetricFamily, "pending_files"),
        ("broken_files", "Files the uploader stopped following (unreadable, cut below uploaded)",
         GaugeMetricFamily, "broken_files"),
        ("spool_full", "1 while the spool is past spool_limit (new sessions refused)",
         GaugeMetricFamily, "spool_full"),
        ("uploads", "Segment objects written", CounterMetricFamily, "uploads"),
        ("uploaded_bytes", "Bytes written in segment objects", CounterMetricFamily,
         "uploaded_bytes"),
        ("anchors", "Anchor objects written", CounterMetricFamily, "anchors"),
        ("upload_failures", "Upload attempts that failed (store down, refusing, timing out)",
         CounterMetricFamily, "failures"),
        ("upload_lag_max_seconds", "Longest wait of uploaded data so far", GaugeMetricFamily,
         "max_lag"),
        ("last_upload_timestamp_seconds", "When the last object was written (0: none yet)",
         GaugeMetricFamily, "last_upload"),
    )  # fmt: skip

    def __init__(self, uploader: Any) -> None:
        self.uploader = uploader

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        stats = self.uploader.stats()
        for name, text, family, key in self.METRICS:
            m = family(f"breakglass_store_{name}", text)
            m.add_metric([], stats[key])
            yield m


async def start_metrics_server(gw: Any) -> Any:
    """Serve /metrics and /health/* on ``[gateway] metrics_listen`` (+ worker index)."""
    listen = gw.cfg.metrics_listen
    runner, _ = await serve_metrics(
        listen.host,
        listen.port + gw.worker if listen.port else 0,
        gw.metrics.exposition,
        {"status": "live", "gateway": gw.cfg.gateway_name},
        lambda: readiness(gw),
        "gateway",
    )
    return _Closer(runner)


async def serve_metrics(
    host: str,
    port: int,
    exposition: Callable[[], bytes],
    live: dict[str, str],
    checks: Callable[[], Awaitable[dict[str, str]]],
    process: str,
) -> tuple[Any, int]:
    """An HTTP listener of its own for /metrics, /health/live (``live``) and /health/ready
    (``checks``: each "ok" or why not; 503 unless all are ok), for the gateway and the grant
    service alike. Returns the aiohttp runner (``cleanup`` stops it) and the bound port."""
    from aiohttp import web

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_live(_request: web.Request) -> web.Response:
        return web.json_response(live)

    async def health_ready(_request: web.Request) -> web.Response:
        result = await checks()
        ok = all(v == "ok" for v in result.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": result}, status=200 if ok else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health/live", health_live)
    app.router.add_get("/health/ready", health_ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("metrics.listening", address=address, process=process)
    return runner, bound


async def state_check(state: Any) -> str:
    """Whether the state database answers (in under 2 s): "ok" or why not."""
    t = time.monotonic()
    try:
        await state.revocations_since(time.time())
    except Exception as e:  # noqa: BLE001 - reported, never raised
        return f"unreachable: {type(e).__name__}"
    return "ok" if time.monotonic() - t <= 2 else "slow (over 2 s)"


async def readiness(gw: Any) -> dict[str, str]:
    """Each check: "ok" or why not."""
    checks: dict[str, str] = {}
    checks["listeners"] = "ok" if gw.listening else "not listening yet"
    fault = gw.registry.storage_fault
    checks["recordings"] = "ok" if fault is None else fault
    afault = getattr(gw.audit, "fault", None)
    checks["audit"] = "ok" if afault is None else afault
    checks["state"] = await state_check(gw.state)
    return checks


class _Closer:
    """Looks like an asyncio server to stop_gateway (close + wait_closed)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        await self.runner.cleanup()
