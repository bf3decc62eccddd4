"""Identity: OIDC ID tokens against a loopback JWKS endpoint; local password + TOTP; API sessions."""

from __future__ import annotations

import json
import time

import jwt
import pyotp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from breakglass.policy.state import SqliteState
from breakglass.service.identity import (
    AuthFailed,
    LocalUsers,
    OidcSettings,
    OidcVerifier,
    SessionTokens,
    add_local_user,
)
from breakglass.service.requests import Identity

pytestmark = pytest.mark.timeout(30)

ISSUER = "https://idp.test"
AUDIENCE = "breakglass-service"


class LoopbackIdp:
    """A test identity provider: keys we generate, served as JWKS on 127.0.0.1."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.fetches = 0

    def jwks(self) -> dict:
        keys = []
        for kid, key, alg in (("rsa-1", self.rsa, "RS256"), ("ec-1", self.ec, "ES256")):
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg=alg)
            keys.append(jwk)
        return {"keys": keys}

    async def start(self) -> LoopbackIdp:
        async def handler(_req):
            self.fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/jwks", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/jwks"
        return self

    def token(self, *, key=None, kid="rsa-1", alg="RS256", **overrides) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "00u1",
            "email": "alice@example.com",
            "email_verified": True,
            "groups": ["sre", "everyone"],
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key or self.rsa, algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def idp():
    p = await LoopbackIdp().start()
    yield p
    await p.runner.cleanup()


def verifier(idp, **kw) -> OidcVerifier:
    return OidcVerifier(OidcSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=idp.url, **kw))


async def test_oidc_accepted_with_groups(idp):
    v = verifier(idp, group_map={"sre": "approvers"})
    who = await v.verify(idp.token())
    assert who == Identity("alice@example.com", ("approvers",), "oidc")
    who = await v.verify(idp.token(key=idp.ec, kid="ec-1", alg="ES256"))
    assert who.user == "alice@example.com"
    # no map: no policy groups (an IdP group named "approvers" grants nothing by itself)
    assert (await verifier(idp).verify(idp.token(groups=["approvers"]))).groups == ()


@pytest.mark.parametrize(
    "case,reason",
    [
        ("forged", "bad signature"),
        ("expired", "expired"),
        ("wrong-audience", "wrong audience"),
        ("wrong-issuer", "wrong issuer"),
        ("unknown-kid", "no signing key"),
        ("hs256-with-public-key", "not allowed"),
        ("none", "not allowed"),
        ("no-exp", "invalid token"),
        ("no-user", "missing"),
        ("garbage", "malformed"),
    ],
)
async def test_oidc_refused(idp, case, reason):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    token = {
        "forged": lambda: idp.token(key=other),  # right kid, wrong key
        "expired": lambda: idp.token(iat=now - 900, exp=now - 600),
        "wrong-audience": lambda: idp.token(aud="someone-else"),
        "wrong-issuer": lambda: idp.token(iss="https://evil.test"),
        "unknown-kid": lambda: idp.token(key=other, kid="rsa-2"),
        "hs256-with-public-key": lambda: jwt.api_jws.PyJWS().encode(
            json.dumps(
                {
                    "iss": ISSUER,
                    "aud": AUDIENCE,
                    "sub": "x",
                    "email": "x",
                    "iat": now,
                    "exp": now + 60,
                }
            ).encode(),
            b"a-secret-guessed-as-the-public-key-bytes",
            algorithm="HS256",
            headers={"kid": "rsa-1"},
        ),
        "none": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE}, None, algorithm="none"),
        "no-exp": lambda: idp.token(exp=None),
        "no-user": lambda: idp.token(email=None),
        "garbage": lambda: "not.a.jwt",
    }[case]()
    with pytest.raises(AuthFailed) as e:
        await verifier(idp).verify(token)
    assert reason in e.value.reason
    assert token not in e.value.reason and token not in e.value.public


async def test_oidc_jwks_unreachable_fails_closed(idp):
    v = verifier(idp)
    token = idp.token()
    await idp.runner.cleanup()
    with pytest.raises(AuthFailed) as e:
        await v.verify(token)
    assert "JWKS" in e.value.reason or "no signing key" in e.value.reason


@pytest.fixture
def users(tmp_path):
    path = tmp_path / "users.toml"
    secret = add_local_user(path, "alice", "correct horse", ("approvers",))
    add_local_user(path, "erin", "battery staple")
    assert path.stat().st_mode & 0o777 == 0o600
    return LocalUsers.load(path), secret


async def test_totp_required_wrong_and_replayed(users, tmp_path):
    lu, secret = users
    state = SqliteState(tmp_path / "s.db")
    totp = pyotp.TOTP(secret)
    now = time.time()
    code = totp.at(now)

    async def login(user="alice", pw="correct horse", c=code):
        return await lu.login(user, pw, c, state.use_totp_step, now=now)

    for kw, reason in (
        ({"c": ""}, "TOTP code missing"),
        ({"c": "000000" if code != "000000" else "111111"}, "wrong TOTP code"),
        ({"c": "12ab56"}, "wrong TOTP code"),
        ({"pw": "wrong"}, "wrong password"),
        ({"user": "mallory"}, "unknown user"),
    ):
        with pytest.raises(AuthFailed) as e:
            await login(**kw)
        assert reason in e.value.reason
        assert "correct horse" not in str(e.value) and secret not in str(e.value)
    who = await login()
    assert who == Identity("alice", ("approvers",), "local")
    with pytest.raises(AuthFailed) as e:
        await login()
    assert "replayed" in e.value.reason
    # a code from the previous step is inside the window but older than one used: refused too
    with pytest.raises(AuthFailed) as e:
        await login(c=totp.at(now - 30))
    assert "replayed" in e.value.reason or "wrong" in e.value.reason
    await state.close()


def test_users_file_must_be_private(users, tmp_path):
    p = tmp_path / "users.toml"
    p.chmod(0o644)
    with pytest.raises(ValueError, match="private"):
        LocalUsers.load(p)


def test_session_tokens():
    st = SessionTokens(b"k" * 32, "svc", ttl=60)
    tok, exp = st.issue(Identity("alice", ("approvers",), "local"))
    assert st.verify(tok) == Identity("alice", ("approvers",), "local")
    old, _ = st.issue(Identity("alice"), now=time.time() - 120)
    with pytest.raises(AuthFailed, match="expired"):
        st.verify(old)
    other = SessionTokens(b"x" * 32, "svc")
    with pytest.raises(AuthFailed):
        other.verify(tok)
    with pytest.raises(AuthFailed):
        st.verify("garbage")


async def test_oidc_email_must_be_verified_and_an_address(idp):
    v = verifier(idp)
    for claims, reason in (
        ({"email": "alice", "email_verified": False}, "oidc: email not verified"),
        ({"email_verified": None}, "oidc: email not verified"),
        ({"email_verified": "false"}, "oidc: email not verified"),
        ({"email": "alice", "email_verified": True}, "oidc: email claim is not an address"),
    ):
        with pytest.raises(AuthFailed) as e:
            await v.verify(idp.token(**claims))
        assert e.value.reason == reason


async def test_oidc_names_are_namespaced_and_mapped_explicitly(idp):
    v = verifier(idp, username_claim="sub", user_prefix="sso:", user_map={"00u9": "alice"})
    assert (await v.verify(idp.token())).user == "sso:00u1"
    assert (await v.verify(idp.token(sub="00u9"))).user == "alice"  # chosen by an admin


def test_local_names_cannot_look_like_oidc_names(tmp_path):
    from breakglass.service.identity import OidcSettings, add_local_user, oidc_namespace_problems

    for bad in ("alice@example.com", "sso:alice", "a b"):
        with pytest.raises(ValueError):
            add_local_user(tmp_path / "u.toml", bad, "pw-123456789012")
    s = OidcSettings(ISSUER, AUDIENCE, "http://127.0.0.1/jwks", username_claim="sub")
    assert "user_prefix" in oidc_namespace_problems(s, set())[0]
    s = OidcSettings(ISSUER, AUDIENCE, "http://x", user_map={"alice@example.com": "alice"})
    assert "also a local user" in oidc_namespace_problems(s, {"alice"})[0]
    assert oidc_namespace_problems(s, {"bob"}) == []
