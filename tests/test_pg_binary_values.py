"""Binary parameter values as PostgreSQL prints them (sans-I/O), and bad input never raises."""

from __future__ import annotations

import random
import struct

import pytest

from breakglass.proxy.postgres.binary_values import FASTPATH_FUNCTIONS, decode_binary, type_name


def numeric(ndigits_groups: list[int], weight: int, sign: int, dscale: int) -> bytes:
    head = struct.pack("!hhHH", len(ndigits_groups), weight, sign, dscale)
    return head + b"".join(struct.pack("!h", g) for g in ndigits_groups)


def array(elem_oid: int, dims: list[tuple[int, int]], items: list[bytes | None]) -> bytes:
    out = struct.pack("!iiI", len(dims), int(any(i is None for i in items)), elem_oid)
    out += b"".join(struct.pack("!ii", n, lb) for n, lb in dims)
    for i in items:
        out += struct.pack("!i", -1) if i is None else struct.pack("!i", len(i)) + i
    return out


@pytest.mark.parametrize(
    ("oid", "data", "text"),
    [
        (20, struct.pack("!q", 10), "10"),
        (21, struct.pack("!h", -2), "-2"),
        (26, struct.pack("!I", 4_000_000_000), "4000000000"),
        (700, struct.pack("!f", 0.1), "0.1"),
        (701, struct.pack("!d", 2.0), "2"),
        (701, struct.pack("!d", 1e300), "1e+300"),
        (701, struct.pack("!d", float("-inf")), "-Infinity"),
        (16, b"\x00", "f"),
        (1700, numeric([1, 2345], 1, 0, 0), "12345"),
        (1700, numeric([12, 3400], 0, 0x4000, 2), "-12.34"),
        (1700, numeric([5], -1, 0, 4), "0.0005"),
        (1700, numeric([], 0, 0, 3), "0.000"),
        (1700, numeric([], 0, 0xD000, 0), "Infinity"),
        (1082, struct.pack("!i", -1), "1999-12-31"),
        (1082, struct.pack("!i", 2**31 - 1), "infinity"),
        (1114, struct.pack("!q", 1_500_000), "2000-01-01 00:00:01.5"),
        (1184, struct.pack("!q", -(2**63)), "-infinity"),
        (1083, struct.pack("!q", 3_723_000_001), "01:02:03.000001"),
        (3802, b"\x01{}", "{}"),
        (
            1007,
            array(23, [(2, 1), (2, 1)], [struct.pack("!i", i) for i in (1, 2, 3, 4)]),
            "{{1,2},{3,4}}",
        ),
        (1009, array(25, [(3, 0)], [b"NULL", None, b"a\\b"]), '[0:2]={"NULL",NULL,"a\\\\b"}'),
        (1009, struct.pack("!iiI", 0, 0, 25), "{}"),
    ],
)
def test_values(oid, data, text):
    assert decode_binary(oid, data) == text


@pytest.mark.parametrize(
    ("oid", "data"),
    [
        (23, b"\x00\x01"),  # short int4
        (16, b"\x02"),
        (25, b"\xff\xfe"),  # not UTF-8
        (1700, numeric([10000], 0, 0, 0)),  # digit out of range
        (1700, numeric([1], 0, 0x1234, 0)),  # bad sign
        (1082, struct.pack("!i", -800_000)),  # BC: kept as bytes
        (1007, struct.pack("!iiI", 1, 0, 23) + struct.pack("!ii", 2**30, 1)),  # huge dims
        (1007, array(20, [(1, 1)], [struct.pack("!q", 1)])),  # element type mismatch
        (1007, struct.pack("!iiI", 7, 0, 23)),  # too many dimensions
        (99999, b"x"),  # unknown type
    ],
)
def test_malformed_or_unknown_is_none(oid, data):
    assert decode_binary(oid, data) is None


def test_garbage_never_raises():
    rng = random.Random(13)
    oids = [16, 17, 20, 21, 23, 700, 701, 1700, 1082, 1114, 1184, 2950, 1007, 1009, 1231, 3802]
    for _ in range(5000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        out = decode_binary(rng.choice(oids), data)
        assert out is None or isinstance(out, str)


def test_type_names():
    assert (type_name(23), type_name(1007), type_name(424242)) == ("int4", "int4[]", "424242")


def test_fastpath_table_matches_the_server(pg_server):
    """The large-object functions FunctionCall is used for, by their fixed oids in PostgreSQL 15."""
    oids = ",".join(map(str, FASTPATH_FUNCTIONS))
    rows = pg_server.query(
        "select p.oid, p.proname, array_to_string(p.proargtypes::oid[], ',') from pg_proc p "
        f"where p.oid = any('{{{oids}}}'::oid[]) order by p.oid"
    )
    got = {}
    for line in rows.strip().splitlines():
        oid, name, args = line.split("|")
        got[int(oid)] = (name, tuple(int(a) for a in args.split(",") if a))
    assert got == FASTPATH_FUNCTIONS
