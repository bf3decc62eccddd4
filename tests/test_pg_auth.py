"""Tests for upstream authentication math (proxy/postgres/auth.py)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from breakglass.proxy.postgres import codec
from breakglass.proxy.postgres.auth import (
    AuthError,
    ScramClient,
    UpstreamAuth,
    md5_password,
    prepare_password,
    tls_server_end_point,
)

# RFC 7677 section 3
RFC_NONCE = b"rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramClient:
    client = ScramClient("user", "pencil", nonce=RFC_NONCE)
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    return client


def test_scram_rfc7677_vector():
    client = rfc_client()
    assert client.mechanism == "SCRAM-SHA-256"
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert not client.done
    client.verify_server_final(RFC_SERVER_FINAL)
    assert client.done


def test_scram_wrong_server_signature():
    client = rfc_client()
    client.handle_server_first(RFC_SERVER_FIRST)
    bad = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(AuthError, match="server signature is invalid"):
        client.verify_server_final(bad)
    assert not client.done
    with pytest.raises(AuthError):  # no second chance
        client.verify_server_final(RFC_SERVER_FINAL)


def test_scram_wrong_password_gives_different_proof():
    client = ScramClient("user", "pencil2", nonce=RFC_NONCE)
    client.client_first()
    assert client.handle_server_first(RFC_SERVER_FIRST) != RFC_CLIENT_FINAL
    with pytest.raises(AuthError):
        client.verify_server_final(RFC_SERVER_FINAL)


@pytest.mark.parametrize(
    ("server_first", "text"),
    [
        (b"r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce mismatch"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce mismatch"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096", "bad base64"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096", "empty salt"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "bad iteration count"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", "bad iteration count"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=x", "bad iteration count"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999", "exceeds limit"),
        (b"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=1", "expected r=, s=, i="),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==", "expected r=, s=, i="),
        (b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1", "extension"),
        (b"e=other-error", "upstream SCRAM error: other-error"),
        (b"\xff\xfe", "not UTF-8"),
        (b"garbage", "malformed attribute"),
        (b"", "malformed attribute"),
    ],
)
def test_scram_bad_server_first(server_first, text):
    client = rfc_client()
    with pytest.raises(AuthError, match=text):
        client.handle_server_first(server_first)


def test_scram_server_final_error_and_garbage():
    for final, text in [
        (b"e=invalid-proof", "upstream SCRAM error: invalid-proof"),
        (b"x=1", "expected v="),
        (b"v=***", "bad base64"),
    ]:
        client = rfc_client()
        client.handle_server_first(RFC_SERVER_FIRST)
        with pytest.raises(AuthError, match=text):
            client.verify_server_final(final)


def test_scram_out_of_order_calls():
    client = ScramClient("user", "pencil", nonce=RFC_NONCE)
    with pytest.raises(AuthError):
        client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(AuthError):
        client.verify_server_final(RFC_SERVER_FINAL)
    client.client_first()
    with pytest.raises(AuthError):
        client.client_first()
    with pytest.raises(AuthError):
        client.verify_server_final(RFC_SERVER_FINAL)


def test_scram_nonce_and_username():
    client = ScramClient("a=b,c", "pw")
    first = client.client_first()
    assert first.startswith(b"n,,n=a=3Db=2Cc,r=")
    nonce = first.split(b",r=")[1]
    assert len(nonce) == 24 and b"," not in nonce
    assert ScramClient("u", "pw").client_first() != ScramClient("u", "pw").client_first()
    for bad in (b"", b"a,b", b"a b", b"\x7f"):
        with pytest.raises(ValueError):
            ScramClient("u", "pw", nonce=bad)


# --------------------------------------------------------------------------
# A minimal SCRAM server (RFC 5802 math) to check the client end to end


class FakeScramServer:
    def __init__(self, password: bytes, salt=b"0123456789ab", iterations=4096, cb_data=None):
        salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
        self.stored_key = hashlib.sha256(
            hmac.new(salted, b"Client Key", "sha256").digest()
        ).digest()
        self.server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.salt = salt
        self.iterations = iterations
        self.cb_data = cb_data

    def first(self, client_first: bytes) -> bytes:
        self.gs2, _, self.client_first_bare = client_first.partition(b",,")
        self.gs2 += b",,"
        client_nonce = self.client_first_bare.split(b",r=")[1]
        self.nonce = client_nonce + b"SERVERNONCE"
        self.server_first = (
            b"r=" + self.nonce + b",s=" + base64.b64encode(self.salt) + b",i=%d" % self.iterations
        )
        return self.server_first

    def final(self, client_final: bytes) -> bytes:
        without_proof, _, proof = client_final.rpartition(b",p=")
        attrs = dict(part.split(b"=", 1) for part in without_proof.split(b","))
        expected_cbind = self.gs2 + (self.cb_data if self.gs2.startswith(b"p=") else b"")
        assert base64.b64decode(attrs[b"c"]) == expected_cbind
        assert attrs[b"r"] == self.nonce
        auth_message = self.client_first_bare + b"," + self.server_first + b"," + without_proof
        signature = hmac.new(self.stored_key, auth_message, "sha256").digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        assert hashlib.sha256(client_key).digest() == self.stored_key, "bad proof"
        return b"v=" + base64.b64encode(hmac.new(self.server_key, auth_message, "sha256").digest())


def sasl_payload(*mechanisms: str) -> bytes:
    return b"".join(m.encode() + b"\0" for m in mechanisms) + b"\0"


def run_upstream_scram(auth: UpstreamAuth, server: FakeScramServer, mechanisms: list[str]):
    """Drive UpstreamAuth through a full exchange; return the mechanism used."""
    out = auth.handle(codec.AUTH_SASL, sasl_payload(*mechanisms))
    [msg] = codec.MessageReader().feed_and_split(out)
    assert msg.type == b"p"
    body = bytes(msg.body)
    mechanism, _, rest = body.partition(b"\0")
    size = int.from_bytes(rest[:4], "big")
    client_first = rest[4:]
    assert len(client_first) == size
    out = auth.handle(codec.AUTH_SASL_CONTINUE, server.first(client_first))
    [msg] = codec.MessageReader().feed_and_split(out)
    assert auth.handle(codec.AUTH_SASL_FINAL, server.final(bytes(msg.body))) is None
    assert auth.handle(codec.AUTH_OK, b"") is None
    assert auth.complete
    return mechanism.decode()


def test_upstream_scram_full_exchange():
    auth = UpstreamAuth("svc", "s3cret")
    used = run_upstream_scram(auth, FakeScramServer(b"s3cret"), ["SCRAM-SHA-256"])
    assert used == "SCRAM-SHA-256"
    assert auth.method == "scram-sha-256"


def test_upstream_scram_channel_binding():
    cb = b"\x42" * 48
    auth = UpstreamAuth("svc", "s3cret", channel_binding=cb)
    server = FakeScramServer(b"s3cret", cb_data=cb)
    used = run_upstream_scram(auth, server, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    assert used == "SCRAM-SHA-256-PLUS"
    assert server.gs2 == b"p=tls-server-end-point,,"
    assert auth.method == "scram-sha-256-plus"
    # binding possible on our side but not offered: "y" so a stripping MITM is caught
    auth = UpstreamAuth("svc", "s3cret", channel_binding=cb)
    server = FakeScramServer(b"s3cret")
    assert run_upstream_scram(auth, server, ["SCRAM-SHA-256"]) == "SCRAM-SHA-256"
    assert server.gs2 == b"y,,"
    # required but not offered
    auth = UpstreamAuth("svc", "s3cret", channel_binding=cb, require_channel_binding=True)
    with pytest.raises(AuthError, match="channel binding required"):
        auth.handle(codec.AUTH_SASL, sasl_payload("SCRAM-SHA-256"))
    with pytest.raises(AuthError, match="channel binding required"):
        UpstreamAuth("svc", "pw", channel_binding=cb, require_channel_binding=True).handle(
            codec.AUTH_MD5, b"salt"
        )


def test_upstream_scram_wrong_password_is_detected_by_server():
    auth = UpstreamAuth("svc", "wrong")
    with pytest.raises(AssertionError, match="bad proof"):
        run_upstream_scram(auth, FakeScramServer(b"s3cret"), ["SCRAM-SHA-256"])


def test_upstream_ok_before_scram_final_is_refused():
    auth = UpstreamAuth("svc", "s3cret")
    auth.handle(codec.AUTH_SASL, sasl_payload("SCRAM-SHA-256"))
    with pytest.raises(AuthError, match="before completing SCRAM"):
        auth.handle(codec.AUTH_OK, b"")
    assert not auth.complete


def test_upstream_impostor_server_final_is_refused():
    auth = UpstreamAuth("svc", "s3cret")
    server = FakeScramServer(b"not-the-password")
    out = auth.handle(codec.AUTH_SASL, sasl_payload("SCRAM-SHA-256"))
    client_first = bytes(codec.MessageReader().feed_and_split(out)[0].body).split(b"\0", 1)[1][4:]
    auth.handle(codec.AUTH_SASL_CONTINUE, server.first(client_first))
    forged = b"v=" + base64.b64encode(b"\1" * 32)
    with pytest.raises(AuthError, match="server signature is invalid"):
        auth.handle(codec.AUTH_SASL_FINAL, forged)


def test_upstream_md5():
    auth = UpstreamAuth("md5user", "md5pw")
    out = auth.handle(codec.AUTH_MD5, b"\x01\x02\x03\x04")
    [msg] = codec.MessageReader().feed_and_split(out)
    assert codec.decode_password(msg.body) == md5_password("md5user", "md5pw", b"\1\2\3\4")
    assert auth.handle(codec.AUTH_OK, b"") is None
    assert auth.complete and auth.method == "md5"
    with pytest.raises(AuthError, match="AuthenticationMD5Password"):
        UpstreamAuth("u", "p").handle(codec.AUTH_MD5, b"abc")


def test_upstream_refuses_downgrades_by_default():
    with pytest.raises(AuthError, match="password authentication, which is not allowed"):
        UpstreamAuth("u", "p").handle(codec.AUTH_CLEARTEXT, b"")
    with pytest.raises(AuthError, match="without authentication"):
        UpstreamAuth("u", "p").handle(codec.AUTH_OK, b"")
    with pytest.raises(AuthError, match="md5 authentication, which is not allowed"):
        UpstreamAuth("u", "p", methods={"scram-sha-256"}).handle(codec.AUTH_MD5, b"salt")
    with pytest.raises(AuthError, match="unsupported authentication method GSSAPI"):
        UpstreamAuth("u", "p").handle(codec.AUTH_GSS, b"")
    with pytest.raises(AuthError, match="unknown"):
        UpstreamAuth("u", "p").handle(99, b"")
    with pytest.raises(AuthError, match="no supported SASL mechanism"):
        UpstreamAuth("u", "p").handle(codec.AUTH_SASL, sasl_payload("OAUTHBEARER"))
    with pytest.raises(AuthError):
        UpstreamAuth("u", "p").handle(codec.AUTH_SASL, b"SCRAM-SHA-256\0")  # malformed
    with pytest.raises(AuthError, match="unexpected AuthenticationSASLContinue"):
        UpstreamAuth("u", "p").handle(codec.AUTH_SASL_CONTINUE, b"r=x")
    with pytest.raises(ValueError):
        UpstreamAuth("u", "p", methods={"kerberos"})


def test_upstream_opt_in_methods():
    auth = UpstreamAuth("u", "pw", methods={"password"})
    assert auth.handle(codec.AUTH_CLEARTEXT, b"") == codec.encode_password("pw")
    auth.handle(codec.AUTH_OK, b"")
    assert auth.complete
    auth = UpstreamAuth("u", "pw", methods={"none"})
    assert auth.handle(codec.AUTH_OK, b"") is None
    assert auth.method == "none"
    with pytest.raises(AuthError, match="after AuthenticationOk"):
        auth.handle(codec.AUTH_OK, b"")


def test_upstream_second_method_refused():
    auth = UpstreamAuth("u", "pw")
    auth.handle(codec.AUTH_MD5, b"salt")
    with pytest.raises(AuthError, match="second authentication method"):
        auth.handle(codec.AUTH_SASL, sasl_payload("SCRAM-SHA-256"))


def test_auth_errors_never_contain_the_password():
    password = "Sup3r-Secret-Passw0rd"
    cases = [
        lambda: UpstreamAuth("u", password).handle(codec.AUTH_CLEARTEXT, b""),
        lambda: UpstreamAuth("u", password).handle(codec.AUTH_OK, b""),
    ]
    client = ScramClient("u", password, nonce=RFC_NONCE)
    client.client_first()
    cases.append(lambda: client.handle_server_first(b"r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=9999999999"))
    for case in cases:
        with pytest.raises(AuthError) as err:
            case()
        assert password not in str(err.value)


# --------------------------------------------------------------------------
# md5


def test_md5_password_formula():
    user, password, salt = "md5user", "md5pw", b"\x93\x1f\xa0\x07"
    # PostgreSQL stores "md5" + md5(password + user); this value was read from
    # pg_authid of a real PostgreSQL 15 after CREATE USER md5user PASSWORD 'md5pw'.
    stored = "704ac3bc41dadc414b9aa9dbf5e63cdd"
    assert hashlib.md5(b"md5pwmd5user").hexdigest() == stored
    expected = "md5" + hashlib.md5(stored.encode() + salt).hexdigest()
    assert md5_password(user, password, salt) == expected
    assert (
        md5_password(user, password, salt)
        == "md5"
        + hashlib.md5(
            hashlib.md5(b"md5pwmd5user").hexdigest().encode() + b"\x93\x1f\xa0\x07"
        ).hexdigest()
    )
    assert len(expected) == 35
    with pytest.raises(AuthError):
        md5_password(user, password, b"abc")


# --------------------------------------------------------------------------
# SASLprep, as libpq/PostgreSQL apply it (values checked against PostgreSQL 15)


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("pencil", b"pencil"),
        ("ascii\x07ctl", b"ascii\x07ctl"),  # pure ASCII is never touched
        # NBSP -> space, soft hyphen removed, NFKC (U+2168 ROMAN NUMERAL NINE -> "IX")
        ("I\u00a0X\u00adp\u00e4ssw\u00f6rd\u2168", "I Xp\u00e4ssw\u00f6rdIX".encode()),
        ("I\u3000Xpa\u0308ssw\u00f6rdIX", "I Xp\u00e4ssw\u00f6rdIX".encode()),
        # prohibited (control char) -> the raw bytes, unprepared (NBSP kept)
        ("\u00e9\u0007x\u00a0", "\u00e9\u0007x\u00a0".encode()),
        # bidi violation (RandAL mixed with L) -> raw bytes
        ("\u05d0abc\u05d1", "\u05d0abc\u05d1".encode()),
        ("\u05d0\u05d1", "\u05d0\u05d1".encode()),  # valid RTL-only string
        ("\u00ad", "\u00ad".encode()),  # empty after mapping -> raw
        ("\u0221x\u00e9", "\u0221x\u00e9".encode()),  # unassigned in Unicode 3.2 -> raw
        (b"\xff\xfe latin-1 bytes", b"\xff\xfe latin-1 bytes"),  # not UTF-8 -> raw
        ("\ufb01\u00e9", "fi\u00e9".encode()),  # ligature
    ],
)
def test_prepare_password(password, prepared):
    assert prepare_password(password) == prepared


def test_scram_uses_prepared_password():
    server = FakeScramServer("I Xp\u00e4ssw\u00f6rdIX".encode())
    auth = UpstreamAuth("uni", "I\u00a0X\u00adp\u00e4ssw\u00f6rd\u2168")
    run_upstream_scram(auth, server, ["SCRAM-SHA-256"])


# --------------------------------------------------------------------------
# tls-server-end-point channel binding data


def make_cert(key, algorithm) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(Encoding.DER)


def test_tls_server_end_point():
    key = ec.generate_private_key(ec.SECP256R1())
    der = make_cert(key, hashes.SHA384())
    assert tls_server_end_point(der) == hashlib.sha384(der).digest()
    der = make_cert(key, hashes.SHA256())
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()
    # no separate hash: PostgreSQL cannot bind either
    assert tls_server_end_point(make_cert(ed25519.Ed25519PrivateKey.generate(), None)) is None
