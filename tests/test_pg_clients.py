"""Client compatibility matrix: everyday tasks of real clients through the real gateway on
restricted grants (issue 13). Each task must work; on read-only grants a write must still be
refused with 42501 (by the gateway) and, where the gateway lets a statement through (a
user-defined function), by the upstream itself.

Grants: ``ro`` (read-only, no table list), ``rw`` (read-write), ``tables`` (read-only on
public.*, compat.*: the catalogue is readable by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from pgcli.pgexecute import PGExecute
from sqlalchemy import ForeignKey, Numeric
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from breakglass.throwaway.servers import find_pg_client
from tests.harness import GatewayThread
from tests.pg_client import client_tls

pytestmark = pytest.mark.timeout(120)

TABLES = ["public.*", "compat.*"]

SETUP = """
DROP SCHEMA IF EXISTS compat CASCADE;
CREATE SCHEMA compat;
CREATE TYPE compat.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE compat.pair AS (a integer, b text);
CREATE DOMAIN compat.posint AS integer CHECK (VALUE > 0);
CREATE TABLE compat.gadgets (
    id integer PRIMARY KEY,
    tags text[] NOT NULL,
    mood compat.mood NOT NULL,
    pair compat.pair NOT NULL,
    qty compat.posint NOT NULL
);
INSERT INTO compat.gadgets VALUES
    (1, '{red,blue}', 'happy', ROW(1, 'one'), 3),
    (2, '{}', 'sad', ROW(2, NULL), 7);
-- a write the gateway cannot see (a function): only the upstream can refuse it
CREATE FUNCTION compat.write_probe() RETURNS integer LANGUAGE sql VOLATILE
    AS 'INSERT INTO compat.gadgets VALUES (99, ''{}'', ''ok'', ROW(9, ''x''), 1) RETURNING id';
GRANT USAGE ON SCHEMA compat TO app_ro, app_rw;
GRANT SELECT ON ALL TABLES IN SCHEMA compat TO app_ro;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA compat TO app_ro, app_rw;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO app_ro;  -- pg_dump reads them
"""
TEARDOWN = """
DROP SCHEMA IF EXISTS compat CASCADE;
REVOKE SELECT ON ALL SEQUENCES IN SCHEMA public FROM app_ro;
"""


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    pg_server.psql(["-q", "-v", "ON_ERROR_STOP=1", "-c", SETUP], check=True)
    g = GatewayThread(tmp_path_factory.mktemp("pg-clients") / "gw", pg=pg_server).start()
    yield g
    g.stop()
    pg_server.psql(["-q", "-c", TEARDOWN])


def grant(gw: GatewayThread, kind: str) -> str:
    if kind == "ro":
        return gw.grant()
    if kind == "rw":
        return gw.grant("db-readwrite")
    return gw.grant(sql={"mode": "read-only", "tables": TABLES})


def cert(gw: GatewayThread) -> str:
    return str(gw.dir / "keys/gateway_tls.crt")


def libpq_env(gw: GatewayThread, token: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="verify-full", PGSSLROOTCERT=cert(gw))
    env.update(PGHOST="127.0.0.1", PGPORT=str(gw.pg_port), PGUSER="erin", PGDATABASE="shop")
    for k in ("PGSERVICE", "PGOPTIONS", "PGAPPNAME"):
        env.pop(k, None)
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def psql(gw, token, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", *args], libpq_env(gw, token, **env))


# --------------------------------------------------------------------------- pg_dump


#: Formats dumped per grant: every format on read-only; the other grants differ only in
#: mode or table list, so they run the formats that exercise that difference.
DUMPS = {
    "ro": ("schema", "data", "plain", "custom"),
    "rw": ("schema", "custom"),
    "tables": ("data", "custom"),
}


@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
def test_pg_dump_and_pg_restore_list(gw, kind, tmp_path):
    pg_dump, pg_restore = find_pg_client("pg_dump"), find_pg_client("pg_restore")
    assert pg_dump and pg_restore, "pg_dump/pg_restore are installed with postgresql-client"
    env = libpq_env(gw, grant(gw, kind))
    # a table-restricted grant dumps the schemas it may read
    scope = ["-n", "public", "-n", "compat"] if kind == "tables" else []
    # pgbench_accounts' 100k rows only cost time (every byte is recorded)
    scope.append("--exclude-table-data=public.pgbench_*")
    if "schema" in DUMPS[kind]:
        schema = run([pg_dump, "--schema-only", *scope], env)
        assert schema.returncode == 0, schema.stderr
        assert "CREATE TABLE public.orders" in schema.stdout
        assert "CREATE TYPE compat.mood AS ENUM" in schema.stdout
    if "data" in DUMPS[kind]:
        data = run([pg_dump, "--data-only", "-t", "public.customers", *scope], env)
        assert data.returncode == 0, data.stderr
        assert "COPY public.customers (id, name, email) FROM stdin;" in data.stdout
        assert data.stdout.count("@example.com") >= 200
    if "plain" in DUMPS[kind]:
        plain = tmp_path / "shop.sql"
        r = run([pg_dump, "-f", str(plain), *scope], env)
        assert r.returncode == 0, r.stderr
        assert "COPY compat.gadgets" in plain.read_text()
    custom = tmp_path / "shop.dump"
    r = run([pg_dump, "-Fc", "-f", str(custom), *scope], env)
    assert r.returncode == 0, r.stderr
    listing = run([pg_restore, "--list", str(custom)], env)
    assert listing.returncode == 0, listing.stderr
    assert "TABLE DATA public orders" in listing.stdout
    assert "TYPE compat mood" in listing.stdout
    assert "TABLE DATA compat gadgets" in listing.stdout


def test_catalogue_hidden_when_the_grant_says_so(gw):
    token = gw.grant(sql={"mode": "read-only", "tables": ["public.*"], "catalog": False})
    r = psql(gw, token, "-c", r"\dt")
    assert r.returncode != 0
    assert "table pg_catalog.pg_class is not in this grant" in r.stderr
    r = psql(gw, token, "-c", "select count(*) from orders")
    assert r.returncode == 0 and r.stdout.strip() == "500"


def test_pg_dump_outside_the_table_list_is_refused(gw):
    r = run(
        [find_pg_client("pg_dump") or "pg_dump", "-t", "secret.keys"],
        libpq_env(gw, grant(gw, "tables")),
    )
    assert r.returncode != 0
    assert "table secret.keys is not in this grant" in r.stderr
    assert "test-only-not-a-secret" not in r.stdout


# --------------------------------------------------------------------------- psql


@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
def test_psql_meta_commands(gw, kind):
    token = grant(gw, kind)
    metas = [
        (r"\dt", "orders"),
        (r"\d public.orders", "customer_id"),
        (r"\dn", "compat"),
        (r"\dT compat.*", "mood"),
        (r"\df compat.*", "write_probe"),
        (r"\dv pg_catalog.pg_roles", "pg_roles"),
        (r"\l", "shop"),
        (r"\du", "app_ro"),
        (r"\di", "orders_pkey"),
        (r"\dx", "plpgsql"),
        (r"\d+ compat.gadgets", "tags"),
    ]
    args = [a for meta, _ in metas for a in ("-c", meta)]
    r = psql(gw, token, *args)  # ON_ERROR_STOP: any refused catalogue query fails the run
    assert r.returncode == 0, r.stderr
    for meta, expect in metas:
        assert expect in r.stdout, meta
    if kind != "rw":
        r = psql(gw, token, "-c", "delete from orders")
        assert r.returncode != 0 and "is not allowed" in r.stderr


# --------------------------------------------------------------------------- startup parameters


def test_startup_options_are_applied(gw):
    token = grant(gw, "ro")
    r = psql(
        gw,
        token,
        "-c",
        "show statement_timeout",
        "-c",
        "show work_mem",
        "-c",
        "show search_path",
        "-c",
        "show default_transaction_read_only",
        PGOPTIONS=r"-c statement_timeout=1234 --work-mem=8MB -csearch_path=compat,\ public",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1234ms", "8MB", "compat,", "public", "on"]
    # -c statement_timeout really applies upstream: a long query is cut off by the server
    r = psql(gw, token, "-c", "select pg_sleep(5)", PGOPTIONS="-c statement_timeout=200")
    assert r.returncode != 0 and "statement timeout" in r.stderr


@pytest.mark.parametrize(
    "kind,options,named",
    [
        ("ro", "-c default_transaction_read_only=off", "default_transaction_read_only"),
        ("ro", "-c session_replication_role=replica", "session_replication_role"),
        ("ro", "-c standard_conforming_strings=off", "standard_conforming_strings"),
        ("ro", "-c role=postgres", "role"),
        ("ro", "-c search_path=pg_temp,public", "search_path"),
        ("ro", "-d 5", "-d"),
        ("rw", "-c client_encoding=SJIS", "client_encoding"),
        ("tables", "-c search_path=secret", "search_path"),
    ],
)
def test_startup_options_refused_with_a_fatal_naming_them(gw, kind, options, named):
    r = psql(gw, grant(gw, kind), "-c", "select 1", PGOPTIONS=options)
    assert r.returncode != 0
    assert "FATAL" in r.stderr and named in r.stderr, r.stderr
    from breakglass.recorder.audit import read_audit

    gw.flush_audit()
    assert any(named in e["message"] for e in read_audit(gw.cfg.audit_dir, type="session.refused"))


# --------------------------------------------------------------------------- psycopg 3

PSYCOPG_SCRIPT = r"""
import json, sys
import psycopg
from psycopg import errors
out = {"impl": psycopg.pq.__impl__, "libpq": psycopg.pq.version()}
conninfo, kind = sys.argv[1], sys.argv[2]
with psycopg.connect(conninfo, options="-c statement_timeout=4321") as conn:
    conn.prepared_max = 2  # evict often: libpq < 17 sends DEALLOCATE
    conn.prepare_threshold = 0
    for i in range(8):
        conn.execute(f"select id from orders where id = %s and {i} = {i}", (i + 1,)).fetchone()
    out["timeout"] = conn.execute("show statement_timeout").fetchone()[0]
    out["orders"] = conn.execute("select count(*) from orders").fetchone()[0]
    out["tags"] = conn.execute("select tags from compat.gadgets where id = 1").fetchone()[0]
    with conn.transaction():
        out["rows"] = len(conn.execute("select * from customers where id < %s", (11,)).fetchall())
    with conn.cursor(name="srv") as cur:  # server-side cursor: DECLARE/FETCH/CLOSE
        cur.itersize = 50
        out["cursor"] = sum(1 for _ in cur.execute("select * from orders"))
    try:
        conn.execute("insert into compat.gadgets values (50, '{}', 'ok', row(1, 'x'), 1)")
        out["write"] = "ok"
    except errors.InsufficientPrivilege as e:
        out["write"] = e.sqlstate
    conn.rollback()
print(json.dumps(out))
"""


@pytest.mark.parametrize("impl", ["binary", "python"])
@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
def test_psycopg(gw, impl, kind):
    conninfo = (
        f"host=127.0.0.1 port={gw.pg_port} user=erin dbname=shop password={grant(gw, kind)} "
        f"sslmode=verify-full sslrootcert={cert(gw)}"
    )
    env = dict(os.environ, PSYCOPG_IMPL=impl)
    r = subprocess.run(
        [sys.executable, "-c", PSYCOPG_SCRIPT, conninfo, kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["impl"] == impl
    if impl == "python":
        assert out["libpq"] < 170000  # the system libpq: DEALLOCATE on cache eviction
    assert out["timeout"] == "4321ms"
    assert (out["orders"], out["tags"], out["rows"], out["cursor"]) == (
        500,
        ["red", "blue"],
        10,
        500,
    )
    assert out["write"] == ("ok" if kind == "rw" else "42501")
    texts = [e.get("text", "") for e in latest_recording(gw) if e["kind"] == "query"]
    evicted = [t for t in texts if t.startswith("DEALLOCATE ") and t != "DEALLOCATE ALL"]
    assert bool(evicted) == (impl == "python"), texts  # libpq 17+ evicts with a Close message


# --------------------------------------------------------------------------- asyncpg


async def connect(gw: GatewayThread, token: str, **kw) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
        **kw,
    )


@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
async def test_asyncpg_types_pool_cursor_cancel(gw, kind):
    token = grant(gw, kind)
    conn = await connect(gw, token)
    try:
        # introspection of arrays, enums, composites, domains
        row = await conn.fetchrow("select * from compat.gadgets where id = 1")
        assert row["tags"] == ["red", "blue"] and row["mood"] == "happy"
        assert tuple(row["pair"]) == (1, "one") and row["qty"] == 3
        assert await conn.fetchval("select array_agg(mood) from compat.gadgets") == [
            "happy",
            "sad",
        ]
        assert await conn.fetchval("select $1::compat.mood", "ok") == "ok"
        async with conn.transaction():
            q = "select id from orders order by id"
            ids = [r["id"] async for r in conn.cursor(q, prefetch=100)]
            cur = await conn.cursor(q)
            await cur.forward(10)
            batch = await cur.fetch(5)
        assert ids == list(range(1, 501)) and [r["id"] for r in batch] == [11, 12, 13, 14, 15]
        # cancel: asyncpg sends a CancelRequest on timeout; the session stays usable
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("select pg_sleep(10)", timeout=0.5)
        assert await conn.fetchval("select 1") == 1
        write = conn.execute("insert into compat.gadgets values (60, '{}', 'ok', row(1,'x'), 1)")
        if kind == "rw":
            async with conn.transaction():
                await write
                raise_rollback = False
                assert not raise_rollback
            await conn.execute("delete from compat.gadgets where id = 60")
        else:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await write
    finally:
        await conn.close()

    pool = await asyncpg.create_pool(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
        min_size=1,
        max_size=2,
    )
    try:
        for i in range(5):  # every release runs asyncpg's reset query
            async with pool.acquire() as c:
                await c.execute("set statement_timeout = 1000")
                assert await c.fetchval("select count(*) from orders where id <= $1", i) == i
        async with pool.acquire() as c:
            assert await c.fetchval("show statement_timeout") == "0"  # RESET ALL ran
    finally:
        await asyncio.wait_for(pool.close(), 10)


# --------------------------------------------------------------------------- hygiene escapes


@pytest.mark.parametrize("hygiene", ["RESET ALL", "DISCARD ALL", "DEALLOCATE ALL", "UNLISTEN *"])
async def test_hygiene_statement_cannot_escape_read_only(gw, hygiene):
    conn = await connect(gw, grant(gw, "ro"), statement_cache_size=0)
    try:
        await conn.execute("set statement_timeout = 5000")
        await conn.execute(hygiene)
        # the gateway still refuses the write ...
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("delete from compat.gadgets")
        # ... and so does the upstream: its pinned settings survived
        assert await conn.fetchval("show default_transaction_read_only") == "on"
        assert await conn.fetchval("show standard_conforming_strings") == "on"
        assert await conn.fetchval("show client_encoding") == "UTF8"
        assert await conn.fetchval("select current_user") == "app_ro"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.fetchval("select compat.write_probe()")
        assert await conn.fetchval("select count(*) from compat.gadgets") == 2
    finally:
        await conn.close()
    events = await asyncio.to_thread(latest_recording, gw)
    assert any(e["kind"] == "query" and e.get("text") == hygiene for e in events)
    refused = [e["text"] for e in events if e["kind"] == "decision" and not e["allowed"]]
    assert refused == ["delete from compat.gadgets"]


def latest_recording(gw: GatewayThread) -> list[dict]:
    from breakglass.recorder.reader import read_events

    gw.wait_idle()
    newest = max(gw.cfg.recordings_dir.glob("*.rec"), key=lambda p: p.stat().st_mtime)
    return list(read_events(newest))


async def test_hygiene_keeps_pinned_search_path_on_table_grant(gw):
    # DISCARD ALL drops prepared statements: asyncpg's cache must be off, as with pgbouncer
    conn = await connect(gw, grant(gw, "tables"), statement_cache_size=0)
    try:
        await conn.execute("set search_path = pg_catalog, public")
        for stmt in ("RESET ALL", "DISCARD ALL"):
            await conn.execute(stmt)
            assert await conn.fetchval("show search_path") == "public"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="search_path"):
            await conn.execute("set search_path = secret, public")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="search_path"):
            await conn.fetchval("select set_config('search_path', $1, false)", "secret")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="secret.keys"):
            await conn.fetchval("select count(*) from secret.keys")
    finally:
        await conn.close()


# --------------------------------------------------------------------------- SQLAlchemy 2


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    email: Mapped[str]
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    customer: Mapped[Customer] = relationship(back_populates="orders")


@pytest.mark.filterwarnings("ignore:Did not recognize type:sqlalchemy.exc.SAWarning")
@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
def test_sqlalchemy_orm_over_psycopg(gw, kind):
    engine = sa.create_engine(
        f"postgresql+psycopg://erin@127.0.0.1:{gw.pg_port}/shop",
        connect_args={
            "password": grant(gw, kind),
            "sslmode": "verify-full",
            "sslrootcert": cert(gw),
        },
    )
    try:
        insp = sa.inspect(engine)  # reflection reads the catalogue
        assert "orders" in insp.get_table_names()
        assert {c["name"] for c in insp.get_columns("gadgets", schema="compat")} >= {"mood"}
        with Session(engine) as s:
            c = s.get(Customer, 7)
            assert c.email == "customer7@example.com" and len(c.orders) >= 1
            s.add(Customer(name="orm", email="orm@example.com"))
            if kind == "rw":
                s.flush()
                s.rollback()
            else:
                with pytest.raises(sa.exc.ProgrammingError) as err:
                    s.flush()
                assert err.value.orig.sqlstate == "42501"
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
async def test_sqlalchemy_orm_over_asyncpg(gw, kind):
    engine = create_async_engine(
        f"postgresql+asyncpg://erin@127.0.0.1:{gw.pg_port}/shop",
        connect_args={"password": grant(gw, kind), "ssl": client_tls(Path(cert(gw)))},
    )
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            assert "customers" in names
        for _ in range(3):  # the pool's reset on return runs every time
            async with AsyncSession(engine) as s:
                rows = (await s.execute(sa.select(Order).where(Order.id < 6))).scalars().all()
                assert len(rows) == 5
        async with AsyncSession(engine) as s:
            s.add(Customer(name="orm", email="orm-async@example.com"))
            if kind == "rw":
                await s.flush()
                await s.rollback()
            else:
                with pytest.raises(sa.exc.ProgrammingError, match="is not allowed"):
                    await s.flush()
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- pgcli


@pytest.mark.parametrize("kind", ["ro", "rw", "tables"])
def test_pgcli_commands_and_completion_metadata(gw, kind):
    token = grant(gw, kind)
    exe = os.path.join(os.path.dirname(sys.executable), "pgcli")
    r = run(
        [exe, "--less-chatty", "-c", r"\dt", "-c", "select count(*) from orders"],
        libpq_env(gw, token),
    )
    assert r.returncode == 0, r.stderr
    assert "orders" in r.stdout and "500" in r.stdout
    # a write that changes nothing: runs on read-write, refused (42501) on read-only
    r = run([exe, "--less-chatty", "-c", "delete from orders where id = -1"], libpq_env(gw, token))
    if kind == "rw":
        assert "DELETE 0" in r.stdout, r.stdout + r.stderr
    else:
        assert "is not allowed" in r.stdout + r.stderr and "DELETE 0" not in r.stdout
    # the catalogue queries pgcli's completer runs at start-up
    ex = PGExecute(
        "shop",
        "erin",
        token,
        "127.0.0.1",
        gw.pg_port,
        "",
        sslmode="verify-full",
        sslrootcert=cert(gw),
    )
    try:
        assert ("public", "orders") in set(ex.tables())
        assert any(c[1] == "orders" for c in ex.table_columns())
        assert "compat" in set(ex.schemata())
        assert any(t[1] == "mood" for t in ex.datatypes())
        assert any(f.func_name == "write_probe" for f in ex.functions())
    finally:
        ex.conn.close()
