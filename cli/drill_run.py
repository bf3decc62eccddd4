"""``breakglass drill``: run the emergency path end to end, marked as a drill.

Steps, each timed; the first that fails ends the drill and names itself:

1. ``grant``    a break-glass grant through the normal issuance rules (state database and
                audit log), with ticket ``DRILL-<time>`` and a ``DRILL:`` reason;
2. ``connect``  through the running gateway: ssh and/or PostgreSQL, per target;
3. ``command``  a harmless command whose output the drill checks (``echo`` / ``select``);
4. ``end``      the session is closed and its recording finalized;
5. ``verify``   the recording verifies (hash chain, signatures, trailer);
6. ``alerts``   the gateway delivered the ``breakglass.used`` alert, labelled DRILL, to a
                webhook (a break-glass use that alerts nobody fails the drill);
7. ``review``   the session is in the review queue, marked as a drill (ticket ``DRILL-...``).

The drill runs where the gateway runs (it reads the same config, keys and admin socket).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from breakglass.cli.output import CliError, emit_json
from breakglass.policy.drill import DRILL_REASON_PREFIX, drill_ticket
from breakglass.proxy.config import Config, load_config

STEPS = ("grant", "connect", "command", "end", "verify", "alerts", "review")
WAIT = 15.0  # seconds any one step may wait for the gateway


class StepFailed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass
class StepResult:
    step: str
    target: str
    seconds: float
    detail: str


@dataclass
class DrillResult:
    ok: bool
    ticket: str
    user: str
    template: str
    steps: list[StepResult] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    sessions: list[str] = field(default_factory=list)
    request_to_first_command: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "drill",
        help="test the break-glass path end to end (grant, connect, command, verify, alerts, "
        "review), marked as a drill",
        description="Runs the emergency path against the running gateway with a break-glass "
        "grant marked DRILL, times each step and the time from request to first command, and "
        "exits 1 naming the step that failed. Run it where the gateway runs (same config).",
    )
    p.add_argument("--target", action="append", required=True, help="target (repeat for both)")
    p.add_argument("--template", default=None, help="break-glass template (default: the first)")
    p.add_argument(
        "--user",
        default=None,
        help="who the drill's grant is for (default: the first person the template allows)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drill)


def _expand(names: tuple[str, ...], groups: dict[str, tuple[str, ...]]) -> list[str]:
    out: list[str] = []
    for n in names:
        out += list(groups.get(n[1:], ())) if n.startswith("@") else [n]
    return [n for n in out if n != "*"]


def _pick_template(cfg: Config, name: str | None):
    if name is not None:
        t = cfg.templates.get(name)
        if t is None:
            raise CliError(f"no template {name!r} in the config")
        if not t.breakglass:
            raise CliError(f"template {name!r} is not a break-glass template")
        return t
    for t in cfg.templates.values():
        if t.breakglass:
            return t
    raise CliError("the config has no break-glass template (breakglass = true)")


async def _wait_for(what: str, step: str, check: Callable[[], Any], timeout: float = WAIT):
    """Poll ``check`` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(check)
        if got:
            return got
        if time.monotonic() > deadline:
            raise StepFailed(step, f"{what} (waited {timeout:g} s)")
        await asyncio.sleep(0.1)


def _recording_of(cfg: Config, jti: str, since: float) -> Path | None:
    from breakglass.recorder.reader import read_events

    for p in sorted(cfg.recordings_dir.glob("*.rec")):
        try:
            if p.stat().st_mtime < since - 5:
                continue
            head = next(read_events(p))
        except Exception:
            continue
        if head.get("grant_jti") == jti:
            return p
    return None


async def _admin(cfg: Config, op: str) -> list[dict[str, Any]]:
    from breakglass.proxy.admin import admin_request, admin_sockets

    replies = []
    for path in admin_sockets(cfg.admin_socket):
        try:
            replies.append(await admin_request(path, {"op": op}, timeout=3.0))
        except (OSError, TimeoutError, ValueError):
            continue
    return replies


class Drill:
    def __init__(self, cfg: Config, targets: list[str], template: Any, user: str) -> None:
        self.cfg = cfg
        self.targets = targets
        self.template = template
        self.user = user
        self.nonce = "breakglass-drill-" + secrets.token_hex(4)
        self.result = DrillResult(False, drill_ticket(), user, template.name)
        self.t0 = time.monotonic()
        self.wall0 = time.time()

    def _done(self, step: str, target: str, started: float, detail: str) -> None:
        self.result.steps.append(
            StepResult(step, target, round(time.monotonic() - started, 3), detail)
        )

    async def run(self) -> DrillResult:
        try:
            token, jti = await self._grant()
            for name in self.targets:
                await self._one_target(name, token, jti)
            self.result.ok = True
        except StepFailed as e:
            self.result.failed_step, self.result.error = e.step, e.message
        return self.result

    async def _grant(self) -> tuple[str, str]:
        from breakglass.policy.grants import sign_grant
        from breakglass.policy.issuance import AccessRequest, IssuanceRefused, build_claims
        from breakglass.proxy.context import (
            audit_grant_issued,
            current_actor,
            issuer_key,
            open_audit,
            open_state,
        )

        started = time.monotonic()
        cfg = self.cfg
        try:
            claims = build_claims(
                AccessRequest(
                    template=self.template.name,
                    requester=self.user,
                    targets=tuple(self.targets),
                    ttl=min(600, int(self.template.max_ttl)),
                    reason=f"{DRILL_REASON_PREFIX} scheduled break-glass drill (harmless)",
                    ticket=self.result.ticket,
                    approved_by=(),
                    breakglass=True,
                ),
                cfg.templates,
                cfg.known_targets(),
                cfg.groups,
                issuer=cfg.issuer_name,
                audience=cfg.gateway_name,
            )
            kid, key = issuer_key(cfg)
        except (IssuanceRefused, Exception) as e:  # noqa: BLE001 - any refusal names the step
            raise StepFailed("grant", str(e)) from None
        token = sign_grant(claims, key, kid)
        state = open_state(cfg)
        try:
            await state.record_grant(claims)
        finally:
            await state.close()
        audit = open_audit(cfg)
        try:
            audit_grant_issued(audit, claims, current_actor(), drill=True)
        finally:
            audit.close()
        self._done("grant", ",".join(self.targets), started, f"grant {claims['jti']}")
        return token, claims["jti"]

    async def _one_target(self, name: str, token: str, jti: str) -> None:
        kind = self.cfg.known_targets().get(name)
        if kind is None:
            raise StepFailed("connect", f"no target {name!r} in the config")
        started = time.monotonic()
        if kind == "postgres":
            await self._postgres(name, token, started)
        else:
            await self._ssh(name, token, started)
        started = time.monotonic()

        def finalized() -> Path | None:
            p = _recording_of(self.cfg, jti, self.wall0)
            if p is None:
                return None
            from breakglass.proxy.context import trusted_recorder_keys
            from breakglass.recorder.verify import MISSING_TRAILER, verify_recording

            r = verify_recording(p, trusted_recorder_keys(self.cfg))
            return p if r.ok or r.problem != MISSING_TRAILER else None

        path = await _wait_for("the session's recording was never finalized", "end", finalized)
        sid = path.stem
        self.result.sessions.append(sid)
        self._done("end", name, started, f"session {sid} closed")
        await self._verify(name, path)
        await self._alerts(name, sid)
        await self._review(name, sid)

    def _first_command(self) -> None:
        if self.result.request_to_first_command is None:
            self.result.request_to_first_command = round(time.monotonic() - self.t0, 3)

    async def _postgres(self, name: str, token: str, started: float) -> None:
        import asyncpg

        cfg = self.cfg
        if cfg.postgres_listen is None or cfg.tls_cert is None:
            raise StepFailed("connect", "the gateway has no PostgreSQL listener configured")
        ctx = ssl.create_default_context(cafile=str(cfg.tls_cert))
        try:
            conn = await asyncpg.connect(
                host=cfg.postgres_listen.host,
                port=cfg.postgres_listen.port,
                user=self.user,
                password=token,
                database=cfg.postgres_targets[name].database,
                ssl=ctx,
                server_settings={"application_name": "breakglass-drill"},
                timeout=WAIT,
            )
        except Exception as e:  # noqa: BLE001 - the drill reports what the client saw
            raise StepFailed("connect", f"psql to {name}: {type(e).__name__}: {e}") from None
        self._done(
            "connect",
            name,
            started,
            f"postgres {cfg.postgres_listen.host}:{cfg.postgres_listen.port}",
        )
        started = time.monotonic()
        try:
            got = await conn.fetchval(f"select '{self.nonce}'::text")
        except Exception as e:  # noqa: BLE001
            await conn.close()
            raise StepFailed("command", f"select on {name}: {e}") from None
        self._first_command()
        await conn.close()
        if got != self.nonce:
            raise StepFailed("command", f"select returned {got!r}, expected {self.nonce!r}")
        self._done("command", name, started, f"select '{self.nonce}' returned it")

    async def _ssh(self, name: str, token: str, started: float) -> None:
        import asyncssh

        cfg = self.cfg
        if cfg.ssh_listen is None or cfg.ssh_host_key is None:
            raise StepFailed("connect", "the gateway has no SSH listener configured")
        try:
            host_key = asyncssh.read_private_key(str(cfg.ssh_host_key)).convert_to_public()
            conn = await asyncssh.connect(
                cfg.ssh_listen.host,
                cfg.ssh_listen.port,
                username=name,
                password=token,
                known_hosts=([host_key], [], []),
                client_keys=None,
                agent_path=None,
                config=None,
                preferred_auth="password",
                connect_timeout=WAIT,
            )
        except Exception as e:  # noqa: BLE001
            raise StepFailed("connect", f"ssh to {name}: {type(e).__name__}: {e}") from None
        self._done("connect", name, started, f"ssh {cfg.ssh_listen.host}:{cfg.ssh_listen.port}")
        started = time.monotonic()
        try:
            res = await asyncio.wait_for(conn.run(f"echo {self.nonce}", check=False), WAIT)
        except Exception as e:  # noqa: BLE001
            conn.close()
            raise StepFailed("command", f"ssh {name} echo: {type(e).__name__}: {e}") from None
        self._first_command()
        conn.close()
        await conn.wait_closed()
        if self.nonce not in str(res.stdout) or res.exit_status != 0:
            raise StepFailed(
                "command",
                f"echo on {name} exited {res.exit_status}: {str(res.stderr).strip()[:200]}",
            )
        self._done("command", name, started, f"echo {self.nonce} came back")

    async def _verify(self, name: str, path: Path) -> None:
        from breakglass.proxy.context import trusted_recorder_keys
        from breakglass.recorder.verify import verify_recording

        started = time.monotonic()
        r = await asyncio.to_thread(verify_recording, path, trusted_recorder_keys(self.cfg))
        if not r.ok:
            raise StepFailed("verify", f"recording {path.name} FAILED: {r.message}")
        self._done("verify", name, started, f"{r.events} events, signed trailer")

    async def _alerts(self, name: str, sid: str) -> None:
        started = time.monotonic()

        def delivered() -> dict[str, Any] | None:
            replies = asyncio.run(_admin(self.cfg, "alerts"))
            if not replies:
                raise StepFailed("alerts", "no gateway answers on the admin socket")
            if not any(r.get("enabled") for r in replies):
                raise StepFailed(
                    "alerts",
                    "no alert webhooks are configured ([[alerts.webhooks]]): a real "
                    "break-glass use would alert nobody",
                )
            for r in replies:
                for a in r.get("alerts") or []:
                    if a.get("event") == "breakglass.used" and a.get("session") == sid:
                        if a.get("failed") and not a.get("delivered"):
                            raise StepFailed("alerts", "the break-glass alert was not delivered")
                        if a.get("delivered") and a.get("drill"):
                            return a
            return None

        a = await _wait_for(
            "no delivered breakglass.used alert labelled DRILL for the session", "alerts", delivered
        )
        self._done("alerts", name, started, f"breakglass.used [DRILL] delivered ({a['alert_id']})")

    async def _review(self, name: str, sid: str) -> None:
        from breakglass.cli.review_cmds import _open_index, _refresh
        from breakglass.policy.drill import is_drill
        from breakglass.proxy.context import trusted_recorder_keys
        from breakglass.recorder.alerts import review_settings
        from breakglass.recorder.index import SessionFilter
        from breakglass.recorder.review import load_reviews, review_queue

        started = time.monotonic()

        def queued():
            with _open_index(self.cfg) as index:
                _refresh(self.cfg, index)
                rows = index.query(SessionFilter(breakglass=True))
            items = review_queue(
                rows,
                load_reviews(self.cfg.audit_dir, trusted_recorder_keys(self.cfg)),
                deadline=review_settings(self.cfg).deadline,
                include_reviewed=True,
            )
            return next((i for i in items if i.session.session_id == sid), None)

        item = await _wait_for("the session is not in the review queue", "review", queued)
        if not is_drill(item.session.ticket, item.session.reason):
            raise StepFailed("review", f"session {sid} is queued but not marked as a drill")
        self._done("review", name, started, f"queued ({item.status}), ticket {item.session.ticket}")


def default_user(cfg: Config, template: Any) -> str:
    people = _expand(tuple(template.requesters), cfg.groups)
    if not people:
        raise CliError(f"template {template.name} names nobody who may use it; pass --user")
    return people[0]


def cmd_drill(args: argparse.Namespace) -> int:
    from breakglass.cli.review_cmds import _audit_access

    cfg = load_config(args.config)
    template = _pick_template(cfg, args.template)
    user = args.user or default_user(cfg, template)
    result = asyncio.run(Drill(cfg, list(args.target), template, user).run())
    _audit_access(
        cfg,
        "drill.completed" if result.ok else "drill.failed",
        ",".join(result.sessions) or None,
        ticket=result.ticket,
        targets=list(args.target),
        failed_step=result.failed_step,
        request_to_first_command=result.request_to_first_command,
    )
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"break-glass drill {result.ticket}: {user} via template {template.name}")
        for i, s in enumerate(result.steps, 1):
            print(f"  {i}. {s.step:<8} {s.target:<12} {s.seconds:7.3f} s  ok  {s.detail}")
        if result.request_to_first_command is not None:
            print(f"request to first command: {result.request_to_first_command:.3f} s")
        if result.ok:
            print("drill PASSED")
        else:
            print(f"drill FAILED at step '{result.failed_step}': {result.error}", file=sys.stderr)
    return 0 if result.ok else 1
