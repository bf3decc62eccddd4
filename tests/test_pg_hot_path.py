"""The relay's pre-encoded hot paths record exactly what the general field encoder would:
same fields, same order, same bytes (issue #17 keeps the recorded content unchanged)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from breakglass.policy.sql_rules import SqlChecker, SqlRules
from breakglass.proxy.postgres import codec
from breakglass.proxy.postgres.codec import Message
from breakglass.proxy.postgres.relay import Relay
from breakglass.recorder import format as fmt


class Captured:
    """Collects the events the relay appends, as the encoded fields the writer would chain."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []

    def append_encoded(self, kind: str, encoded: bytes) -> None:
        self.lines.append((kind, encoded))

    def event(self, kind: str, **fields) -> None:
        self.lines.append((kind, fmt.encode_fields(fields)))

    def query(self, **fields) -> None:
        self.event("query", **fields)

    def decision(self, **fields) -> None:
        self.event("decision", **fields)


def _bind(portal: str, statement: str, params: list[bytes | None], formats=()) -> Message:
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for v in params:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return Message.build(b"B", body + struct.pack("!h", 0))


def _relay() -> tuple[Relay, Captured]:
    rec = Captured()
    return Relay(
        SqlChecker(SqlRules.from_claim({"mode": "read-only"})), rec, allow_everything=False
    ), rec


values = st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20).map(str.encode))


@settings(max_examples=200, deadline=None)
@given(
    params=st.lists(values, max_size=6),
    name=st.sampled_from(["", "s1", "stmt_é"]),
    portal=st.sampled_from(["", "p1"]),
    explicit_text_formats=st.booleans(),
)
def test_text_bind_is_recorded_as_the_general_encoder_would(
    params, name, portal, explicit_text_formats
):
    relay, rec = _relay()
    relay.from_client([Message.build(b"P", codec.encode_parse(name, "SELECT $1")[5:])])
    formats = (0,) * len(params) if explicit_text_formats else ()
    msg = _bind(portal, name, params, formats)
    relay.from_client([msg])
    kind, fast = rec.lines[-1]
    b = codec.decode_bind(msg.body)
    general = fmt.encode_fields(
        {
            "n": 1,
            "protocol": "extended",
            **relay._bind_fields(b, relay.statements.get(name), "SELECT $1"),
        }
    )
    assert kind == "query" and fast == general
    parse_kind, parse_fields = rec.lines[0]
    assert parse_kind == "parse"
    assert parse_fields == fmt.encode_fields({"statement": name, "text": "SELECT $1"})


def test_binary_bind_still_decodes_parameters():
    relay, rec = _relay()
    relay.from_client([Message.build(b"P", codec.encode_parse("", "SELECT $1", [23])[5:])])
    relay.from_client([_bind("", "", [struct.pack("!i", 10)], (1,))])
    kind, fields = rec.lines[-1]
    assert kind == "query" and b'"params":["10"]' in fields and b'"param_types":["int4"]' in fields
