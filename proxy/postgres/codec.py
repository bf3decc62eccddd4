"""PostgreSQL v3 wire-protocol codec: framing, typed decoders and encoders.

Pure: bytes in, typed messages out (and the reverse). No sockets, no asyncio,
no logging, so every function here can be unit-tested and fuzzed alone. The
relay owns the I/O and the state machine; this module owns the byte layout.

Conventions
-----------
* Every malformed input raises :class:`ProtocolError`, never another exception
  type. Its message is safe to send to the client in an ErrorResponse: it never
  echoes parameter values, passwords or query text, only lengths, type bytes
  and (truncated, escaped) parameter names. ``ProtocolError.sqlstate`` carries
  the SQLSTATE PostgreSQL would use (08P01 protocol_violation by default).
* Decoders accept ``bytes`` or ``memoryview`` bodies (``Message.body`` is a
  memoryview into ``Message.raw``, so forwarding never copies twice).
* Text is UTF-8. Frontend text is decoded strictly (invalid UTF-8 is a
  ProtocolError, never silently replaced, so what the SQL checker sees is what
  the server would see). The relay must pin ``client_encoding`` to UTF8, or a
  multibyte encoding such as SJIS/GBK could make the server read the bytes
  differently from the checker. Backend display text (error and notice
  fields) is decoded leniently, with U+FFFD for invalid bytes.
* Encoders raise ``ValueError`` on arguments they cannot represent (a NUL in a
  string, an out-of-range integer): those are programming errors, not
  protocol errors.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "AUTH_CLEARTEXT",
    "AUTH_GSS",
    "AUTH_GSS_CONTINUE",
    "AUTH_KERBEROS_V5",
    "AUTH_MD5",
    "AUTH_OK",
    "AUTH_SASL",
    "AUTH_SASL_CONTINUE",
    "AUTH_SASL_FINAL",
    "AUTH_SCM_CREDENTIAL",
    "AUTH_SSPI",
    "BACKEND_TYPES",
    "CANCEL_REQUEST_CODE",
    "DEFAULT_MAX_MESSAGE_LEN",
    "FRONTEND_TYPES",
    "GSSENC_REQUEST_CODE",
    "MAX_CANCEL_KEY_LEN",
    "MAX_STARTUP_LEN",
    "NEWEST_PROTOCOL",
    "PROTOCOL_3_0",
    "PROTOCOL_3_2",
    "DIRECT_TLS_ALPN",
    "SSL_REQUEST_CODE",
    "Bind",
    "CancelRequest",
    "Execute",
    "FunctionCall",
    "GSSENCRequest",
    "Message",
    "MessageReader",
    "Parse",
    "ProtocolError",
    "SSLRequest",
    "StartupMessage",
    "StartupReader",
    "cancel_key_length",
    "check_empty",
    "looks_like_tls_handshake",
    "protocol_text",
    "decode_authentication",
    "decode_backend_key_data",
    "decode_bind",
    "decode_close",
    "decode_command_complete",
    "decode_copy_fail",
    "decode_describe",
    "decode_error_fields",
    "decode_execute",
    "decode_function_call",
    "decode_negotiate_protocol_version",
    "decode_parameter_description",
    "decode_parameter_status",
    "decode_parse",
    "decode_password",
    "decode_query",
    "decode_ready_for_query",
    "decode_sasl_mechanisms",
    "encode_auth_cleartext",
    "encode_auth_ok",
    "encode_authentication",
    "encode_backend_key_data",
    "encode_bind",
    "encode_cancel_request",
    "encode_close",
    "encode_command_complete",
    "encode_copy_data",
    "encode_copy_done",
    "encode_copy_fail",
    "encode_describe",
    "encode_empty_query_response",
    "encode_error",
    "encode_execute",
    "encode_flush",
    "encode_function_call",
    "encode_gssenc_request",
    "encode_message",
    "encode_negotiate_protocol_version",
    "encode_notice",
    "encode_parameter_status",
    "encode_parse",
    "encode_password",
    "encode_query",
    "encode_ready_for_query",
    "encode_sasl_initial_response",
    "encode_sasl_response",
    "encode_ssl_request",
    "encode_startup",
    "encode_sync",
    "encode_terminate",
    "negotiate_protocol_version_for",
]

# --------------------------------------------------------------------------
# Constants

PROTOCOL_3_0 = 3 << 16  # 196608
PROTOCOL_3_2 = PROTOCOL_3_0 | 2  # 196610: PostgreSQL 18, variable-length cancel keys
#: The newest version the gateway speaks (to clients, and asks of the upstream).
NEWEST_PROTOCOL = PROTOCOL_3_2
#: ALPN protocol name a direct-TLS client (``sslnegotiation=direct``) must offer.
DIRECT_TLS_ALPN = "postgresql"
SSL_REQUEST_CODE = (1234 << 16) | 5679  # 80877103
GSSENC_REQUEST_CODE = (1234 << 16) | 5680  # 80877104
CANCEL_REQUEST_CODE = (1234 << 16) | 5678  # 80877102
_SPECIAL_MAJOR = 1234

MAX_STARTUP_LEN = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
DEFAULT_MAX_MESSAGE_LEN = 64 * 1024 * 1024
#: Longest cancel key accepted (protocol 3.2 allows up to 256 bytes; 3.0 uses 4).
MAX_CANCEL_KEY_LEN = 256
SUPPORTED_MINOR = NEWEST_PROTOCOL & 0xFFFF
#: Cancel key length the gateway issues to a 3.2 client (PostgreSQL 18 issues 32 bytes).
CANCEL_KEY_LEN_3_2 = 32

# Authentication request codes (the int32 after 'R').
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SCM_CREDENTIAL = 6
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

#: Message type bytes a frontend may send after startup (protocol 3.0).
FRONTEND_TYPES = frozenset(
    {b"B", b"C", b"D", b"E", b"F", b"H", b"P", b"Q", b"S", b"X", b"c", b"d", b"f", b"p"}
)
#: Message type bytes a backend may send after startup (protocol 3.0).
BACKEND_TYPES = frozenset(
    {
        b"1", b"2", b"3", b"A", b"C", b"D", b"E", b"G", b"H", b"I", b"K", b"N",
        b"R", b"S", b"T", b"V", b"W", b"Z", b"c", b"d", b"n", b"s", b"t", b"v",
    }
)  # fmt: skip

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!BI")  # type byte + length
_TYPE_BYTES = tuple(bytes((i,)) for i in range(256))


class ProtocolError(Exception):
    """Malformed or unsupported protocol input.

    ``str(err)`` is safe to show to the client; ``sqlstate`` is the SQLSTATE to
    put in the ErrorResponse.
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _tname(t: int | bytes) -> str:
    """Printable name of a type byte: 'Q' or 0x00."""
    if isinstance(t, bytes):
        t = t[0] if t else 0
    if 0x21 <= t <= 0x7E and t not in (0x27, 0x5C):
        return f"'{chr(t)}'"
    return f"0x{t:02x}"


def _safe_name(raw: bytes) -> str:
    """Escaped, truncated rendering of a client-supplied identifier for messages."""
    text = raw[:64].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return f'"{text}"' + ("..." if len(raw) > 64 else "")


# --------------------------------------------------------------------------
# Startup phase


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    #: Raw key bytes: 4 in protocol 3.0 (the int32 big-endian), up to 256 in 3.2.
    #: Bytes rather than int so callers compare with ``hmac.compare_digest``.
    secret_key: bytes

    @property
    def secret_key_int(self) -> int:
        return int.from_bytes(self.secret_key, "big")


@dataclass(frozen=True, slots=True)
class StartupMessage:
    #: The requested version, ``major << 16 | minor`` (196608 for 3.0).
    protocol: int
    #: Ordinary parameters (user, database, application_name, options, GUCs...).
    params: dict[str, str]
    #: Protocol-extension options (names starting with ``_pq_.``), kept apart from
    #: ``params`` so nobody forwards them by accident; we support none of them.
    protocol_options: dict[str, str] = field(default_factory=dict)

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    @property
    def needs_negotiation(self) -> bool:
        """True if the server must answer with NegotiateProtocolVersion."""
        return self.minor > SUPPORTED_MINOR or bool(self.protocol_options)

    @property
    def negotiated(self) -> int:
        """The version both sides use: the client's, capped at the newest we speak."""
        return min(self.protocol, NEWEST_PROTOCOL)


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage

_HTTP_PREFIXES = (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"CONN", b"PATC", b"PRI ")


class StartupReader:
    """Buffered reader for the untyped startup-phase packets.

    Yields, in order, any number of SSLRequest/GSSENCRequest (each at most once)
    and then exactly one StartupMessage or CancelRequest, after which it stops:
    further bytes stay buffered for :meth:`take_buffer` (hand them to a
    :class:`MessageReader`). After an error the reader stays failed.

    TLS: after returning an :class:`SSLRequest` the caller answers ``S`` and
    must then call :meth:`start_tls` (or check :meth:`take_buffer` itself)
    *before* the handshake: any byte already buffered was sent in cleartext
    before TLS and could be injected by a man in the middle (CVE-2021-23214),
    so it is refused. Keep feeding the same reader with the decrypted stream.
    Remember that the transport may hold unread bytes too.
    """

    __slots__ = ("_buf", "_done", "_error", "_ssl_seen", "_gss_seen", "max_len")

    def __init__(self, max_len: int = MAX_STARTUP_LEN) -> None:
        self._buf = bytearray()
        self._done = False
        self._error: ProtocolError | None = None
        self._ssl_seen = False
        self._gss_seen = False
        self.max_len = max_len

    @property
    def done(self) -> bool:
        """True once a StartupMessage or CancelRequest has been returned."""
        return self._done

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def take_buffer(self) -> bytes:
        """Return and forget every byte buffered but not yet parsed."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def start_tls(self) -> None:
        """Call right before the TLS handshake; refuses pipelined cleartext."""
        if self._buf:
            self._fail(
                ProtocolError(
                    f"received {len(self._buf)} bytes of unencrypted data after SSL request"
                )
            )

    def _fail(self, err: ProtocolError) -> None:
        self._error = err
        raise err

    def __iter__(self) -> Iterator[StartupPacket]:
        while (pkt := self.next()) is not None:
            yield pkt

    def next(self) -> StartupPacket | None:
        if self._error is not None:
            raise self._error
        if self._done:
            return None
        buf = self._buf
        if len(buf) < 4:
            return None
        (length,) = _U32.unpack_from(buf, 0)
        if length < 8 or length > self.max_len:
            self._fail(ProtocolError(self._bad_length_message(length)))
        if len(buf) < 8:
            return None
        (code,) = _U32.unpack_from(buf, 4)
        # Validate the code as soon as it is known, without waiting for the body.
        if code >> 16 == _SPECIAL_MAJOR:
            if code == SSL_REQUEST_CODE:
                if length != 8:
                    self._fail(ProtocolError(f"invalid length {length} for SSLRequest"))
                if self._ssl_seen:
                    self._fail(ProtocolError("duplicate SSLRequest"))
            elif code == GSSENC_REQUEST_CODE:
                if length != 8:
                    self._fail(ProtocolError(f"invalid length {length} for GSSENCRequest"))
                if self._gss_seen:
                    self._fail(ProtocolError("duplicate GSSENCRequest"))
            elif code == CANCEL_REQUEST_CODE:
                if not 16 <= length <= 12 + MAX_CANCEL_KEY_LEN:
                    self._fail(ProtocolError(f"invalid length {length} for CancelRequest"))
            else:
                self._fail(
                    ProtocolError(
                        f"unsupported startup request code {_SPECIAL_MAJOR}.{code & 0xFFFF}",
                        "0A000",
                    )
                )
        elif code >> 16 != 3:
            self._fail(
                ProtocolError(
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                    "breakglass supports 3.0 to 3.2",
                    "0A000",
                )
            )
        if len(buf) < length:
            return None
        packet = bytes(buf[:length])
        del buf[:length]
        if code == SSL_REQUEST_CODE:
            self._ssl_seen = True
            return SSLRequest()
        if code == GSSENC_REQUEST_CODE:
            self._gss_seen = True
            return GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            self._done = True
            (pid,) = _I32.unpack_from(packet, 8)
            return CancelRequest(pid, packet[12:])
        try:
            params, options = _parse_startup_params(packet, 8)
        except ProtocolError as err:
            self._fail(err)
        self._done = True
        return StartupMessage(code, params, options)

    @staticmethod
    def _bad_length_message(length: int) -> str:
        head = length.to_bytes(4, "big")
        if head[0] == 0x16 and head[1] == 0x03:
            return "received a TLS handshake where a startup packet was expected"
        if head in _HTTP_PREFIXES:
            return "received an HTTP request: this is a PostgreSQL gateway"
        return f"invalid startup packet length {length}"


def _parse_startup_params(packet: bytes, pos: int) -> tuple[dict[str, str], dict[str, str]]:
    params: dict[str, str] = {}
    options: dict[str, str] = {}
    end = len(packet)
    while True:
        if pos >= end:
            raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
        nul = packet.find(b"\0", pos)
        if nul < 0:
            raise ProtocolError("invalid startup packet layout: unterminated parameter name")
        if nul == pos:  # empty name: the terminator
            if pos != end - 1:
                raise ProtocolError(
                    "invalid startup packet layout: expected terminator as last byte"
                )
            return params, options
        raw_name = packet[pos:nul]
        pos = nul + 1
        nul = packet.find(b"\0", pos)
        if nul < 0:
            raise ProtocolError(
                f"invalid startup packet layout: missing value for parameter {_safe_name(raw_name)}"
            )
        raw_value = packet[pos:nul]
        pos = nul + 1
        try:
            name = raw_name.decode("utf-8")
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(
                f"invalid UTF-8 in startup parameter {_safe_name(raw_name)}"
            ) from None
        target = options if name.startswith("_pq_.") else params
        if name in target:
            raise ProtocolError(f"duplicate startup parameter {_safe_name(raw_name)}")
        target[name] = value


def negotiate_protocol_version_for(startup: StartupMessage) -> bytes | None:
    """The NegotiateProtocolVersion to send after ``startup``, or None if not needed.

    PostgreSQL sends it when the client asks for a newer minor version than the
    server supports or uses ``_pq_.`` options; it carries the whole version number
    the session will use (``3 << 16 | minor``, the newest the server supports, not
    just the minor: libpq 18 reads 2 as "version 0.2" and gives up), and the
    client continues with that version.
    """
    if not startup.needs_negotiation:
        return None
    return encode_negotiate_protocol_version(startup.negotiated, list(startup.protocol_options))


def protocol_text(version: int) -> str:
    """``196610`` -> ``"3.2"``."""
    return f"{version >> 16}.{version & 0xFFFF}"


def cancel_key_length(version: int) -> int:
    """Length of the cancel key to issue to a client speaking ``version``."""
    return CANCEL_KEY_LEN_3_2 if version >= PROTOCOL_3_2 else 4


def looks_like_tls_handshake(prefix: bytes) -> bool:
    """True if a connection's first bytes are a TLS record (direct TLS, no SSLRequest).

    A startup packet starts with its int32 length, which is never above 10,000, so
    its first byte is 0; a TLS handshake record starts with 0x16 (22).
    """
    return bool(prefix) and prefix[0] == 0x16


# --------------------------------------------------------------------------
# Regular phase framing


#: Bodies up to this size are cut from ``raw`` as bytes (cheaper than a view); larger ones
#: are memoryviews into ``raw`` (no copy of big rows or COPY data).
_BODY_COPY_MAX = 16 * 1024


class Message:
    """One framed message as received. ``body`` is cut from ``raw`` only when read: a relay
    forwards most messages (rows, descriptions) without ever looking inside."""

    __slots__ = ("type", "raw", "end")

    def __init__(self, type: bytes, raw: bytes, end: int = 0) -> None:
        #: One byte, e.g. ``b"Q"``.
        self.type = type
        #: The whole framed message as received, for zero-copy forwarding.
        self.raw = raw
        #: From ``MessageReader.split_kept``: where the message ends in the bytes it returned.
        self.end = end

    @property
    def body(self) -> bytes | memoryview:
        """The payload after the length word."""
        raw = self.raw
        return raw[5:] if len(raw) <= _BODY_COPY_MAX else memoryview(raw)[5:]

    @classmethod
    def build(cls, type: bytes, body: bytes = b"") -> Message:
        return cls(type, encode_message(type, body))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.type == other.type and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return f"Message(type={self.type!r}, raw={self.raw[:64]!r}{'...' if len(self.raw) > 64 else ''})"


def _length_error(t: int, length: int, max_len: int) -> ProtocolError:
    if length < 4:
        return ProtocolError(f"invalid message length {length} for {_tname(t)}")
    return ProtocolError(f"message {_tname(t)} of {length} bytes exceeds limit {max_len}", "08P01")


class MessageReader:
    """Splits a byte stream into typed, framed messages (type byte + int32 length).

    Amortised O(total bytes): data is appended to one bytearray and consumed from
    an offset that is compacted once it passes half the buffer; a length that
    is invalid or above ``max_len`` raises as soon as the 5-byte header arrives,
    before any of the body is buffered. ``max_len`` is a plain attribute, so the
    relay may use a small limit before authentication and raise it afterwards.
    After an error the reader stays failed (the stream is out of sync).
    """

    __slots__ = ("_buf", "_pos", "_error", "max_len")

    def __init__(self, max_len: int = DEFAULT_MAX_MESSAGE_LEN, initial: bytes = b"") -> None:
        if max_len < 4:
            raise ValueError("max_len must be at least 4")
        self.max_len = max_len
        self._buf = bytearray(initial)
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes buffered but not yet returned as messages."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def take_buffer(self) -> bytes:
        """Return and forget the unparsed bytes (e.g. a partial message)."""
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return data

    def next(self) -> Message | None:
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 5:
            return None
        t, length = _HDR.unpack_from(buf, pos)
        if length < 4 or length > self.max_len:
            self._error = _length_error(t, length, self.max_len)
            raise self._error
        end = pos + 1 + length
        if end > len(buf):
            return None
        with memoryview(buf) as mv:
            raw = mv[pos:end].tobytes()
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536 and end * 2 > len(buf):
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return Message(_TYPE_BYTES[t], raw)

    def __iter__(self) -> Iterator[Message]:
        while (msg := self.next()) is not None:
            yield msg

    def feed_and_split(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed ``data`` and return every message now complete (possibly none)."""
        return self._split(data, None)[1]

    def split_kept(
        self, data: bytes | bytearray | memoryview, keep: frozenset[bytes]
    ) -> tuple[bytes, list[Message]]:
        """Feed ``data``; return the bytes of every message now complete (to forward as they
        are) and, as ``Message`` objects, only those whose type is in ``keep`` (each with
        ``end``, its end offset in those bytes). The rest (rows, descriptions) are framed
        and checked but never copied or allocated: a relay that only keeps books on a few
        message types pays nothing per row."""
        return self._split(data, keep)

    def _split(
        self, data: bytes | bytearray | memoryview, keep: frozenset[bytes] | None
    ) -> tuple[bytes, list[Message]]:
        """Frame what is complete; messages of the types in ``keep`` (all when None) as
        objects, and (with ``keep``) the complete messages' bytes."""
        src, start, own = self._source(data)
        out: list[Message] = []
        append = out.append
        n = len(src)
        off = start
        max_len = self.max_len
        unpack = _HDR.unpack_from
        types = _TYPE_BYTES
        error: ProtocolError | None = None
        complete = b""
        with memoryview(src) as mv:
            while n - off >= 5:
                t, length = unpack(src, off)
                if length < 4 or length > max_len:
                    error = _length_error(t, length, max_len)
                    break
                end = off + 1 + length
                if end > n:
                    break
                tb = types[t]
                if keep is None or tb in keep:
                    append(Message(tb, mv[off:end].tobytes(), end - start))
                off = end
            if keep is None:
                pass  # the caller forwards the messages' own bytes
            elif own:
                complete = mv[start:off].tobytes()
            elif off == n:
                complete = src  # the whole read: forwarded without a copy
            else:
                complete = mv[:off].tobytes()
        self._keep_rest(src, off, own, error)
        return complete, out

    def _source(self, data: bytes | bytearray | memoryview) -> tuple[bytes | bytearray, int, bool]:
        """Where to split from: ``data`` itself when nothing is pending (no copy), else the
        buffer with ``data`` appended; (bytes, offset of the first message, buffer?)."""
        if self._error is not None:
            raise self._error
        if self._pos == len(self._buf):
            return (data if isinstance(data, bytes) else bytes(data)), 0, False
        self._buf += data
        return self._buf, self._pos, True

    def _keep_rest(
        self, src: bytes | bytearray, off: int, own: bool, error: ProtocolError | None
    ) -> None:
        """Keep what follows the last whole message for the next read. A bad header fails
        the reader for good: the stream is out of sync, so fail now rather than hand out the
        messages before it and wait for bytes that may never come."""
        n = len(src)
        if own:
            if off == n:
                self._buf.clear()
                self._pos = 0
            elif off > 65536 and off * 2 > n:
                del self._buf[:off]
                self._pos = 0
            else:
                self._pos = off
        else:
            self._buf.clear()
            self._buf += src[off:]
            self._pos = 0
        if error is not None:
            self._error = error
            raise error


# --------------------------------------------------------------------------
# Body decoding helpers


class _Cursor:
    __slots__ = ("buf", "pos", "what")

    def __init__(self, body: bytes | bytearray | memoryview, what: str) -> None:
        self.buf = body if isinstance(body, bytes) else bytes(body)
        self.pos = 0
        self.what = what

    def error(self, detail: str) -> ProtocolError:
        return ProtocolError(f"invalid {self.what} message: {detail}")

    def cstr_bytes(self) -> bytes:
        nul = self.buf.find(b"\0", self.pos)
        if nul < 0:
            raise self.error("missing string terminator")
        s = self.buf[self.pos : nul]
        self.pos = nul + 1
        return s

    def cstr(self) -> str:
        raw = self.cstr_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("invalid UTF-8 in string") from None

    def _need(self, n: int) -> None:
        if len(self.buf) - self.pos < n:
            raise self.error("truncated")

    def take(self, n: int) -> bytes:
        self._need(n)
        s = self.buf[self.pos : self.pos + n]
        self.pos += n
        return s

    def byte(self) -> int:
        self._need(1)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _unpack(self, s: struct.Struct) -> int:
        self._need(s.size)
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def i16(self) -> int:
        return self._unpack(_I16)

    def u16(self) -> int:
        return self._unpack(_U16)

    def i32(self) -> int:
        return self._unpack(_I32)

    def u32(self) -> int:
        return self._unpack(_U32)

    def rest(self) -> bytes:
        s = self.buf[self.pos :]
        self.pos = len(self.buf)
        return s

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.error(f"{len(self.buf) - self.pos} unexpected trailing bytes")


def _single_cstr(body: bytes | memoryview, what: str) -> str:
    """A body that is exactly one NUL-terminated string with no embedded NUL."""
    data = body if isinstance(body, bytes) else bytes(body)
    nul = data.find(b"\0")
    if nul < 0:
        raise ProtocolError(f"invalid {what} message: missing string terminator")
    if nul != len(data) - 1:
        raise ProtocolError(f"invalid {what} message: unexpected data after string terminator")
    try:
        return data[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"invalid {what} message: invalid UTF-8 in string") from None


def check_empty(body: bytes | memoryview, what: str) -> None:
    """Sync, Flush, Terminate, CopyDone carry no body."""
    if len(body):
        raise ProtocolError(f"invalid {what} message: {len(body)} unexpected trailing bytes")


def _format_codes(c: _Cursor, what: str) -> tuple[int, ...]:
    n = c.u16()
    codes = tuple(c.i16() for _ in range(n))
    for code in codes:
        if code not in (0, 1):
            raise c.error(f"unsupported {what} format code {code}")
    return codes


def _values(c: _Cursor) -> list[bytes | None]:
    n = c.u16()
    out: list[bytes | None] = []
    for _ in range(n):
        size = c.i32()
        if size == -1:
            out.append(None)
        elif size < 0:
            raise c.error(f"invalid value length {size}")
        else:
            out.append(c.take(size))
    return out


# --------------------------------------------------------------------------
# Frontend message decoders


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    query: str
    param_type_oids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    #: 0 (text) or 1 (binary); empty = all text, one = applies to all parameters.
    param_formats: tuple[int, ...]
    params: list[bytes | None]
    result_formats: tuple[int, ...]

    def param_format(self, i: int) -> int:
        """The format code that applies to parameter ``i``."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[i]


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int  # 0 = no limit


@dataclass(frozen=True, slots=True)
class FunctionCall:
    oid: int
    arg_formats: tuple[int, ...]
    args: list[bytes | None]
    result_format: int


def decode_query(body: bytes | memoryview) -> str:
    """Query ('Q'): exactly one string, no embedded NUL."""
    return _single_cstr(body, "Query")


def decode_parse(body: bytes | memoryview) -> Parse:
    data = body if isinstance(body, bytes) else bytes(body)
    return _parse_flat(data) or _decode_parse_checked(data)


def _parse_flat(data: bytes) -> Parse | None:
    """A Parse body decoded without a cursor (every new extended-protocol statement), or
    None when it is not well formed: ``_decode_parse_checked`` then says why. Accepts
    exactly what the checked decoder accepts, with the same result (tested)."""
    try:
        a = data.index(0)
        b = data.index(0, a + 1)
        (n,) = _U16.unpack_from(data, b + 1)
        if b + 3 + 4 * n != len(data):
            return None
        oids = struct.unpack_from(f"!{n}I", data, b + 3) if n else ()
        return Parse(data[:a].decode("utf-8"), data[a + 1 : b].decode("utf-8"), oids)
    except (ValueError, struct.error):  # UnicodeDecodeError is a ValueError
        return None


def _decode_parse_checked(body: bytes | memoryview) -> Parse:
    c = _Cursor(body, "Parse")
    name = c.cstr()
    query = c.cstr()
    n = c.u16()
    oids = tuple(c.u32() for _ in range(n))
    c.end()
    return Parse(name, query, oids)


def decode_bind(body: bytes | memoryview) -> Bind:
    data = body if isinstance(body, bytes) else bytes(body)
    return _bind_flat(data) or _decode_bind_checked(data)


def _format_codes_flat(data: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    """Format codes at ``pos`` and the position after them; raises ValueError for a code
    other than 0 or 1 (struct.error when truncated)."""
    (n,) = _U16.unpack_from(data, pos)
    pos += 2
    if not n:
        return (), pos
    codes = struct.unpack_from(f"!{n}h", data, pos)
    if min(codes) < 0 or max(codes) > 1:
        raise ValueError("format code")
    return codes, pos + 2 * n


def _bind_flat(data: bytes) -> Bind | None:
    """A Bind body decoded without a cursor (the hot path of every extended-protocol
    statement), or None when it is not well formed: ``_decode_bind_checked`` then says why.
    Accepts exactly what the checked decoder accepts, with the same result (tested)."""
    try:
        a = data.index(0)
        b = data.index(0, a + 1)
        portal = data[:a].decode("utf-8")
        statement = data[a + 1 : b].decode("utf-8")
        param_formats, pos = _format_codes_flat(data, b + 1)
        (n,) = _U16.unpack_from(data, pos)
        pos += 2
        params: list[bytes | None] = []
        unpack = _I32.unpack_from
        for _ in range(n):
            (size,) = unpack(data, pos)
            pos += 4
            if size == -1:
                params.append(None)
                continue
            end = pos + size
            if size < 0 or end > len(data):
                return None
            params.append(data[pos:end])
            pos = end
        if len(param_formats) > 1 and len(param_formats) != n:
            return None
        result_formats, pos = _format_codes_flat(data, pos)
    except (ValueError, struct.error):  # UnicodeDecodeError is a ValueError
        return None
    if pos != len(data):
        return None
    return Bind(portal, statement, param_formats, params, result_formats)


def _decode_bind_checked(body: bytes | memoryview) -> Bind:
    c = _Cursor(body, "Bind")
    portal = c.cstr()
    statement = c.cstr()
    param_formats = _format_codes(c, "parameter")
    params = _values(c)
    if len(param_formats) > 1 and len(param_formats) != len(params):
        raise c.error(f"{len(param_formats)} parameter formats but {len(params)} parameters")
    result_formats = _format_codes(c, "result")
    c.end()
    return Bind(portal, statement, param_formats, params, result_formats)


def decode_execute(body: bytes | memoryview) -> Execute:
    data = body if isinstance(body, bytes) else bytes(body)
    return _execute_flat(data) or _decode_execute_checked(data)


def _execute_flat(data: bytes) -> Execute | None:
    """An Execute body decoded without a cursor, or None when it is not well formed."""
    nul = data.find(b"\0")
    if nul < 0 or len(data) != nul + 5:
        return None
    try:
        return Execute(data[:nul].decode("utf-8"), _I32.unpack_from(data, nul + 1)[0])
    except UnicodeDecodeError:
        return None


def _decode_execute_checked(data: bytes) -> Execute:
    c = _Cursor(data, "Execute")
    portal = c.cstr()
    max_rows = c.i32()
    c.end()
    return Execute(portal, max_rows)


def _kind_name(body: bytes | memoryview, what: str) -> tuple[str, str]:
    data = body if isinstance(body, bytes) else bytes(body)
    return _kind_name_flat(data) or _kind_name_checked(data, what)


def _kind_name_flat(data: bytes) -> tuple[str, str] | None:
    """A Describe or Close body decoded without a cursor, or None when not well formed."""
    if len(data) < 2 or data[0] not in (0x53, 0x50) or data.find(b"\0", 1) != len(data) - 1:
        return None
    try:
        return chr(data[0]), data[1:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _kind_name_checked(data: bytes, what: str) -> tuple[str, str]:
    c = _Cursor(data, what)
    kind = c.byte()
    if kind not in (0x53, 0x50):  # 'S', 'P'
        raise c.error(f"invalid target type {_tname(kind)}")
    name = c.cstr()
    c.end()
    return chr(kind), name


def decode_describe(body: bytes | memoryview) -> tuple[str, str]:
    """Describe ('D' from the frontend): ('S' statement | 'P' portal, name)."""
    return _kind_name(body, "Describe")


def decode_close(body: bytes | memoryview) -> tuple[str, str]:
    """Close ('C' from the frontend): ('S' statement | 'P' portal, name)."""
    return _kind_name(body, "Close")


def decode_password(body: bytes | memoryview) -> str:
    """PasswordMessage ('p') in cleartext mode: one UTF-8 string, no embedded NUL."""
    return _single_cstr(body, "password")


def decode_function_call(body: bytes | memoryview) -> FunctionCall:
    c = _Cursor(body, "FunctionCall")
    oid = c.u32()
    arg_formats = _format_codes(c, "argument")
    args = _values(c)
    if len(arg_formats) > 1 and len(arg_formats) != len(args):
        raise c.error(f"{len(arg_formats)} argument formats but {len(args)} arguments")
    result_format = c.i16()
    if result_format not in (0, 1):
        raise c.error(f"unsupported result format code {result_format}")
    c.end()
    return FunctionCall(oid, arg_formats, args, result_format)


def decode_copy_fail(body: bytes | memoryview) -> str:
    return _single_cstr(body, "CopyFail")


# --------------------------------------------------------------------------
# Backend message decoders


def decode_error_fields(body: bytes | memoryview) -> dict[str, str]:
    """ErrorResponse/NoticeResponse: field code ('S', 'C', 'M', ...) -> value."""
    c = _Cursor(body, "ErrorResponse")
    fields: dict[str, str] = {}
    while True:
        code = c.byte()
        if code == 0:
            c.end()
            return fields
        fields[chr(code)] = c.cstr_bytes().decode("utf-8", "replace")


def decode_command_complete(body: bytes | memoryview) -> str:
    return _single_cstr(body, "CommandComplete")


def decode_ready_for_query(body: bytes | memoryview) -> str:
    if len(body) != 1 or body[0] not in b"ITE":
        raise ProtocolError("invalid ReadyForQuery message")
    return chr(body[0])


def decode_backend_key_data(body: bytes | memoryview) -> tuple[int, bytes]:
    """BackendKeyData ('K'): (process id, key bytes; 4 in protocol 3.0)."""
    c = _Cursor(body, "BackendKeyData")
    pid = c.i32()
    key = c.rest()
    if not 4 <= len(key) <= MAX_CANCEL_KEY_LEN:
        raise c.error(f"invalid cancel key length {len(key)}")
    return pid, key


def decode_parameter_description(body: bytes | memoryview) -> tuple[int, ...]:
    """ParameterDescription ('t'): the statement's parameter type oids."""
    c = _Cursor(body, "ParameterDescription")
    n = c.u16()
    oids = tuple(c.u32() for _ in range(n))
    c.end()
    return oids


def decode_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    c = _Cursor(body, "ParameterStatus")
    name = c.cstr()
    value = c.cstr()
    c.end()
    return name, value


def decode_authentication(body: bytes | memoryview) -> tuple[int, bytes]:
    """Authentication* ('R'): (request code, remaining payload)."""
    c = _Cursor(body, "Authentication")
    code = c.i32()
    return code, c.rest()


def decode_sasl_mechanisms(payload: bytes | memoryview) -> list[str]:
    """The payload of AuthenticationSASL: mechanism names, ended by an empty one."""
    c = _Cursor(payload, "AuthenticationSASL")
    out: list[str] = []
    while True:
        name = c.cstr()
        if not name:
            c.end()
            return out
        out.append(name)


def decode_negotiate_protocol_version(body: bytes | memoryview) -> tuple[int, list[str]]:
    """NegotiateProtocolVersion ('v'): (version to use, ``3 << 16 | minor``; unrecognised options)."""
    c = _Cursor(body, "NegotiateProtocolVersion")
    version = c.i32()
    n = c.i32()
    if n < 0:
        raise c.error(f"invalid option count {n}")
    options = []
    for _ in range(n):
        options.append(c.cstr())
    c.end()
    return version, options


# --------------------------------------------------------------------------
# Encoders


def _cstr(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if b"\0" in data:
        raise ValueError("string contains NUL")
    return data + b"\0"


def _pack(s: struct.Struct, value: int) -> bytes:
    try:
        return s.pack(value)
    except struct.error as err:
        raise ValueError(f"integer out of range: {value}") from err


def encode_message(type: bytes, body: bytes | bytearray | memoryview = b"") -> bytes:
    """Frame ``body`` as a regular message of the given one-byte type."""
    if len(type) != 1:
        raise ValueError("message type must be exactly one byte")
    return type + _U32.pack(len(body) + 4) + bytes(body)


def _key_bytes(key: int | bytes) -> bytes:
    if isinstance(key, int):
        if not -(2**31) <= key < 2**32:
            raise ValueError("cancel key out of range")
        return (key & 0xFFFFFFFF).to_bytes(4, "big")
    key = bytes(key)
    if not 4 <= len(key) <= MAX_CANCEL_KEY_LEN:
        raise ValueError("cancel key must be 4 to 256 bytes")
    return key


def _format_codes_bytes(codes: Sequence[int]) -> bytes:
    return _pack(_U16, len(codes)) + b"".join(_pack(_I16, c) for c in codes)


def _values_bytes(values: Sequence[bytes | None]) -> bytes:
    parts = [_pack(_U16, len(values))]
    for v in values:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_pack(_I32, len(v)))
            parts.append(bytes(v))
    return b"".join(parts)


# Backend messages (what the gateway says to the client)


def _response_fields(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"invalid SQLSTATE {sqlstate!r}")

    def text(s: str) -> bytes:
        # Error text may quote client input; never let a NUL break the framing.
        return s.replace("\0", "\ufffd").encode("utf-8", "replace") + b"\0"

    parts = [b"S", text(severity), b"V", text(severity), b"C", text(sqlstate), b"M", text(message)]
    if detail is not None:
        parts += [b"D", text(detail)]
    if hint is not None:
        parts += [b"H", text(hint)]
    parts.append(b"\0")
    return b"".join(parts)


def encode_error(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse with fields S, V, C, M and optionally D, H."""
    return encode_message(b"E", _response_fields(severity, sqlstate, message, detail, hint))


def encode_notice(
    severity: str,
    sqlstate: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse, same fields as :func:`encode_error` (severity e.g. WARNING)."""
    return encode_message(b"N", _response_fields(severity, sqlstate, message, detail, hint))


def encode_authentication(code: int, payload: bytes = b"") -> bytes:
    return encode_message(b"R", _pack(_I32, code) + bytes(payload))


def encode_auth_ok() -> bytes:
    return encode_authentication(AUTH_OK)


def encode_auth_cleartext() -> bytes:
    return encode_authentication(AUTH_CLEARTEXT)


def encode_parameter_status(name: str, value: str) -> bytes:
    return encode_message(b"S", _cstr(name) + _cstr(value))


def encode_backend_key_data(pid: int, key: int | bytes) -> bytes:
    """BackendKeyData; ``key`` as int (4-byte int32) or raw bytes."""
    return encode_message(b"K", _pack(_I32, pid) + _key_bytes(key))


def encode_ready_for_query(status: str | bytes) -> bytes:
    s = status.encode("ascii") if isinstance(status, str) else bytes(status)
    if s not in (b"I", b"T", b"E"):
        raise ValueError(f"invalid transaction status {status!r}")
    return encode_message(b"Z", s)


def encode_empty_query_response() -> bytes:
    return encode_message(b"I")


def encode_command_complete(tag: str) -> bytes:
    return encode_message(b"C", _cstr(tag))


def encode_negotiate_protocol_version(version: int, unrecognised_options: Iterable[str]) -> bytes:
    """NegotiateProtocolVersion: ``version`` is the whole version the session will use
    (``3 << 16 | minor``, as PostgreSQL sends it), plus the ``_pq_.`` options we did
    not recognise."""
    if version >> 16 != 3:
        raise ValueError(f"not a protocol 3 version: {version}")
    opts = list(unrecognised_options)
    return encode_message(
        b"v",
        _pack(_I32, version) + _pack(_I32, len(opts)) + b"".join(_cstr(o) for o in opts),
    )


# Frontend messages (what the gateway says to the upstream server)


def encode_startup(params: Mapping[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    parts = [_pack(_U32, protocol)]
    for name, value in params.items():
        if not name:
            raise ValueError("empty startup parameter name")
        parts.append(_cstr(name))
        parts.append(_cstr(value))
    parts.append(b"\0")
    body = b"".join(parts)
    if len(body) + 4 > MAX_STARTUP_LEN:
        raise ValueError("startup packet too long")
    return _U32.pack(len(body) + 4) + body


def encode_ssl_request() -> bytes:
    return _U32.pack(8) + _U32.pack(SSL_REQUEST_CODE)


def encode_gssenc_request() -> bytes:
    return _U32.pack(8) + _U32.pack(GSSENC_REQUEST_CODE)


def encode_cancel_request(pid: int, key: int | bytes) -> bytes:
    key_bytes = _key_bytes(key)
    return (
        _U32.pack(12 + len(key_bytes))
        + _U32.pack(CANCEL_REQUEST_CODE)
        + _pack(_I32, pid)
        + key_bytes
    )


def encode_password(password: str | bytes) -> bytes:
    """PasswordMessage ('p') for cleartext and md5 ("md5...") responses."""
    return encode_message(b"p", _cstr(password))


def encode_sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    payload = b"\xff\xff\xff\xff" if data is None else _pack(_I32, len(data)) + bytes(data)
    return encode_message(b"p", _cstr(mechanism) + payload)


def encode_sasl_response(data: bytes) -> bytes:
    return encode_message(b"p", data)


def encode_query(sql: str) -> bytes:
    return encode_message(b"Q", _cstr(sql))


def encode_parse(name: str, query: str, param_type_oids: Sequence[int] = ()) -> bytes:
    body = (
        _cstr(name)
        + _cstr(query)
        + _pack(_U16, len(param_type_oids))
        + b"".join(_pack(_U32, o) for o in param_type_oids)
    )
    return encode_message(b"P", body)


def encode_bind(
    portal: str,
    statement: str,
    param_formats: Sequence[int] = (),
    params: Sequence[bytes | None] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = (
        _cstr(portal)
        + _cstr(statement)
        + _format_codes_bytes(param_formats)
        + _values_bytes(params)
        + _format_codes_bytes(result_formats)
    )
    return encode_message(b"B", body)


def encode_execute(portal: str = "", max_rows: int = 0) -> bytes:
    return encode_message(b"E", _cstr(portal) + _pack(_I32, max_rows))


def _encode_kind_name(type: bytes, kind: str, name: str) -> bytes:
    if kind not in ("S", "P"):
        raise ValueError("kind must be 'S' or 'P'")
    return encode_message(type, kind.encode() + _cstr(name))


def encode_describe(kind: str, name: str = "") -> bytes:
    return _encode_kind_name(b"D", kind, name)


def encode_close(kind: str, name: str = "") -> bytes:
    return _encode_kind_name(b"C", kind, name)


def encode_function_call(
    oid: int,
    arg_formats: Sequence[int] = (),
    args: Sequence[bytes | None] = (),
    result_format: int = 0,
) -> bytes:
    body = (
        _pack(_U32, oid)
        + _format_codes_bytes(arg_formats)
        + _values_bytes(args)
        + _pack(_I16, result_format)
    )
    return encode_message(b"F", body)


def encode_copy_data(data: bytes) -> bytes:
    return encode_message(b"d", data)


def encode_copy_done() -> bytes:
    return encode_message(b"c")


def encode_copy_fail(message: str) -> bytes:
    return encode_message(b"f", _cstr(message))


def encode_sync() -> bytes:
    return encode_message(b"S")


def encode_flush() -> bytes:
    return encode_message(b"H")


def encode_terminate() -> bytes:
    return encode_message(b"X")
