"""Binary-format values rendered as PostgreSQL's text output, for the recording.

Pure: bytes and a type oid in, text out. Drivers such as asyncpg and pgJDBC send parameters
in binary (``\\x000000000000000a`` is the int8 10); the relay records them as the text
PostgreSQL itself would print, so reviewers read values rather than hex. Every decoder is
exact for its type (no rounding), so the text is the whole value. What is not understood
(an unknown type, a malformed value) returns None and the caller keeps the raw bytes.

timestamptz is shown in UTC (``+00``): the session's TimeZone is the client's business.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal

__all__ = ["FASTPATH_FUNCTIONS", "decode_binary", "type_name"]

_EPOCH_DATE = dt.date(2000, 1, 1)
_EPOCH_TS = dt.datetime(2000, 1, 1)
_I64_MAX = 2**63 - 1
_I64_MIN = -(2**63)
_I32_MAX = 2**31 - 1
_I32_MIN = -(2**31)
#: PostgreSQL's MAXDIM: arrays deeper than this are malformed.
_MAX_DIMS = 6

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")


class _Bad(Exception):
    """Malformed value: the caller keeps the raw bytes."""


def _int(s: struct.Struct) -> Callable[[bytes], str]:
    def dec(b: bytes) -> str:
        if len(b) != s.size:
            raise _Bad
        return str(s.unpack(b)[0])

    return dec


def _shortest(value: float, max_digits: int, fits: Callable[[float], bool]) -> str:
    """The shortest decimal that reads back as ``value`` (as PostgreSQL 12+ prints floats)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    for digits in range(1, max_digits + 1):
        text = f"{value:.{digits}g}"
        if fits(float(text)):
            return text
    return repr(value)


def _float4(b: bytes) -> str:
    if len(b) != 4:
        raise _Bad
    (v,) = _F32.unpack(b)
    return _shortest(v, 9, lambda x: _F32.pack(x) == b)


def _float8(b: bytes) -> str:
    if len(b) != 8:
        raise _Bad
    (v,) = _F64.unpack(b)
    return _shortest(v, 17, lambda x: x == v)


def _bool(b: bytes) -> str:
    if len(b) != 1 or b[0] > 1:
        raise _Bad
    return "t" if b[0] else "f"


def _bytea(b: bytes) -> str:
    return "\\x" + b.hex()


def _text(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad from None


def _jsonb(b: bytes) -> str:
    if not b or b[0] != 1:
        raise _Bad
    return _text(b[1:])


def _char(b: bytes) -> str:
    if len(b) > 1:
        raise _Bad
    return _text(b)


def _uuid(b: bytes) -> str:
    if len(b) != 16:
        raise _Bad
    return str(uuid.UUID(bytes=b))


def _numeric(b: bytes) -> str:
    if len(b) < 8:
        raise _Bad
    ndigits, weight = _I16.unpack_from(b, 0)[0], _I16.unpack_from(b, 2)[0]
    sign, dscale = _U16.unpack_from(b, 4)[0], _U16.unpack_from(b, 6)[0]
    special = {0xC000: "NaN", 0xD000: "Infinity", 0xF000: "-Infinity"}
    if sign in special:
        return special[sign]
    if sign not in (0, 0x4000) or ndigits < 0 or len(b) != 8 + 2 * ndigits or dscale > 16383:
        raise _Bad
    groups = [_I16.unpack_from(b, 8 + 2 * i)[0] for i in range(ndigits)]
    if any(not 0 <= g < 10000 for g in groups):
        raise _Bad
    digits = "".join(f"{g:04d}" for g in groups) or "0"
    exponent = (weight - ndigits + 1) * 4
    value = Decimal((1 if sign else 0, tuple(int(c) for c in digits), exponent))
    return f"{value:.{dscale}f}"


def _date(b: bytes) -> str:
    if len(b) != 4:
        raise _Bad
    (days,) = _I32.unpack(b)
    if days == _I32_MAX:
        return "infinity"
    if days == _I32_MIN:
        return "-infinity"
    try:
        return (_EPOCH_DATE + dt.timedelta(days=days)).isoformat()
    except OverflowError:  # BC or beyond year 9999: keep the bytes
        raise _Bad from None


def _timestamp_text(b: bytes) -> str:
    if len(b) != 8:
        raise _Bad
    (micros,) = _I64.unpack(b)
    if micros == _I64_MAX:
        return "infinity"
    if micros == _I64_MIN:
        return "-infinity"
    try:
        ts = _EPOCH_TS + dt.timedelta(microseconds=micros)
    except OverflowError:
        raise _Bad from None
    text = ts.strftime("%Y-%m-%d %H:%M:%S")
    if ts.microsecond:
        text += f".{ts.microsecond:06d}".rstrip("0")
    return text if ts.year >= 1000 else "0" * (4 - len(str(ts.year))) + text


def _timestamptz(b: bytes) -> str:
    text = _timestamp_text(b)
    return text if text.endswith("infinity") else text + "+00"


def _time(b: bytes) -> str:
    if len(b) != 8:
        raise _Bad
    (micros,) = _I64.unpack(b)
    if not 0 <= micros <= 86_400_000_000:
        raise _Bad
    secs, us = divmod(micros, 1_000_000)
    text = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    return text + (f".{us:06d}".rstrip("0") if us else "")


#: oid -> (name, decoder)
_SCALARS: dict[int, tuple[str, Callable[[bytes], str]]] = {
    16: ("bool", _bool),
    17: ("bytea", _bytea),
    18: ("char", _char),
    19: ("name", _text),
    20: ("int8", _int(_I64)),
    21: ("int2", _int(_I16)),
    23: ("int4", _int(_I32)),
    25: ("text", _text),
    26: ("oid", _int(_U32)),
    114: ("json", _text),
    142: ("xml", _text),
    700: ("float4", _float4),
    701: ("float8", _float8),
    705: ("unknown", _text),
    1042: ("bpchar", _text),
    1043: ("varchar", _text),
    1082: ("date", _date),
    1083: ("time", _time),
    1114: ("timestamp", _timestamp_text),
    1184: ("timestamptz", _timestamptz),
    1700: ("numeric", _numeric),
    2950: ("uuid", _uuid),
    3802: ("jsonb", _jsonb),
}
#: array oid -> element oid
_ARRAYS: dict[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1009: 25,
    1028: 26, 199: 114, 143: 142, 1021: 700, 1022: 701, 1014: 1042, 1015: 1043, 1182: 1082,
    1183: 1083, 1115: 1114, 1185: 1184, 1231: 1700, 2951: 2950, 3807: 3802,
}  # fmt: skip

#: Built-in functions clients call through FunctionCall (libpq's and pgJDBC's large-object
#: APIs), by their fixed pg_catalog oid: oid -> (name, argument type oids). Checked against a
#: real server in the tests. Other oids are recorded as the oid alone.
FASTPATH_FUNCTIONS: dict[int, tuple[str, tuple[int, ...]]] = {
    715: ("lo_create", (26,)),
    764: ("lo_import", (25,)),
    765: ("lo_export", (26, 25)),
    767: ("lo_import", (25, 26)),
    952: ("lo_open", (26, 23)),
    953: ("lo_close", (23,)),
    954: ("loread", (23, 23)),
    955: ("lowrite", (23, 17)),
    956: ("lo_lseek", (23, 23, 23)),
    957: ("lo_creat", (23,)),
    958: ("lo_tell", (23,)),
    964: ("lo_unlink", (26,)),
    1004: ("lo_truncate", (23, 23)),
    3170: ("lo_lseek64", (23, 20, 23)),
    3171: ("lo_tell64", (23,)),
    3172: ("lo_truncate64", (23, 20)),
    3457: ("lo_from_bytea", (26, 17)),
    3458: ("lo_get", (26,)),
    3459: ("lo_get", (26, 20, 23)),
    3460: ("lo_put", (26, 20, 17)),
}


def type_name(oid: int) -> str:
    """``23`` -> ``"int4"``, ``1007`` -> ``"int4[]"``; unknown oids as their number."""
    if oid in _SCALARS:
        return _SCALARS[oid][0]
    if oid in _ARRAYS:
        return _SCALARS[_ARRAYS[oid]][0] + "[]"
    return str(oid)


def _quote_element(text: str) -> str:
    if (
        text == ""
        or text.upper() == "NULL"
        or any(c in text for c in '{}",\\')
        or any(c.isspace() for c in text)
    ):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _array(elem_oid: int, b: bytes) -> str:
    dec = _SCALARS[elem_oid][1]
    if len(b) < 12:
        raise _Bad
    ndim, flags, oid = (
        _I32.unpack_from(b, 0)[0],
        _I32.unpack_from(b, 4)[0],
        _U32.unpack_from(b, 8)[0],
    )
    if oid != elem_oid or flags not in (0, 1) or not 0 <= ndim <= _MAX_DIMS:
        raise _Bad
    if ndim == 0:
        if len(b) != 12:
            raise _Bad
        return "{}"
    pos = 12
    dims: list[int] = []
    lbounds: list[int] = []
    for _ in range(ndim):
        if len(b) < pos + 8:
            raise _Bad
        size, lb = _I32.unpack_from(b, pos)[0], _I32.unpack_from(b, pos + 4)[0]
        if size < 0:
            raise _Bad
        dims.append(size)
        lbounds.append(lb)
        pos += 8
    elements: list[str] = []
    total = 1
    for d in dims:
        total *= d
    if total * 4 > len(b) - pos:  # every element takes at least its length word
        raise _Bad
    for _ in range(total):
        (size,) = _I32.unpack_from(b, pos)
        pos += 4
        if size == -1:
            elements.append("NULL")
            continue
        if size < 0 or pos + size > len(b):
            raise _Bad
        elements.append(_quote_element(dec(b[pos : pos + size])))
        pos += size
    if pos != len(b):
        raise _Bad

    def nest(level: int, items: list[str]) -> str:
        if level == ndim - 1:
            return "{" + ",".join(items) + "}"
        step = len(items) // dims[level] if dims[level] else 0
        parts = [nest(level + 1, items[i * step : (i + 1) * step]) for i in range(dims[level])]
        return "{" + ",".join(parts) + "}"

    text = nest(0, elements)
    if any(lb != 1 for lb in lbounds):
        text = (
            "".join(f"[{lb}:{lb + d - 1}]" for lb, d in zip(lbounds, dims, strict=True))
            + "="
            + text
        )
    return text


def decode_binary(oid: int, data: bytes) -> str | None:
    """The text PostgreSQL would print for binary ``data`` of type ``oid``; None if unknown
    or malformed."""
    try:
        if oid in _SCALARS:
            return _SCALARS[oid][1](bytes(data))
        if oid in _ARRAYS:
            return _array(_ARRAYS[oid], bytes(data))
    except (_Bad, struct.error, ValueError, OverflowError, ArithmeticError):
        return None
    return None
