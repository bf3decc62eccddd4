"""Break-glass cannot take over the gateway's own database roles (policy/role_guard.py)."""

from __future__ import annotations

import asyncpg
import pytest

from breakglass.policy.role_guard import GATEWAY_ROLE, ROLE_MANAGEMENT, RoleGuard
from breakglass.policy.sql_rules import SqlChecker, SqlRules
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.ssh_gateway_fixture import ssh_gateway  # noqa: F401
from tests.test_alerts import Receiver
from tests.test_alerts_gateway import Inbox

pytestmark = pytest.mark.timeout(60)

GUARD = RoleGuard(frozenset({"app_rw", "app_ro", "Mixed Case"}))
ALL = SqlChecker(SqlRules.from_claim({"mode": "all"}), role_guard=GUARD)


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER ROLE app_rw PASSWORD 'x'",
        "alter user APP_RW with encrypted password 'SCRAM-SHA-256$4096:abc'",
        "ALTER ROLE app_ro VALID UNTIL '2000-01-01'",
        "ALTER ROLE app_rw NOLOGIN",
        "ALTER ROLE app_rw CONNECTION LIMIT 0",
        "ALTER ROLE app_rw RENAME TO app_rw2",
        'ALTER ROLE "Mixed Case" PASSWORD NULL',
        "ALTER ROLE CURRENT_USER PASSWORD 'x'",
        "ALTER USER SESSION_USER VALID UNTIL 'infinity'",
        "ALTER ROLE current_role NOLOGIN",
        "ALTER GROUP app_rw DROP USER someone",
        "ALTER ROLE app_rw SET session_preload_libraries = 'x'",
        "DROP ROLE app_ro",
        "DROP USER IF EXISTS nobody, app_rw",
        "ALTER SYSTEM SET password_encryption = md5",
        "ALTER SYSTEM SET ssl_ca_file = '/tmp/x'",
        "ALTER SYSTEM SET shared_preload_libraries = 'evil'",
        "ALTER SYSTEM RESET ALL",
        "ALTER SYSTEM SET hba_file = '/tmp/hba'",
        "select 1; ALTER ROLE app_rw PASSWORD 'x'",
        "DO $$ BEGIN EXECUTE 'ALTER ROLE app_rw PASSWORD ''x'''; END $$",
        "DO $$ BEGIN EXECUTE format('ALTER  /* hi */ USER %I VALID   UNTIL %L', 'app_rw', 'x'); END $$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ALTER ROLE app_rw NOLOGIN$$",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN EXECUTE 'DROP ROLE app_ro'; END$$",
    ],
)
def test_changes_to_the_gateways_roles_are_refused_in_mode_all(sql):
    v = ALL.check(sql)
    assert not v.allowed, sql
    assert v.rule == GATEWAY_ROLE, (sql, v)
    assert "gateway" in v.message or "authenticates" in v.message


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE USER mallory PASSWORD 'x'",
        "CREATE ROLE mallory LOGIN ENCRYPTED PASSWORD 'x'",
        "ALTER ROLE someone_else PASSWORD 'x'",
        "ALTER USER someone_else WITH PASSWORD NULL",
    ],
)
def test_role_management_needs_a_template_that_allows_it(sql):
    v = ALL.check(sql)
    assert not v.allowed and v.rule == ROLE_MANAGEMENT, (sql, v)
    managed = SqlChecker(
        SqlRules.from_claim({"mode": "all"}),
        role_guard=RoleGuard(GUARD.protected, role_management=True),
    )
    assert managed.check(sql).allowed
    # ...but even role management never reaches the gateway's own roles
    assert not managed.check("ALTER ROLE app_rw PASSWORD 'x'").allowed


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "CREATE ROLE reporting NOLOGIN",
        "CREATE ROLE temp_login LOGIN",  # no password: nobody can log in with it
        "GRANT reporting TO app_rw",
        "ALTER ROLE someone_else NOLOGIN",
        "ALTER ROLE ALL SET work_mem = '64MB'",
        "ALTER SYSTEM SET work_mem = '64MB'",
        "DROP ROLE reporting",
        "ALTER TABLE orders RENAME TO orders_old",
        "DO $$ BEGIN UPDATE users SET password_hash = 'x' WHERE id = 1; END $$",
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql AS 'select 1'",
        "COMMENT ON ROLE app_rw IS 'gw'",
    ],
)
def test_everyday_break_glass_work_is_untouched(sql):
    v = ALL.check(sql)
    assert v.allowed, (sql, v)


# --------------------------------------------------------------------------- real gateway


@pytest.fixture
def receiver():
    r = Receiver()
    r.received = Inbox()
    yield r
    r.close()


@pytest.fixture
def gw(pg_server, tmp_path, receiver):
    def add_webhook(text: str) -> str:
        return text + f'\n[[alerts.webhooks]]\nname = "sec"\nurl = "{receiver.url}"\n'

    g = GatewayThread(tmp_path / "gw", pg=pg_server, edit_config=add_webhook).start()
    yield g
    g.stop()


async def test_breakglass_cannot_change_the_gateways_role_password(gw, pg_server, receiver):
    token = gw.grant("breakglass", user="ina", breakglass=True)
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="ina",
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    try:
        for sql in (
            "ALTER ROLE app_rw PASSWORD 'taken-over'",
            "ALTER ROLE CURRENT_USER VALID UNTIL '2001-01-01'",
            "DROP ROLE app_ro",
            "ALTER SYSTEM SET password_encryption = md5",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as e:
                await conn.execute(sql)
            assert e.value.args[0].startswith("breakglass: "), sql
            assert "gateway" in str(e.value) or "authenticates" in str(e.value)
        # mode all still works for everything else, on the same connection
        assert await conn.fetchval("select count(*) > 0 from orders")
    finally:
        await conn.close()
    # The gateway's own password still works: nothing reached the server.
    assert pg_server.query("select 1", user="app_rw") == "1"
    alert = receiver.received.wait_for("takeover.attempt")
    f = alert["breakglass"]["fields"]
    assert f["user"] == "ina" and f["target"] == "shop" and f["rule"] == GATEWAY_ROLE
    from breakglass.recorder.audit import read_audit

    gw.flush_audit()
    attempts = read_audit(gw.cfg.audit_dir, type="takeover.attempt")
    assert len(attempts) == 4 and {a["rule"] for a in attempts} == {GATEWAY_ROLE}


# --------------------------------------------------------------------------- SSH


def _takeovers(h, jti: str) -> list[dict]:
    import asyncio

    from breakglass.recorder.audit import read_audit

    h.call(asyncio.to_thread(h.gw.audit.flush))
    return [e for e in read_audit(h.cfg.audit_dir, type="takeover.attempt") if e["jti"] == jti]


def test_ssh_input_touching_authorized_keys_is_alerted(ssh_gateway):  # noqa: F811
    import asyncio

    h = ssh_gateway
    claims = h.claims(commands=["echo ..."])
    res = h.ssh(h.sign(claims), "echo", ".ssh/authorized_keys")
    assert res.returncode == 0
    h.wait_session_ended(claims["jti"])
    seen = _takeovers(h, claims["jti"])
    assert len(seen) == 1 and seen[0]["rule"] == "authorized-keys" and seen[0]["via"] == "exec"

    shell = h.claims(shell=True)

    async def typed() -> None:
        async with await h.connect(h.sign(shell)) as conn:
            proc = await conn.create_process(term_type="xterm", encoding=None)
            for chunk in (b"echo ~/.ssh/AUTHORIZED", b"_KEYS > /dev/null\n", b"exit\n"):
                proc.stdin.write(chunk)  # split across packets, as keystrokes are
            await proc.wait()

    asyncio.run(typed())
    h.wait_session_ended(shell["jti"])
    seen = _takeovers(h, shell["jti"])
    assert len(seen) == 1 and seen[0]["via"] == "input" and seen[0]["action"] == "seen"

    plain = h.claims(commands=["echo ..."])
    assert h.ssh(h.sign(plain), "echo", "hello").returncode == 0
    h.wait_session_ended(plain["jti"])
    assert _takeovers(h, plain["jti"]) == []
