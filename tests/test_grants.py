"""Grant verification: every forgery and misuse is refused with the right reason."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.policy.grants import Grant, GrantVerifier, Refusal, RefusalKind, sign_grant
from tests.factories import AUDIENCE, GrantFactory, grant_claims


@pytest.fixture
def gf() -> GrantFactory:
    return GrantFactory()


def verifier(gf: GrantFactory, **kw) -> GrantVerifier:
    return GrantVerifier(gf.trusted, AUDIENCE, **kw)


def refused(result, kind: RefusalKind) -> Refusal:
    assert isinstance(result, Refusal), f"expected refusal {kind}, got a grant"
    assert result.kind == kind, f"{result.kind}: {result.message}"
    assert result.message
    return result


def test_valid_grant_verifies(gf):
    g = verifier(gf).verify(
        gf.token(), target_type="postgres", target_name="orders", source_ip="127.0.0.1"
    )
    assert isinstance(g, Grant)
    assert g.subject == "erin"
    assert g.target("postgres", "orders").db_user == "app_ro"


def test_forged_signature(gf):
    other = GrantFactory(kid=gf.kid)  # same kid, different key
    refused(verifier(gf).verify(other.token()), RefusalKind.BAD_SIGNATURE)


def test_payload_tampered(gf):
    token = gf.token()
    h, p, s = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["sub"] = "mallory"
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused(verifier(gf).verify(f"{h}.{p2}.{s}"), RefusalKind.BAD_SIGNATURE)


def test_expired(gf):
    r = refused(verifier(gf).verify(gf.token(now=time.time() - 3600, ttl=60)), RefusalKind.EXPIRED)
    assert "expired at" in r.message and r.message.endswith("Z")


def test_expiry_is_strict_even_within_leeway(gf):
    token = gf.token(now=time.time() - 62, ttl=60)  # expired 2 s ago
    refused(verifier(gf, leeway=30).verify(token), RefusalKind.EXPIRED)


def test_not_yet_valid(gf):
    claims = grant_claims(nbf=int(time.time()) + 600)
    refused(verifier(gf).verify(gf.sign(claims)), RefusalKind.NOT_YET_VALID)


def test_nbf_within_leeway_accepted(gf):
    claims = grant_claims(nbf=int(time.time()) + 3)
    assert isinstance(verifier(gf, leeway=5).verify(gf.sign(claims)), Grant)


def test_leeway_capped():
    with pytest.raises(ValueError):
        GrantVerifier({}, AUDIENCE, leeway=31)


def test_wrong_audience(gf):
    refused(verifier(gf).verify(gf.token(aud="other-gw")), RefusalKind.WRONG_AUDIENCE)


def test_unknown_kid(gf):
    stranger = GrantFactory(kid="someone-else")
    refused(verifier(gf).verify(stranger.token()), RefusalKind.UNKNOWN_KEY)


def test_alg_none(gf):
    token = jwt.encode(grant_claims(), key=None, algorithm="none", headers={"kid": gf.kid})
    refused(verifier(gf).verify(token), RefusalKind.BAD_SIGNATURE)


def test_hs256_signed_with_public_key(gf):
    pub = gf.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": gf.kid}).encode()
    ).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(grant_claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    sig = base64.urlsafe_b64encode(
        hmac.new(pub, header + b"." + payload, hashlib.sha256).digest()
    ).rstrip(b"=")
    token = (header + b"." + payload + b"." + sig).decode()
    refused(verifier(gf).verify(token), RefusalKind.BAD_SIGNATURE)


def test_truncated_signature(gf):
    token = gf.token()
    refused(verifier(gf).verify(token[:-10]), RefusalKind.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "hello", "a.b.c", "a.b", "....", "eyJ", "\x00\xff", "x" * 100_000, "é.é.é"],
)
def test_garbage_is_malformed(gf, garbage):
    refused(verifier(gf).verify(garbage), RefusalKind.MALFORMED)


def test_truncated_header_is_malformed(gf):
    token = gf.token()
    refused(verifier(gf).verify(token[5:]), RefusalKind.MALFORMED)


def test_non_ascii_bytes(gf):
    refused(verifier(gf).verify(b"\xff\xfe"), RefusalKind.MALFORMED)


@pytest.mark.parametrize("missing", ["sub", "jti", "exp", "nbf", "targets", "aud"])
def test_missing_claim(gf, missing):
    claims = grant_claims()
    del claims[missing]
    kind = RefusalKind.MALFORMED
    refused(verifier(gf).verify(gf.sign(claims)), kind)


@pytest.mark.parametrize(
    "targets",
    [
        [],
        "orders",
        [{"type": "mysql", "name": "x", "db_user": "y"}],
        [{"type": "ssh", "name": "web"}],
    ],
)
def test_bad_targets(gf, targets):
    refused(verifier(gf).verify(gf.token(targets=targets)), RefusalKind.MALFORMED)


def test_revoked(gf):
    claims = grant_claims()
    token = gf.sign(claims)
    v = verifier(gf, is_revoked=lambda jti: jti == claims["jti"])
    refused(v.verify(token), RefusalKind.REVOKED)
    assert isinstance(verifier(gf).verify(token), Grant)


def test_target_not_granted(gf):
    r = refused(
        verifier(gf).verify(gf.token(), target_type="postgres", target_name="billing"),
        RefusalKind.TARGET_NOT_GRANTED,
    )
    assert "billing" in r.message
    refused(
        verifier(gf).verify(gf.token(), target_type="ssh", target_name="orders"),
        RefusalKind.TARGET_NOT_GRANTED,
    )


def test_source_cidrs(gf):
    token = gf.token(source_cidrs=["10.0.0.0/8", "::1/128"])
    refused(verifier(gf).verify(token, source_ip="127.0.0.1"), RefusalKind.SOURCE_NOT_ALLOWED)
    assert isinstance(verifier(gf).verify(token, source_ip="10.1.2.3"), Grant)
    assert isinstance(verifier(gf).verify(token, source_ip="::1"), Grant)
    assert isinstance(verifier(gf).verify(token, source_ip="::ffff:10.0.0.1"), Grant)
    refused(verifier(gf).verify(token, source_ip="not-an-ip"), RefusalKind.SOURCE_NOT_ALLOWED)


def test_sign_roundtrip_uses_eddsa_and_kid(gf):
    token = sign_grant(grant_claims(), gf.key, "k9")
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "k9", "typ": "JWT"}


def test_verify_never_raises_on_wrong_types(gf):
    weird = Ed25519PrivateKey.generate()
    for claims in (grant_claims(exp="soon"), grant_claims(sub=7), grant_claims(ssh="yes")):
        token = sign_grant(claims, gf.key, gf.kid)
        refused(verifier(gf).verify(token), RefusalKind.MALFORMED)
    assert isinstance(verifier(gf).verify(sign_grant(grant_claims(), weird, gf.kid)), Refusal)


def test_issuer_must_match_the_keys_issuer(gf):
    r = refused(verifier(gf).verify(gf.token(iss="evil")), RefusalKind.WRONG_ISSUER)
    assert "'evil'" in r.message
    other = GrantFactory(kid="partner-1")
    # gf's key vouches for the default issuer; partner-1 for "partner" only.
    both = GrantVerifier(
        {**gf.trusted, **other.trusted}, AUDIENCE, key_issuers={"partner-1": "partner"}
    )
    assert isinstance(both.verify(other.token(iss="partner")), Grant)
    refused(both.verify(other.token(iss="breakglass")), RefusalKind.WRONG_ISSUER)
    refused(both.verify(gf.token(iss="partner")), RefusalKind.WRONG_ISSUER)


@pytest.mark.parametrize(
    "over",
    [
        {"exp": 1e308},
        {"exp": float("inf")},
        {"iat": -5},
        {"exp": time.time() + 40 * 86400},
        {"sub": "a\nb"},
        {"jti": "x" * 1000},
        {"targets": [{"type": "postgres", "name": "orders", "db_user": "\x00"}]},
        {"ssh": {"shell": "yes"}},
        {"ssh": {"commands": "uptime"}},
        {"sql": {"tables": [1]}},
        {"source_cidrs": ["10.0.0.0/33"]},
        {"approvers": [None]},
        {"breakglass": 1},
        {"ticket": ["T-1"]},
        {"reason": 5},
    ],
)
def test_strict_claims(gf, over):
    refused(verifier(gf).verify(gf.token(**over)), RefusalKind.MALFORMED)


def test_issued_in_the_future_refused(gf):
    claims = grant_claims(iat=int(time.time()) + 3600)
    refused(verifier(gf).verify(gf.sign(claims)), RefusalKind.NOT_YET_VALID)
