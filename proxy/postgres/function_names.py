"""Names of the functions a client calls with FunctionCall (the "fast-path" protocol).

A FunctionCall message carries only the function's oid. The large-object functions libpq
and pgJDBC call are known by their fixed oids (``FASTPATH_FUNCTIONS``); any other oid is
looked up on the side: a short-lived connection to the same target, with the same
credentials the session's upstream connection uses, asks the catalogue::

    pg_proc JOIN pg_namespace WHERE oid = $1   ->  pg_catalog.int4pl(integer, integer)

Nothing is injected into the client's own upstream stream, and the FunctionCall is not
delayed: the relay records the ``function_call`` event (oid and arguments) and forwards the
call at once; the name follows as a ``function_name`` event with the same statement number
``n``, or with ``unknown`` = "name unknown: <reason>" when the lookup fails (upstream down,
permission, a function created in a transaction not committed yet). Names are cached per
target and database, so a later call of the same oid is recorded with its name inline:
built-in functions (oid below 16384) for good, others for ``USER_OID_TTL`` seconds.

The name is what the catalogue says when the lookup runs; a session on an ``all`` grant
could rename or drop the function in between (both recorded as statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from breakglass.proxy.config import ConfigError, PostgresTarget
from breakglass.proxy.logs import log
from breakglass.proxy.postgres import codec
from breakglass.proxy.postgres.auth import AuthError, UpstreamAuth
from breakglass.proxy.postgres.binary_values import FASTPATH_FUNCTIONS, decode_binary, type_name
from breakglass.proxy.postgres.codec import FunctionCall, MessageReader, ProtocolError
from breakglass.recorder.format import RecorderError

__all__ = [
    "FunctionInfo",
    "FunctionNames",
    "call_args",
    "large_object_function",
    "lookup_function",
]

LOOKUP_TIMEOUT = 5.0
#: Lookups one session may have running at once; past that a call is "name unknown".
MAX_PENDING = 32
#: Calls one session may have waiting for a name (calls of an oid being looked up).
MAX_WAITING = 256
MAX_CACHED = 4096  # per target and database
#: Oids below this are built in (initdb's FirstNormalObjectId): a name that never changes.
FIRST_NORMAL_OID = 16384
USER_OID_TTL = 300.0
#: Binary arguments kept (per call) to decode them once the argument types are known.
MAX_KEPT_ARGS = 64 * 1024
APPLICATION_NAME = "breakglass:function-name-lookup"

LOOKUP_SQL = (
    "SELECT pg_catalog.format('%I.%I', n.nspname, p.proname),"
    " pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,"
    " pg_catalog.oidvectortypes(p.proargtypes)),"
    " pg_catalog.array_to_string(p.proargtypes::pg_catalog.oid[], ' ')"
    " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE p.oid = $1::pg_catalog.oid"
)


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    name: str  # schema-qualified, quoted where needed: pg_catalog.int4pl
    arg_types: tuple[int, ...] = ()
    signature: str = ""  # pg_catalog.int4pl(integer, integer); "" for the built-in table


class LookupFailed(Exception):
    """The lookup did not give a name; the message is the reason (no secrets)."""


def large_object_function(oid: int) -> FunctionInfo | None:
    """The large-object functions, known by their fixed oids (``FASTPATH_FUNCTIONS``)."""
    entry = FASTPATH_FUNCTIONS.get(oid)
    if entry is None:
        return None
    return FunctionInfo(f"pg_catalog.{entry[0]}", entry[1])


def call_args(fc: FunctionCall, arg_types: tuple[int, ...]) -> list[Any]:
    """FunctionCall's arguments as recorded: text ones as text, binary ones decoded with
    ``arg_types`` where the type is known, else the raw bytes."""
    out: list[Any] = []
    formats = fc.arg_formats
    for i, v in enumerate(fc.args):
        if v is None:
            out.append(None)
            continue
        fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
        if fmt == 0:
            out.append(v.decode("utf-8", "replace"))
        else:
            decoded = decode_binary(arg_types[i], v) if i < len(arg_types) else None
            out.append(v if decoded is None else decoded)
    return out


class _Cache:
    """oid -> (FunctionInfo, expiry) for one target and database; shared by its sessions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[int, tuple[FunctionInfo, float]] = OrderedDict()

    def get(self, oid: int) -> FunctionInfo | None:
        with self.lock:
            hit = self.entries.get(oid)
            if hit is None:
                return None
            if hit[1] < time.monotonic():
                del self.entries[oid]
                return None
            self.entries.move_to_end(oid)
            return hit[0]

    def put(self, oid: int, info: FunctionInfo) -> None:
        ttl = float("inf") if oid < FIRST_NORMAL_OID else USER_OID_TTL
        with self.lock:
            self.entries[oid] = (info, time.monotonic() + ttl)
            self.entries.move_to_end(oid)
            while len(self.entries) > MAX_CACHED:
                self.entries.popitem(last=False)


_caches: dict[tuple[str, str, int, str], _Cache] = {}
_caches_lock = threading.Lock()


def _cache_for(target: PostgresTarget) -> _Cache:
    key = (target.name, target.host, target.port, target.database)
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = _Cache()
        return cache


def _data_row(body: bytes) -> list[str | None]:
    (count,) = struct.unpack_from("!h", body, 0)
    pos, out = 2, []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size < 0:
            out.append(None)
            continue
        out.append(body[pos : pos + size].decode("utf-8", "replace"))
        pos += size
    return out


async def lookup_function(target: PostgresTarget, db_user: str, oid: int) -> FunctionInfo:
    """Ask the target's catalogue for ``oid``'s name over a connection of its own (TLS and
    credentials as the gateway's session connection). Raises ``LookupFailed``."""
    from breakglass.proxy.postgres.server import upstream_tls_context  # server imports the relay

    try:
        password = target.password(db_user)
    except (ConfigError, KeyError):
        raise LookupFailed(f"no credentials for {db_user} on target {target.name}") from None
    writer = None
    try:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        ctx = upstream_tls_context(target)
        if ctx is not None:
            writer.write(codec.encode_ssl_request())
            await writer.drain()
            if await reader.readexactly(1) != b"S":
                raise LookupFailed(f"target {target.name} does not offer TLS")
            await writer.start_tls(ctx, server_hostname=target.host)
        params = {"user": db_user, "database": target.database}
        params["application_name"] = APPLICATION_NAME
        writer.write(codec.encode_startup(params))
        await writer.drain()
        auth = UpstreamAuth(db_user, password)
        mr = MessageReader()
        row: list[str | None] | None = None
        logged_in = False
        while True:
            msg = mr.next()
            if msg is None:
                data = await reader.read(65536)
                if not data:
                    raise LookupFailed("the upstream closed the connection")
                mr.feed(data)
                continue
            t = msg.type
            if t == b"R" and not logged_in:
                reply = auth.handle(*codec.decode_authentication(msg.body))
                if reply:
                    writer.write(reply)
                    await writer.drain()
            elif t == b"E":
                fields = codec.decode_error_fields(msg.body)
                error = f"{fields.get('C', '')} {fields.get('M', 'error')}".strip()
                if not logged_in:
                    raise LookupFailed(f"login to target {target.name} failed: {error}")
                raise LookupFailed(error)
            elif t == b"Z" and not logged_in:
                if not auth.complete:
                    raise LookupFailed("upstream ready before authentication completed")
                logged_in = True
                writer.write(
                    codec.encode_parse("", LOOKUP_SQL)
                    + codec.encode_bind("", "", (), [str(oid).encode()])
                    + codec.encode_execute()
                    + codec.encode_sync()
                )
                await writer.drain()
            elif t == b"D" and logged_in:
                row = _data_row(bytes(msg.body))
            elif t == b"Z":
                break
            # S, K, N, v during login; 1, 2, C after the query: nothing to do
        writer.write(codec.encode_terminate())
        if row is None:
            raise LookupFailed(
                f"no function with oid {oid} is visible to a new session "
                "(dropped, or created in a transaction not committed yet)"
            )
        name, signature, types = row
        arg_types = tuple(int(x) for x in (types or "").split())
        return FunctionInfo(name or f"oid {oid}", arg_types, signature or "")
    except LookupFailed:
        raise
    except AuthError as e:
        raise LookupFailed(f"login to target {target.name} failed: {e}") from None
    except (OSError, EOFError, asyncio.IncompleteReadError) as e:
        raise LookupFailed(
            f"cannot reach target {target.name}: {getattr(e, 'strerror', None) or e}"
        ) from None
    except (ProtocolError, struct.error, ValueError) as e:
        raise LookupFailed(f"unexpected answer from target {target.name}: {e}") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


@dataclass(slots=True)
class _Pending:
    n: int
    oid: int
    fc: FunctionCall | None  # kept to decode binary arguments once the types are known
    task: asyncio.Future
    recorded: bool = False


class FunctionNames:
    """One session's function names: the cache, and the lookups it started."""

    def __init__(self, target: PostgresTarget, db_user: str, recorder: Any) -> None:
        self.target = target
        self.db_user = db_user
        self.recorder = recorder
        self.cache = _cache_for(target)
        self.pending: list[_Pending] = []
        self._inflight: dict[int, asyncio.Future] = {}

    def known(self, oid: int) -> FunctionInfo | None:
        """The name without waiting: the large-object table, or the cache."""
        return large_object_function(oid) or self.cache.get(oid)

    def resolve(self, n: int, fc: FunctionCall, keep_args: bool) -> None:
        """Look ``fc.oid`` up in the background; record ``function_name`` for call ``n``."""
        if len(self.pending) >= MAX_WAITING or (
            len(self._inflight) >= MAX_PENDING and fc.oid not in self._inflight
        ):
            self._record_unknown(n, fc.oid, "too many lookups running in this session")
            return
        binary = any(f == 1 for f in fc.arg_formats)  # else the arguments are text already
        size = sum(len(a) for a in fc.args if a is not None)
        kept = keep_args and binary and size <= MAX_KEPT_ARGS
        task = self._inflight.get(fc.oid)
        if task is None:
            task = asyncio.ensure_future(self._lookup(fc.oid))
            self._inflight[fc.oid] = task
            task.add_done_callback(lambda _t, oid=fc.oid: self._inflight.pop(oid, None))
        p = _Pending(n, fc.oid, fc if kept else None, task)
        self.pending.append(p)
        task.add_done_callback(lambda _t: self._done(p))

    async def _lookup(self, oid: int) -> FunctionInfo:
        try:
            info = await asyncio.wait_for(
                lookup_function(self.target, self.db_user, oid), LOOKUP_TIMEOUT
            )
        except TimeoutError:
            raise LookupFailed(f"the lookup took longer than {LOOKUP_TIMEOUT:g} s") from None
        self.cache.put(oid, info)
        return info

    def _done(self, p: _Pending) -> None:
        if p.recorded:
            return
        t = p.task
        if t.cancelled():
            self._finish(p, reason="the session ended before the lookup finished")
        elif isinstance(t.exception(), LookupFailed):
            self._finish(p, reason=str(t.exception()))
        elif t.exception() is not None:
            log.warning("postgres.function_name_failed", error=type(t.exception()).__name__)
            self._finish(p, reason=f"internal error ({type(t.exception()).__name__})")
        else:
            self._finish(p, info=t.result())

    def _finish(self, p: _Pending, *, info: FunctionInfo | None = None, reason: str = "") -> None:
        p.recorded = True
        with contextlib.suppress(ValueError):
            self.pending.remove(p)
        if info is None:
            self._record_unknown(p.n, p.oid, reason)
            return
        fields: dict[str, Any] = {"n": p.n, "oid": p.oid, "name": info.name}
        if info.signature:
            fields["signature"] = info.signature
        fields["arg_types"] = [type_name(o) for o in info.arg_types]
        if p.fc is not None and any(
            isinstance(a, bytes) for a in call_args(p.fc, ())
        ):  # binary arguments recorded as bytes: decoded now that the types are known
            fields["args"] = call_args(p.fc, info.arg_types)
        self._record(fields)

    def _record_unknown(self, n: int, oid: int, reason: str) -> None:
        log.info("postgres.function_name_unknown", oid=oid, reason=reason)
        self._record({"n": n, "oid": oid, "unknown": f"name unknown: {reason}"})

    def _record(self, fields: dict[str, Any]) -> None:
        # A failed or closed recording has already ended the session; nothing to add to it.
        with contextlib.suppress(RecorderError):
            self.recorder.event("function_name", **fields)
            self.recorder.write()

    async def settle(self, timeout: float = LOOKUP_TIMEOUT) -> None:
        """The session ends: wait (bounded) for the lookups still running, so their names
        are recorded before the recording closes; the rest are recorded as unknown."""
        tasks = {p.task for p in self.pending}
        if tasks:  # like the server's close: a cancelled close still finishes the session
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait(tasks, timeout=timeout)
        for p in list(self.pending):
            if p.task.done():
                self._done(p)
            else:
                self._finish(p, reason="the session ended before the lookup finished")
        for t in tasks:
            t.cancel()
