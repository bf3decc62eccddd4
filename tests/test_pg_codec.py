"""Tests for the pure PostgreSQL wire-protocol codec (proxy/postgres/codec.py)."""

from __future__ import annotations

import random
import re
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breakglass.proxy.postgres import codec as c
from breakglass.proxy.postgres.codec import ProtocolError

# --------------------------------------------------------------------------
# helpers


def startup_all(data: bytes, chunk: int | None = None) -> list:
    """Feed ``data`` (whole or ``chunk`` bytes at a time) and collect packets."""
    reader = c.StartupReader()
    out = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
        while (pkt := reader.next()) is not None:
            out.append(pkt)
    return out


def messages_all(data: bytes, chunk: int | None = None, max_len: int | None = None) -> list:
    reader = c.MessageReader() if max_len is None else c.MessageReader(max_len)
    out = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
        out.extend(reader)
    assert reader.buffered == 0
    return out


def split_all(data: bytes, chunks: list[int]) -> list:
    reader = c.MessageReader()
    out = []
    pos = 0
    for size in chunks:
        out.extend(reader.feed_and_split(data[pos : pos + size]))
        pos += size
    out.extend(reader.feed_and_split(data[pos:]))
    assert reader.buffered == 0
    return out


def startup_packet(body: bytes) -> bytes:
    return struct.pack("!I", len(body) + 4) + body


def proto(major: int, minor: int) -> bytes:
    return struct.pack("!I", (major << 16) | minor)


# --------------------------------------------------------------------------
# StartupReader


def test_startup_roundtrip_and_chunking():
    params = {"user": "alice", "database": "prod", "application_name": "psql é"}
    data = c.encode_ssl_request() + c.encode_startup(params)
    whole = startup_all(data)
    assert whole == [c.SSLRequest(), c.StartupMessage(c.PROTOCOL_3_0, params)]
    assert startup_all(data, chunk=1) == whole
    assert startup_all(data, chunk=3) == whole
    msg = whole[1]
    assert (msg.major, msg.minor, msg.needs_negotiation) == (3, 0, False)
    assert c.negotiate_protocol_version_for(msg) is None


def test_startup_gssenc_then_ssl_then_startup():
    data = c.encode_gssenc_request() + c.encode_ssl_request() + c.encode_startup({"user": "u"})
    assert startup_all(data, chunk=1) == [
        c.GSSENCRequest(),
        c.SSLRequest(),
        c.StartupMessage(c.PROTOCOL_3_0, {"user": "u"}),
    ]


def test_cancel_request_int_and_long_keys():
    data = c.encode_cancel_request(1234, 0xDEADBEEF)
    [pkt] = startup_all(data, chunk=1)
    assert pkt == c.CancelRequest(1234, bytes.fromhex("deadbeef"))
    assert pkt.secret_key_int == 0xDEADBEEF
    # negative int32 keys (as asyncpg/libpq may hold them) encode as the same 4 bytes
    assert c.encode_cancel_request(1, -1) == c.encode_cancel_request(1, b"\xff" * 4)
    # protocol 3.2 style longer key
    key = bytes(range(32))
    assert startup_all(c.encode_cancel_request(7, key)) == [c.CancelRequest(7, key)]


def test_cancel_request_bad_lengths():
    for key_len in (0, 3, 257):
        body = struct.pack("!II", c.CANCEL_REQUEST_CODE, 5) + b"k" * key_len
        with pytest.raises(ProtocolError, match="invalid length .* for CancelRequest"):
            startup_all(startup_packet(body))


def test_startup_reader_stops_after_startup_and_keeps_pipelined_bytes():
    reader = c.StartupReader()
    tail = c.encode_query("select 1") + b"\x00partial"
    reader.feed(c.encode_startup({"user": "u"}) + tail)
    assert isinstance(reader.next(), c.StartupMessage)
    assert reader.done
    assert reader.next() is None
    assert reader.buffered == len(tail)
    assert reader.take_buffer() == tail
    assert reader.buffered == 0
    # after a cancel request too
    reader = c.StartupReader()
    reader.feed(c.encode_cancel_request(1, 2) + b"xyz")
    assert isinstance(reader.next(), c.CancelRequest)
    assert reader.next() is None
    assert reader.take_buffer() == b"xyz"


def test_bytes_before_tls_handshake_are_refused():
    reader = c.StartupReader()
    reader.feed(c.encode_ssl_request() + c.encode_startup({"user": "injected"}))
    assert reader.next() == c.SSLRequest()
    with pytest.raises(ProtocolError, match="unencrypted data after SSL request"):
        reader.start_tls()
    with pytest.raises(ProtocolError):  # sticky
        reader.next()
    # the normal case: nothing buffered, TLS starts, the same reader continues
    reader = c.StartupReader()
    reader.feed(c.encode_ssl_request())
    assert reader.next() == c.SSLRequest()
    reader.start_tls()
    reader.feed(c.encode_startup({"user": "u"}))
    assert reader.next() == c.StartupMessage(c.PROTOCOL_3_0, {"user": "u"})


def test_duplicate_negotiation_requests():
    with pytest.raises(ProtocolError, match="duplicate SSLRequest"):
        startup_all(c.encode_ssl_request() * 2)
    with pytest.raises(ProtocolError, match="duplicate GSSENCRequest"):
        startup_all(c.encode_gssenc_request() * 2)


@pytest.mark.parametrize(
    ("major", "minor", "text"),
    [(2, 0, "2.0"), (1, 0, "1.0"), (4, 0, "4.0"), (0, 0, "0.0")],
)
def test_unsupported_protocol_versions(major, minor, text):
    data = startup_packet(proto(major, minor) + b"user\0u\0\0")
    with pytest.raises(ProtocolError) as err:
        startup_all(data)
    assert str(err.value) == f"unsupported frontend protocol {text}: breakglass supports 3.0 to 3.2"
    assert err.value.sqlstate == "0A000"


def test_protocol_version_rejected_before_body_arrives():
    reader = c.StartupReader()
    reader.feed(startup_packet(proto(2, 0) + b"user\0u\0\0")[:8])
    with pytest.raises(ProtocolError, match="unsupported frontend protocol 2.0"):
        reader.next()


def test_newer_minor_version_is_negotiated_down():
    """NegotiateProtocolVersion carries the whole version (3 << 16 | minor), as PostgreSQL
    sends it: libpq 18 refuses anything below 3.0 as a "downgrade to pre-3.0"."""
    data = startup_packet(proto(3, 9) + b"user\0u\0_pq_.test_ext\0on\0database\0d\0\0")
    [msg] = startup_all(data, chunk=1)
    assert msg.protocol == (3 << 16) | 9
    assert (msg.major, msg.minor) == (3, 9)
    assert msg.params == {"user": "u", "database": "d"}
    assert msg.protocol_options == {"_pq_.test_ext": "on"}
    assert msg.needs_negotiation
    assert msg.negotiated == c.PROTOCOL_3_2 == c.NEWEST_PROTOCOL
    reply = c.negotiate_protocol_version_for(msg)
    assert reply == c.encode_negotiate_protocol_version(c.PROTOCOL_3_2, ["_pq_.test_ext"])
    [m] = messages_all(reply)
    assert m.type == b"v"
    assert m.body[:4] == b"\x00\x03\x00\x02"
    assert c.decode_negotiate_protocol_version(m.body) == (c.PROTOCOL_3_2, ["_pq_.test_ext"])
    # 3.0 with a _pq_ option also needs the reply (to list the unknown option), at 3.0
    [msg] = startup_all(startup_packet(proto(3, 0) + b"user\0u\0_pq_.x\0y\0\0"))
    assert msg.needs_negotiation
    [m] = messages_all(c.negotiate_protocol_version_for(msg))
    assert c.decode_negotiate_protocol_version(m.body) == (c.PROTOCOL_3_0, ["_pq_.x"])


@pytest.mark.parametrize("minor", [0, 2])
def test_versions_we_speak_need_no_negotiation(minor):
    [msg] = startup_all(startup_packet(proto(3, minor) + b"user\0u\0\0"))
    assert not msg.needs_negotiation
    assert c.negotiate_protocol_version_for(msg) is None
    assert msg.negotiated == (3 << 16) | minor
    assert c.cancel_key_length(msg.negotiated) == (32 if minor == 2 else 4)


def test_tls_handshake_detection():
    assert c.looks_like_tls_handshake(b"\x16\x03\x01")
    assert not c.looks_like_tls_handshake(c.encode_ssl_request())
    assert not c.looks_like_tls_handshake(b"")
    with pytest.raises(ValueError):
        c.encode_negotiate_protocol_version(2, [])


@pytest.mark.parametrize("length", [0, 1, 4, 7, 10_001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_bad_lengths(length):
    reader = c.StartupReader()
    reader.feed(struct.pack("!I", length))  # only the length: must fail at once
    with pytest.raises(ProtocolError, match=f"invalid startup packet length {length}"):
        reader.next()


def test_unknown_special_request_code():
    data = startup_packet(struct.pack("!I", (1234 << 16) | 5681))
    with pytest.raises(ProtocolError, match="unsupported startup request code 1234.5681"):
        startup_all(data)


def test_ssl_request_with_wrong_length():
    data = startup_packet(struct.pack("!I", c.SSL_REQUEST_CODE) + b"\0\0\0\0")
    with pytest.raises(ProtocolError, match="invalid length 12 for SSLRequest"):
        startup_all(data)


@pytest.mark.parametrize(
    ("garbage", "text"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP request"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
            "TLS handshake where a startup packet was expected",
        ),
        (b"\xff\xfe\xfd\xfc" + c.encode_ssl_request(), "invalid startup packet length"),
        (b"\n" + c.encode_ssl_request(), "invalid startup packet length"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "invalid startup packet length"),
    ],
)
def test_garbage_before_ssl_request(garbage, text):
    with pytest.raises(ProtocolError, match=text):
        startup_all(garbage)
    with pytest.raises(ProtocolError, match=text):
        startup_all(garbage, chunk=1)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"", "expected terminator as last byte"),  # no terminator at all
        (b"user\0u\0", "expected terminator as last byte"),
        (b"user", "unterminated parameter name"),
        (b"user\0", 'missing value for parameter "user"'),
        (b"user\0u", 'missing value for parameter "user"'),
        (b"user\0u\0\0extra", "expected terminator as last byte"),
        (b"user\0u\0\0\0", "expected terminator as last byte"),
        (b"user\0\xff\xfe\0\0", 'invalid UTF-8 in startup parameter "user"'),
        (b"\xc3(\0v\0\0", "invalid UTF-8 in startup parameter"),
        (b"user\0a\0user\0b\0\0", 'duplicate startup parameter "user"'),
    ],
)
def test_malformed_startup_params(body, text):
    with pytest.raises(ProtocolError, match=text):
        startup_all(startup_packet(proto(3, 0) + body))


def test_startup_error_messages_do_not_echo_values():
    secret = "hunter2-secret"
    body = proto(3, 0) + b"password\0" + secret.encode() + b"\0password\0x\0\0"
    with pytest.raises(ProtocolError) as err:
        startup_all(startup_packet(body))
    assert secret not in str(err.value)


def test_startup_max_len_exact_boundary():
    filler = "x" * (c.MAX_STARTUP_LEN - 8 - len("user\0u\0a\0\0\0"))
    data = c.encode_startup({"user": "u", "a": filler})
    assert len(data) == c.MAX_STARTUP_LEN
    [msg] = startup_all(data)
    assert msg.params["a"] == filler


# --------------------------------------------------------------------------
# MessageReader

SAMPLE_STREAM = (
    c.encode_query("select 1")
    + c.encode_parse("s1", "select $1::int", [23])
    + c.encode_bind("", "s1", [1], [b"\x00\x00\x00\x05"], [1])
    + c.encode_describe("P", "")
    + c.encode_execute("", 0)
    + c.encode_sync()
    + c.encode_copy_data(b"x" * 70_000)
    + c.encode_terminate()
)


def test_message_reader_chunking_is_equivalent():
    whole = messages_all(SAMPLE_STREAM)
    assert [m.type for m in whole] == [b"Q", b"P", b"B", b"D", b"E", b"S", b"d", b"X"]
    assert b"".join(m.raw for m in whole) == SAMPLE_STREAM
    for m in whole:
        assert isinstance(m.raw, bytes)
        assert bytes(m.body) == m.raw[5:]
        assert m.type == m.raw[:1]
    assert messages_all(SAMPLE_STREAM, chunk=1) == whole
    assert messages_all(SAMPLE_STREAM, chunk=7) == whole
    assert messages_all(SAMPLE_STREAM, chunk=4096) == whole
    rng = random.Random(1)
    for _ in range(20):
        chunks = [rng.randint(0, 300) for _ in range(rng.randint(0, 40))]
        assert split_all(SAMPLE_STREAM, chunks) == whole
    assert split_all(SAMPLE_STREAM, [1] * len(SAMPLE_STREAM)) == whole


def test_message_reader_mixed_feed_and_next():
    reader = c.MessageReader()
    reader.feed(SAMPLE_STREAM[:20])
    first = reader.next()
    assert first is not None and first.type == b"Q"
    got = [first] + reader.feed_and_split(SAMPLE_STREAM[20:])
    assert got == messages_all(SAMPLE_STREAM)
    assert reader.next() is None


def test_message_reader_take_buffer_and_initial():
    reader = c.MessageReader(initial=c.encode_sync() + b"Q\0\0")
    assert reader.next().type == b"S"
    assert reader.next() is None
    assert reader.buffered == 3
    assert reader.take_buffer() == b"Q\0\0"
    assert reader.buffered == 0


def test_message_build():
    m = c.Message.build(b"Q", b"select 1\0")
    assert m.raw == c.encode_query("select 1")
    assert c.decode_query(m.body) == "select 1"


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_message_length_too_small(length):
    data = b"Q" + struct.pack("!I", length)
    with pytest.raises(ProtocolError, match=f"invalid message length {length} for 'Q'"):
        messages_all(data)
    with pytest.raises(ProtocolError, match=f"invalid message length {length} for 'Q'"):
        c.MessageReader().feed_and_split(data)


def test_message_length_over_limit_fails_on_header():
    reader = c.MessageReader()
    reader.feed(b"Q\x7f\xff\xff\xff")  # header only: no need to wait for 2 GB
    with pytest.raises(ProtocolError) as err:
        reader.next()
    assert str(err.value) == "message 'Q' of 2147483647 bytes exceeds limit 67108864"
    with pytest.raises(ProtocolError):  # the reader stays failed
        reader.next()
    with pytest.raises(ProtocolError):
        reader.feed_and_split(c.encode_sync())
    # unsigned interpretation: a "negative" length is just huge
    with pytest.raises(ProtocolError, match="exceeds limit"):
        c.MessageReader().feed_and_split(b"\x00\xff\xff\xff\xff")


def test_message_reader_configurable_limit():
    reader = c.MessageReader(max_len=100)
    assert reader.feed_and_split(c.encode_password("x" * 90)) != []
    with pytest.raises(ProtocolError, match="message 'p' of 104 bytes exceeds limit 100"):
        reader.feed_and_split(c.encode_password("x" * 99))
    reader = c.MessageReader(max_len=100)
    reader.max_len = 1000  # raised after authentication
    assert len(reader.feed_and_split(c.encode_query("x" * 500))) == 1
    with pytest.raises(ValueError):
        c.MessageReader(max_len=3)


def test_error_after_valid_messages_in_one_chunk():
    data = c.encode_sync() + b"Q\0\0\0\1"
    with pytest.raises(ProtocolError):
        c.MessageReader().feed_and_split(data)
    reader = c.MessageReader()
    reader.feed(data)
    assert reader.next().type == b"S"
    with pytest.raises(ProtocolError):
        reader.next()


def test_unprintable_type_byte_in_messages():
    with pytest.raises(ProtocolError, match="invalid message length 0 for 0x00"):
        messages_all(b"\0\0\0\0\0")


def test_split_100k_messages_under_a_second():
    # CPU time, not wall time: the machine running the suite may be busy with other work.
    row = b"D" + struct.pack("!I", 4 + 2 + 4 + 20) + b"\0\1" + struct.pack("!i", 20) + b"r" * 20
    data = row * 100_000
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    reader = c.MessageReader()
    start = time.process_time()
    count = 0
    for chunk in chunks:
        count += len(reader.feed_and_split(chunk))
    elapsed = time.process_time() - start
    assert count == 100_000
    assert elapsed < 1.0, elapsed
    # iterating with next() after feed() is fine too
    reader = c.MessageReader()
    start = time.process_time()
    count = 0
    for chunk in chunks:
        reader.feed(chunk)
        for _ in reader:
            count += 1
    assert count == 100_000
    assert time.process_time() - start < 1.0


def test_large_message_in_small_chunks_is_linear():
    big = c.encode_copy_data(b"z" * (16 * 1024 * 1024))
    reader = c.MessageReader()
    start = time.perf_counter()
    got = []
    for i in range(0, len(big), 4096):
        got.extend(reader.feed_and_split(big[i : i + 4096]))
    assert time.perf_counter() - start < 2.0
    assert len(got) == 1 and got[0].raw == big


# --------------------------------------------------------------------------
# Frontend decoders / encoders


def body_of(raw: bytes, type: bytes) -> memoryview:
    [m] = messages_all(raw)
    assert m.type == type
    return m.body


def test_query_roundtrip():
    for sql in ["select 1", "", "select 'é ✓ 𝄞'", "x" * 100_000]:
        assert c.decode_query(body_of(c.encode_query(sql), b"Q")) == sql


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"select 1", "missing string terminator"),
        (b"", "missing string terminator"),
        (b"select 1\0drop table t\0", "unexpected data after string terminator"),
        (b"select 1\0\0", "unexpected data after string terminator"),
        (b"select '\xff'\0", "invalid UTF-8"),
        (b"select '\xc0\xaf'\0", "invalid UTF-8"),  # overlong '/'
    ],
)
def test_query_malformed(body, text):
    with pytest.raises(ProtocolError, match=f"invalid Query message: {text}"):
        c.decode_query(body)


def test_parse_roundtrip():
    raw = c.encode_parse("stmt", "select $1, $2", [23, 0xFFFFFFFF])
    assert c.decode_parse(body_of(raw, b"P")) == c.Parse("stmt", "select $1, $2", (23, 0xFFFFFFFF))
    assert c.decode_parse(body_of(c.encode_parse("", "select 1"), b"P")) == c.Parse(
        "", "select 1", ()
    )


def test_bind_roundtrip():
    bind = c.Bind("p", "s", (0, 1, 0), [b"abc", None, b""], (1,))
    raw = c.encode_bind(
        bind.portal, bind.statement, bind.param_formats, bind.params, bind.result_formats
    )
    got = c.decode_bind(body_of(raw, b"B"))
    assert got == bind
    assert [got.param_format(i) for i in range(3)] == [0, 1, 0]
    one = c.decode_bind(body_of(c.encode_bind("", "", [1], [b"x", b"y"]), b"B"))
    assert [one.param_format(i) for i in range(2)] == [1, 1]
    none = c.decode_bind(body_of(c.encode_bind("", ""), b"B"))
    assert none == c.Bind("", "", (), [], ())
    assert none.param_format(0) == 0


def test_bind_malformed():
    with pytest.raises(ProtocolError, match="2 parameter formats but 3 parameters"):
        c.decode_bind(body_of(c.encode_bind("", "", [0, 1], [b"a", b"b", b"c"]), b"B"))
    with pytest.raises(ProtocolError, match="unsupported parameter format code 2"):
        c.decode_bind(body_of(c.encode_bind("", "", [2], [b"a"]), b"B"))
    with pytest.raises(ProtocolError, match="unsupported result format code -1"):
        c.decode_bind(body_of(c.encode_bind("", "", [], [], [-1]), b"B"))
    bad_len = b"\0\0" + b"\0\0" + b"\0\1" + struct.pack("!i", -2) + b"\0\0"
    with pytest.raises(ProtocolError, match="invalid value length -2"):
        c.decode_bind(bad_len)
    too_long = b"\0\0" + b"\0\0" + b"\0\1" + struct.pack("!i", 100) + b"abc" + b"\0\0"
    with pytest.raises(ProtocolError, match="truncated"):
        c.decode_bind(too_long)
    with pytest.raises(ProtocolError, match="1 unexpected trailing bytes"):
        c.decode_bind(bytes(body_of(c.encode_bind("", ""), b"B")) + b"x")


def test_execute_describe_close_roundtrip():
    assert c.decode_execute(body_of(c.encode_execute("p1", 100), b"E")) == c.Execute("p1", 100)
    assert c.decode_execute(body_of(c.encode_execute(), b"E")) == c.Execute("", 0)
    assert c.decode_describe(body_of(c.encode_describe("S", "s1"), b"D")) == ("S", "s1")
    assert c.decode_describe(body_of(c.encode_describe("P"), b"D")) == ("P", "")
    assert c.decode_close(body_of(c.encode_close("P", "p"), b"C")) == ("P", "p")
    with pytest.raises(ProtocolError, match="invalid Describe message: invalid target type 'X'"):
        c.decode_describe(b"Xname\0")
    with pytest.raises(ProtocolError, match="invalid Close message: truncated"):
        c.decode_close(b"")
    with pytest.raises(ProtocolError, match="invalid Execute message: truncated"):
        c.decode_execute(b"p\0\0\0")
    with pytest.raises(ValueError):
        c.encode_describe("X")


def test_password_roundtrip_and_malformed():
    for pw in ["grant.eyJ0eXAi.sig", "", "pässwörd"]:
        assert c.decode_password(body_of(c.encode_password(pw), b"p")) == pw
    assert c.decode_password(body_of(c.encode_password(b"bytes"), b"p")) == "bytes"
    with pytest.raises(ProtocolError, match="invalid password message: invalid UTF-8"):
        c.decode_password(b"\xff\0")
    with pytest.raises(ProtocolError, match="unexpected data after string terminator"):
        c.decode_password(b"a\0b\0")
    with pytest.raises(ProtocolError, match="missing string terminator"):
        c.decode_password(b"abc")


def test_function_call_roundtrip():
    raw = c.encode_function_call(1598, [1], [b"\0\0\0\1", None], 1)
    assert c.decode_function_call(body_of(raw, b"F")) == c.FunctionCall(
        1598, (1,), [b"\0\0\0\1", None], 1
    )
    with pytest.raises(ProtocolError, match="unsupported result format code 7"):
        c.decode_function_call(body_of(c.encode_function_call(1, [], [], 7), b"F"))


def test_copy_and_empty_messages():
    assert c.decode_copy_fail(body_of(c.encode_copy_fail("oops"), b"f")) == "oops"
    assert bytes(body_of(c.encode_copy_data(b"\0\1"), b"d")) == b"\0\1"
    for raw, t in [
        (c.encode_copy_done(), b"c"),
        (c.encode_sync(), b"S"),
        (c.encode_flush(), b"H"),
        (c.encode_terminate(), b"X"),
    ]:
        c.check_empty(body_of(raw, t), "x")
    with pytest.raises(ProtocolError, match="invalid Sync message: 1 unexpected trailing bytes"):
        c.check_empty(b"x", "Sync")


def test_startup_encoder_rejects_bad_input():
    with pytest.raises(ValueError):
        c.encode_startup({"user": "a\0b"})
    with pytest.raises(ValueError):
        c.encode_startup({"": "x"})
    with pytest.raises(ValueError):
        c.encode_startup({"user": "x" * c.MAX_STARTUP_LEN})
    with pytest.raises(ValueError):
        c.encode_query("select 1\0")
    with pytest.raises(ValueError):
        c.encode_execute("", 2**31)


# --------------------------------------------------------------------------
# Backend decoders / encoders


def test_error_and_notice_roundtrip():
    raw = c.encode_error("ERROR", "42501", "permission denied", detail="d", hint="h")
    fields = c.decode_error_fields(body_of(raw, b"E"))
    assert fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "permission denied",
        "D": "d",
        "H": "h",
    }
    raw = c.encode_notice("WARNING", "01000", "grant expires in 60s")
    assert c.decode_error_fields(body_of(raw, b"N")) == {
        "S": "WARNING",
        "V": "WARNING",
        "C": "01000",
        "M": "grant expires in 60s",
    }
    # a NUL in the message cannot break framing
    fields = c.decode_error_fields(body_of(c.encode_error("ERROR", "42000", "a\0b"), b"E"))
    assert fields["M"] == "a\ufffdb"
    with pytest.raises(ValueError):
        c.encode_error("ERROR", "4250", "x")
    # backend display text with bad UTF-8 is decoded leniently
    assert c.decode_error_fields(b"Mbad \xff\0\0") == {"M": "bad \ufffd"}
    with pytest.raises(ProtocolError):
        c.decode_error_fields(b"Mno terminator\0")
    with pytest.raises(ProtocolError):
        c.decode_error_fields(b"\0extra")


def test_simple_backend_messages_roundtrip():
    assert (
        c.decode_command_complete(body_of(c.encode_command_complete("SELECT 3"), b"C"))
        == "SELECT 3"
    )
    for status in "ITE":
        assert c.decode_ready_for_query(body_of(c.encode_ready_for_query(status), b"Z")) == status
    assert c.encode_ready_for_query(b"T") == c.encode_ready_for_query("T")
    with pytest.raises(ValueError):
        c.encode_ready_for_query("X")
    with pytest.raises(ProtocolError):
        c.decode_ready_for_query(b"X")
    with pytest.raises(ProtocolError):
        c.decode_ready_for_query(b"II")
    assert c.decode_parameter_status(
        body_of(c.encode_parameter_status("server_version", "16.2"), b"S")
    ) == ("server_version", "16.2")
    assert body_of(c.encode_empty_query_response(), b"I") == b""


def test_backend_key_data_roundtrip():
    raw = c.encode_backend_key_data(4242, 0x01020304)
    assert c.decode_backend_key_data(body_of(raw, b"K")) == (4242, b"\1\2\3\4")
    assert c.encode_backend_key_data(4242, b"\1\2\3\4") == raw
    long_key = bytes(range(64))
    assert c.decode_backend_key_data(body_of(c.encode_backend_key_data(1, long_key), b"K")) == (
        1,
        long_key,
    )
    with pytest.raises(ProtocolError, match="invalid cancel key length 2"):
        c.decode_backend_key_data(b"\0\0\0\1\1\2")
    with pytest.raises(ValueError):
        c.encode_backend_key_data(1, b"abc")


def test_authentication_roundtrip():
    assert c.decode_authentication(body_of(c.encode_auth_ok(), b"R")) == (c.AUTH_OK, b"")
    assert c.decode_authentication(body_of(c.encode_auth_cleartext(), b"R")) == (
        c.AUTH_CLEARTEXT,
        b"",
    )
    raw = c.encode_authentication(c.AUTH_MD5, b"salt")
    assert c.decode_authentication(body_of(raw, b"R")) == (c.AUTH_MD5, b"salt")
    raw = c.encode_authentication(c.AUTH_SASL, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")
    code, payload = c.decode_authentication(body_of(raw, b"R"))
    assert code == c.AUTH_SASL
    assert c.decode_sasl_mechanisms(payload) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    with pytest.raises(ProtocolError):
        c.decode_sasl_mechanisms(b"SCRAM-SHA-256\0")
    with pytest.raises(ProtocolError):
        c.decode_authentication(b"\0\0")


def test_sasl_messages():
    raw = c.encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert (
        raw
        == b"p"
        + struct.pack("!I", 4 + 14 + 4 + 11)
        + b"SCRAM-SHA-256\0"
        + struct.pack("!i", 11)
        + b"n,,n=,r=abc"
    )
    assert c.encode_sasl_initial_response("X", None).endswith(b"X\0\xff\xff\xff\xff")
    assert c.encode_sasl_response(b"c=biws") == b"p\0\0\0\x0ac=biws"


def test_fixed_frontend_encodings():
    # byte-exact against the protocol documentation
    assert c.encode_ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert c.encode_gssenc_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"
    assert c.encode_cancel_request(1, 2) == b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\1\0\0\0\2"
    assert c.encode_sync() == b"S\0\0\0\4"
    assert c.encode_terminate() == b"X\0\0\0\4"
    assert c.encode_flush() == b"H\0\0\0\4"
    assert c.encode_auth_ok() == b"R\0\0\0\x08\0\0\0\0"
    assert c.encode_auth_cleartext() == b"R\0\0\0\x08\0\0\0\3"
    assert c.encode_ready_for_query("I") == b"Z\0\0\0\x05I"
    assert c.encode_empty_query_response() == b"I\0\0\0\4"
    assert c.encode_startup({"user": "u"}) == b"\0\0\0\x10\0\3\0\0user\0u\0\0"
    assert c.encode_query("x") == b"Q\0\0\0\x06x\0"


# --------------------------------------------------------------------------
# Fuzzing: only ProtocolError may escape

DECODERS = [
    c.decode_query,
    c.decode_parse,
    c.decode_bind,
    c.decode_execute,
    c.decode_describe,
    c.decode_close,
    c.decode_password,
    c.decode_function_call,
    c.decode_copy_fail,
    c.decode_error_fields,
    c.decode_command_complete,
    c.decode_ready_for_query,
    c.decode_backend_key_data,
    c.decode_parameter_status,
    c.decode_parameter_description,
    c.decode_authentication,
    c.decode_sasl_mechanisms,
    c.decode_negotiate_protocol_version,
    lambda body: c.check_empty(body, "Sync"),
]

VALID_BODIES = [
    bytes(m.body)
    for m in messages_all(
        SAMPLE_STREAM
        + c.encode_function_call(1, [0, 1], [b"a", None])
        + c.encode_close("S", "s")
        + c.encode_password("pw")
        + c.encode_error("ERROR", "42501", "x", "d", "h")
        + c.encode_backend_key_data(1, 2)
        + c.encode_parameter_status("a", "b")
        + c.encode_message(b"t", struct.pack("!HII", 2, 23, 1007))
        + c.encode_negotiate_protocol_version(c.PROTOCOL_3_0, ["_pq_.a", "_pq_.b"])
        + c.encode_authentication(c.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    )
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            buf.insert(rng.randint(0, len(buf)), rng.choice([0, 0xFF, rng.randrange(256)]))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf))]
        elif op == 3 and buf:
            cut = rng.randint(0, len(buf))
            del buf[cut:]
        elif op == 4 and len(buf) >= 2:
            i = rng.randrange(len(buf) - 1)
            buf[i : i + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x80\x00"])
    return bytes(buf)


def random_input(rng: random.Random, corpus: list[bytes]) -> bytes:
    if rng.random() < 0.3:
        return rng.randbytes(rng.randint(0, 64))
    return mutate(rng, rng.choice(corpus))


def test_fuzz_decoders():
    rng = random.Random(20240601)
    for _ in range(3000):
        data = random_input(rng, VALID_BODIES)
        for decode in DECODERS:
            try:
                decode(data)
                decode(memoryview(data))
            except ProtocolError as err:
                assert str(err)


def test_fuzz_startup_reader():
    rng = random.Random(7)
    corpus = [
        c.encode_ssl_request() + c.encode_startup({"user": "u", "database": "d"}),
        c.encode_gssenc_request() + c.encode_ssl_request() + c.encode_cancel_request(5, 6),
        startup_packet(proto(3, 2) + b"user\0u\0_pq_.x\0y\0\0"),
        c.encode_startup({"user": "é", "options": "-c x=y"}) + c.encode_query("select 1"),
    ]
    for i in range(3000):
        data = random_input(rng, corpus)
        for chunk in (None, 1 + i % 5):
            try:
                reader = c.StartupReader()
                step = chunk or max(len(data), 1)
                for j in range(0, len(data), step):
                    reader.feed(data[j : j + step])
                    while reader.next() is not None:
                        pass
                reader.take_buffer()
            except ProtocolError as err:
                assert str(err)


def test_fuzz_message_reader():
    rng = random.Random(99)
    corpus = [SAMPLE_STREAM[:2000], c.encode_sync() * 3 + c.encode_query("select 2")]
    for i in range(3000):
        data = random_input(rng, corpus)
        results = []
        for chunk in (None, 1 + i % 7):
            reader = c.MessageReader(max_len=1 << 20)
            step = chunk or max(len(data), 1)
            got = []
            try:
                for j in range(0, len(data), step):
                    got.extend(reader.feed_and_split(data[j : j + step]))
                results.append(("ok", got, reader.buffered))
            except ProtocolError as err:
                assert str(err)
                results.append(("error",))
        # the same bytes give the same outcome however they are chunked
        assert results[0][0] == results[1][0]
        if results[0][0] == "ok":
            assert results[0] == results[1]


def test_parameter_description():
    assert c.decode_parameter_description(struct.pack("!HII", 2, 23, 1007)) == (23, 1007)
    assert c.decode_parameter_description(struct.pack("!H", 0)) == ()
    with pytest.raises(ProtocolError, match="ParameterDescription"):
        c.decode_parameter_description(struct.pack("!HI", 2, 23))


_KEEP = frozenset((b"C", b"Z", b"E", b"S"))
_backend_message = st.tuples(
    st.sampled_from([b"T", b"D", b"C", b"Z", b"E", b"S", b"N", b"2"]), st.binary(max_size=300)
)


@settings(max_examples=300, deadline=None)
@given(
    msgs=st.lists(_backend_message, min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8),
)
def test_split_kept_forwards_every_byte_and_keeps_only_the_asked_types(msgs, cuts):
    data = b"".join(c.encode_message(t, body) for t, body in msgs)
    bounds = sorted({0, len(data), *(x % (len(data) + 1) for x in cuts)})
    reader = c.MessageReader()
    forwarded, kept = b"", []
    for a, b in zip(bounds, bounds[1:], strict=False):
        complete, got = reader.split_kept(data[a:b], _KEEP)
        for m in got:  # each kept message sits at its end offset in what is forwarded
            assert complete[m.end - len(m.raw) : m.end] == m.raw
        forwarded += complete
        kept += got
    assert forwarded == data and reader.buffered == 0
    assert [(m.type, bytes(m.body)) for m in kept] == [(t, b) for t, b in msgs if t in _KEEP]


def test_split_kept_refuses_a_bad_length_like_feed_and_split():
    reader = c.MessageReader()
    with pytest.raises(c.ProtocolError):
        reader.split_kept(b"D" + struct.pack("!I", 2), _KEEP)


def _checked_or_error(decode, data):
    try:
        return decode(data)
    except ProtocolError as e:
        return e


def _assert_flat_agrees(flat, checked, public, data):
    """A flat decoder accepts exactly what its checked decoder accepts, with the same result;
    for anything else the public decoder raises the checked decoder's error."""
    got, want = flat(data), _checked_or_error(checked, data)
    if isinstance(want, ProtocolError):
        assert got is None
        with pytest.raises(ProtocolError, match=re.escape(str(want))):
            public(data)
    else:
        assert got == want == public(data)


_name = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=8)
_bind_body = st.builds(
    lambda portal, statement, formats, params, results: bytes(
        body_of(c.encode_bind(portal, statement, formats, params, results), b"B")
    ),
    _name,
    _name,
    st.lists(st.sampled_from([0, 1]), max_size=3),
    st.lists(st.one_of(st.none(), st.binary(max_size=6)), max_size=3),
    st.lists(st.sampled_from([0, 1]), max_size=3),
)


def _mutated(body: st.SearchStrategy) -> st.SearchStrategy:
    """Well-formed bodies, and the same cut short, extended, or with one byte changed."""
    return st.one_of(
        body,
        st.tuples(body, st.integers(0, 64)).map(lambda x: x[0][: x[1]]),
        st.tuples(body, st.binary(min_size=1, max_size=3)).map(lambda x: x[0] + x[1]),
        st.tuples(body, st.integers(0, 64), st.integers(0, 255)).map(
            lambda x: x[0][: x[1]] + bytes([x[2]]) + x[0][x[1] + 1 :] if x[0] else x[0]
        ),
        st.binary(max_size=40),
    )


@settings(max_examples=600, deadline=None)
@given(data=_mutated(_bind_body))
def test_flat_bind_decoder_agrees_with_the_checked_one(data):
    """The hot path's flat Bind decoder accepts exactly what the checked decoder accepts,
    with the same result; for anything else the checked decoder gives the error."""
    _assert_flat_agrees(c._bind_flat, c._decode_bind_checked, c.decode_bind, data)


@settings(max_examples=400, deadline=None)
@given(
    data=_mutated(
        st.one_of(
            st.builds(
                lambda p, n: bytes(body_of(c.encode_execute(p, n), b"E")),
                _name,
                st.integers(-(2**31), 2**31 - 1),
            ),
            st.builds(
                lambda k, n: bytes(body_of(c.encode_describe(k, n), b"D")),
                st.sampled_from("SP"),
                _name,
            ),
        )
    )
)
def test_flat_execute_describe_close_decoders_agree_with_the_checked_ones(data):
    for flat, checked, public in (
        (c._execute_flat, c._decode_execute_checked, c.decode_execute),
        (c._kind_name_flat, lambda d: c._kind_name_checked(d, "Describe"), c.decode_describe),
    ):
        _assert_flat_agrees(flat, checked, public, data)


_parse_body = st.builds(
    lambda name, query, oids: bytes(body_of(c.encode_parse(name, query, oids), b"P")),
    _name,
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20),
    st.lists(st.integers(0, 2**32 - 1), max_size=3),
)


@settings(max_examples=600, deadline=None)
@given(data=_mutated(_parse_body))
def test_flat_parse_decoder_agrees_with_the_checked_one(data):
    """The flat Parse decoder (every new extended-protocol statement) accepts exactly what
    the checked decoder accepts, with the same result; for anything else the checked decoder
    gives the error."""
    _assert_flat_agrees(c._parse_flat, c._decode_parse_checked, c.decode_parse, data)
