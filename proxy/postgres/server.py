"""The PostgreSQL listener: TLS, grant authentication, upstream login, judged relay, cancel, kill.

Bytes enter in ``_relay_client`` (client -> upstream) and ``_relay_upstream``
(upstream -> client); they are judged and recorded by ``Relay`` (relay.py)
and framed by ``codec``. Everything here is I/O and lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import secrets
import socket
import ssl
import time
from collections import Counter
from typing import Any

from breakglass.policy.grants import Grant, utc_text
from breakglass.policy.sql_settings import StartupRefused
from breakglass.proxy.config import PostgresTarget
from breakglass.proxy.logs import log
from breakglass.proxy.postgres import codec
from breakglass.proxy.postgres.auth import AuthError, UpstreamAuth
from breakglass.proxy.postgres.codec import (
    CancelRequest,
    GSSENCRequest,
    MessageReader,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    StartupReader,
)
from breakglass.proxy.postgres.function_names import FunctionNames
from breakglass.proxy.postgres.relay import BOOKKEEPING, Relay, SessionBroken
from breakglass.proxy.sessions import Session, SessionRefused, Termination
from breakglass.recorder.format import RecorderError

_perf = time.perf_counter

STARTUP_TIMEOUT = 30.0
#: Connections one address may have in startup/authentication at once.
MAX_UNAUTHENTICATED_PER_SOURCE = 32  # the default of gateway.preauth_per_source
#: Query/Parse messages larger than this are judged on a worker thread (parsing costs ~1 µs/byte).
LARGE_STATEMENT = 4 * 1024
UPSTREAM_TIMEOUT = 10.0
#: A closing connection still flushing to a peer that stopped reading is aborted after this.
CLOSE_FLUSH = 0.3
#: Logins connecting to one target at once (the rest queue): a burst of 1,000 logins would
#: otherwise ask the server for 1,000 backends together and most would time out at once.
UPSTREAM_CONNECTS = 32
#: How long a login waits for a free upstream connect before it is refused.
UPSTREAM_QUEUE_TIMEOUT = 60.0
AUTH_MAX_MESSAGE = 32 * 1024
READ_SIZE = 256 * 1024
ADMIN_SHUTDOWN = "57P01"


class Refused(Exception):
    """End the connection with a FATAL ErrorResponse carrying this message."""

    def __init__(self, message: str, sqlstate: str = "28000") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def server_tls_context(cert: Any, key: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    # Direct TLS (libpq 17+ sslnegotiation=direct) must offer this ALPN name; a client on
    # the SSLRequest path that offers other names simply gets none (no handshake failure).
    ctx.set_alpn_protocols([codec.DIRECT_TLS_ALPN])
    return ctx


def upstream_tls_context(target: PostgresTarget) -> ssl.SSLContext | None:
    if target.tls != "verify-full":
        return None
    ctx = ssl.create_default_context(cafile=str(target.ca_file))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class CancelKeys:
    """Gateway-issued BackendKeyData -> live connection (never the upstream's keys)."""

    def __init__(self, worker: int = 0, workers: int = 1) -> None:
        self.by_pid: dict[int, tuple[bytes, PgConnection]] = {}
        self.worker, self.workers = worker, workers

    def owner(self, pid: int) -> int:
        """Which worker issued ``pid`` (they are issued so that pid % workers == worker)."""
        return pid % self.workers

    def issue(self, conn: PgConnection, key_len: int = 4) -> tuple[int, bytes]:
        """A fresh (pid, key): 4-byte keys for protocol 3.0 clients, longer for 3.2."""
        while True:
            pid = (
                secrets.randbelow((2**31 - 1) // self.workers - 1) + 1
            ) * self.workers + self.worker
            if pid not in self.by_pid:
                break
        key = secrets.token_bytes(key_len)
        self.by_pid[pid] = (key, conn)
        return pid, key

    def lookup(self, pid: int, key: bytes) -> PgConnection | None:
        entry = self.by_pid.get(pid)
        if entry and hmac.compare_digest(entry[0], key):
            return entry[1]
        return None

    def drop(self, pid: int | None) -> None:
        if pid is not None:
            self.by_pid.pop(pid, None)


class PgConnection:
    """One client connection, from its first byte to its close."""

    def __init__(
        self,
        listener: PostgresListener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direct_tls: bool = False,
    ):
        self.listener = listener
        self.gw = listener.gw
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_ip = str(peer[0])
        #: Direct TLS: the acceptor did the handshake before the first protocol byte.
        self.tls = self.direct_tls = direct_tls
        #: Protocol version agreed with the client, and with the upstream.
        self.protocol = codec.PROTOCOL_3_0
        self.up_protocol = codec.PROTOCOL_3_0
        self.session: Session | None = None
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None
        self.up_key: tuple[int, bytes] | None = None
        self.target: PostgresTarget | None = None
        self.our_pid: int | None = None
        self.relay: Relay | None = None
        self.rules: Any = None
        self.settings: dict[str, str] = {}
        self.login_params: dict[str, str] = {}  # the upstream's ParameterStatus at login
        self.done: asyncio.Future | None = None
        self.sides: tuple[_Side, _Side] | None = None  # (client, upstream) while relaying
        self.early = b""
        self.closing = False

    # -- entry point ----------------------------------------------------------

    async def serve(self) -> None:
        preauth = self.gw.preauth  # unauthenticated connections, shared with SSH
        try:
            full = preauth.admit(self.client_ip)
            if full:
                raise Refused(full, "53300")
            try:
                startup = await asyncio.wait_for(self._startup(), STARTUP_TIMEOUT)
                if startup is None:
                    return
                grant = await asyncio.wait_for(self._authenticate(startup), STARTUP_TIMEOUT)
            finally:
                preauth.release(self.client_ip)
            await self._open_session(startup, grant)
            await self._relay()
        except Refused as e:
            self._fatal(e.sqlstate, f"breakglass: {e}")
        except RecorderError:
            ended = self.session.ended_by() if self.session is not None else None
            if ended is not None and self.session.recorder.failed is None:
                self._fatal(ADMIN_SHUTDOWN, f"breakglass: {ended.message} — session closed")
            else:
                self._fatal(
                    "58030",
                    "breakglass: the recording failed, so the session was closed "
                    "(no recording, no access)",
                )
        except SessionBroken as e:
            self._fatal("42501", f"breakglass: {e} — session closed")
        except ProtocolError as e:
            self._fatal(e.sqlstate, f"breakglass: protocol error: {e}")
        except TimeoutError:
            self._fatal("08P01", "breakglass: timed out during connection startup")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, EOFError):
            pass
        except Exception as e:  # never let one connection take the gateway down
            log.exception(
                "postgres.connection_error", client=self.client_ip, error=type(e).__name__
            )
            self._fatal("XX000", "breakglass: internal error; the session was closed")
        finally:
            await self._close()

    def _fatal(self, sqlstate: str, message: str) -> None:
        if self.writer.is_closing():
            return
        with contextlib.suppress(Exception):
            self.writer.write(codec.encode_error("FATAL", sqlstate, message))

    # -- startup: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage -----

    def _check_direct_tls(self) -> None:
        """Direct TLS (``sslnegotiation=direct``, handshake done by the acceptor): the client
        must have offered ALPN "postgresql", as PostgreSQL 17 requires; without it the
        connection could be another protocol's client (a cross-protocol attack)."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != codec.DIRECT_TLS_ALPN:
            raise ProtocolError(
                "received direct TLS connection without ALPN protocol "
                f'"{codec.DIRECT_TLS_ALPN}": use sslnegotiation=direct with libpq 17 or newer'
            )

    async def _startup(self) -> StartupMessage | None:
        if self.direct_tls:
            self._check_direct_tls()
        sr = StartupReader()
        while True:
            packet = sr.next()
            if packet is None:
                data = await self.reader.read(4096)
                if not data:
                    return None
                sr.feed(data)
                continue
            if isinstance(packet, SSLRequest):
                if sr.buffered or self.reader._buffer:  # noqa: SLF001
                    # Plaintext bytes queued before the handshake must never be read as if
                    # they had arrived over TLS (CVE-2021-23214).
                    raise ProtocolError("data received after SSLRequest before the TLS handshake")
                if self.tls:
                    raise ProtocolError("SSLRequest received twice")
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.listener.tls)
                self.tls = True
                sr.start_tls()
            elif isinstance(packet, GSSENCRequest):
                self.writer.write(b"N")
            elif isinstance(packet, CancelRequest):
                await self.listener.cancel(packet)
                return None
            else:
                if not self.tls:
                    log.info(
                        "connection.refused",
                        protocol="postgres",
                        client=self.client_ip,
                        reason="tls-required",
                    )
                    raise Refused(
                        "TLS is required: connect with sslmode=verify-full (the grant is a password)",
                        "28000",
                    )
                negotiate = codec.negotiate_protocol_version_for(packet)
                if negotiate:
                    self.writer.write(negotiate)
                self.protocol = packet.negotiated
                self.early = sr.take_buffer()  # a client may pipeline its password
                return packet

    async def _authenticate(self, startup: StartupMessage) -> Grant:
        user = startup.params.get("user", "")
        database = startup.params.get("database") or user
        if not user:
            raise Refused("no user name given (use your own user name)")
        self.writer.write(codec.encode_auth_cleartext())
        await self.writer.drain()
        mr = MessageReader(max_len=AUTH_MAX_MESSAGE, initial=self.early)
        while (msg := mr.next()) is None:
            data = await self.reader.read(4096)
            if not data:
                raise ConnectionResetError
            mr.feed(data)
        if msg.type != b"p":
            raise ProtocolError(f"expected a password message, got {msg.type!r}")
        token = codec.decode_password(msg.body)
        self.early = mr.take_buffer()  # pipelined queries, handed to the relay
        result = await self.gw.authorize(
            token, protocol="postgres", target_name=database, source=self.client_ip, user=user
        )
        if not isinstance(result, Grant):
            raise Refused(result.message)
        target = self.gw.cfg.postgres_targets.get(database)
        if target is None:
            raise Refused(f"no postgres target named {database!r} on this gateway")
        self.target = target
        return result

    # -- session and upstream ---------------------------------------------------

    async def _open_session(self, startup: StartupMessage, grant: Grant) -> None:
        target = self.target
        assert target is not None
        gt = self.gw.target_of(grant, "postgres", target.name)
        from breakglass.policy.sql_rules import SqlChecker, SqlRules

        try:
            rules = SqlRules.from_claim(dict(grant.sql) or {"mode": "read-only"})
        except ValueError as e:
            raise Refused(f"grant's sql rules are invalid: {e}") from None
        try:
            # Every startup parameter and -c option is applied (judged like SET) or the
            # connection is refused naming it: never dropped silently.
            self.settings = rules.startup_settings(startup.params)
        except StartupRefused as e:
            log.info("postgres.startup_refused", client=self.client_ip, reason=str(e))
            self.gw.audit.append(
                "session.refused",
                protocol="postgres",
                target=target.name,
                client=self.client_ip,
                subject=grant.subject,
                jti=grant.jti,
                message=str(e),
            )
            raise Refused(f"{e}", "42501") from None
        try:
            session = self.gw.registry.open(
                protocol="postgres",
                grant=grant,
                target=gt,
                client=self.client_ip,
                database=target.database,
                sql_mode=rules.mode,
            )
        except SessionRefused as e:
            log.error("session.refused", target=target.name, error=str(e))
            raise Refused(f"{e} (no recording, no access)", "53100") from None
        self.session = session
        session.on_terminate = self._terminate
        session.on_warn = self._warn
        session.on_notice = self._notice
        session.abort = self._abort
        self.relay = Relay(
            self.listener.checker_for(
                (rules, guard := self.gw.role_guard(target, grant)),
                lambda _key: SqlChecker(rules, role_guard=guard),
            ),
            session.recorder,
            allow_everything=rules.mode == "all",
            record_parameters=target.record_parameters,
            on_denial=self._count_denial,
            on_statement=self._count_statement,
            parameter_problem=self._parameter_problem,
        )
        if rules.mode == "all":  # FunctionCall passes: name each function it calls
            self.relay.function_names = FunctionNames(target, gt.db_user, session.recorder)
        self.rules = rules
        slots = self.listener.upstream_slots(target.name)
        try:
            async with asyncio.timeout(UPSTREAM_QUEUE_TIMEOUT):
                await slots.acquire()
        except TimeoutError:
            raise Refused(
                f"target {target.name} is busy: too many logins at once, try again", "53300"
            ) from None
        try:
            self.listener.connecting += 1
            self.listener.peak_connecting = max(
                self.listener.peak_connecting, self.listener.connecting
            )
            params = await asyncio.wait_for(
                self._connect_upstream(startup, gt.db_user), UPSTREAM_TIMEOUT
            )
        except TimeoutError:
            raise Refused(f"target {target.name} did not answer in time", "08006") from None
        except OSError as e:
            raise Refused(
                f"cannot reach target {target.name}: {e.strerror or e}", "08006"
            ) from None
        except AuthError as e:
            log.error("upstream.auth_failed", target=target.name, error=str(e))
            raise Refused(
                f"the gateway could not log in to target {target.name}: {e}", "08006"
            ) from None
        finally:
            self.listener.connecting -= 1
            slots.release()
        self.login_params = dict(params)
        self.our_pid, key = self.listener.cancel_keys.issue(
            self, codec.cancel_key_length(self.protocol)
        )
        log.info(
            "postgres.protocol",
            session=session.id,
            client=codec.protocol_text(self.protocol),
            upstream=codec.protocol_text(self.up_protocol),
            direct_tls=self.direct_tls,
        )
        out = [codec.encode_auth_ok()]
        out += [codec.encode_parameter_status(k, v) for k, v in params]
        out.append(codec.encode_backend_key_data(self.our_pid, key))
        out.append(
            codec.encode_notice(
                "NOTICE",
                "00000",
                f"breakglass: session {session.id} to {target.name} as {gt.db_user} is recorded; "
                f"{rules.mode} access until {utc_text(grant.expires_at)}",
            )
        )
        out.append(codec.encode_ready_for_query("I"))
        self.writer.write(b"".join(out))
        await self.writer.drain()

    async def _connect_upstream(
        self, startup: StartupMessage, db_user: str
    ) -> list[tuple[str, str]]:
        target = self.target
        assert target is not None
        password = target.password(db_user)
        reader, writer = await asyncio.open_connection(target.host, target.port)
        self.up_reader, self.up_writer = reader, writer
        ctx = upstream_tls_context(target)
        if ctx is not None:
            writer.write(codec.encode_ssl_request())
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer != b"S":
                raise AuthError(f"target {target.name} does not offer TLS")
            await writer.start_tls(ctx, server_hostname=target.host)
        # The client's settings as judged at session open, with what the SQL checker
        # relies on pinned (UTF8, standard_conforming_strings, read-only, search_path):
        # pinned as startup values, they are also what RESET ALL / DISCARD ALL restore.
        settings = dict(self.settings)
        app = startup.params.get("application_name", settings.pop("application_name", ""))
        params = {"user": db_user, "database": target.database, **settings}
        params["application_name"] = f"breakglass:{self.session.grant.subject}:{app}"[:63]
        if target.connection_check:  # a statement does not run on once the gateway is gone
            params["client_connection_check_interval"] = f"{target.connection_check}s"
        # Ask the upstream for the client's version: the messages relayed after login are
        # then valid for the client whichever of the two versions the upstream picks.
        writer.write(codec.encode_startup(params, protocol=self.protocol))
        await writer.drain()
        auth = UpstreamAuth(db_user, password)
        mr = MessageReader()
        statuses: list[tuple[str, str]] = []
        while True:
            msg = mr.next()
            if msg is None:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise AuthError("upstream closed the connection during login")
                mr.feed(data)
                continue
            if msg.type == b"R":
                code, payload = codec.decode_authentication(msg.body)
                reply = auth.handle(code, payload)
                if reply:
                    writer.write(reply)
                    await writer.drain()
            elif msg.type == b"S":
                name, value = codec.decode_parameter_status(msg.body)
                problem = self.rules.parameter_problem(name, value)
                if problem:
                    raise AuthError(f"upstream session is unsafe to judge: {problem}")
                statuses.append((name, value))
            elif msg.type == b"K":
                self.up_key = codec.decode_backend_key_data(msg.body)
            elif msg.type == b"E":
                fields = codec.decode_error_fields(msg.body)
                raise AuthError(fields.get("M", "login refused"))
            elif msg.type == b"v":
                version, options = codec.decode_negotiate_protocol_version(msg.body)
                if not codec.PROTOCOL_3_0 <= version <= self.protocol or options:
                    raise AuthError(
                        f"upstream negotiated protocol {codec.protocol_text(version)} "
                        f"(asked for {codec.protocol_text(self.protocol)})"
                    )
                self.up_protocol = version
            elif msg.type == b"N":
                pass
            elif msg.type == b"Z":
                if not auth.complete:
                    raise AuthError("upstream ready before authentication completed")
                leftover = mr.take_buffer()
                if leftover:
                    raise AuthError("unexpected data after upstream ReadyForQuery")
                return statuses
            else:
                raise AuthError(f"unexpected upstream message {msg.type!r} during login")

    # -- relay ------------------------------------------------------------------

    async def _relay(self) -> None:
        """Hand both sockets to ``_Side`` protocols: bytes are judged in callbacks, no task hops."""
        relay = self.relay
        assert relay is not None and self.up_writer is not None and self.up_reader is not None
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        client_t, up_t = self.writer.transport, self.up_writer.transport
        if self.session is not None:  # for the expiry watch, should this loop fall behind
            self.session.sockets.hold(client_t)
            self.session.sockets.hold(up_t)
        client_side = _Side(self, relay.from_client, up_t, "client")
        up_side = _Side(self, relay.from_server, client_t, "upstream")
        client_side.peer, up_side.peer = up_side, client_side
        client_side.source, up_side.source = client_t, up_t
        self.sides = (client_side, up_side)
        pending_client = self.early + _take_stream_buffer(self.reader)
        pending_up = _take_stream_buffer(self.up_reader)
        client_t.set_protocol(client_side)
        up_t.set_protocol(up_side)
        if pending_client:
            client_side.data_received(pending_client)
        if pending_up:
            up_side.data_received(pending_up)
        await self.done

    def _parameter_problem(self, name: str, value: str) -> str | None:
        """Judge an upstream ParameterStatus: the SQL rules' pinned settings, and (for
        restricted grants) the identity the session logged in with, which no statement a
        grant allows can change (DISCARD ALL restores it)."""
        problem = self.rules.parameter_problem(name, value)
        if problem or self.rules.mode == "all":
            return problem
        if name in ("session_authorization", "is_superuser"):
            before = self.login_params.get(name)
            if before is not None and value != before:
                return f"{name} changed from {before[:40]!r} to {value[:40]!r}"
        return None

    def prewarm_verdicts(self, messages: list) -> None:
        """On a worker thread: judge big statements so the relay finds their verdicts cached."""
        checker = self.relay.checker if self.relay is not None else None
        if checker is None:
            return
        for m in messages:
            try:
                if m.type == b"Q":
                    checker.check(codec.decode_query(m.body))
                elif m.type == b"P":
                    checker.check(codec.decode_parse(m.body).query, single=True)
            except ProtocolError:
                pass  # the relay reports it, in order

    def side_failed(self, exc: BaseException | None) -> None:
        if self.done is not None and not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def _count_denial(self, rule: str) -> None:
        if self.session:
            self.session.count_denial(rule)
            self.gw.takeover_attempt(self.session, rule)

    def _count_statement(self) -> None:
        if self.session:
            self.session.commands += 1

    # -- expiry, revocation, kill, cancel ---------------------------------------

    def _warn(self, seconds_left: float) -> None:
        minutes = max(1, round(seconds_left / 60))
        assert self.session is not None
        text = (
            f"breakglass: your grant expires in {minutes} minute(s), at "
            f"{utc_text(self.session.deadline)}; the session will then be closed"
        )
        if self._record_notice("WARNING", "01000", text):
            self.writer.write(codec.encode_notice("WARNING", "01000", text))

    def _notice(self, text: str) -> None:
        if self._record_notice("NOTICE", "01000", text):
            self.writer.write(codec.encode_notice("NOTICE", "01000", text))

    def _record_notice(self, severity: str, sqlstate: str, text: str) -> bool:
        """Record a message the gateway itself sends the engineer (shown by replay/export)."""
        if self.session is None:
            return False
        try:
            self.session.recorder.event(
                "notice", severity=severity, sqlstate=sqlstate, message=text
            )
            self.session.recorder.write()  # handed to the kernel before it is sent
            return True
        except RecorderError:
            return False

    async def cancel_upstream(self) -> None:
        """Send the upstream's own CancelRequest (only the gateway knows its key)."""
        if self.up_key is None or self.target is None:
            return
        pid, key = self.up_key
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection(self.target.host, self.target.port), 2
            )
            w.write(codec.encode_cancel_request(pid, key))
            await w.drain()
            w.close()
        except (OSError, TimeoutError) as e:
            log.warning("upstream.cancel_failed", error=str(e))

    async def _terminate(self, termination: Termination) -> None:
        if self.relay is not None and self.relay.busy and self.session is not None:
            # Stop what still runs upstream for this session, in a task of its own: a loop
            # running behind must not drop it with the goodbye when that runs out of grace.
            self.session.registry.keep(asyncio.ensure_future(self.cancel_upstream()))
        self._fatal(ADMIN_SHUTDOWN, f"breakglass: {termination.message} — session closed")
        self._abort()

    def _abort(self) -> None:
        self.closing = True
        for w in (self.writer, self.up_writer):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()

    async def _close(self) -> None:
        self.listener.cancel_keys.drop(self.our_pid)
        if self.up_writer is not None and not self.up_writer.is_closing():
            with contextlib.suppress(Exception):
                self.up_writer.write(codec.encode_terminate())
        self._abort()
        try:
            await self._closed()
            if self.session is not None:
                self.session.sockets.release()  # closed by this loop: the peers saw it
            if self.relay is not None and self.relay.function_names is not None:
                await self.relay.function_names.settle()  # names of the last calls, if due
        finally:  # also when cancelled (gateway stopping): the recording is closed
            if self.relay is not None and self.session is not None:
                with contextlib.suppress(Exception):  # a dead recorder ended the session
                    self.relay.finish()  # portals left suspended: the rows they fetched
            if self.session is not None:
                self.session.finish()

    async def _closed(self) -> None:
        """Wait until both connections are closed; abort them after ``CLOSE_FLUSH`` when one
        is still flushing what was queued for a peer that stopped reading (it would stay
        open until that peer read it all)."""
        writers = [w for w in (self.writer, self.up_writer) if w is not None]
        if self.sides is not None:  # the relay's protocols see the transports go
            waits = [asyncio.shield(side.gone) for side in self.sides]
        else:
            waits = [w.wait_closed() for w in writers]
        try:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), CLOSE_FLUSH)
        except TimeoutError:
            log.info("postgres.close_cut", session=self.session.id if self.session else None)
            if self.session is not None:  # through whatever layers sit on them (TLS)
                self.session.sockets.shutdown()
            for w in writers:
                w.transport.abort()  # a no-op for one already closed


def _take_stream_buffer(reader: asyncio.StreamReader) -> bytes:
    """Bytes a StreamReader buffered but nobody read yet (before switching to a protocol)."""
    buf = reader._buffer  # noqa: SLF001 - no public API; stable since Python 3.4
    data = bytes(buf)
    buf.clear()
    return data


class _Side(asyncio.Protocol):
    """One direction of the relay: frames what arrives, judges it, writes it to the peer.

    Back-pressure: when the peer's transport buffer is full we stop reading this side.
    """

    def __init__(self, conn: PgConnection, judge: Any, out: asyncio.Transport, name: str) -> None:
        self.conn = conn
        self.judge = judge
        self.out = out
        self.name = name
        self.is_client = name == "client"
        self.reader = MessageReader()
        self.transport: asyncio.Transport | None = None
        self.source: asyncio.Transport | None = None  # the transport this side reads from
        metrics = getattr(conn.gw, "metrics", None)
        #: histogram of the time the gateway adds on the way upstream (client side only)
        self.added = metrics.pg_added if metrics is not None and name == "client" else None
        self.peer: _Side | None = None
        self.gone = asyncio.get_running_loop().create_future()  # the transport is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            reader = self.reader
            if not self.is_client and not self.conn.relay.substitutions:
                # Answers pass as they are: only the messages the relay keeps books on are
                # cut out; rows and descriptions are framed, never copied one by one.
                complete, kept = reader.split_kept(data, BOOKKEEPING)
                self._forward(data, False, kept, complete)
                return
            whole = reader.buffered == 0  # data starts on a message boundary
            messages = reader.feed_and_split(data)
            if (
                self.is_client
                and (not whole or len(data) > LARGE_STATEMENT)  # else no message is large
                and any(len(m.raw) > LARGE_STATEMENT and m.type in (b"Q", b"P") for m in messages)
            ):
                # Parsing a big statement can take a while: judge it on a worker thread so
                # other sessions are not stalled; this side reads nothing more meanwhile.
                self.source.pause_reading()
                asyncio.ensure_future(self._judge_off_loop(data, whole, messages))
                return
            self._forward(data, whole, messages)
        except Exception as e:
            self.conn.side_failed(e)

    async def _judge_off_loop(self, data: bytes, whole: bool, messages: list) -> None:
        try:
            await asyncio.to_thread(self.conn.prewarm_verdicts, messages)
            self._forward(data, whole, messages)
            if not self.source.is_closing():
                self.source.resume_reading()
        except Exception as e:
            self.conn.side_failed(e)

    def _forward(
        self, data: bytes, whole: bool, messages: list, complete: bytes | None = None
    ) -> None:
        """Judge and record ``messages``, hand the records to the kernel, then write what
        passes to the peer: only while the grant is live (the gate), never unrecorded.
        ``complete``: the upstream's whole messages, of which ``messages`` are the kept ones."""
        session = self.conn.session
        if not session.forwarding_allowed():
            return  # expired, revoked or killed: the session is ending and says why
        reader = self.reader
        t0 = _perf()
        first = session.recorder.event_count
        out = self.judge(messages) if complete is None else self.judge(messages, complete)
        session.recorder.write()  # raises RecorderError: nothing is forwarded
        if self.added is not None:
            self.added.observe(_perf() - t0)
        if not session.forwarding_allowed(recorded_since=first):
            return  # exp passed while judging: recorded as not forwarded
        if out is None and complete is not None:
            out = complete
        elif out is None:  # unchanged: forward without copying when data was whole messages
            out = data if whole and reader.buffered == 0 else b"".join([m.raw for m in messages])
        if out:
            self.out.write(out)
        relay = self.conn.relay
        if relay.broken:
            raise SessionBroken(relay.broken)
        if relay.terminated and self.is_client:
            self.conn.side_failed(None)

    def eof_received(self) -> bool:
        self.conn.side_failed(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        self.conn.side_failed(None)

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.out_of(True)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.out_of(False)

    def out_of(self, paused: bool) -> None:
        """Our peer's socket is full (or drained): stop (or resume) reading ours."""
        t = self.peer.out if self.peer is not None else None
        if t is None or t.is_closing():
            return
        with contextlib.suppress(Exception):
            t.pause_reading() if paused else t.resume_reading()


class PostgresListener:
    def __init__(self, gw: Any) -> None:
        self.gw = gw
        cfg = gw.cfg
        self.tls = server_tls_context(cfg.tls_cert, cfg.tls_key)
        self.cancel_keys = CancelKeys(gw.worker, gw.workers)
        self.checkers: dict[Any, Any] = {}
        self.connections: set[PgConnection] = set()
        #: source address -> connections not yet authenticated (slow-loris protection)
        self.unauthenticated: Counter[str] = Counter()
        self.server: _Acceptor | None = None
        self._upstream_slots: dict[str, asyncio.Semaphore] = {}
        self.connecting = 0  # logins connecting upstream now (all targets), and the peak
        self.peak_connecting = 0

    def upstream_slots(self, target: str) -> asyncio.Semaphore:
        """The upstream connects a target may have in flight at once (``UPSTREAM_CONNECTS``)."""
        slots = self._upstream_slots.get(target)
        if slots is None:
            slots = self._upstream_slots[target] = asyncio.Semaphore(UPSTREAM_CONNECTS)
        return slots

    def checker_for(self, rules: Any, factory: Any) -> Any:
        """One verdict cache per distinct rule set, shared by its sessions."""
        checker = self.checkers.get(rules)
        if checker is None:
            checker = self.checkers[rules] = factory(rules)
        return checker

    async def cancel(self, req: CancelRequest) -> None:
        """A CancelRequest: ours, or forwarded to the worker that issued the key."""
        owner = self.cancel_keys.owner(req.process_id)
        if owner == self.gw.worker:
            await self.cancel_local(req.process_id, req.secret_key)
            return
        from breakglass.proxy.admin import admin_request

        try:
            await admin_request(
                self.gw.admin_socket_of(owner),
                {"op": "cancel", "pid": req.process_id, "key": req.secret_key.hex()},
                timeout=2.0,
            )
        except (OSError, TimeoutError, ValueError) as e:
            log.warning("postgres.cancel_forward_failed", worker=owner, error=str(e))

    async def cancel_local(self, pid: int, key: bytes) -> bool:
        conn = self.cancel_keys.lookup(pid, key)
        if conn is None:
            log.info("postgres.cancel_ignored", pid=pid)
            return False
        if conn.session is not None:
            with contextlib.suppress(Exception):
                conn.session.recorder.event(
                    "cancel", requested_at=time.time(), worker=self.gw.worker
                )
                conn.session.recorder.write()
        await conn.cancel_upstream()
        return True

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direct_tls: bool = False
    ) -> None:
        conn = PgConnection(self, reader, writer, direct_tls)
        self.connections.add(conn)
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)

    async def accepted(self, sock: socket.socket) -> None:
        """A new connection: peek at its first byte (left in the socket), then hand it to a
        stream, through a TLS handshake first when it is a direct-TLS ClientHello."""
        loop = asyncio.get_running_loop()
        try:
            ip = str(sock.getpeername()[0])
        except OSError:
            sock.close()
            return
        full = self.gw.preauth.admit(ip)  # per source and in total, shared with SSH
        if full:
            with contextlib.suppress(OSError):
                sock.send(codec.encode_error("FATAL", "53300", f"breakglass: {full}"))
            sock.close()
            return
        try:
            first = await asyncio.wait_for(_peek(loop, sock), STARTUP_TIMEOUT)
        except (OSError, TimeoutError):
            first = b""
        finally:
            self.gw.preauth.release(ip)
        if not first:
            sock.close()
            return
        direct = codec.looks_like_tls_handshake(first)

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
            handler = functools.partial(self._handle, direct_tls=direct)
            return asyncio.StreamReaderProtocol(reader, handler, loop=loop)

        try:
            await loop.connect_accepted_socket(
                factory,
                sock,
                ssl=self.tls if direct else None,
                ssl_handshake_timeout=STARTUP_TIMEOUT if direct else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as e:
            log.info("postgres.direct_tls_failed", client=ip, error=str(e))
            sock.close()

    async def start(self) -> _Acceptor:
        listen = self.gw.cfg.postgres_listen
        family = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server(
            (listen.host, listen.port), family=family, reuse_port=self.gw.workers > 1
        )
        sock.setblocking(False)
        self.server = _Acceptor(self, sock)
        log.info("postgres.listening", address=str(listen))
        return self.server


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The socket's first byte, without taking it out of the socket."""
    sock.setblocking(False)
    readable = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)


class _Acceptor:
    """The listening socket. Connections are accepted here rather than by the event loop's
    server, so that no byte is read before the first one is known: a direct-TLS ClientHello
    must reach the TLS handshake untouched (uvloop starts reading as soon as it accepts)."""

    def __init__(self, listener: PostgresListener, sock: socket.socket) -> None:
        self.listener = listener
        self.sock = sock
        self.sockets = [sock]
        self.handshakes: set[asyncio.Task] = set()
        self.task = asyncio.ensure_future(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:  # e.g. EMFILE: keep serving the connections we have
                log.warning("postgres.accept_failed", error=str(e))
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self.listener.accepted(conn))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    def close(self) -> None:
        self.task.cancel()
        for t in list(self.handshakes):
            t.cancel()
        self.sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_postgres_listener(gw: Any) -> _Acceptor:
    listener = PostgresListener(gw)
    gw.postgres = listener
    return await listener.start()
