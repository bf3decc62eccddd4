"""``breakglass gateway``: wire config, state, audit, sessions and the listeners together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breakglass.policy.grants import Grant, GrantTarget, GrantVerifier, Refusal, RefusalKind
from breakglass.policy.role_guard import RULES as ROLE_RULES
from breakglass.policy.role_guard import SSH_RULE, RoleGuard
from breakglass.policy.state import StateStore
from breakglass.proxy.admin import start_admin_server, worker_socket
from breakglass.proxy.config import Config
from breakglass.proxy.context import grant_verifier, open_audit, open_state, recorder_key
from breakglass.proxy.logs import log
from breakglass.proxy.preauth import PreAuthLimiter, raise_nofile_limit
from breakglass.proxy.sessions import SessionRegistry, Termination
from breakglass.proxy.storage import start_store
from breakglass.recorder.format import RecorderError

REVOCATION_POLL = 0.25
#: Live sessions are published to the shared state for `sessions --live` and `kill` from any
#: gateway: on every change, and at least every LIVE_HEARTBEAT s; kill requests are read
#: every LIVE_POLL s. A gateway silent for LIVE_STALE s is no longer listed.
LIVE_POLL = 0.25
LIVE_HEARTBEAT = 5.0
LIVE_STALE = 15.0
#: Rules whose refusals (or, for SSH, sightings) are takeover attempts: audited and alerted.
TAKEOVER_RULES = frozenset({*ROLE_RULES, SSH_RULE})


class AuthRateLimiter:
    """Failed grant checks per source address, with backoff instead of lockout.

    After ``limit`` failures within ``window`` seconds, each further *refusal* for that
    address is answered only after a delay that doubles with every failure (up to
    ``max_delay``): an attacker slows their own guesses and ties up their own pre-auth
    connection slots (capped per address), but a correctly signed, valid grant from the same
    address (an office behind NAT) is checked and accepted at once, never refused."""

    def __init__(
        self, limit: int, window: float = 60.0, base_delay: float = 0.25, max_delay: float = 4.0
    ) -> None:
        self.limit = limit
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def count(self, source: str) -> int:
        q = self.failures.get(source)
        if not q:
            return 0
        cutoff = time.monotonic() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            del self.failures[source]
        return len(q)

    def failed(self, source: str) -> float:
        """Count a failure; how long to wait before answering it (0 under the limit)."""
        n = self.count(source) + 1
        self.failures[source].append(time.monotonic())
        if len(self.failures) > 100_000:  # bound memory under a scan
            self.failures.pop(next(iter(self.failures)))
        if n <= self.limit:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(n - self.limit - 1, 16))


@dataclass
class Gateway:
    """What the protocol listeners share."""

    cfg: Config
    verifier: GrantVerifier
    state: StateStore
    audit: Any
    registry: SessionRegistry
    limiter: AuthRateLimiter
    revoked: set[str] = field(default_factory=set)
    servers: list[Any] = field(default_factory=list)
    worker: int = 0  # this process's index among `workers` sharing the ports
    workers: int = 1
    uploader: Any = None  # recorder.uploader.Uploader when [recorder.store] is set
    postgres: Any = None  # the PostgresListener, when configured
    metrics: Any = None  # proxy.metrics.GatewayMetrics
    listening: bool = False  # every configured listener accepts connections
    preauth: PreAuthLimiter = field(default_factory=lambda: PreAuthLimiter(32, 1024))

    @property
    def admin_socket(self) -> Path:
        return worker_socket(self.cfg.admin_socket, self.worker, self.workers)

    def admin_socket_of(self, worker: int) -> Path:
        return worker_socket(self.cfg.admin_socket, worker, self.workers)

    async def authorize(
        self,
        token: str | bytes,
        *,
        protocol: str,
        target_name: str,
        source: str,
        user: str | None = None,
    ) -> Grant | Refusal:
        """Verify a grant for ``protocol``/``target_name`` from ``source``; audit every outcome.

        Never raises: an unexpected error is a refusal (fail closed). Refusals from an address
        with many recent failures are answered late (see ``AuthRateLimiter``)."""
        try:
            result = await self._check(token, protocol, target_name, source, user)
        except Exception as e:
            log.error("auth.internal_error", protocol=protocol, error=type(e).__name__)
            result = Refusal(RefusalKind.MALFORMED, "the grant could not be checked")
        if isinstance(result, Refusal):
            delay = self.limiter.failed(source)
            if self.metrics is not None:
                self.metrics.auth_failures.labels(protocol, str(result.kind)).inc()
            try:
                self.audit.append(
                    "auth.refused",
                    protocol=protocol,
                    target=target_name,
                    client=source,
                    user=user,
                    subject=result.subject,
                    jti=result.jti,
                    refusal=str(result.kind),
                    message=result.message,
                    delayed=round(delay, 2) or None,
                )
            except RecorderError:  # refused anyway; the log line below still says so
                log.error("audit.lost", type="auth.refused", client=source)
            log.info(
                "auth.refused",
                protocol=protocol,
                target=target_name,
                client=source,
                kind=str(result.kind),
                message=result.message,
                delayed=round(delay, 2) or None,  # throttled: too many failures from there
            )
            if delay:
                await asyncio.sleep(delay)
                result = Refusal(
                    result.kind,
                    f"{result.message} (answer delayed: too many failed attempts from your address)",
                    result.jti,
                    result.subject,
                )
        return result

    async def _check(
        self, token: str | bytes, protocol: str, target_name: str, source: str, user: str | None
    ) -> Grant | Refusal:
        result = self.verifier.verify(
            token, target_type=protocol, target_name=target_name, source_ip=source
        )
        if not isinstance(result, Grant):
            return result
        if await self.state.revocation(result.jti):
            self.revoked.add(result.jti)
            return Refusal(
                RefusalKind.REVOKED, "grant has been revoked", result.jti, result.subject
            )
        if user is not None and user != result.subject:
            return Refusal(
                RefusalKind.MALFORMED,
                f"grant is for {result.subject}, not {user}",
                result.jti,
                result.subject,
            )
        problem = self._account_problem(result, protocol, target_name)
        if problem:
            return Refusal(RefusalKind.NO_CREDENTIALS, problem, result.jti, result.subject)
        return result

    def _account_problem(self, grant: Grant, protocol: str, target_name: str) -> str | None:
        """The grant's account on the target must be one the gateway holds credentials for."""
        gt = grant.target(protocol, target_name)
        if gt is None:
            return f"grant does not cover {protocol} target {target_name}"
        if protocol == "postgres":
            pg = self.cfg.postgres_targets.get(target_name)
            if pg is None:
                return f"no postgres target named {target_name!r} on this gateway"
            if gt.db_user not in pg.users:
                return (
                    f"the gateway holds no credentials for database user {gt.db_user} "
                    f"on {target_name}"
                )
        elif protocol == "ssh":
            ssh = self.cfg.ssh_targets.get(target_name)
            if ssh is None:
                return f"{target_name} is not an SSH target of this gateway"
            if gt.login not in ssh.logins:
                return f"the gateway holds no credentials for login {gt.login} on {target_name}"
        return None

    def role_guard(self, target: Any, grant: Grant) -> RoleGuard:
        """What a PostgreSQL session may not do to the gateway's own roles on ``target``."""
        return RoleGuard(
            protected=frozenset(target.users),
            role_management=grant.claims.get("role_management") is True,
        )

    def takeover_attempt(
        self, session: Any, rule: str | None, action: str = "refused", **fields: Any
    ) -> None:
        """A session tried to change the gateway's own access: audit and alert (security
        hears about every attempt, refused or, on SSH, merely seen)."""
        if rule not in TAKEOVER_RULES:
            return
        from breakglass.recorder import alerts

        info = dict(
            session=session.id,
            user=session.grant.subject,
            target=session.target.name,
            protocol=session.protocol,
            jti=session.grant.jti,
            breakglass=session.grant.breakglass,
            rule=rule,
            action=action,
        )
        try:
            self.audit.append("takeover.attempt", **info, **fields)
        except Exception as e:  # the session's own recording still holds the attempt
            log.error("audit.append_failed", event="takeover.attempt", error=type(e).__name__)
        log.warning("takeover.attempt", **info)
        alerts.notify(alerts.TAKEOVER, **info)

    def target_of(self, grant: Grant, protocol: str, name: str) -> GrantTarget:
        t = grant.target(protocol, name)
        assert t is not None  # authorize() checked it
        return t

    async def cancel_local(self, pid: int, key: bytes) -> bool:
        """A CancelRequest for one of this worker's PostgreSQL sessions (from another worker)."""
        return self.postgres is not None and await self.postgres.cancel_local(pid, key)

    async def watch_revocations(self) -> None:
        since = 0.0
        while True:
            try:
                revs = await self.state.revocations_since(since)
                for r in revs:
                    since = max(since, r.revoked_at - 2.0)
                    if r.jti not in self.revoked:
                        self.revoked.add(r.jti)
                        n = await self.registry.revoke(r.jti, r.reason)
                        if n:
                            log.info("grant.revoked_live", jti=r.jti, sessions=n)
            except Exception as e:  # keep watching; a broken state DB is logged loudly
                log.error("revocations.poll_failed", error=str(e))
            await asyncio.sleep(REVOCATION_POLL)


def instance_name(cfg: Config) -> str:
    """This gateway among those sharing the state: name, host and process, and which config
    it runs (two gateways in one process, as in tests, must not publish as one)."""
    import hashlib
    import os
    import socket

    where = hashlib.sha256(str(getattr(cfg, "path", "")).encode()).hexdigest()[:6]
    return f"{cfg.gateway_name}@{socket.gethostname()}:{os.getpid()}:{where}"


async def watch_live(gw: Gateway) -> None:
    """Publish this process's live sessions to the shared state and act on kill requests
    made from any gateway or the grant service (within LIVE_POLL s)."""
    me = instance_name(gw.cfg)
    published: set[str] = set()
    last = 0.0
    while True:
        try:
            ids = set(gw.registry.sessions)
            now = time.time()
            if ids != published or now - last >= LIVE_HEARTBEAT:
                infos = [s.info() for s in list(gw.registry.sessions.values())]
                await gw.state.publish_live(me, infos, now)
                published, last = ids, now
            for sid, actor, reason in await gw.state.take_kills(sorted(ids)):
                if await gw.registry.kill(sid, actor, reason):
                    log.info("session.killed_remotely", session=sid, actor=actor)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # keep going; a broken state DB is logged loudly
            log.error("live.publish_failed", error=type(e).__name__)
        await asyncio.sleep(LIVE_POLL)


def _revocation_watch(gw: Gateway):
    """LISTEN/NOTIFY on a PostgreSQL state database; polling on SQLite."""
    from breakglass.policy.state_pg import PgState, watch

    if not isinstance(gw.state, PgState):
        return gw.watch_revocations()

    async def on_revoke(r) -> None:
        if r.jti not in gw.revoked:
            gw.revoked.add(r.jti)
            await gw.registry.revoke(r.jti, r.reason)

    return watch(gw.state, on_revoke)


def make_recorder_factory(cfg: Config):
    from breakglass.recorder.writer import RecordingWriter

    key = recorder_key(cfg)

    def make(path: Path, header: dict[str, Any], on_failure: Any = None):
        return RecordingWriter.create(
            path,
            header,
            key,
            cfg.recorder_key_id,
            checkpoint_interval=cfg.checkpoint_interval,
            checkpoint_events=cfg.checkpoint_events,
            commit_interval=cfg.commit_interval,
            on_failure=on_failure,
        )

    return make


async def start_gateway(cfg: Config, worker: int = 0, workers: int = 1) -> Gateway:
    """Start every configured listener; returns once they accept connections.

    With ``workers`` > 1 several processes listen on the same ports (SO_REUSEPORT); each
    has its own admin socket, and a CancelRequest reaching the wrong one is forwarded."""
    from breakglass.proxy.audit_guard import GuardedAudit
    from breakglass.proxy.context import trusted_recorder_keys
    from breakglass.recorder import alerts

    nofile = raise_nofile_limit()
    for w in cfg.warnings:  # README: risky command patterns are flagged when a config loads
        log.warning("config.warning", warning=w)
    alerter = alerts.setup(cfg)  # validates [alerts]/[review]; notify() never blocks a session
    state = open_state(cfg)
    registry_ref: list[SessionRegistry] = []
    audit = GuardedAudit(
        lambda: open_audit(cfg, role=f"gateway-{cfg.gateway_name}-w{worker}"),
        cfg.audit_dir,
        on_fault=lambda message: registry_ref and registry_ref[0].audit_failed(message),
    )
    registry = SessionRegistry(
        recordings_dir=cfg.recordings_dir,
        make_recorder=make_recorder_factory(cfg),
        audit=audit,
        gateway_name=cfg.gateway_name,
        warn_before=cfg.warn_before_expiry,
        trusted_keys=trusted_recorder_keys(cfg),
    )
    gw = Gateway(
        cfg=cfg,
        verifier=None,  # type: ignore[arg-type]
        state=state,
        audit=audit,
        registry=registry,
        limiter=AuthRateLimiter(cfg.failed_auth_limit),
        preauth=PreAuthLimiter(cfg.preauth_per_source, cfg.preauth_total, nofile),
    )
    registry_ref.append(registry)
    registry.revoked = gw.revoked  # the forwarding gate checks it
    from breakglass.proxy.metrics import GatewayMetrics

    gw.metrics = registry.metrics = GatewayMetrics()
    gw.preauth.on_refused = lambda reason: gw.metrics.connections_refused.labels(reason).inc()
    gw.verifier = grant_verifier(cfg, is_revoked=gw.revoked.__contains__)
    gw.uploader = await start_store(gw)
    for r in await state.revocations_since(0):
        gw.revoked.add(r.jti)
    gw.servers.append(asyncio.ensure_future(_revocation_watch(gw)))
    if cfg.state_url:  # shared PostgreSQL state: several gateways (SQLite: the admin socket)
        gw.servers.append(asyncio.ensure_future(watch_live(gw)))
        from breakglass.proxy import (
            watch_relay,  # `breakglass watch` from another gateway / the console
        )

        gw.servers.append(asyncio.ensure_future(watch_relay.serve(gw)))
    gw.worker, gw.workers = worker, workers
    gw.servers.append(await start_admin_server(gw.admin_socket, registry, gw.cancel_local))
    if alerter.enabled:
        gw.servers.append(asyncio.ensure_future(alerts.watch_overdue_reviews(cfg, alerter)))
    if cfg.postgres_listen:
        from breakglass.proxy.postgres.server import start_postgres_listener

        gw.servers.append(await start_postgres_listener(gw))
    if cfg.ssh_listen:
        from breakglass.proxy.ssh.server import start_ssh_listener

        gw.servers.append(await start_ssh_listener(gw))
        log.info("ssh.listening", address=str(cfg.ssh_listen))
    size_listen_backlog(gw.servers, cfg.listen_backlog)
    gw.listening = True
    if cfg.metrics_listen:
        from breakglass.proxy.metrics import start_metrics_server

        gw.servers.append(await start_metrics_server(gw))
    try:
        audit.append("gateway.start", gateway=cfg.gateway_name)
    except RecorderError as e:  # serve anyway: sessions are refused until the log recovers
        log.error("audit.lost", type="gateway.start", error=str(e))
    return gw


def somaxconn() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return None


def size_listen_backlog(servers: list[Any], backlog: int) -> int:
    """Set the listen(2) backlog of every listening TCP socket in ``servers`` (a burst of
    logins beyond the default 100-128 would otherwise overflow the accept queue). Calling
    listen() again on a listening socket only changes its backlog. Returns the backlog in
    effect: the kernel silently caps it at net.core.somaxconn, which is logged."""
    cap = somaxconn()
    effective = min(backlog, cap) if cap else backlog
    for server in servers:
        for s in getattr(server, "sockets", None) or ():
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            # asyncio's socket wrapper has no listen(): a duplicate descriptor does
            with socket.socket(fileno=os.dup(s.fileno())) as dup:
                dup.listen(backlog)
    if cap and cap < backlog:
        log.warning(
            "gateway.listen_backlog_capped",
            configured=backlog,
            somaxconn=cap,
            hint="raise net.core.somaxconn for bursts of logins",
        )
    return effective


async def stop_gateway(gw: Gateway) -> None:
    gw.registry.expiry.stop()
    await gw.registry.terminate_all(Termination("killed", "gateway shutting down"))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gw.registry.wait_idle(), 5)
    for s in gw.servers:
        if isinstance(s, asyncio.Future):
            s.cancel()
        else:
            s.close()
    for s in gw.servers:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            if isinstance(s, asyncio.Future):
                await s
            elif hasattr(s, "wait_closed"):
                await asyncio.wait_for(s.wait_closed(), 2)
    from breakglass.recorder import alerts

    await asyncio.to_thread(alerts.shutdown, 5.0)
    if gw.cfg.state_url:
        with contextlib.suppress(Exception):  # no longer listed as live anywhere
            await gw.state.publish_live(instance_name(gw.cfg), [], time.time())
    with contextlib.suppress(OSError):  # no stale admin socket left behind
        gw.admin_socket.unlink()
    try:
        gw.audit.append("gateway.stop", gateway=gw.cfg.gateway_name)
    except RecorderError as e:
        log.error("audit.lost", type="gateway.stop", error=str(e))
    gw.audit.close()
    if gw.uploader is not None:
        await gw.uploader.close()  # the last segments and trailers go up
    await gw.state.close()


async def run_gateway(cfg: Config, ready: Any = None, worker: int = 0, workers: int = 1) -> None:
    """Run until SIGINT/SIGTERM."""
    gw = await start_gateway(cfg, worker, workers)
    if ready is not None:
        ready(gw)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload_ignored)
    signame = None
    try:
        signame = await wait_for_stop_signal()
    finally:
        log.info("gateway.stopping", signal=signame, sessions=len(gw.registry.sessions))
        await stop_gateway(gw)
        log.info("gateway.stopped", gateway=cfg.gateway_name)


def _reload_ignored() -> None:
    """SIGHUP (log rotation, a stray reload): logged and ignored, never a silent exit."""
    log.warning(
        "gateway.reload",
        signal="SIGHUP",
        applied=False,
        message="the gateway reads its config at start only; restart it to apply changes",
    )


async def wait_for_stop_signal() -> str:
    """Return on SIGINT or SIGTERM (for long-running commands: gateway, serve, demo), with
    the signal's name."""
    stop = asyncio.Event()
    got: list[str] = []
    loop = asyncio.get_running_loop()

    def on(sig: signal.Signals) -> None:
        got.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on, sig)
    await stop.wait()
    return got[0] if got else "?"


def run_async(coro: Any) -> None:
    """Run ``coro`` on uvloop when available (it is a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
        return
    uvloop.run(coro)


def supervise_workers(argv: list[str], workers: int) -> int:
    """Run ``workers`` gateway processes (``argv`` + ``--worker I/N``) until a signal; if one
    dies, stop the others and fail loudly (the service manager restarts the whole gateway)."""
    import subprocess
    import time

    procs = [subprocess.Popen([*argv, "--worker", f"{i}/{workers}"]) for i in range(workers)]
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.terminate()

    def hup(*_: Any) -> None:  # each worker logs it (and keeps running)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, hup)
    rc = 0
    try:
        while any(p.poll() is None for p in procs):
            for p in procs:
                if p.poll() is not None and p.returncode != 0 and not stopping:
                    log.error("gateway.worker_exited", pid=p.pid, returncode=p.returncode)
                    rc = 1
                    stop()
            time.sleep(0.2)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    return rc
