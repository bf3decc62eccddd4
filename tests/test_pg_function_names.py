"""FunctionCall of any function on an `all` grant is recorded with the function's name: looked
up on the side (a connection of its own to the target, nothing injected into the client's
stream), recorded as a `function_name` event after the call, cached for later calls, and
shown by replay, export and search. Lookup failures are recorded, never end the session."""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest

from breakglass.proxy.postgres import codec
from breakglass.recorder.export import jsonl_lines
from breakglass.recorder.reader import read_events
from breakglass.recorder.replay import render_timeline, statement_timeline
from breakglass.recorder.search import search_recording
from tests.harness import GatewayThread
from tests.pg_client import RawClient, error_of

pytestmark = pytest.mark.timeout(120)  # includes starting PostgreSQL on a loaded machine

INT4PL = 177  # pg_catalog.int4pl(integer, integer): not a large-object function
LIMITED = "fn_limited"  # a role whose connection limit the tests lower mid-session


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    password = secrets.token_urlsafe(18)
    pg_server.query(
        f"CREATE ROLE {LIMITED} LOGIN PASSWORD '{password}';"
        'CREATE SCHEMA "Fn Names";'
        'CREATE FUNCTION "Fn Names"."add one"(integer) RETURNS integer'
        " LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';"
        'GRANT USAGE ON SCHEMA "Fn Names" TO app_rw;'
    )
    directory = tmp_path_factory.mktemp("pg-fn") / "gw"

    def add_limited(text: str) -> str:
        (directory / f"secrets/shop-{LIMITED}").write_text(password)
        template = text[text.index("[templates.breakglass]") :]
        template = template[: template.index("requesters")] + 'requesters = ["ina"]\n'
        return (
            text
            + f'\n[targets.postgres.shop.users.{LIMITED}]\npassword_file = "secrets/shop-{LIMITED}"\n'
            + template.replace("[templates.breakglass]", "[templates.breakglass-limited]").replace(
                'db_user = "app_rw"', f'db_user = "{LIMITED}"'
            )
        )

    g = GatewayThread(directory, pg=pg_server, edit_config=add_limited).start()
    g.limited_password = password
    yield g
    g.stop()
    pg_server.query(f'DROP SCHEMA "Fn Names" CASCADE; DROP ROLE {LIMITED};')


async def session(gw: GatewayThread, template: str = "breakglass") -> tuple[RawClient, str]:
    """A raw protocol session as ina (an incident manager) and its session id."""
    if template == "db-readonly":
        token = gw.grant()
        user = "erin"
    else:
        token = gw.grant(template, user="ina", breakglass=True)
        user = "ina"
    c = await RawClient.connect(gw.pg_port, gw.dir / "keys/gateway_tls.crt")
    msgs = await c.login(user, token)
    assert error_of(msgs) is None, error_of(msgs)
    notices = [codec.decode_error_fields(m.body)["M"] for m in msgs if m.type == b"N"]
    [sid] = [re.search(r"session (\S+) to", n).group(1) for n in notices if "session" in n]
    return c, sid


async def call(c: RawClient, oid: int, args: list[bytes], fmt: int) -> bytes:
    c.send(codec.encode_function_call(oid, [fmt], args, fmt))
    msgs = await c.until(b"Z")
    assert error_of(msgs) is None, error_of(msgs)
    [v] = [m for m in msgs if m.type == b"V"]
    return bytes(v.body)[4:]


async def query(c: RawClient, sql: str) -> list[str]:
    c.send(codec.encode_query(sql))
    msgs = await c.until(b"Z")
    assert error_of(msgs) is None, error_of(msgs)
    rows = []
    for m in msgs:
        if m.type == b"D":
            body = bytes(m.body)
            size = int.from_bytes(body[2:6], "big")
            rows.append(body[6 : 6 + size].decode())
    return rows


def recording(gw: GatewayThread, sid: str):
    gw.wait_idle()
    path = gw.cfg.recordings_dir / f"{sid}.rec"
    return path, list(read_events(path))


def i4(v: int) -> bytes:
    return v.to_bytes(4, "big", signed=True)


async def test_any_function_is_named_and_replay_export_search_show_it(gw):
    """int4pl (binary arguments) and a user function with a quoted name (text arguments),
    whose oid the client looks up first: the call passes at once and is recorded with its
    oid and arguments; the name follows with the same statement number, and the binary
    arguments decoded with the function's argument types."""
    c, sid = await session(gw)
    try:
        assert int.from_bytes(await call(c, INT4PL, [i4(2), i4(40)], 1), "big") == 42
        [add_one] = await query(c, """select '"Fn Names"."add one"(integer)'::regprocedure::oid""")
        assert await call(c, int(add_one), [b"41"], 0) == b"42"
    finally:
        c.close()
    path, events = recording(gw, sid)
    calls = [e for e in events if e["kind"] == "function_call"]
    names = {e["n"]: e for e in events if e["kind"] == "function_name"}
    assert [e["oid"] for e in calls] == [INT4PL, int(add_one)]
    assert all("name" not in e for e in calls)  # not known when the call was forwarded
    assert calls[0]["args"] == [i4(2), i4(40)]  # recorded before the call, as received
    pl = names[calls[0]["n"]]
    assert pl["seq"] > calls[0]["seq"] and pl["oid"] == INT4PL
    assert pl["name"] == "pg_catalog.int4pl"
    assert pl["signature"] == "pg_catalog.int4pl(integer, integer)"
    assert pl["arg_types"] == ["int4", "int4"] and pl["args"] == ["2", "40"]
    mine = names[calls[1]["n"]]
    assert mine["name"] == '"Fn Names"."add one"' and "args" not in mine  # text: already text
    assert calls[1]["args"] == ["41"]

    text = render_timeline(statement_timeline(events))
    assert "pg_catalog.int4pl('2', '40')" in text
    assert """"Fn Names"."add one"('41')""" in text
    exported = [json.loads(x) for x in jsonl_lines(events)]
    fc = [x for x in exported if x["type"] == "function_call"]
    assert [x["text"] for x in fc] == [
        "pg_catalog.int4pl('2', '40')",
        """"Fn Names"."add one"('41')""",
    ]
    assert fc[0]["params"] == ["2", "40"] and fc[0]["param_types"] == ["int4", "int4"]
    assert fc[0]["outcome"] == "OK"
    hits = search_recording(path, "int4pl")
    assert [(h.where, h.kind) for h in hits] == [("queries", "function_name")]


async def test_a_known_oid_is_named_inline_from_the_cache(gw):
    """After a lookup the name is cached for the target: a later call is recorded with its
    name and decoded arguments in the function_call event itself, with no lookup."""
    c, sid = await session(gw)
    try:
        await call(c, INT4PL, [i4(1), i4(1)], 1)  # looked up (or cached by the test before)
    finally:
        c.close()
    recording(gw, sid)
    c, sid = await session(gw)
    try:
        assert int.from_bytes(await call(c, INT4PL, [i4(20), i4(22)], 1), "big") == 42
    finally:
        c.close()
    _, events = recording(gw, sid)
    [fc] = [e for e in events if e["kind"] == "function_call"]
    assert fc["name"] == "pg_catalog.int4pl"
    assert fc["signature"] == "pg_catalog.int4pl(integer, integer)"
    assert fc["args"] == ["20", "22"]
    assert not [e for e in events if e["kind"] == "function_name"]
    assert "pg_catalog.int4pl('20', '22')" in render_timeline(statement_timeline(events))


async def test_function_not_visible_to_the_lookup_is_recorded_as_unknown(gw):
    """A function created in the session's own open transaction: the side connection cannot
    see it, so the name is recorded as unknown with the reason; the call itself works."""
    c, sid = await session(gw)
    try:
        await query(c, "begin")
        await query(c, "create function pg_temp.fn_uncommitted(integer) returns integer "
                       "language sql as 'select $1 * 2'")  # fmt: skip
        [oid] = await query(c, "select 'pg_temp.fn_uncommitted(integer)'::regprocedure::oid")
        assert int.from_bytes(await call(c, int(oid), [i4(21)], 1), "big") == 42
        await query(c, "rollback")
    finally:
        c.close()
    _, events = recording(gw, sid)
    [fc] = [e for e in events if e["kind"] == "function_call"]
    [fn] = [e for e in events if e["kind"] == "function_name"]
    assert fn["n"] == fc["n"] and fn["oid"] == int(oid) and "name" not in fn
    assert fn["unknown"].startswith(f"name unknown: no function with oid {oid} is visible")
    text = render_timeline(statement_timeline(events))
    assert f"function oid {oid} (name unknown: no function with oid {oid}" in text


async def test_lookup_failure_is_recorded_and_the_session_goes_on(gw, pg_server):
    """Once the session is open, the target's role may open no more connections: the side
    lookup cannot log in. The call still answers, the session goes on, the reason (not the
    password) is recorded."""
    c, sid = await session(gw, "breakglass-limited")
    pg_server.query(f"ALTER ROLE {LIMITED} CONNECTION LIMIT 0")
    try:
        # a function no other test calls, so no session has cached its name yet
        [oid] = await query(c, "select 'pg_catalog.int4mul(integer,integer)'::regprocedure::oid")
        assert int.from_bytes(await call(c, int(oid), [i4(21), i4(2)], 1), "big") == 42
        assert await query(c, "select 'still here'") == ["still here"]
        c.close()
        path, events = recording(gw, sid)
    finally:
        c.close()
        pg_server.query(f"ALTER ROLE {LIMITED} CONNECTION LIMIT -1")
    [fc] = [e for e in events if e["kind"] == "function_call"]
    [fn] = [e for e in events if e["kind"] == "function_name"]
    assert fn["n"] == fc["n"] and fn["oid"] == int(oid) and "name" not in fc and "name" not in fn
    assert fn["unknown"].startswith("name unknown: ")
    assert "too many connections for role" in fn["unknown"], fn["unknown"]
    assert [e["kind"] for e in events if e["kind"] == "end"] == ["end"]  # closed normally
    assert gw.limited_password.encode() not in path.read_bytes()
    text = render_timeline(statement_timeline(events))
    assert f"function oid {oid} (name unknown: " in text and "('21', '2')" not in text


async def test_restricted_grant_still_refuses_function_call_without_a_lookup(gw):
    c, sid = await session(gw, "db-readonly")
    try:
        c.send(codec.encode_function_call(INT4PL, [1], [i4(1), i4(2)], 1))
        err = error_of(await c.until(b"Z"))
        assert err and err["C"] == "42501" and "FunctionCall" in err["M"]
    finally:
        c.close()
    _, events = recording(gw, sid)
    assert any(e["kind"] == "decision" and e.get("rule") == "function-call" for e in events)
    assert not [e for e in events if e["kind"] in ("function_call", "function_name")]


async def test_the_call_is_not_delayed_by_its_lookup(gw, pg_server, monkeypatch):
    """The catalogue is locked, so the side lookup waits: the FunctionCall still answers
    (nothing of the lookup is on the session's path, else this would hang); the name is
    recorded once the lock goes, after the call's result."""
    import asyncpg

    from breakglass.proxy.postgres import function_names

    monkeypatch.setattr(function_names, "LOOKUP_TIMEOUT", 60.0)  # a loaded machine
    monkeypatch.setattr(function_names, "MAX_WAITING", 2)  # calls waiting for a name
    admin = await asyncpg.connect(**pg_server.connect_kwargs())
    c, sid = await session(gw)
    try:
        [oid] = await query(c, "select 'pg_catalog.int4div(integer,integer)'::regprocedure::oid")
        assert await query(c, "select pg_catalog.int4div(84, 2)") == ["42"]  # warms its cache
        tr = admin.transaction()
        await tr.start()
        try:
            await admin.execute("lock table pg_catalog.pg_proc in access exclusive mode")
            assert int.from_bytes(await call(c, int(oid), [i4(84), i4(2)], 1), "big") == 42
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # bounded: the lookup waits for the lock
                waiting = await admin.fetchval(
                    "select count(*) from pg_locks where not granted"
                    " and relation = 'pg_catalog.pg_proc'::regclass"
                )
                if waiting:
                    break
            assert waiting == 1
            # the same function again: waits on the same lookup; a third call is over the
            # limit of calls waiting for a name and says so at once
            for divisor in (3, 7):
                assert (
                    int.from_bytes(await call(c, int(oid), [i4(84), i4(divisor)], 1), "big")
                    == 84 // divisor
                )
            assert await query(c, "select 'not waiting'") == ["not waiting"]
        finally:
            await tr.rollback()
    finally:
        c.close()
        await admin.close()
    _, events = recording(gw, sid)
    fc, fc2, fc3 = [e for e in events if e["kind"] == "function_call"]
    [res] = [e for e in events if e["kind"] == "result" and e["n"] == fc["n"]]
    names = {e["n"]: e for e in events if e["kind"] == "function_name"}
    fn = names[fc["n"]]
    assert fn["name"] == "pg_catalog.int4div" and fn["args"] == ["84", "2"]
    assert fc["seq"] < res["seq"] < fn["seq"]
    assert names[fc2["n"]]["name"] == "pg_catalog.int4div" and names[fc2["n"]]["args"] == [
        "84",
        "3",
    ]
    over = names[fc3["n"]]
    assert over["unknown"] == "name unknown: too many lookups running in this session"
    assert over["seq"] < fn["seq"]  # recorded at once, not after the lookup


@pytest.mark.parametrize("failure", ["down", "wrong-password", "no-credentials"])
async def test_lookup_failures_give_a_reason_without_secrets(pg_server, failure, monkeypatch):
    """The side lookup itself against a real server: a target that is down, a password the
    server rejects, a db_user without credentials. Each is a reason, never a secret."""
    from breakglass.proxy.config import PostgresTarget
    from breakglass.proxy.postgres.function_names import LookupFailed, lookup_function
    from breakglass.throwaway.servers import free_port

    secret = "not-the-password-" + secrets.token_hex(8)
    monkeypatch.setenv("BG_TEST_FN_PASSWORD", secret)
    target = PostgresTarget(
        name="shop",
        host=pg_server.host,
        port=free_port() if failure == "down" else pg_server.port,
        database=pg_server.database,
        users={} if failure == "no-credentials" else {"app_rw": ("env", "BG_TEST_FN_PASSWORD")},
    )
    with pytest.raises(LookupFailed) as e:
        await lookup_function(target, "app_rw", INT4PL)
    reason = str(e.value)
    assert secret not in reason
    assert {
        "down": "cannot reach target shop",
        "wrong-password": "login to target shop failed",
        "no-credentials": "no credentials for app_rw on target shop",
    }[failure] in reason, reason
    # and the right password finds the name
    monkeypatch.setenv("BG_TEST_FN_PASSWORD", pg_server.passwords["app_rw"])
    if failure == "wrong-password":
        info = await lookup_function(target, "app_rw", INT4PL)
        assert (info.name, info.arg_types) == ("pg_catalog.int4pl", (23, 23))
