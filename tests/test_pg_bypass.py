"""Bypass attempts against a read-only grant, through the real gateway to a real PostgreSQL.

Each attempt must be refused with SQLSTATE 42501, recorded as a denial, and
leave the data exactly as it was.
"""

from __future__ import annotations

import asyncpg
import pytest

from tests.harness import GatewayThread
from tests.pg_client import client_tls

pytestmark = pytest.mark.timeout(90)

ATTACKS = [
    "DELETE FROM orders",
    "delete from orders where true",
    "DeLeTe FrOm orders",
    "SELECT 1; DELETE FROM orders",
    "SELECT 1; /* hidden */ DELETE FROM orders",
    "SELECT 1 -- comment\n; DELETE FROM orders",
    "/* a /* nested */ comment */ DELETE FROM orders",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
    "SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d) x",
    "WITH u AS (UPDATE customers SET name = 'x' RETURNING 1) SELECT 1",
    "EXPLAIN ANALYZE DELETE FROM orders",
    "EXPLAIN (ANALYZE) UPDATE customers SET name = 'x'",
    "UPDATE customers SET name = 'pwned'",
    "INSERT INTO customers (name, email) VALUES ('x', 'y')",
    "TRUNCATE orders",
    "DROP TABLE orders",
    "ALTER TABLE orders ADD COLUMN x int",
    "CREATE TABLE stolen AS SELECT * FROM customers",
    "SELECT * INTO stolen2 FROM customers",
    "SELECT * FROM orders FOR UPDATE",
    "COPY orders TO PROGRAM 'touch /tmp/breakglass-pwned'",
    "COPY orders FROM '/etc/passwd'",
    "COPY orders TO '/tmp/breakglass-out'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_catalog.pg_read_file('/etc/passwd')",
    "SELECT \"pg_read_file\"('/etc/passwd')",
    "SELECT U&\"\\0070g_read_file\"('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT nextval('orders_id_seq')",
    "SELECT query_to_xml('delete from orders', true, true, '')",
    "SELECT dblink_exec('dbname=shop', 'delete from orders')",
    "SELECT pg_terminate_backend(1)",
    "PREPARE p AS DELETE FROM orders",
    "PREPARE p AS SELECT * FROM orders FOR UPDATE",
    "EXECUTE p (pg_read_file('/etc/passwd'))",
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "DO $body$ BEGIN EXECUTE 'delete from orders'; END $body$",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    # hygiene statements are allowed (their effect is checked), but cannot open a write
    "RESET ALL; DELETE FROM orders",
    "DISCARD ALL; UPDATE customers SET name = 'x'",
    "UNLISTEN *; LISTEN chan",
    "SELECT set_config('default_transaction_read_only', NULL, false)",
    "SELECT set_config('default_transaction_read_only', 'off', false) FROM orders LIMIT 1",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name LIKE 'default%'",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_try_advisory_xact_lock(42)",
    "SELECT txid_current()",
    "BEGIN READ WRITE",
    "START TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "SET default_transaction_read_only = off",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET search_path = evil, pg_catalog",
    "SET search_path = pg_temp, public",
    "SELECT set_config('search_path', 'public, pg_catalog', false)",
    "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
    "CALL some_procedure()",
    "GRANT ALL ON orders TO PUBLIC",
    "VACUUM orders",
    "LOCK TABLE orders",
    "LISTEN chan",
    "NOTIFY chan",
    "LOAD 'plpgsql'",
    "ALTER SYSTEM SET fsync = off",
    "SELECT 1 FROM; DELETE",  # unparseable
    "SELECT 'x' || $$ $$; DELETE FROM orders",
    "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN DELETE",
]


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    g = GatewayThread(tmp_path_factory.mktemp("pg-bypass") / "gw", pg=pg_server).start()
    yield g
    g.stop()


async def _fingerprint(pg_server) -> tuple:
    c = await asyncpg.connect(**pg_server.connect_kwargs("postgres"))
    try:
        return (
            await c.fetchval("select md5(string_agg(o::text, ',' order by id)) from orders o"),
            await c.fetchval("select md5(string_agg(c::text, ',' order by id)) from customers c"),
            await c.fetchval("select count(*) from pg_tables where schemaname = 'public'"),
            await c.fetchval("select count(*) from pg_proc where proname = 'f'"),
        )
    finally:
        await c.close()


async def test_bypass_corpus_refused_recorded_and_harmless(gw, pg_server):
    assert len(ATTACKS) >= 40
    before = await _fingerprint(pg_server)
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=gw.grant(),
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
        statement_cache_size=0,
    )
    not_refused = []
    try:
        for attack in ATTACKS:
            # simple protocol (Query message)
            try:
                await conn.execute(attack)
                not_refused.append(("simple", attack))
            except asyncpg.InsufficientPrivilegeError as e:
                assert "breakglass:" in str(e)
            # extended protocol (Parse/Bind/Execute): single statements only
            if ";" not in attack:
                try:
                    await conn.fetch(attack)
                    not_refused.append(("extended", attack))
                except asyncpg.InsufficientPrivilegeError:
                    pass
        assert await conn.fetchval("select count(*) from orders") > 0  # the session still works
    finally:
        await conn.close()
    assert not_refused == []
    assert await _fingerprint(pg_server) == before
    gw.wait_idle()
    from breakglass.recorder.reader import read_events

    rec = max(gw.cfg.recordings_dir.glob("*.rec"), key=lambda p: p.stat().st_mtime)
    denied = [
        e["text"] for e in read_events(rec) if e["kind"] == "decision" and e["allowed"] is False
    ]
    for attack in ATTACKS:
        assert attack in denied, f"denial of {attack!r} not recorded"
    # nothing refused was ever sent upstream as a query
    queries = [e.get("text") for e in read_events(rec) if e["kind"] in ("query", "parse")]
    assert not set(queries) & set(ATTACKS)


def test_marker_file_never_created(gw):
    import os

    assert not os.path.exists("/tmp/breakglass-pwned")
    assert not os.path.exists("/tmp/breakglass-out")
