"""Recording accuracy through the real gateway: cursor-style reads, binary parameters,
FunctionCall, COPY data and long values, as reviewers read them (timeline, export, search)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import uuid

import asyncpg
import pytest

from breakglass.proxy.postgres import codec
from breakglass.recorder.export import jsonl_lines
from breakglass.recorder.replay import render_timeline, statement_timeline
from breakglass.recorder.search import search_recording
from tests.harness import GatewayThread
from tests.pg_client import RawClient, client_tls, error_of

pytestmark = pytest.mark.timeout(120)  # includes starting PostgreSQL on a loaded machine


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    g = GatewayThread(tmp_path_factory.mktemp("pg-rec") / "gw", pg=pg_server).start()
    yield g
    g.stop()


async def connect(gw: GatewayThread, token: str, user: str = "erin") -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user=user,
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )


def newest_recording(gw: GatewayThread):
    gw.wait_idle()
    return max(gw.cfg.recordings_dir.glob("*.rec"), key=lambda p: p.stat().st_mtime)


def events_of(gw: GatewayThread) -> list[dict]:
    from breakglass.recorder.reader import read_events

    return list(read_events(newest_recording(gw)))


def statement(events: list[dict], needle: str) -> tuple[dict, list[dict]]:
    """The query event whose text contains ``needle`` and the result events for it."""
    [q] = [e for e in events if e["kind"] == "query" and needle in e.get("text", "")]
    results = [e for e in events if e["kind"] == "result" and e.get("n") == q["n"]]
    return q, results


async def test_cursor_read_counts_the_whole_portal(gw):
    """asyncpg cursor (Execute with a row limit, PortalSuspended between batches) over 100,000
    rows: one result with every row and the duration of the whole read; fetchrow (limit 1 on a
    longer result) is recorded as 1 row fetched from a portal left suspended."""
    conn = await connect(gw, gw.grant())
    try:
        async with conn.transaction():
            n = 0
            cur = conn.cursor("select g from generate_series(1, 100000) g", prefetch=7000)
            async for _row in cur:
                n += 1
        assert n == 100_000
        assert (await conn.fetchrow("select id from customers order by id"))["id"] == 1
    finally:
        await conn.close()
    events = events_of(gw)
    q, [res] = statement(events, "generate_series(1, 100000)")
    assert res["rows"] == 100_000
    assert res["fetches"] == 15  # 14 full batches of 7000, then the last 2000
    assert res["duration_ms"] > 0
    _q, [one] = statement(events, "from customers order by id")
    assert (one["rows"], one["tag"], one["fetches"]) == (1, "(suspended)", 1)
    text = render_timeline(statement_timeline(events))
    assert "100000 rows" in text and "15 fetches" in text


async def test_binary_parameters_are_decoded(gw):
    """asyncpg sends every parameter in binary, typed by the upstream's ParameterDescription;
    the recording holds their values as PostgreSQL prints them."""
    values = [
        10,
        -7,
        2**40,
        1.5,
        0.1,
        True,
        decimal.Decimal("-12345.678900"),
        "héllo",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        dt.date(2024, 2, 29),
        dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        b"\x00\x01\xff",
        decimal.Decimal("NaN"),
        None,
    ]
    sql = (
        "select $1::int4, $2::int2, $3::int8, $4::float8, $5::float4, $6::bool, $7::numeric,"
        " $8::text, $9::uuid, $10::date, $11::timestamp, $12::timestamptz, $13::bytea,"
        " $14::numeric, $15::int4"
    )
    conn = await connect(gw, gw.grant())
    try:
        row = await conn.fetchrow(sql, *values)
        assert row[0] == 10
    finally:
        await conn.close()
    q, _ = statement(events_of(gw), "$14::numeric")
    assert q["params"] == [
        "10",
        "-7",
        "1099511627776",
        "1.5",
        "0.1",
        "t",
        "-12345.678900",
        "héllo",
        "12345678-1234-5678-1234-567812345678",
        "2024-02-29",
        "2024-01-02 03:04:05.678901",
        "2024-01-02 03:04:05+00",
        "\\x0001ff",
        "NaN",
        None,
    ]
    assert q["param_types"][:4] == ["int4", "int2", "int8", "float8"]


def test_binary_array_parameters_are_decoded(gw):
    """psycopg with %b sends binary parameters typed in Parse (no Describe): arrays too."""
    psycopg = pytest.importorskip("psycopg")
    dsn = dict(host="127.0.0.1", port=gw.pg_port, user="erin", password=gw.grant(), dbname="shop")
    with psycopg.connect(**dsn, sslmode="require") as conn:
        cur = conn.cursor()
        cur.execute(
            "select %b::int8[], %b::text[], %b::float8[], %b::date[], %b::int4",
            [
                [1, None, 3],
                ["a", "b c", "", 'q"t'],
                [[1.5, 2.0], [3.0, -0.5]],
                [dt.date(2024, 1, 1)],
                5,
            ],
        )
        assert cur.fetchone()[0] == [1, None, 3]
    q, _ = statement(events_of(gw), "%s::int8[]".replace("%s", "$1"))
    assert q["params"] == [
        "{1,NULL,3}",
        '{a,"b c","","q\\"t"}',
        "{{1.5,2},{3,-0.5}}",
        "{2024-01-01}",
        "5",
    ]
    assert q["param_types"][1:4] == ["text[]", "float8[]", "date[]"]  # typed, so binary


async def test_long_parameter_whole_in_recording_short_in_timeline(gw):
    big = "x" * 200_000 + "TAIL-MARKER"
    conn = await connect(gw, gw.grant())
    try:
        assert await conn.fetchval("select length($1::text)", big) == len(big)
    finally:
        await conn.close()
    events = events_of(gw)
    q, _ = statement(events, "length($1::text)")
    assert q["params"] == [big]
    text = render_timeline(statement_timeline(events))
    assert "TAIL-MARKER" not in text
    assert "200011 characters" in text
    assert max(len(line) for line in text.splitlines()) < 1000


def psql(gw: GatewayThread, token: str, *args: str, stdin: str | None = None):
    env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require", PGCONNECT_TIMEOUT="10")
    cmd = ["psql", "-X", "-h", "127.0.0.1", "-p", str(gw.pg_port), "-U", "erin", "-d", "shop"]
    return subprocess.run(
        [*cmd, "-v", "ON_ERROR_STOP=1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        input=stdin,
    )


def test_copy_rows_counted_shown_and_searchable(gw):
    rows = "".join(f"{9000 + i}\tCopy Person {i}\tcopy{i}@example.com\n" for i in range(250))
    rows += "9999\tZed Needle-Copy-Row\tzed@example.com\n"
    r = psql(
        gw,
        gw.grant("db-readwrite"),
        "-c",
        "begin",
        "-c",
        r"\copy customers (id, name, email) from stdin",
        "-c",
        "rollback",
        stdin=rows,
    )
    assert r.returncode == 0, r.stderr
    path = newest_recording(gw)
    from breakglass.recorder.reader import read_events

    events = list(read_events(path))
    [copy] = [e for e in statement_timeline(events) if e.what == "copy"]
    assert copy.rows == 251
    assert copy.bytes == len(rows.encode())
    text = render_timeline(statement_timeline(events))
    assert "251 rows" in text and "9000\tCopy Person 0" not in text  # shown escaped, one line
    assert "9000\\tCopy Person 0" in text
    [exported] = [json.loads(x) for x in jsonl_lines(events) if '"copy"' in x]
    assert exported["rows"] == 251 and exported["bytes"] == len(rows.encode())
    assert "Copy Person 0" in exported["data"]
    hits = search_recording(path, "Needle-Copy-Row")
    assert [h.where for h in hits] == ["queries"] and hits[0].kind == "copy_data"


async def test_function_call_recorded_with_name_and_arguments(gw):
    """On an `all` grant FunctionCall passes: lo_creat/lo_open/lowrite are recorded by name with
    their (decoded) arguments, so the data written to the large object is in the recording."""
    token = gw.grant("breakglass", user="ina", breakglass=True)
    c = await RawClient.connect(gw.pg_port, gw.dir / "keys/gateway_tls.crt")
    try:
        assert error_of(await c.login("ina", token)) is None
        c.send(codec.encode_query("begin"))
        await c.until(b"Z")

        async def call(oid: int, *args: bytes) -> bytes:
            c.send(codec.encode_function_call(oid, [1], list(args), 1))
            msgs = await c.until(b"Z")
            assert error_of(msgs) is None, error_of(msgs)
            [v] = [m for m in msgs if m.type == b"V"]
            return bytes(v.body)[4:]

        lo = int.from_bytes(await call(957, (-1).to_bytes(4, "big", signed=True)), "big")
        fd = await call(952, lo.to_bytes(4, "big"), (0x20000 | 0x40000).to_bytes(4, "big"))
        await call(955, fd, b"exfiltrated-or-planted-bytes")
        c.send(codec.encode_query("rollback"))
        await c.until(b"Z")
    finally:
        c.close()
    events = events_of(gw)
    calls = [e for e in events if e["kind"] == "function_call"]
    assert [e["name"] for e in calls] == [
        "pg_catalog.lo_creat",
        "pg_catalog.lo_open",
        "pg_catalog.lowrite",
    ]
    assert calls[0]["oid"] == 957
    assert calls[2]["args"] == [
        str(int.from_bytes(fd, "big")),
        "\\x" + b"exfiltrated-or-planted-bytes".hex(),
    ]
    text = render_timeline(statement_timeline(events))
    assert "pg_catalog.lowrite(" in text and "no result" not in text


async def test_named_portal_closed_and_failing_fetch(gw):
    """Hand-built extended protocol: a named portal read 2 rows at a time then closed mid-read
    (recorded when CloseComplete arrives, inside the transaction), and a read whose third
    batch fails (the rows before the error, the error, 3 fetches)."""
    c = await RawClient.connect(gw.pg_port, gw.dir / "keys/gateway_tls.crt")
    try:
        assert error_of(await c.login("erin", gw.grant())) is None
        c.send(codec.encode_query("begin"))
        await c.until(b"Z")
        c.send(
            codec.encode_parse("s1", "select g from generate_series(1, 10) g /* named */")
            + codec.encode_bind("p1", "s1")
            + codec.encode_execute("p1", 2)
            + codec.encode_execute("p1", 2)
            + codec.encode_close("P", "p1")
            + codec.encode_sync()
        )
        msgs = await c.until(b"Z")
        assert [m.type for m in msgs].count(b"s") == 2 and b"3" in [m.type for m in msgs]
        c.send(
            codec.encode_parse("", "select 10 / (5 - g) from generate_series(1, 9) g /* fails */")
            + codec.encode_bind("", "")
            + b"".join(codec.encode_execute("", 2) for _ in range(4))
            + codec.encode_sync()
        )
        msgs = await c.until(b"Z")
        assert error_of(msgs)["C"] == "22012"
        c.send(codec.encode_query("rollback"))
        await c.until(b"Z")
    finally:
        c.close()
    events = events_of(gw)
    _q, [named] = statement(events, "/* named */")
    assert (named["tag"], named["rows"], named["fetches"]) == ("(suspended)", 4, 2)
    _q, [failed] = statement(events, "/* fails */")
    assert (failed["rows"], failed["fetches"], failed["error"]["sqlstate"]) == (4, 3, "22012")
