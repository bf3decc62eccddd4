"""Offboarding takes effect at once: users list|add|disable|remove without a restart, logout,
service sessions checked against the users file as it is now, and --revoke-grants ending the
user's live gateway sessions within a second."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import pyotp
import pytest

from breakglass.recorder.audit import read_audit
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_service_support import PASSWORDS, Cli, ServiceThread, add_service_config
from tests.test_service_throttle import post

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("offboard")
    gw = GatewayThread(base / "gw", pg=pg_server).start()
    secrets = add_service_config(base / "gw")
    svc = ServiceThread(base / "gw" / "config.toml").start()
    with pytest.MonkeyPatch.context() as mp:
        cli = Cli(base / "home", base / "gw" / "config.toml", secrets, mp)
        cli.login("alice", svc.url)  # once: a TOTP code is accepted once per 30 s step
        yield gw, svc, cli
    svc.stop()
    gw.stop()


def session_token(cli: Cli, user: str) -> str:
    return json.loads((cli.home / user / "breakglass" / "session.json").read_text())["token"]


def whoami(svc, token: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(svc.url + "/v1/whoami")
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def local_login(svc, user: str, password: str, secret: str) -> tuple[int, dict]:
    body = {
        "method": "local",
        "username": user,
        "password": password,
        "totp": pyotp.TOTP(secret).now(),
    }
    st, resp, _ = post(svc.url, "/v1/login", body)
    return st, resp


def test_users_added_and_removed_without_a_restart(env):
    gw, svc, cli = env
    pw = "zed-password-0001"
    out = cli.ok("alice", "users", "add", "zed", "--group", "approvers", "--password-stdin",
                 "--json", stdin=pw + "\n")  # fmt: skip
    secret = json.loads(out)["totp_secret"]
    listed = json.loads(cli.ok("alice", "users", "list", "--json"))
    assert {"user": "zed", "groups": ["approvers"], "disabled": False} in listed
    st, body = local_login(svc, "zed", pw, secret)  # the running service sees the new user
    assert st == 200 and body["user"] == "zed"
    token = body["token"]
    assert whoami(svc, token)[0] == 200
    cli.ok("alice", "users", "remove", "zed")
    st, body = whoami(svc, token)  # the live session ends at once
    assert st == 401 and body["rule"] == "unauthenticated" and "log in again" in body["error"]
    st, _ = local_login(svc, "zed", pw, secret)
    assert st == 401
    assert "zed" not in [u["user"] for u in json.loads(cli.ok("alice", "users", "list", "--json"))]


def test_group_changes_apply_to_live_sessions(env):
    gw, svc, cli = env
    cli.login("bob", svc.url)
    token = session_token(cli, "bob")
    assert whoami(svc, token)[1]["groups"] == ["approvers"]
    from breakglass.service.identity import _read_users, _write_users

    path = gw.dir / "users.toml"
    users = _read_users(path)
    users["bob"]["groups"] = []
    _write_users(path, users)
    assert whoami(svc, token)[1]["groups"] == []  # not the groups baked in at login
    users["bob"]["groups"] = ["approvers"]
    _write_users(path, users)


def test_logout_ends_the_session_on_the_server(env):
    gw, svc, cli = env
    cli.login("ina", svc.url)
    token = session_token(cli, "ina")
    assert whoami(svc, token)[0] == 200
    rc, _, err = cli.run("ina", "logout")
    assert rc == 0 and "logged out ina" in err
    assert whoami(svc, token)[0] == 401  # a copied token is dead too
    assert not (cli.home / "ina" / "breakglass" / "session.json").exists()
    cli.login("ina", svc.url, pyotp.TOTP(cli.secrets["ina"]).at(time.time() + 30))  # again
    assert whoami(svc, session_token(cli, "ina"))[0] == 200


def test_broken_users_file_fails_closed_until_fixed(env):
    gw, svc, cli = env
    token = session_token(cli, "alice")
    path = gw.dir / "users.toml"
    good = path.read_text()
    path.write_text(good + "\n[users.broken\n")  # a half-edited file
    svc.call(asyncio.to_thread(svc.service.reload_users))  # what SIGHUP does
    assert whoami(svc, token)[0] == 401
    path.write_text(good)
    svc.call(asyncio.to_thread(svc.service.reload_users))
    assert whoami(svc, token)[0] == 200


async def test_disable_with_revoke_grants_ends_live_gateway_sessions(env):
    gw, svc, cli = env
    await asyncio.to_thread(cli.login, "mallory", svc.url)
    token = session_token(cli, "mallory")
    rid = (await asyncio.to_thread(cli.request, "mallory", "offboarding test"))["id"]
    await asyncio.to_thread(cli.ok, "alice", "approve", rid)
    out = await asyncio.to_thread(cli.ok, "mallory", "grant", "get", rid, "--print")
    grant = out.strip().splitlines()[-1]
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="mallory",
        password=grant,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    busy = asyncio.ensure_future(conn.fetchval("select pg_sleep(30)"))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    rc, _, err = await asyncio.to_thread(
        cli.run, "alice", "users", "disable", "mallory", "--revoke-grants", "--reason", "left"
    )
    assert rc == 0 and "1 grant(s) revoked" in err
    with pytest.raises(Exception) as e:
        await asyncio.wait_for(busy, 5)
    ended = time.time()
    assert "revoked" in str(e.value)
    import jwt

    jti = jwt.decode(grant, options={"verify_signature": False})["jti"]
    rev = svc.call(svc.service.state.revocation(jti))
    assert rev is not None and rev.reason == "left"
    assert ended - rev.revoked_at < 1.0, ended - rev.revoked_at  # within a second
    assert time.monotonic() - t0 < 5
    await conn.close()
    assert whoami(svc, token)[0] == 401
    st, _ = await asyncio.to_thread(
        local_login, svc, "mallory", PASSWORDS["mallory"], cli.secrets["mallory"]
    )
    assert st == 401
    listed = json.loads(await asyncio.to_thread(cli.ok, "alice", "users", "list", "--json"))
    assert {"user": "mallory", "groups": [], "disabled": True} in listed
    await asyncio.to_thread(svc.service.audit.flush)
    events = read_audit(gw.cfg.audit_dir)
    assert any(e["type"] == "user.disabled" and e["user"] == "mallory" for e in events)
    assert any(e["type"] == "grant.revoked" and e.get("subject") == "mallory" for e in events)
    rc, _, _ = await asyncio.to_thread(cli.run, "alice", "users", "enable", "mallory")
    assert rc == 0
