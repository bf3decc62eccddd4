"""The throwaway test servers are real, and real clients use them."""

from __future__ import annotations

import asyncio
import socket
import struct

import asyncpg
import pytest

from tests.servers import PostgresServer, SshServer, generate_ed25519_key

# ------------------------------------------------------------------ PostgreSQL


def test_psql_app_ro_selects_customers(pg_server):
    res = pg_server.psql(
        ["-Atq", "-c", "SELECT count(*), min(email) FROM customers"], user="app_ro"
    )
    assert res.returncode == 0, res.stderr
    count, email = res.stdout.strip().split("|")
    assert int(count) >= 100
    assert email.endswith("@example.com")


def test_app_ro_insert_refused_by_postgres(pg_server):
    res = pg_server.psql(
        ["-v", "ON_ERROR_STOP=1", "-c", "INSERT INTO customers (name, email) VALUES ('x', 'x@x')"],
        user="app_ro",
    )
    assert res.returncode != 0
    assert "permission denied for table customers" in res.stderr


def test_app_rw_writes_in_a_rolled_back_transaction(pg_server):
    out = pg_server.query(
        "BEGIN; INSERT INTO orders (customer_id, amount) VALUES (1, 9.99) RETURNING amount;"
        " UPDATE customers SET name = name WHERE id = 1; DELETE FROM orders WHERE id = -1;"
        " ROLLBACK;",
        user="app_rw",
    )
    assert "9.99" in out


def test_sample_data_secret_schema_and_pgbench_tables(pg_server):
    assert int(pg_server.query("SELECT count(*) FROM orders", "app_ro")) >= 300
    # PostgreSQL itself lets both app roles read secret.keys: a denial must come from the gateway.
    for role in ("app_ro", "app_rw"):
        assert int(pg_server.query("SELECT count(*) FROM secret.keys", role)) == 3
    assert int(pg_server.query("SELECT count(*) FROM pgbench_accounts", "app_ro")) == 100_000
    pg_server.query("BEGIN; UPDATE pgbench_tellers SET tbalance = tbalance; ROLLBACK", "app_rw")


def test_password_storage(pg_server):
    rows = dict(
        line.split("|")
        for line in pg_server.query(
            "SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolname LIKE 'app%'"
        ).splitlines()
    )
    assert rows["app_ro"] == "SCRAM-SHA-256$"
    assert rows["app_rw"] == "SCRAM-SHA-256$"
    assert rows["app_md5"].startswith("md5")


async def _auth_request_code(host: str, port: int, user: str, db: str) -> int:
    """Send a StartupMessage; return the Authentication request code (5 = MD5, 10 = SASL)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = struct.pack("!i", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in (("user", user), ("database", db))
        )
        body += b"\0"
        writer.write(struct.pack("!i", len(body) + 4) + body)
        await writer.drain()
        kind = await reader.readexactly(1)
        (length,) = struct.unpack("!i", await reader.readexactly(4))
        payload = await reader.readexactly(length - 4)
        assert kind == b"R", (kind, payload)
        return struct.unpack("!i", payload[:4])[0]
    finally:
        writer.close()


@pytest.mark.parametrize(("role", "code"), [("app_ro", 10), ("app_rw", 10), ("app_md5", 5)])
async def test_server_asks_for_the_expected_auth_method(pg_server, role, code):
    assert await _auth_request_code(pg_server.host, pg_server.port, role, "shop") == code


@pytest.mark.parametrize("role", ["app_ro", "app_md5"])
async def test_asyncpg_connects_scram_and_md5(pg_server, role):
    conn = await asyncpg.connect(**pg_server.connect_kwargs(role))
    try:
        assert await conn.fetchval("SELECT current_user") == role
        assert await conn.fetchval("SELECT count(*) FROM customers") >= 100
    finally:
        await conn.close()
    conn = await asyncpg.connect(pg_server.dsn(role), ssl=False)
    await conn.close()


@pytest.mark.parametrize("role", ["app_ro", "app_md5"])
async def test_asyncpg_wrong_password_refused(pg_server, role):
    kw = pg_server.connect_kwargs(role) | {"password": "wrong"}
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(**kw)


def test_postgres_listens_on_loopback_only(pg_server):
    assert pg_server.host == "127.0.0.1"
    assert pg_server.query("SHOW listen_addresses") == "127.0.0.1"
    assert pg_server.query("SHOW password_encryption") == "scram-sha-256"
    assert (pg_server.socket_dir / f".s.PGSQL.{pg_server.port}").exists()


# ------------------------------------------------------------------ OpenSSH


def test_real_ssh_runs_echo_hello(ssh_server):
    res = ssh_server.ssh("echo hello")
    assert res.returncode == 0, res.stderr + ssh_server.log()[-2000:]
    assert res.stdout == "hello\n"


def test_ssh_can_write_marker_in_workdir(ssh_server):
    marker = ssh_server.workdir / "marker-ssh"
    res = ssh_server.ssh(["touch", str(marker)])
    assert res.returncode == 0, res.stderr
    assert marker.exists()


def test_unauthorized_client_key_refused(ssh_server):
    key, _pub = ssh_server.new_client_key("stranger")
    res = ssh_server.ssh("echo hello", key=key)
    assert res.returncode == 255
    assert "Permission denied (publickey)" in res.stderr
    assert "hello" not in res.stdout


def test_wrong_host_key_refused_by_client(ssh_server, tmp_path):
    # a known_hosts that names a different key for this host:port
    fake = " ".join(generate_ed25519_key(tmp_path / "fake_host").split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{ssh_server.host}]:{ssh_server.port} {fake}\n")
    res = ssh_server.ssh("echo hello", known_hosts=kh)
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr
    assert "hello" not in res.stdout


def test_known_hosts_and_host_key(ssh_server):
    line = ssh_server.known_hosts.read_text().strip()
    assert line == f"[127.0.0.1]:{ssh_server.port} {ssh_server.host_key_line}"
    assert ssh_server.host_key_line.startswith("ssh-ed25519 ")
    with socket.create_connection((ssh_server.host, ssh_server.port), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-OpenSSH")


def test_authorize_key_takes_effect_without_restart(ssh_server):
    key, pub = ssh_server.new_client_key("late")
    assert ssh_server.ssh("true", key=key).returncode == 255
    ssh_server.authorize_key(pub)
    res = ssh_server.ssh("echo ok", key=key)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"


# ------------------------------------------------------------------ lifecycle


def test_ssh_server_stop_cleans_up(ssh_server):  # the fixture only gates availability
    with SshServer() as srv:
        port, basedir = srv.port, srv.basedir
        assert srv.ssh("true").returncode == 0
    assert not basedir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_postgres_server_stop_cleans_up(pg_server):  # the fixture only gates availability
    with PostgresServer(pgbench=False) as srv:
        port, basedir = srv.port, srv.basedir
        assert srv.query("SELECT 1", "app_ro") == "1"
        srv.restart()  # same port, same data, same passwords
        assert srv.port == port
        assert srv.query("SELECT count(*) FROM customers", "app_ro") == "200"
    assert not basedir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ------------------------------------------------------------------ ports


def test_free_port_never_hands_out_the_same_port_twice():
    # A config picks its listeners' ports one free_port() call at a time, before anything
    # binds them; the kernel may offer a port it offered a moment ago (a gateway once got
    # the same port for its PostgreSQL and SSH listeners, and failed to start).
    from breakglass.throwaway.servers import free_port

    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
