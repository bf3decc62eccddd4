"""Client side of upstream PostgreSQL authentication: SCRAM-SHA-256 and md5. Pure.

The gateway authenticates to the real server with credentials only it holds.
Nothing here does I/O: :class:`ScramClient` turns server messages into client
messages (RFC 5802 / RFC 7677), :class:`UpstreamAuth` drives a whole exchange
from decoded ``Authentication*`` requests and says what to send back, refusing
methods the operator did not allow (cleartext and "trust" by default, since a
rogue or spoofed upstream asking for the cleartext password is the classic
downgrade).

Password preparation follows libpq exactly (``pg_saslprep`` in
src/common/saslprep.c), because the server built the stored verifier that way:
pure-ASCII passwords are used as they are; otherwise SASLprep (RFC 4013) is
applied, and if the password is not valid UTF-8 or SASLprep prohibits it, the
raw bytes are used instead of failing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Iterable

from . import codec

__all__ = [
    "AuthError",
    "ScramClient",
    "UpstreamAuth",
    "md5_password",
    "prepare_password",
    "tls_server_end_point",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
#: Upper bound on the server's iteration count, so a hostile upstream cannot make
#: the gateway burn CPU (PostgreSQL's default is 4096).
DEFAULT_MAX_ITERATIONS = 1_000_000


class AuthError(Exception):
    """Upstream authentication failed or was refused. The message names the
    reason but never contains the password or any derived secret."""


# --------------------------------------------------------------------------
# Password preparation


def _saslprep_pg(text: str) -> str | None:
    """SASLprep as PostgreSQL implements it; None where PostgreSQL says "prohibited".

    Mirrors pg_saslprep: map (C.1.2 -> SPACE, B.1 -> nothing), refuse an empty
    result, NFKC-normalise, then check prohibited/unassigned characters and the
    bidi rule *on the mapped, not normalised* string, as PostgreSQL does.
    """
    mapped = []
    for ch in text:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")
        elif stringprep.in_table_b1(ch):
            continue
        else:
            mapped.append(ch)
    if not mapped:
        return None
    normalized = unicodedata.normalize("NFKC", "".join(mapped))
    for ch in mapped:
        if (
            stringprep.in_table_c12(ch)
            or stringprep.in_table_c21_c22(ch)
            or stringprep.in_table_c3(ch)
            or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch)
            or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch)
            or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch)
            or stringprep.in_table_a1(ch)
        ):
            return None
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        if any(stringprep.in_table_d2(ch) for ch in mapped):
            return None
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return None
    return normalized


def prepare_password(password: str | bytes) -> bytes:
    """The bytes SCRAM hashes for ``password``, exactly as libpq computes them."""
    raw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if raw.isascii():
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    prepared = _saslprep_pg(text)
    return raw if prepared is None else prepared.encode("utf-8")


# --------------------------------------------------------------------------
# md5


def md5_password(user: str, password: str, salt: bytes) -> str:
    """PostgreSQL's md5 response: "md5" + md5(md5(password + user).hex + salt).hex."""
    if len(salt) != 4:
        raise AuthError("md5 salt must be 4 bytes")
    inner = hashlib.md5(password.encode("utf-8") + user.encode("utf-8")).hexdigest()
    return "md5" + hashlib.md5(inner.encode("ascii") + bytes(salt)).hexdigest()


# --------------------------------------------------------------------------
# SCRAM-SHA-256


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _parse_attributes(data: bytes, what: str) -> list[tuple[str, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthError(f"invalid SCRAM {what} message: not UTF-8") from None
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            raise AuthError(f"invalid SCRAM {what} message: malformed attribute")
        out.append((part[0], part[2:]))
    return out


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise AuthError(f"invalid SCRAM {what}: bad base64") from None


def tls_server_end_point(cert_der: bytes) -> bytes | None:
    """Channel-binding data for ``tls-server-end-point`` (RFC 5929 section 4.1).

    The hash of the server's DER certificate with its signature hash algorithm
    (SHA-256 instead of MD5/SHA-1). None when the certificate's signature has no
    separate hash (Ed25519/Ed448), where PostgreSQL cannot bind either.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(cert_der)
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception:  # unsupported signature algorithm
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


class ScramClient:
    """SCRAM-SHA-256 client (RFC 5802, RFC 7677).

    Without ``channel_binding`` the GS2 header is ``n,,`` (no channel binding),
    as the contract requires. With ``channel_binding`` (the
    :func:`tls_server_end_point` data of the upstream TLS certificate):
    ``use_binding=True`` selects SCRAM-SHA-256-PLUS (``p=tls-server-end-point``);
    ``use_binding=False`` sends ``y,,`` ("I could bind, I think you can't") so
    a server that does offer -PLUS detects a mechanism-stripping MITM.

    ``nonce`` is the client nonce used verbatim (printable ASCII except ',');
    by default 18 random bytes in base64, like libpq.
    """

    def __init__(
        self,
        user: str,
        password: str | bytes,
        nonce: bytes | None = None,
        *,
        channel_binding: bytes | None = None,
        use_binding: bool = False,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
    ) -> None:
        if nonce is None:
            nonce = base64.b64encode(secrets.token_bytes(18))
        if not nonce or any(b < 0x21 or b > 0x7E or b == 0x2C for b in nonce):
            raise ValueError("SCRAM nonce must be printable ASCII without ','")
        if use_binding and channel_binding is None:
            raise ValueError("use_binding requires channel_binding data")
        self._user = user
        self._password = prepare_password(password)
        self._nonce = nonce.decode("ascii")
        self._cb_data = channel_binding
        self._max_iterations = max_iterations
        if use_binding:
            self.mechanism = SCRAM_SHA_256_PLUS
            self._gs2_header = b"p=tls-server-end-point,,"
        else:
            self.mechanism = SCRAM_SHA_256
            self._gs2_header = b"y,," if channel_binding is not None else b"n,,"
        self._state = "start"
        self._client_first_bare = ""
        self._auth_message = b""
        self._server_signature = b""

    @property
    def done(self) -> bool:
        """True once the server's signature has been verified (mutual auth done)."""
        return self._state == "done"

    def client_first(self) -> bytes:
        if self._state != "start":
            raise AuthError("SCRAM client-first already sent")
        self._client_first_bare = f"n={_escape_saslname(self._user)},r={self._nonce}"
        self._state = "sent_first"
        return self._gs2_header + self._client_first_bare.encode("utf-8")

    def handle_server_first(self, data: bytes) -> bytes:
        if self._state != "sent_first":
            raise AuthError("unexpected SCRAM server-first message")
        self._state = "failed"
        server_first = bytes(data)
        attrs = _parse_attributes(server_first, "server-first")
        if attrs and attrs[0][0] == "e":
            raise AuthError(f"upstream SCRAM error: {attrs[0][1][:200]}")
        if attrs and attrs[0][0] == "m":
            raise AuthError("upstream SCRAM requires an unsupported extension")
        if len(attrs) < 3 or [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise AuthError("invalid SCRAM server-first message: expected r=, s=, i=")
        nonce, salt_b64, iter_text = attrs[0][1], attrs[1][1], attrs[2][1]
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise AuthError("invalid SCRAM server-first message: server nonce mismatch")
        if any(not 0x21 <= ord(c) <= 0x7E for c in nonce):
            raise AuthError("invalid SCRAM server-first message: bad nonce characters")
        salt = _b64decode(salt_b64, "salt")
        if not salt:
            raise AuthError("invalid SCRAM server-first message: empty salt")
        if not iter_text.isascii() or not iter_text.isdigit() or len(iter_text) > 10:
            raise AuthError("invalid SCRAM server-first message: bad iteration count")
        iterations = int(iter_text)
        if iterations < 1:
            raise AuthError("invalid SCRAM server-first message: bad iteration count")
        if iterations > self._max_iterations:
            raise AuthError(
                f"SCRAM iteration count {iterations} exceeds limit {self._max_iterations}"
            )

        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        cbind_input = self._gs2_header
        if self.mechanism == SCRAM_SHA_256_PLUS:
            assert self._cb_data is not None
            cbind_input += self._cb_data
        final_without_proof = (
            "c=" + base64.b64encode(cbind_input).decode("ascii") + ",r=" + nonce
        ).encode("ascii")
        self._auth_message = (
            self._client_first_bare.encode("utf-8")
            + b","
            + server_first
            + b","
            + final_without_proof
        )
        client_signature = _hmac(stored_key, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), self._auth_message)
        self._state = "sent_final"
        return final_without_proof + b",p=" + base64.b64encode(proof)

    def verify_server_final(self, data: bytes) -> None:
        if self._state != "sent_final":
            raise AuthError("unexpected SCRAM server-final message")
        self._state = "failed"
        attrs = _parse_attributes(bytes(data), "server-final")
        if attrs and attrs[0][0] == "e":
            raise AuthError(f"upstream SCRAM error: {attrs[0][1][:200]}")
        if not attrs or attrs[0][0] != "v":
            raise AuthError("invalid SCRAM server-final message: expected v=")
        signature = _b64decode(attrs[0][1], "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthError(
                "upstream server signature is invalid: the server does not know "
                "the password (possible impersonation)"
            )
        self._state = "done"


# --------------------------------------------------------------------------
# Whole-exchange driver

_METHOD_NAMES = {
    codec.AUTH_KERBEROS_V5: "Kerberos V5",
    codec.AUTH_CLEARTEXT: "password",
    codec.AUTH_MD5: "md5",
    codec.AUTH_SCM_CREDENTIAL: "SCM credentials",
    codec.AUTH_GSS: "GSSAPI",
    codec.AUTH_GSS_CONTINUE: "GSSAPI",
    codec.AUTH_SSPI: "SSPI",
    codec.AUTH_SASL: "SASL",
}

ALLOWED_BY_DEFAULT = frozenset({"scram-sha-256", "md5"})


class UpstreamAuth:
    """Drives upstream authentication from decoded Authentication requests.

    Feed each ``(code, payload)`` from :func:`codec.decode_authentication`
    to :meth:`handle`; send back whatever bytes it returns (a framed frontend
    message) or nothing when it returns None. :attr:`complete` turns true on
    AuthenticationOk. Raises :class:`AuthError` when a method is not in
    ``methods`` ("scram-sha-256", "md5", "password" for cleartext, "none" for a
    server that asks for nothing), when the server misbehaves, or when it claims
    success before proving it knows the SCRAM password.

    ``channel_binding``: the upstream certificate's :func:`tls_server_end_point`
    data when the upstream connection uses TLS; with ``require_channel_binding``
    only SCRAM-SHA-256-PLUS is accepted.
    """

    def __init__(
        self,
        user: str,
        password: str,
        methods: Iterable[str] = ALLOWED_BY_DEFAULT,
        *,
        channel_binding: bytes | None = None,
        require_channel_binding: bool = False,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
    ) -> None:
        self.methods = frozenset(methods)
        unknown = self.methods - {"scram-sha-256", "md5", "password", "none"}
        if unknown:
            raise ValueError(f"unknown authentication methods: {sorted(unknown)}")
        if require_channel_binding and channel_binding is None:
            raise ValueError("require_channel_binding needs channel_binding data")
        self._user = user
        self._password = password
        self._cb = channel_binding
        self._require_cb = require_channel_binding
        self._max_iterations = max_iterations
        self._method: str | None = None
        self._scram: ScramClient | None = None
        self.complete = False

    @property
    def method(self) -> str | None:
        """The method used so far ("scram-sha-256", "scram-sha-256-plus", "md5", ...)."""
        return self._method

    def _start(self, method: str) -> None:
        if self._method is not None:
            raise AuthError("upstream requested a second authentication method")
        if method.removesuffix("-plus") not in self.methods:
            raise AuthError(f"upstream requested {method} authentication, which is not allowed")
        if self._require_cb and method != "scram-sha-256-plus":
            raise AuthError(f"channel binding required but upstream requested {method}")
        self._method = method

    def handle(self, code: int, payload: bytes) -> bytes | None:
        if self.complete:
            raise AuthError("unexpected authentication request after AuthenticationOk")
        if code == codec.AUTH_OK:
            if payload:
                raise AuthError("invalid AuthenticationOk message")
            if self._method is None:
                if "none" not in self.methods or self._require_cb:
                    raise AuthError(
                        "upstream accepted the connection without authentication "
                        "(trust), which is not allowed"
                    )
                self._method = "none"
            elif self._scram is not None and not self._scram.done:
                raise AuthError("upstream sent AuthenticationOk before completing SCRAM")
            self.complete = True
            return None
        if code == codec.AUTH_CLEARTEXT:
            self._start("password")
            return codec.encode_password(self._password)
        if code == codec.AUTH_MD5:
            self._start("md5")
            if len(payload) != 4:
                raise AuthError("invalid AuthenticationMD5Password message")
            return codec.encode_password(md5_password(self._user, self._password, payload))
        if code == codec.AUTH_SASL:
            try:
                mechanisms = codec.decode_sasl_mechanisms(payload)
            except codec.ProtocolError as err:
                raise AuthError(str(err)) from None
            use_binding = self._cb is not None and SCRAM_SHA_256_PLUS in mechanisms
            if use_binding:
                self._start("scram-sha-256-plus")
            elif SCRAM_SHA_256 in mechanisms:
                self._start("scram-sha-256")
            else:
                raise AuthError("upstream offered no supported SASL mechanism")
            self._scram = ScramClient(
                self._user,
                self._password,
                channel_binding=self._cb,
                use_binding=use_binding,
                max_iterations=self._max_iterations,
            )
            return codec.encode_sasl_initial_response(
                self._scram.mechanism, self._scram.client_first()
            )
        if code == codec.AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise AuthError("unexpected AuthenticationSASLContinue")
            return codec.encode_sasl_response(self._scram.handle_server_first(payload))
        if code == codec.AUTH_SASL_FINAL:
            if self._scram is None:
                raise AuthError("unexpected AuthenticationSASLFinal")
            self._scram.verify_server_final(payload)
            return None
        name = _METHOD_NAMES.get(code, f"unknown ({code})")
        raise AuthError(f"upstream requested unsupported authentication method {name}")
