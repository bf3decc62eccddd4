"""Live sessions: one per authenticated connection, ended at expiry, revocation or kill.

A protocol handler creates a ``Session`` through ``SessionRegistry.open``,
sets ``on_terminate`` (tell the client why, close both sides) and ``on_warn``,
and calls ``Session.finish`` when the connection is gone. The registry owns
the timers: warning before expiry and termination at the grant's ``exp``.
"""

from __future__ import annotations

import asyncio
import heapq
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from breakglass.policy.drill import is_drill
from breakglass.policy.grants import Grant, GrantTarget, utc_text
from breakglass.proxy.held_sockets import HeldSockets
from breakglass.proxy.logs import log
from breakglass.recorder import alerts
from breakglass.recorder.format import RecorderError
from breakglass.recorder.space import SpaceReserve, is_storage_error

#: A terminating handler gets this long to say goodbye before the connection is aborted.
TERMINATE_GRACE = 0.5
#: A session's connections still open this long after its ``exp`` (or after it was ended on
#: the loop) are shut down by the expiry watch thread: the loop did not get to them.
CUT_AFTER = 0.6


@dataclass(frozen=True)
class Termination:
    kind: str  # expired | revoked | killed | recorder-failed
    message: str  # shown to the engineer, e.g. "grant expired"


class SessionRefused(Exception):
    """A session cannot start now (storage or audit log unavailable); the message says why."""


def new_session_id() -> str:
    """Time-sortable and unguessable: ``20261122T101503Z-3f9a1c2b7d``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(5)


class Session:
    def __init__(
        self,
        registry: SessionRegistry,
        *,
        protocol: str,
        grant: Grant,
        target: GrantTarget,
        client: str,
        recorder: Any,
        session_id: str,
    ) -> None:
        self.registry = registry
        self.id = session_id
        self.protocol = protocol
        self.grant = grant
        self.target = target
        self.client = client
        self.recorder = recorder
        self.started_at = time.time()
        self.commands = 0
        self.denials = 0
        self.ended = False
        self.termination: Termination | None = None
        self.on_terminate: Callable[[Termination], Awaitable[None]] | None = None
        self.on_warn: Callable[[float], None] | None = None
        #: tell the engineer something from the gateway (e.g. that someone is watching)
        self.on_notice: Callable[[str], None] | None = None
        self.abort: Callable[[], None] | None = None
        #: the client and upstream sockets, for the expiry watch to cut off (``CUT_AFTER``)
        self.sockets = HeldSockets()
        self._cut_scheduled = False
        self._timers: list[asyncio.TimerHandle] = []
        self._loop = asyncio.get_running_loop()
        self._end_lock = threading.Lock()  # the recording's end: loop or expiry watch
        #: the gate reads the recording's own clock, so "recorded before exp" is exact
        self._clock: Callable[[], float] = getattr(recorder, "now", time.time)
        # The gate runs on every read: its grant facts, read once (a grant never changes).
        self._jti = grant.jti
        self._exp = grant.expires_at
        self._held_marked = False  # the loop recorded a not_forwarded event
        hold_after = getattr(recorder, "hold_after", None)
        if hold_after is not None:
            hold_after(self._exp)

    @property
    def deadline(self) -> float:
        return self.grant.expires_at

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "protocol": self.protocol,
            "user": self.grant.subject,
            "target": self.target.name,
            "account": self.target.account,
            "client": self.client,
            "grant": self.grant.jti,
            "template": self.grant.template,
            "breakglass": self.grant.breakglass,
            "started_at": self.started_at,
            "expires_at": self.deadline,
            "commands": self.commands,
            "denials": self.denials,
            "recording": str(getattr(self.recorder, "path", "")),
        }

    def forwarding_allowed(self, recorded_since: int | None = None) -> bool:
        """The hard gate, checked before anything is judged or recorded and again right before
        it is forwarded, either way: False once the session is ending, its grant is revoked
        or past ``exp``. A timer that runs late under load therefore never lets a byte
        through; the gate starts the termination itself. ``recorded_since``: what is held back
        was already recorded, as the events from this ``seq`` on, so the recording says they
        were not forwarded."""
        if self.termination is not None or self.ended:
            return False
        if self._jti not in self.registry.revoked and self._clock() < self._exp:
            return True  # the grant holds (the common case, without building a verdict)
        why = self._grant_over()
        if why is None:
            return True
        if recorded_since is not None:
            try:
                self.recorder.event("not_forwarded", since_seq=recorded_since, reason=why.kind)
                self._held_marked = True
            except Exception:
                pass
        self.end_now(why)
        return False

    def _grant_over(self) -> Termination | None:
        """Revoked, or past ``exp`` by the recording's clock; None while the grant holds."""
        if self.grant.jti in self.registry.revoked:
            return Termination("revoked", "grant revoked")
        if self._clock() >= self.grant.expires_at:
            return self.expiry()
        return None

    def expiry(self) -> Termination:
        return Termination("expired", f"grant expired at {utc_text(self.deadline)}")

    def ended_by(self) -> Termination | None:
        """Why the session is over, if it is (terminated, revoked, or past its grant's exp)."""
        return self.termination or self._grant_over()

    def end_now(self, termination: Termination) -> asyncio.Future | None:
        """Close the gate at once and start ending the session (the goodbye and closing run
        as a task, returned). Safe to call more than once; later calls return None."""
        if self.ended or self.termination is not None:
            return None
        self.termination = termination
        log.info("session.terminate", session=self.id, kind=termination.kind)
        self._end_recording(termination)
        self.schedule_cut(time.time() + CUT_AFTER)
        return self.registry.keep(asyncio.ensure_future(self._terminate(termination)))

    def _end_recording(self, termination: Termination) -> None:
        """Nothing passes the gate from here on, so the recording is complete: end it now (its
        end time is the session's); fsync and close follow when the sockets are gone."""
        with self._end_lock:
            try:
                late = getattr(self.recorder, "first_late_seq", None)
                if late is not None and not self._held_marked:
                    # Recorded at or after exp while the loop was between writing and its
                    # second gate check: that check fails, but this end may come first.
                    self.recorder.event("not_forwarded", since_seq=late, reason=termination.kind)
                self.recorder.event(
                    "terminate", reason=termination.kind, message=termination.message
                )
                self.recorder.finish(termination.kind, commands=self.commands, denials=self.denials)
            except Exception:
                pass  # already ended (by the expiry watch), or the recording failed

    def expired_off_loop(self) -> bool | None:
        """Called by the expiry watch thread at ``exp``: end the recording now, then let the
        loop end the connection. False: not yet expired by the recording's clock."""
        if self.ended or self.termination is not None:
            return None
        if self._clock() < self.grant.expires_at:
            return False
        why = self.expiry()
        self._end_recording(why)
        self.schedule_cut(self._exp + CUT_AFTER)
        try:
            self._loop.call_soon_threadsafe(self.end_now, why)
        except RuntimeError:
            pass  # the loop is closed: the gateway is gone

    def schedule_cut(self, at: float) -> None:
        """Have the expiry watch cut the connections off at ``at`` (wall clock) unless the
        session has ended by then. Once per session; from the loop or the watch."""
        watch = getattr(self.registry, "expiry", None)
        if self._cut_scheduled or self.ended or watch is None:
            return
        self._cut_scheduled = True
        watch.cut_at(self, at)

    def cut_off_loop(self) -> None:
        """Called by the expiry watch at the time ``schedule_cut`` set: the loop has not
        closed the connections yet (it is behind, or still waiting on a peer); shut them
        down."""
        if self.ended:
            return
        cut = self.sockets.shutdown()
        if not cut:
            return
        if self.termination is None:  # the loop has not even begun to end it: it is behind
            log.warning("session.cut_off_loop", session=self.id, kind="expired", sockets=cut)
        else:  # the loop is ending it, still waiting on a peer (e.g. its TLS close)
            log.info("session.cut_while_closing", session=self.id, kind=self.termination.kind)

    async def terminate(self, termination: Termination) -> None:
        """End the session for ``termination``; bounded in time, safe to call twice."""
        task = self.end_now(termination)
        if task is not None:
            await task

    async def _terminate(self, termination: Termination) -> None:
        if self.on_terminate is not None:
            try:
                await asyncio.wait_for(self.on_terminate(termination), TERMINATE_GRACE)
            except Exception as e:  # includes TimeoutError: fall through to a hard abort
                log.warning("session.terminate_slow", session=self.id, error=type(e).__name__)
        if not self.ended and self.abort is not None:
            self.abort()

    def finish(self, reason: str | None = None, **fields: Any) -> None:
        """The connection is gone: close the recording (off the event loop: it fsyncs),
        then forget the session. Safe to call more than once."""
        if self.ended:
            return
        self.ended = True
        self.sockets.release()
        for t in self._timers:
            t.cancel()
        end = reason or (self.termination.kind if self.termination else "closed")
        fields.update(commands=self.commands, denials=self.denials)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._close_recording(end, fields)
            self.registry._forget(self, end)
            return
        self.registry.keep(loop.create_task(self._finish_async(end, fields)))

    async def _finish_async(self, end: str, fields: dict[str, Any]) -> None:
        # the end event and trailer are written now, on the loop (its time is the session's
        # end); fsync and the read-only mode follow on a thread
        self.recorder.finish(end, **fields)
        await asyncio.to_thread(self._close_recording, end, fields)
        self.registry._forget(self, end)

    def _close_recording(self, end: str, fields: dict[str, Any]) -> None:
        try:
            self.recorder.close(end, **fields)
        except Exception as e:
            log.error("recording.close_failed", session=self.id, error=str(e))
        alerter = alerts.current()
        if alerter is not None:
            alerter.check_recording(
                Path(self.recorder.path),
                self.registry.trusted_keys,
                user=self.grant.subject,
                target=self.target.name,
            )
            alerter.session_ended(self.id)

    def count_denial(self, rule: str = "unknown") -> None:
        """One refused command or statement (alerts on N within a window)."""
        self.denials += 1
        if self.registry.metrics is not None:
            self.registry.metrics.denials.labels(self.protocol, rule).inc()
        alerts.notify(
            "denial",
            session=self.id,
            user=self.grant.subject,
            target=self.target.name,
            protocol=self.protocol,
        )

    def recording_ended_on_purpose(self) -> bool:
        """A write to the recording was refused because the session is over (``exp``, revoke,
        kill: the recording was ended for it), not because it failed: make sure the session
        ends, and say so (the caller forwards nothing and reports no failure)."""
        ended = self.ended_by()
        if ended is None or self.recorder.failed is not None:
            return False
        self.end_now(ended)
        return True

    def recorder_failed(self, exc: BaseException) -> None:
        """The recording cannot be written: no recording, no access. A storage error (disk
        full, EIO, read-only) ends every session writing there: their next write would fail."""
        if self.ended or (self.termination and self.termination.kind == "recorder-failed"):
            return
        if self.recording_ended_on_purpose():
            return
        log.error("recording.failed", session=self.id, error=str(exc))
        try:
            self.registry.audit.append("session.recording_failed", session=self.id, error=str(exc))
        except RecorderError:
            log.error("audit.lost", type="session.recording_failed", session=self.id)
        if is_storage_error(exc):
            self.registry.storage_failed(exc)
        self.end_now(Termination("recorder-failed", "the recording failed, so access ends"))


class ExpiryWatch:
    """Ends recordings at their grant's ``exp`` from a thread of its own, so a saturated event
    loop (timers running late) cannot delay the end of a recording: once its end event and
    trailer are written, nothing more can be recorded, and the loop's gate forwards nothing
    that is not recorded. The loop then says goodbye and closes the sockets when it gets to
    them (``Session.end_now``); connections it has not closed ``CUT_AFTER`` later, this
    thread shuts down (``Session.cut_off_loop``)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Session, bool]] = []  # (when, n, session, cut)
        self._cond = threading.Condition()
        self._n = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, session: Session) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="expiry-watch", daemon=True)
                self._thread.start()
            self._n += 1
            heapq.heappush(self._heap, (session.deadline, self._n, session, False))
            self._cond.notify()

    def cut_at(self, session: Session, at: float) -> None:
        with self._cond:
            if self._stopped or self._thread is None:
                return
            self._n += 1
            heapq.heappush(self._heap, (at, self._n, session, True))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.time())
                if self._stopped:
                    return
                deadline, n, session, cut = heapq.heappop(self._heap)
            if cut:
                session.cut_off_loop()
            elif session.expired_off_loop() is False:  # its recording's clock is a hair behind
                with self._cond:
                    heapq.heappush(self._heap, (deadline + 0.001, n, session, False))


class SessionRegistry:
    """All live sessions of this gateway process."""

    def __init__(
        self,
        *,
        recordings_dir: Path,
        make_recorder: Callable[[Path, dict[str, Any], Callable[[BaseException], None]], Any],
        audit: Any,
        gateway_name: str,
        warn_before: float = 120.0,
        trusted_keys: dict[str, Any] | None = None,
    ) -> None:
        self.recordings_dir = recordings_dir
        self.make_recorder = make_recorder
        self.audit = audit
        self.gateway_name = gateway_name
        self.warn_before = warn_before
        self.trusted_keys = trusted_keys or {}  # recorder keys, to verify closed recordings
        self.sessions: dict[str, Session] = {}
        self._ended = asyncio.Event()
        self._closing: set[asyncio.Future] = set()  # ending work in flight (``keep``)
        #: jtis known revoked (the gateway's set): the forwarding gate checks it
        self.revoked: set[str] = set()
        self.metrics: Any = None  # proxy.metrics.GatewayMetrics, when the gateway has one
        self.expiry = ExpiryWatch()
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        self.reserve = SpaceReserve(self.recordings_dir)
        #: why new sessions are refused while the recordings storage cannot be written
        self.storage_fault: str | None = None
        if not self.reserve.ensure():
            self.storage_fault = "the recordings directory has no free space"

    def open(
        self, *, protocol: str, grant: Grant, target: GrantTarget, client: str, **header: Any
    ) -> Session:
        """Start recording, audit the start and register the session. Raises
        ``SessionRefused`` (with the reason for the engineer) when the recording or the audit
        log cannot be written; nothing is left behind then."""
        if self.storage_fault is not None and not self._storage_recovered():
            self._count_refused("recordings")
            raise SessionRefused(self.storage_fault)
        sid = new_session_id()
        hdr = {
            "session_id": sid,
            "protocol": protocol,
            "gateway": self.gateway_name,
            "user": grant.subject,
            "target": target.name,
            "account": target.account,
            "client": client,
            "grant_jti": grant.jti,
            "template": grant.template,
            "reason": grant.reason,
            "ticket": grant.ticket,
            "breakglass": grant.breakglass,
            "started_at": time.time(),
            "expires_at": grant.expires_at,
        }
        hdr.update(header)
        loop = asyncio.get_running_loop()
        holder: list[Session] = []

        def on_failure(exc: BaseException) -> None:  # called from the recorder's thread
            if holder:
                loop.call_soon_threadsafe(holder[0].recorder_failed, exc)

        path = self.recordings_dir / f"{sid}.rec"
        try:
            recorder = self.make_recorder(path, hdr, on_failure)
        except RecorderError as e:
            self._count_refused("recordings")
            if is_storage_error(e):
                self.storage_failed(e.__cause__ or e)
                raise SessionRefused(self.storage_fault) from e
            raise SessionRefused(f"the session recording could not be started ({e})") from e
        try:
            self.audit.append(
                "session.start",
                session=sid,
                protocol=protocol,
                user=grant.subject,
                target=target.name,
                account=target.account,
                client=client,
                jti=grant.jti,
                breakglass=grant.breakglass,
            )
        except RecorderError as e:
            # nothing was forwarded and nothing audits this session: leave nothing behind
            try:
                recorder.close("refused", error="the audit log cannot be written")
            except RecorderError:
                pass
            path.unlink(missing_ok=True)
            self._count_refused("audit")
            raise SessionRefused(
                "the audit log cannot be written, so no session can start now"
            ) from e
        session = Session(
            self,
            protocol=protocol,
            grant=grant,
            target=target,
            client=client,
            recorder=recorder,
            session_id=sid,
        )
        holder.append(session)
        self.sessions[sid] = session
        self._schedule(session)
        self.expiry.add(session)
        if self.metrics is not None:
            self.metrics.session_started(
                protocol,
                target.name,
                grant.breakglass,
                drill=is_drill(grant.ticket, grant.reason),  # drills counted apart
            )
        log.info(
            "session.start", session=sid, protocol=protocol, user=grant.subject, target=target.name
        )
        if grant.breakglass:
            alerts.notify(
                "breakglass.used",
                session=sid,
                user=grant.subject,
                target=target.name,
                account=target.account,
                protocol=protocol,
                client=client,
                jti=grant.jti,
                reason=grant.reason,
                ticket=grant.ticket,
            )
        return session

    def _schedule(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        left = session.deadline - time.time()
        if self.warn_before and left > self.warn_before:
            session._timers.append(loop.call_later(left - self.warn_before, self._warn, session))
        session._timers.append(
            loop.call_later(
                max(0.0, left),
                lambda: session.end_now(session.expiry()),
            )
        )

    def _warn(self, session: Session) -> None:
        if session.on_warn and not session.ended:
            try:
                session.on_warn(session.deadline - time.time())
            except Exception as e:
                log.warning("session.warn_failed", session=session.id, error=str(e))

    def keep(self, task: asyncio.Future) -> asyncio.Future:
        """Hold a reference to ``task`` (work that ends a session, running on its own) until
        it is done, so that it is not garbage-collected half-way."""
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    def _forget(self, session: Session, end: str) -> None:
        self.sessions.pop(session.id, None)
        self._ended.set()
        if self.metrics is not None:
            self.metrics.session_ended(session.protocol, session.target.name, end)
        try:
            self.audit.append(
                "session.end",
                session=session.id,
                user=session.grant.subject,
                target=session.target.name,
                reason=end,
                commands=session.commands,
                denials=session.denials,
                duration=round(time.time() - session.started_at, 3),
            )
        except RecorderError:
            log.error("audit.lost", type="session.end", session=session.id, reason=end)
        log.info("session.end", session=session.id, reason=end)

    # -- storage faults: fail closed, recover by themselves

    def storage_failed(self, exc: BaseException) -> None:
        """The recordings storage cannot be written: refuse new sessions, end the running ones
        (nothing more is forwarded), and free the reserve so their recordings can be
        finalized."""
        if self.storage_fault is None:
            reason = getattr(exc, "strerror", None) or str(exc)
            self.storage_fault = (
                f"the recordings storage cannot be written ({reason}); "
                "no new sessions until it recovers"
            )
            log.error("recording.storage_fault", error=str(exc), sessions=len(self.sessions))
            try:
                self.audit.append("recording.storage_fault", error=str(exc))
            except RecorderError:
                log.error("audit.lost", type="recording.storage_fault")
            self.reserve.release()
        self.end_all(Termination("recorder-failed", self.storage_fault))

    def audit_failed(self, message: str) -> None:
        """The audit log cannot be written: nothing may run unaudited."""
        self.end_all(Termination("recorder-failed", message))

    def _count_refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.refused_sessions.labels(reason).inc()

    def end_all(self, termination: Termination) -> None:
        for s in list(self.sessions.values()):
            s.end_now(termination)

    def _storage_recovered(self) -> bool:
        """Probe: can the reserve be allocated again? Then the storage has room again."""
        if not self.reserve.recovered():
            return False
        log.info("recording.storage_recovered", directory=str(self.recordings_dir))
        try:
            self.audit.append("recording.storage_recovered")
        except RecorderError:
            pass
        self.storage_fault = None
        return True

    async def wait_idle(self) -> None:
        """Return once no session is live (their recordings are then closed)."""
        while self.sessions:
            self._ended.clear()
            await self._ended.wait()

    async def kill(self, session_id: str, actor: str, reason: str = "") -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return False
        try:
            self.audit.append(
                "session.killed",
                session=session_id,
                actor=actor,
                reason=reason,
                user=session.grant.subject,
            )
        except RecorderError:
            log.error("audit.lost", type="session.killed", session=session_id)
        await session.terminate(Termination("killed", f"killed by {actor}"))
        return True

    async def revoke(self, jti: str, reason: str = "") -> int:
        self.revoked.add(jti)
        victims = [s for s in self.sessions.values() if s.grant.jti == jti]
        for s in victims:
            try:
                self.audit.append(
                    "session.revoked", session=s.id, jti=jti, reason=reason, user=s.grant.subject
                )
            except RecorderError:
                log.error("audit.lost", type="session.revoked", session=s.id)
        await asyncio.gather(
            *(s.terminate(Termination("revoked", "grant revoked")) for s in victims)
        )
        return len(victims)

    async def terminate_all(self, termination: Termination) -> None:
        await asyncio.gather(*(s.terminate(termination) for s in list(self.sessions.values())))
