"""Signed but odd grants at both real gateways: wrong issuer, absurd times, accounts the
gateway holds no credentials for, and Hypothesis-fuzzed claims. Each is refused with a clear
message (never PostgreSQL's XX000 internal error, never a silent SSH disconnect)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breakglass.policy.grants import new_jti, sign_grant
from breakglass.policy.keys import load_private_key
from breakglass.proxy.postgres import codec
from tests.harness import GatewayThread
from tests.pg_client import RawClient, error_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gw(pg_server, ssh_server, tmp_path_factory):
    g = GatewayThread(
        tmp_path_factory.mktemp("edges") / "gw",
        pg=pg_server,
        ssh=ssh_server,
        # Many refusals from 127.0.0.1 on purpose: keep them out of the tarpit here.
        edit_config=lambda t: t.replace("failed_auth_limit = 10", "failed_auth_limit = 10000"),
    )
    g.start()
    yield g
    g.stop()


def _claims(gw: GatewayThread, protocol: str, **over: Any) -> dict[str, Any]:
    now = time.time()
    if protocol == "postgres":
        target = {"type": "postgres", "name": "shop", "db_user": "app_ro"}
    else:
        login = next(iter(gw.cfg.ssh_targets["web-1"].logins))
        target = {"type": "ssh", "name": "web-1", "login": login}
    claims: dict[str, Any] = {
        "iss": gw.cfg.issuer_name,
        "aud": gw.cfg.gateway_name,
        "sub": "erin",
        "jti": new_jti(),
        "iat": int(now),
        "nbf": int(now),
        "exp": now + 600,
        "targets": [target],
        "ssh": {"commands": ["uptime"], "shell": False, "forwarding": False, "sftp": False},
        "sql": {"mode": "read-only", "tables": []},
        "reason": "edge case",
        "template": "test",
        "approvers": ["alice"],
        "breakglass": False,
    }
    claims.update(over)
    return claims


def _sign(gw: GatewayThread, claims: dict[str, Any]) -> str:
    key = load_private_key(gw.cfg.issuer_signing_key)
    return sign_grant(claims, key, gw.cfg.issuer_key_id)


async def _pg_login(gw: GatewayThread, token: str, user: str = "erin") -> dict[str, str] | None:
    """Log in with the raw client; the error fields, or None when the session opened."""
    c = await RawClient.connect(gw.pg_port, gw.dir / "keys/gateway_tls.crt")
    try:
        msgs = await c.login(user, token)
        err = error_of(msgs)
        if err is None:
            c.send(codec.encode_terminate())
        return err
    finally:
        c.close()


async def _ssh_login(gw: GatewayThread, token: str) -> str | None:
    """Log in with asyncssh; the disconnect reason, or None when the login succeeded."""
    host_key = asyncssh.read_private_key(str(gw.cfg.ssh_host_key))
    known = asyncssh.import_known_hosts(
        f"[127.0.0.1]:{gw.ssh_port} {host_key.export_public_key().decode().strip()}\n"
    )
    try:
        conn = await asyncssh.connect(
            "127.0.0.1",
            gw.ssh_port,
            username="web-1",
            password=token,
            known_hosts=known,
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="password",
            connect_timeout=10,
        )
    except asyncssh.DisconnectError as e:
        return e.reason
    except (asyncssh.Error, OSError) as e:  # no reason given: that is the bug
        return f"<no message: {type(e).__name__}: {e}>"
    conn.close()
    await conn.wait_closed()
    return None


def pg(gw, claims) -> dict[str, str] | None:
    return asyncio.run(_pg_login(gw, _sign(gw, claims)))


def ssh(gw, claims) -> str | None:
    return asyncio.run(_ssh_login(gw, _sign(gw, claims)))


def assert_pg_refused(err: dict[str, str] | None, *needles: str) -> None:
    assert err is not None, "the gateway accepted the grant"
    assert err["C"] != "XX000", err
    assert err["M"].startswith("breakglass: "), err
    for n in needles:
        assert n in err["M"], err


def assert_ssh_refused(reason: str | None, *needles: str) -> None:
    assert reason is not None, "the gateway accepted the grant"
    assert reason.startswith("breakglass: access refused: "), reason
    for n in needles:
        assert n in reason, reason


def test_valid_grants_still_work(gw):
    assert pg(gw, _claims(gw, "postgres")) is None
    assert ssh(gw, _claims(gw, "ssh")) is None


def test_foreign_issuer_refused_on_both_protocols(gw):
    assert_pg_refused(pg(gw, _claims(gw, "postgres", iss="evil")), "issuer", "evil")
    assert_ssh_refused(ssh(gw, _claims(gw, "ssh", iss="evil")), "issuer", "evil")


@pytest.mark.parametrize(
    "over,needle",
    [
        ({"exp": 1e308}, "exp"),
        ({"exp": 2**70}, "exp"),
        ({"nbf": -1e308}, "nbf"),
        ({"iat": 1e300}, "iat"),
        ({"exp": time.time() + 400 * 86400}, "lifetime"),
        ({"sub": "erin\x1b]52;c;aGk=\x07"}, "sub"),
        ({"source_cidrs": ["not-a-network"]}, "source_cidrs"),
        ({"approvers": "alice"}, "approvers"),
        ({"breakglass": "yes"}, "breakglass"),
    ],
    ids=[
        "exp-1e308",
        "exp-2^70",
        "nbf-huge-negative",
        "iat-far-future",
        "lifetime",
        "sub-escape",
        "bad-cidr",
        "approvers-str",
        "breakglass-str",
    ],
)
def test_odd_claims_refused_with_a_clear_message(gw, over, needle):
    assert_pg_refused(pg(gw, _claims(gw, "postgres", **over)), needle)
    assert_ssh_refused(ssh(gw, _claims(gw, "ssh", **over)), needle)


def test_account_without_credentials_refused(gw):
    t = {"type": "postgres", "name": "shop", "db_user": "postgres"}
    assert_pg_refused(pg(gw, _claims(gw, "postgres", targets=[t])), "credentials", "postgres")
    t = {"type": "ssh", "name": "web-1", "login": "nobody-here"}
    assert_ssh_refused(ssh(gw, _claims(gw, "ssh", targets=[t])), "credentials", "nobody-here")


# --------------------------------------------------------------------------- fuzzing

_odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False),  # JSON has no NaN; +-inf encode as Infinity
    st.text(max_size=40),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), st.booleans()), max_size=3),
)
_claim_names = st.sampled_from(
    [
        "iat", "nbf", "exp", "sub", "jti", "targets", "ssh", "sql", "reason", "ticket",
        "template", "approvers", "breakglass", "source_cidrs", "target.name", "target.account",
    ]
)  # fmt: skip


def _mutate(claims: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
    for name, value in changes:
        if name.startswith("target."):
            targets = claims["targets"]
            if not (isinstance(targets, list) and targets and isinstance(targets[0], dict)):
                continue  # 'targets' itself was replaced by an earlier change
            t = dict(targets[0])
            key = "name" if name == "target.name" else ("db_user" if "db_user" in t else "login")
            t[key] = value
            claims["targets"] = [t]
        else:
            claims[name] = value
    return claims


def _json_safe(changes: list[tuple[str, Any]]) -> bool:
    return all(not (isinstance(v, float) and math.isnan(v)) for _, v in changes)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=st.lists(st.tuples(_claim_names, _odd_values), min_size=1, max_size=3))
def test_fuzzed_claims_never_cause_an_internal_error(gw, changes):
    if not _json_safe(changes):
        return
    err = pg(gw, _mutate(_claims(gw, "postgres"), changes))
    if err is not None:
        assert err["C"] != "XX000", (changes, err)
        assert err["M"].startswith("breakglass: "), (changes, err)
    reason = ssh(gw, _mutate(_claims(gw, "ssh"), changes))
    if reason is not None:
        assert reason.startswith("breakglass: access refused: "), (changes, reason)


def test_gateway_survives_the_fuzzing(gw):
    assert pg(gw, _claims(gw, "postgres")) is None
    assert ssh(gw, _claims(gw, "ssh")) is None


def test_failures_slow_their_author_but_never_refuse_a_valid_grant(gw):
    """Offices behind NAT share an address: someone's failures must not lock others out."""
    limiter = gw.gw.limiter
    old = limiter.limit
    limiter.limit = 2
    try:
        t0 = time.monotonic()
        for _ in range(4):
            err = asyncio.run(_pg_login(gw, "garbage"))
            assert err is not None and err["C"] == "28000"
        assert "answer delayed: too many failed attempts" in err["M"]
        assert time.monotonic() - t0 >= 0.25 + 0.5  # the 3rd and 4th answers came late
        t0 = time.monotonic()
        assert pg(gw, _claims(gw, "postgres")) is None
        assert ssh(gw, _claims(gw, "ssh")) is None
        assert time.monotonic() - t0 < 3  # accepted at once, not after a backoff
    finally:
        limiter.limit = old
        limiter.failures.clear()
