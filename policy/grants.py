"""Grants: short-lived Ed25519-signed JWTs naming who may reach which target, how.

``sign_grant`` makes a token; ``GrantVerifier.verify`` turns a token into a
``Grant`` or a ``Refusal`` whose ``message`` is shown to the engineer as is.
No exception escapes ``verify``: anything unexpected is a MALFORMED refusal.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
MAX_LEEWAY = 30
MAX_TOKEN_BYTES = 16 * 1024
TARGET_TYPES = ("ssh", "postgres")
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "nbf", "exp", "targets")
DEFAULT_ISSUER = "breakglass"
#: Times outside this range are not real grant times (and would overflow date formatting).
EARLIEST_TIME = 946_684_800  # 2000-01-01
LATEST_TIME = 32_503_680_000  # 3000-01-01
#: No grant lives longer than this, whatever its signer says (templates cap far below).
MAX_LIFETIME = 31 * 86400
MAX_TEXT = 256  # names, ids, accounts
MAX_FREE_TEXT = 4096  # reason
MAX_LIST = 64


class RefusalKind(StrEnum):
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_KEY = "unknown-key"
    WRONG_AUDIENCE = "wrong-audience"
    WRONG_ISSUER = "wrong-issuer"
    REVOKED = "revoked"
    TARGET_NOT_GRANTED = "target-not-granted"
    SOURCE_NOT_ALLOWED = "source-not-allowed"
    NO_CREDENTIALS = "no-credentials"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Refusal:
    """Why a token was not accepted. ``message`` is safe to show to the client."""

    kind: RefusalKind
    message: str
    jti: str | None = None
    subject: str | None = None

    def __bool__(self) -> bool:  # a refusal is never truthy, so `if grant:` reads well
        return False


@dataclass(frozen=True)
class GrantTarget:
    type: str
    name: str
    login: str | None = None  # ssh
    db_user: str | None = None  # postgres

    @property
    def account(self) -> str | None:
        return self.login if self.type == "ssh" else self.db_user


@dataclass(frozen=True)
class Grant:
    """A verified grant. ``claims`` is the full decoded payload."""

    claims: Mapping[str, Any] = field(repr=False)
    targets: tuple[GrantTarget, ...]

    @property
    def subject(self) -> str:
        return self.claims["sub"]

    @property
    def jti(self) -> str:
        return self.claims["jti"]

    @property
    def issuer(self) -> str:
        return self.claims["iss"]

    @property
    def issued_at(self) -> float:
        return float(self.claims["iat"])

    @property
    def not_before(self) -> float:
        return float(self.claims["nbf"])

    @property
    def expires_at(self) -> float:
        return float(self.claims["exp"])

    @property
    def ssh(self) -> Mapping[str, Any]:
        return self.claims.get("ssh") or {}

    @property
    def sql(self) -> Mapping[str, Any]:
        return self.claims.get("sql") or {}

    @property
    def reason(self) -> str:
        return self.claims.get("reason", "")

    @property
    def ticket(self) -> str | None:
        return self.claims.get("ticket")

    @property
    def template(self) -> str | None:
        return self.claims.get("template")

    @property
    def breakglass(self) -> bool:
        return bool(self.claims.get("breakglass", False))

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(self.claims.get("approvers") or ())

    def target(self, type_: str, name: str) -> GrantTarget | None:
        for t in self.targets:
            if t.type == type_ and t.name == name:
                return t
        return None


def utc_text(ts: float) -> str:
    """``2026-11-22 14:32:05Z`` — how times appear in messages to people."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def new_jti() -> str:
    return uuid.uuid4().hex


def sign_grant(claims: Mapping[str, Any], key: Ed25519PrivateKey, kid: str) -> str:
    """Sign ``claims`` (already complete) as an EdDSA JWT with header ``kid``."""
    return jwt.encode(dict(claims), key, algorithm=ALGORITHM, headers={"kid": kid})


def _name(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    """A non-empty, printable, bounded string (it reaches logs, banners and messages)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    if not value.isprintable():
        raise ValueError(f"{what} contains control characters")
    return value


def _parse_targets(raw: Any) -> tuple[GrantTarget, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("claim 'targets' must be a non-empty list")
    if len(raw) > MAX_LIST:
        raise ValueError(f"claim 'targets' lists more than {MAX_LIST} targets")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise ValueError(f"targets[{i}] must be an object")
        type_ = t.get("type")
        if type_ not in TARGET_TYPES:
            raise ValueError(f"targets[{i}].type must be one of {', '.join(TARGET_TYPES)}")
        name = _name(t.get("name"), f"targets[{i}].name")
        account_key = "login" if type_ == "ssh" else "db_user"
        account = _name(t.get(account_key), f"targets[{i}].{account_key}")
        out.append(
            GrantTarget(
                type=type_,
                name=name,
                login=account if type_ == "ssh" else None,
                db_user=account if type_ == "postgres" else None,
            )
        )
    return tuple(out)


def _time(claims: Mapping[str, Any], c: str) -> float:
    v = claims[c]
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValueError(f"claim '{c}' must be a number")
    if not (EARLIEST_TIME <= v <= LATEST_TIME):  # also refuses inf and NaN
        raise ValueError(f"claim '{c}' is not a plausible time ({v!r})")
    return float(v)


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    """Strict shape of every claim the gateway reads; the message names the claim."""
    missing = [c for c in REQUIRED_CLAIMS if c not in claims]
    if missing:
        raise ValueError(f"missing claim(s): {', '.join(missing)}")
    for c in ("iss", "sub", "jti"):
        _name(claims[c], f"claim '{c}'")
    iat, nbf, exp = (_time(claims, c) for c in ("iat", "nbf", "exp"))
    if exp - min(iat, nbf) > MAX_LIFETIME:
        raise ValueError(f"grant lifetime exceeds {MAX_LIFETIME // 86400} days")
    for c in ("ssh", "sql"):
        if c in claims and not isinstance(claims[c], dict):
            raise ValueError(f"claim '{c}' must be an object")
    ssh = claims.get("ssh") or {}
    for flag in ("shell", "forwarding", "sftp"):
        if flag in ssh and not isinstance(ssh[flag], bool):
            raise ValueError(f"claim 'ssh.{flag}' must be true or false")
    _strings(ssh.get("commands"), "ssh.commands", MAX_FREE_TEXT, printable=False)
    sql = claims.get("sql") or {}
    if "mode" in sql:
        _name(sql["mode"], "claim 'sql.mode'")
    _strings(sql.get("tables"), "sql.tables", MAX_TEXT)
    if claims.get("reason") is not None and not isinstance(claims["reason"], str):
        raise ValueError("claim 'reason' must be a string")
    if isinstance(claims.get("reason"), str) and len(claims["reason"]) > MAX_FREE_TEXT:
        raise ValueError(f"claim 'reason' is longer than {MAX_FREE_TEXT} characters")
    for c in ("ticket", "template"):
        if claims.get(c) is not None:
            _name(claims[c], f"claim '{c}'")
    _strings(claims.get("approvers"), "approvers", MAX_TEXT)
    for flag in ("breakglass", "role_management"):
        if flag in claims and not isinstance(claims[flag], bool):
            raise ValueError(f"claim '{flag}' must be true or false")
    cidrs = _strings(claims.get("source_cidrs"), "source_cidrs", MAX_TEXT)
    for c in cidrs:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            raise ValueError(f"claim 'source_cidrs' has an invalid network {c!r}") from None


def _strings(value: Any, what: str, limit: int, printable: bool = True) -> list[str]:
    """An optional list of bounded strings (``None`` is an empty list)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LIST * 4:
        raise ValueError(f"claim '{what}' must be a list of strings")
    for i, v in enumerate(value):
        if printable:
            _name(v, f"claim '{what}[{i}]'", limit)
        elif not isinstance(v, str) or len(v) > limit:
            raise ValueError(f"claim '{what}[{i}]' must be a string")
    return value


class GrantVerifier:
    """Checks tokens against trusted issuer keys, audience, time, revocation and target."""

    def __init__(
        self,
        trusted_keys: Mapping[str, Ed25519PublicKey],
        audience: str,
        *,
        leeway: float = 5.0,
        is_revoked: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
        issuer: str = DEFAULT_ISSUER,
        key_issuers: Mapping[str, str] | None = None,
    ) -> None:
        """Each trusted key (by kid) vouches for one issuer: ``key_issuers[kid]``, else
        ``issuer``. A grant whose ``iss`` is not its key's issuer is refused."""
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        self.trusted_keys = dict(trusted_keys)
        self.key_issuers = {kid: (key_issuers or {}).get(kid, issuer) for kid in trusted_keys}
        self.audience = audience
        self.leeway = leeway
        self.is_revoked = is_revoked or (lambda _jti: False)
        self.clock = clock

    def verify(
        self,
        token: str | bytes,
        *,
        target_type: str | None = None,
        target_name: str | None = None,
        source_ip: str | None = None,
        now: float | None = None,
    ) -> Grant | Refusal:
        try:
            return self._verify(token, target_type, target_name, source_ip, now)
        except Exception as e:  # fail closed, never crash the caller
            return Refusal(RefusalKind.MALFORMED, f"grant could not be checked: {type(e).__name__}")

    def _verify(self, token, target_type, target_name, source_ip, now) -> Grant | Refusal:
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                return Refusal(RefusalKind.MALFORMED, "grant is not a token (non-ASCII bytes)")
        token = token.strip()
        if not token:
            return Refusal(RefusalKind.MALFORMED, "no grant given")
        if len(token) > MAX_TOKEN_BYTES:
            return Refusal(RefusalKind.MALFORMED, "grant is too long to be a token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Refusal(RefusalKind.MALFORMED, "grant is not a well-formed token")
        alg = header.get("alg")
        if alg != ALGORITHM:
            return Refusal(
                RefusalKind.BAD_SIGNATURE,
                f"grant uses algorithm {alg!r}; only {ALGORITHM} is accepted",
            )
        kid = header.get("kid")
        key = self.trusted_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            return Refusal(RefusalKind.UNKNOWN_KEY, f"grant is signed by an unknown key ({kid!r})")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                options={
                    "verify_exp": False,  # checked below, with our own messages
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": list(REQUIRED_CLAIMS),
                },
            )
        except jwt.InvalidSignatureError:
            return Refusal(RefusalKind.BAD_SIGNATURE, "grant signature does not verify")
        except jwt.InvalidAudienceError:
            return Refusal(
                RefusalKind.WRONG_AUDIENCE, f"grant is for another gateway (not {self.audience!r})"
            )
        except jwt.MissingRequiredClaimError as e:
            return Refusal(RefusalKind.MALFORMED, f"grant is missing claim {e.claim!r}")
        except jwt.PyJWTError as e:
            return Refusal(RefusalKind.MALFORMED, f"grant is not a valid token ({e})")
        expected_iss = self.key_issuers.get(kid)
        if claims.get("iss") != expected_iss:
            shown = claims.get("iss")
            shown = shown[:64] if isinstance(shown, str) else shown
            return Refusal(
                RefusalKind.WRONG_ISSUER,
                f"grant issuer {shown!r} is not the issuer its key {kid!r} is trusted for",
            )
        try:
            _check_claim_types(claims)
            targets = _parse_targets(claims["targets"])
        except ValueError as e:
            return Refusal(RefusalKind.MALFORMED, f"grant is malformed: {e}")
        jti, sub = claims["jti"], claims["sub"]
        now = self.clock() if now is None else now
        # Expiry is strict: the gateway enforces exp itself, so there is no grace period to hand out.
        if now >= claims["exp"]:
            return Refusal(
                RefusalKind.EXPIRED, f"grant expired at {utc_text(claims['exp'])}", jti, sub
            )
        if now + self.leeway < claims["nbf"]:
            return Refusal(
                RefusalKind.NOT_YET_VALID,
                f"grant is not valid before {utc_text(claims['nbf'])}",
                jti,
                sub,
            )
        if now + self.leeway < claims["iat"]:
            return Refusal(
                RefusalKind.NOT_YET_VALID,
                f"grant claims to be issued in the future ({utc_text(claims['iat'])})",
                jti,
                sub,
            )
        if self.is_revoked(jti):
            return Refusal(RefusalKind.REVOKED, "grant has been revoked", jti, sub)
        grant = Grant(claims=claims, targets=targets)
        if target_type is not None and target_name is not None:
            if grant.target(target_type, target_name) is None:
                return Refusal(
                    RefusalKind.TARGET_NOT_GRANTED,
                    f"grant does not cover {target_type} target {target_name}",
                    jti,
                    sub,
                )
        if source_ip is not None and claims.get("source_cidrs"):
            if not source_allowed(source_ip, claims["source_cidrs"]):
                return Refusal(
                    RefusalKind.SOURCE_NOT_ALLOWED,
                    f"grant does not allow connections from {source_ip}",
                    jti,
                    sub,
                )
        return grant


def source_allowed(source_ip: str, cidrs: list[Any]) -> bool:
    """True when ``source_ip`` is inside one of ``cidrs``; a bad entry matches nothing."""
    try:
        addr = ipaddress.ip_address(source_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    for c in cidrs:
        try:
            if addr in ipaddress.ip_network(str(c), strict=False):
                return True
        except ValueError:
            continue
    return False
