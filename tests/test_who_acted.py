"""Who acted: `breakglass kill` and `breakglass review` name the grant service's authenticated
user when the operator is logged in (`breakglass login`): the command goes through the service,
which checks the session token and the user's rights. Without a usable service session they act
locally and name the OS account unambiguously as ``os:NAME``. A name written into the stored
session file is never believed."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time

import pytest

from breakglass.recorder.audit import read_audit
from breakglass.service.identity import add_local_user
from tests.harness import GatewayThread
from tests.test_service_support import PASSWORDS, Cli, ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(120)

OS_ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("who-acted")
    gw = GatewayThread(base / "gw", pg=pg_server).start()
    secrets = add_service_config(base / "gw")  # admins (and console reviewers) = @security
    secrets["sec"] = add_local_user(
        base / "gw/users.toml", "sec", "security-pass-01", ("security",)
    )
    svc = ServiceThread(base / "gw" / "config.toml").start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PASSWORDS, "sec", "security-pass-01")
        cli = Cli(base / "home", base / "gw" / "config.toml", secrets, mp)
        cli.login("sec", svc.url)  # once each: a TOTP code is accepted once per 30 s step
        cli.login("erin", svc.url)
        yield gw, svc, cli
    svc.stop()
    gw.stop()


async def open_session(gw: GatewayThread, user: str = "erin", **grant):
    """A live PostgreSQL session of ``user`` through the gateway, and its id."""
    before = {s["id"] for s in await asyncio.to_thread(gw.sessions)}
    if grant.get("breakglass"):  # the template's requesters are @incident-managers (ina)
        grant.update(user="ina", sub=user)
    conn = await gw.connect_pg(gw.grant(**{"user": user, **grant}), user=user)
    (sid,) = {s["id"] for s in await asyncio.to_thread(gw.sessions)} - before
    return conn, sid


async def kill_as(cli: Cli, person: str, conn, sid: str) -> tuple[int, str, str, str]:
    """Run `breakglass kill SID` as ``person`` while the engineer waits on a query; returns
    (exit code, stdout, stderr, what the engineer was told)."""
    busy = asyncio.ensure_future(conn.fetchval("select pg_sleep(30)"))
    rc, out, err = await asyncio.to_thread(cli.run, person, "kill", sid, "--reason", "who")
    told = ""
    if rc == 0:
        with pytest.raises(Exception) as e:
            await asyncio.wait_for(busy, 10)
        told = str(e.value)
    else:
        busy.cancel()
    return rc, out, err, told


def audit_events(gw, svc, kind: str, session: str) -> list[dict]:
    gw.flush_audit()
    svc.service.audit.flush()
    return [e for e in read_audit(gw.cfg.audit_dir, type=kind) if e.get("session") == session]


def write_session(cli: Cli, person: str, **doc) -> None:
    d = cli.home / person / "breakglass"
    d.mkdir(parents=True, exist_ok=True)
    (d / "session.json").write_text(json.dumps(doc))


def stored_session(cli: Cli, person: str) -> dict:
    return json.loads((cli.home / person / "breakglass" / "session.json").read_text())


# ----------------------------------------------------------------------------------- kill


async def test_kill_when_logged_in_names_the_service_user(env):
    gw, svc, cli = env
    conn, sid = await open_session(gw)
    rc, out, err, told = await kill_as(cli, "sec", conn, sid)
    assert rc == 0, err
    assert sid in out and "as sec" in out
    assert "killed by sec" in told and "root" not in told
    (killed,) = await asyncio.to_thread(audit_events, gw, svc, "session.killed", sid)
    assert killed["actor"] == "sec"  # the gateway's record
    (asked,) = await asyncio.to_thread(audit_events, gw, svc, "kill.requested", sid)
    assert asked["actor"] == "sec"  # and the service's, written after checking the token
    await conn.close()


async def test_kill_without_a_service_session_names_the_os_account(env):
    gw, svc, cli = env
    conn, sid = await open_session(gw)
    rc, out, err, told = await kill_as(cli, "nobody-logged-in", conn, sid)
    assert rc == 0, err
    assert f"killed by os:{OS_ME}" in told
    (killed,) = await asyncio.to_thread(audit_events, gw, svc, "session.killed", sid)
    assert killed["actor"] == f"os:{OS_ME}"
    assert not await asyncio.to_thread(audit_events, gw, svc, "kill.requested", sid)
    await conn.close()


async def test_a_name_in_the_session_file_is_not_believed(env):
    """erin's valid token with "user": "sec" written into the file: the service knows erin,
    who is no admin; refused, recorded, and the session lives on."""
    gw, svc, cli = env
    write_session(cli, "erin-as-sec", **dict(stored_session(cli, "erin"), user="sec"))
    conn, sid = await open_session(gw)
    rc, _, err, _ = await kill_as(cli, "erin-as-sec", conn, sid)
    assert rc != 0 and "only service admins" in err and "Traceback" not in err
    assert sid in {s["id"] for s in await asyncio.to_thread(gw.sessions)}
    assert await conn.fetchval("select 1") == 1
    refused = await asyncio.to_thread(audit_events, gw, svc, "kill.refused", sid)
    assert [e["actor"] for e in refused] == ["erin"]
    await conn.close()


@pytest.mark.parametrize("broken", ["forged-token", "service-down", "expired"])
async def test_an_unusable_service_session_falls_back_to_the_os_account_and_says_so(env, broken):
    gw, svc, cli = env
    person = f"broken-{broken}"
    doc = {"server": svc.url, "token": "forged.token.value", "user": "sec",
           "expires_at": time.time() + 600}  # fmt: skip
    if broken == "service-down":
        doc = dict(stored_session(cli, "sec"), server="http://127.0.0.1:9")  # nothing listens
    elif broken == "expired":
        doc = dict(stored_session(cli, "sec"), expires_at=time.time() - 1)
    write_session(cli, person, **doc)
    conn, sid = await open_session(gw)
    rc, _, err, told = await kill_as(cli, person, conn, sid)
    assert rc == 0, err
    assert f"killed by os:{OS_ME}" in told and "sec" not in told
    assert f"as os:{OS_ME}" in err  # a warning says whose name the kill carries, and why
    (killed,) = await asyncio.to_thread(audit_events, gw, svc, "session.killed", sid)
    assert killed["actor"] == f"os:{OS_ME}"
    await conn.close()


async def test_service_lists_this_hosts_live_sessions_with_sqlite_state(env):
    """SQLite state: gateways publish nothing to it; the service reads its host's gateway."""
    import urllib.error
    import urllib.request

    gw, svc, cli = env
    conn, sid = await open_session(gw)

    def get(person: str) -> tuple[int, object]:
        req = urllib.request.Request(svc.url + "/v1/sessions/live")
        req.add_header("Authorization", f"Bearer {stored_session(cli, person)['token']}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    st, live = await asyncio.to_thread(get, "sec")
    assert st == 200, live
    assert [(x["id"], x["gateway_instance"]) for x in live] == [(sid, "test-gw")]
    st, body = await asyncio.to_thread(get, "erin")
    assert st == 403 and body["rule"] == "not-allowed"
    await conn.close()


# --------------------------------------------------------------------------------- review


async def finished_breakglass_session(gw: GatewayThread, user: str) -> str:
    conn, sid = await open_session(gw, user, template="breakglass", breakglass=True)
    assert await conn.fetchval("select 'incident-work'") == "incident-work"
    await conn.close()
    await asyncio.to_thread(gw.wait_idle)
    await asyncio.to_thread(gw.flush_audit)
    return sid


async def test_review_when_logged_in_names_the_service_user(env):
    gw, svc, cli = env
    sid = await finished_breakglass_session(gw, "ina")
    # a logged-in user who is no console reviewer is refused by the service
    rc, _, err = await asyncio.to_thread(cli.run, "erin", "review", sid, "--notes", "looks fine")
    assert rc != 0 and "reviewer" in err and "Traceback" not in err
    rc, out, err = await asyncio.to_thread(
        cli.run, "sec", "review", sid[-10:], "--notes", "checked the queries", "--json"
    )
    assert rc == 0, err
    assert json.loads(out) == {"session": sid, "reviewer": "sec", "outcome": "ok"}
    (done,) = await asyncio.to_thread(audit_events, gw, svc, "review.done", sid)
    assert (done["actor"], done["subject"], done["notes"]) == ("sec", "ina", "checked the queries")
    # the queue counts it once a signed checkpoint covers it (within checkpoint_interval, 1 s)
    deadline = time.monotonic() + 10
    while True:
        out = await asyncio.to_thread(cli.ok, "nobody", "review", "list", "--all", "--json")
        item = next(i for i in json.loads(out) if i["session"]["session_id"] == sid)
        if item["reviews"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert [r["reviewer"] for r in item["reviews"]] == ["sec"] and item["status"] == "ok"


async def test_a_logged_in_reviewer_cannot_review_their_own_session(env):
    gw, svc, cli = env
    sid = await finished_breakglass_session(gw, "sec")
    rc, _, err = await asyncio.to_thread(cli.run, "sec", "review", sid, "--notes", "mine, fine")
    assert rc != 0 and "their own session" in err
    assert not await asyncio.to_thread(audit_events, gw, svc, "review.done", sid)


async def test_review_without_a_service_session_names_the_os_account(env):
    gw, svc, cli = env
    sid = await finished_breakglass_session(gw, "ina")
    rc, out, err = await asyncio.to_thread(
        cli.run, "nobody", "review", sid, "--notes", "checked", "--outcome", "follow-up"
    )
    assert rc == 0, err
    assert f"by os:{OS_ME}" in out
    (done,) = await asyncio.to_thread(audit_events, gw, svc, "review.done", sid)
    assert done["actor"] == f"os:{OS_ME}" and done["outcome"] == "follow-up"
