"""Who is calling the grant service: OIDC ID tokens, or local users with password + TOTP.

* :class:`OidcVerifier` checks an ID token from the organisation's identity provider against
  its JWKS (signature with an asymmetric algorithm from a pinned list, ``iss``, ``aud``,
  ``exp``/``iat``), and maps a configured claim to policy groups.
* :class:`LocalUsers` holds users in a TOML file (scrypt password hash, TOTP secret, groups);
  a TOTP code is accepted once: the caller records the time step it used (``use_step``) in the
  shared state so a replayed code is refused, even on another service instance.
* :class:`SessionTokens` issues and checks the short-lived API session tokens (HS256 with a
  secret only the service holds; a distinct audience so they can never pass as a grant).

Failures raise :class:`AuthFailed`: ``reason`` is for the audit log, ``public`` for the caller.
Nothing here logs a password, code, secret or token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pyotp

from breakglass.service.requests import Identity

OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
SESSION_ALGORITHM = "HS256"
SESSION_AUDIENCE = "breakglass-api"
MAX_TOKEN_BYTES = 16 * 1024
TOTP_PERIOD = 30


class AuthFailed(Exception):
    """Authentication refused. ``reason`` goes to the audit log; ``public`` to the caller."""

    def __init__(self, reason: str, public: str = "authentication failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.public = public


# ---------------------------------------------------------------- OIDC


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    jwks_url: str
    username_claim: str = "email"
    groups_claim: str = "groups"
    group_map: Mapping[str, str] = field(default_factory=dict)  # IdP group -> policy group
    #: IdP identity (the username claim's value) -> policy name, chosen by an administrator
    user_map: Mapping[str, str] = field(default_factory=dict)
    #: prefix of unmapped identities; needed (with ':') unless the claim is a verified email
    user_prefix: str = ""
    algorithms: tuple[str, ...] = OIDC_ALGORITHMS
    leeway: float = 10.0


class OidcVerifier:
    def __init__(self, settings: OidcSettings, *, ssl_context: Any = None) -> None:
        bad = [a for a in settings.algorithms if a not in OIDC_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported OIDC algorithm(s): {', '.join(bad)}")
        self.settings = settings
        kw: dict[str, Any] = {"cache_keys": True, "lifespan": 300, "timeout": 10}
        if ssl_context is not None:
            kw["ssl_context"] = ssl_context
        self._jwks = jwt.PyJWKClient(settings.jwks_url, **kw)

    async def verify(self, token: str) -> Identity:
        return await asyncio.to_thread(self.verify_sync, token)

    def verify_sync(self, token: str) -> Identity:
        s = self.settings
        if not isinstance(token, str) or not token.strip():
            raise AuthFailed("oidc: no token", "no ID token given")
        token = token.strip()
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthFailed("oidc: token too long", "ID token rejected")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailed("oidc: malformed token", "ID token is not a well-formed JWT") from None
        if header.get("alg") not in s.algorithms:
            raise AuthFailed(
                f"oidc: algorithm {header.get('alg')!r} not allowed", "ID token algorithm refused"
            )
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as e:
            raise AuthFailed(
                f"oidc: JWKS unreachable ({type(e).__name__})",
                "identity provider keys unavailable; try again",
            ) from None
        except jwt.PyJWTError as e:
            raise AuthFailed(
                f"oidc: no signing key ({e})", "ID token signed by an unknown key"
            ) from None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("oidc: token expired", "ID token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthFailed("oidc: wrong audience", "ID token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthFailed("oidc: wrong issuer", "ID token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthFailed("oidc: bad signature", "ID token signature does not verify") from None
        except jwt.PyJWTError as e:
            raise AuthFailed(f"oidc: invalid token ({e})", "ID token rejected") from None
        user = claims.get(s.username_claim)
        if not isinstance(user, str) or not user.strip() or not user.strip().isprintable():
            raise AuthFailed(f"oidc: claim {s.username_claim!r} missing", "ID token names no user")
        user = user.strip()
        if s.username_claim == "email":
            # An unverified address is whatever the user typed at the IdP: never an identity.
            if claims.get("email_verified") not in (True, "true"):
                raise AuthFailed("oidc: email not verified", "ID token's email is not verified")
            if "@" not in user:
                raise AuthFailed("oidc: email claim is not an address", "ID token names no user")
        name = s.user_map.get(user) or f"{s.user_prefix}{user}"
        raw_groups = claims.get(s.groups_claim) or []
        if isinstance(raw_groups, str):
            raw_groups = [raw_groups]
        groups: list[str] = []
        for g in raw_groups if isinstance(raw_groups, list) else []:
            mapped = s.group_map.get(g) if isinstance(g, str) else None  # explicit only
            if mapped and mapped not in groups:
                groups.append(mapped)
        return Identity(user=name, groups=tuple(groups), method="oidc")


#: Characters a local user name never contains, so OIDC names (an email's '@', a prefix's
#: ':') can never be a local user's name.
LOCAL_NAME_FORBIDDEN = "\"'\\\n[]. @:"


def oidc_namespace_problems(s: OidcSettings, local_names: set[str]) -> list[str]:
    """Names two identity sources could both claim (checked at config load)."""
    problems = []
    if s.username_claim != "email" and ":" not in s.user_prefix:
        problems.append(
            f"identity.oidc.user_prefix: with username_claim = {s.username_claim!r}, set a "
            'prefix with ":" (e.g. "sso:") so IdP names can never be local user names'
        )
    for idp_name, name in s.user_map.items():
        if name in local_names:
            problems.append(
                f"identity.oidc.user_map: {name!r} (for {idp_name!r}) is also a local user; "
                "a name must belong to one identity source"
            )
    return problems


# ---------------------------------------------------------------- local users

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b(salt).decode()}${b(h).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(want)),
        )
        return hmac.compare_digest(got, base64.b64decode(want))
    except (ValueError, TypeError):
        return False


_DUMMY_HASH = hash_password(secrets.token_hex(8))  # unknown users cost the same time


def totp_step(secret: str, code: str, now: float, window: int = 1) -> int | None:
    """The time step ``code`` is valid for (within ±``window`` steps of ``now``), or None."""
    code = (code or "").strip()
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_PERIOD)
    step = int(now // TOTP_PERIOD)
    match = None
    for s in range(step - window, step + window + 1):
        if hmac.compare_digest(totp.generate_otp(s), code):
            match = s
    return match


@dataclass(frozen=True)
class LocalUser:
    name: str
    password_hash: str
    totp_secret: str
    groups: tuple[str, ...] = ()
    disabled: bool = False


class LocalUsers:
    """Users from a TOML file: ``[users.NAME] password_hash, totp_secret, groups``."""

    def __init__(self, users: Mapping[str, LocalUser]) -> None:
        self.users = dict(users)

    @classmethod
    def load(cls, path: Path) -> LocalUsers:
        path = Path(path)
        if path.stat().st_mode & 0o077:
            raise ValueError(f"{path} holds TOTP secrets: make it private (chmod 600)")
        doc = tomllib.loads(path.read_text())
        users = {}
        for name, u in (doc.get("users") or {}).items():
            if not isinstance(u, dict):
                raise ValueError(f"users.{name}: expected a table")
            _check_name(name)
            for k in ("password_hash", "totp_secret"):
                if not isinstance(u.get(k), str) or not u[k]:
                    raise ValueError(f"users.{name}.{k}: missing")
            groups = u.get("groups", [])
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise ValueError(f"users.{name}.groups: expected a list of strings")
            disabled = u.get("disabled", False)
            if not isinstance(disabled, bool):
                raise ValueError(f"users.{name}.disabled: expected true or false")
            users[name] = LocalUser(
                name, u["password_hash"], u["totp_secret"], tuple(groups), disabled
            )
        return cls(users)

    def active(self, name: str) -> LocalUser | None:
        """The user, if present and not disabled (what a live API session is checked against)."""
        u = self.users.get(name)
        return u if u is not None and not u.disabled else None

    async def login(
        self,
        username: str,
        password: str,
        code: str,
        use_step: Callable[[str, int], Awaitable[bool]],
        now: float | None = None,
    ) -> Identity:
        now = time.time() if now is None else now
        user = self.users.get(username or "")
        # Always pay for one scrypt, so a missing user is not told apart by timing.
        pw_ok = await asyncio.to_thread(
            check_password, password or "", user.password_hash if user else _DUMMY_HASH
        )
        if user is None:
            raise AuthFailed("local: unknown user", "wrong user name, password or code")
        if user.disabled:
            raise AuthFailed("local: user disabled", "wrong user name, password or code")
        if not pw_ok:
            raise AuthFailed("local: wrong password", "wrong user name, password or code")
        if not code:
            raise AuthFailed("local: TOTP code missing", "a TOTP code is required")
        step = totp_step(user.totp_secret, code, now)
        if step is None:
            raise AuthFailed("local: wrong TOTP code", "wrong user name, password or code")
        if not await use_step(user.name, step):
            raise AuthFailed(
                "local: TOTP code replayed", "this code was already used; wait for the next one"
            )
        return Identity(user=user.name, groups=user.groups, method="local")


def _check_name(name: str) -> None:
    if not name or any(c in name for c in LOCAL_NAME_FORBIDDEN) or not name.isprintable():
        raise ValueError(f"bad user name {name!r} (no spaces, dots, quotes, '@' or ':')")


def _read_users(path: Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    doc = tomllib.loads(path.read_text()) if path.exists() else {}
    return dict(doc.get("users") or {})


def _write_users(path: Path, users: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the whole users file atomically (a new file, mode 0600, renamed into place), so
    a reader (the service, reloading on change) never sees half of it."""
    lines = ["# breakglass local users: scrypt password hashes and TOTP secrets. Keep private."]
    for n, u in users.items():
        lines.append(f"\n[users.{n}]")
        lines.append(f'password_hash = "{u["password_hash"]}"')
        lines.append(f'totp_secret = "{u["totp_secret"]}"')
        gs = ", ".join(f'"{g}"' for g in u.get("groups", []))
        lines.append(f"groups = [{gs}]")
        if u.get("disabled"):
            lines.append("disabled = true")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_local_user(path: Path, name: str, password: str, groups: tuple[str, ...] = ()) -> str:
    """Add (or replace) ``name`` in the users file (mode 0600); return the new TOTP secret."""
    _check_name(name)
    users = _read_users(path)
    secret = pyotp.random_base32()
    users[name] = {
        "password_hash": hash_password(password),
        "totp_secret": secret,
        "groups": list(groups),
    }
    _write_users(path, users)
    return secret


def set_user_disabled(path: Path, name: str, disabled: bool) -> None:
    """Disable (or enable again) ``name``; KeyError if there is no such user."""
    users = _read_users(path)
    if name not in users:
        raise KeyError(name)
    users[name] = {**users[name], "disabled": disabled}
    _write_users(path, users)


def remove_local_user(path: Path, name: str) -> None:
    """Remove ``name`` from the users file; KeyError if there is no such user."""
    users = _read_users(path)
    if name not in users:
        raise KeyError(name)
    del users[name]
    _write_users(path, users)


class UsersFile:
    """The users file as the service sees it: reloaded when it changes (checked on every
    use, so a change takes effect on the next request) or when ``reload()`` is called (SIGHUP).

    A file that cannot be read or parsed leaves no local user active (fail closed) until it
    is fixed; ``problem`` says why."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self.users = LocalUsers({})
        self.problem: str | None = None
        self.reload()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Read the file again; True when it loaded."""
        self._stamp = self._stat()
        try:
            self.users = LocalUsers.load(self.path) if self._stamp else LocalUsers({})
            self.problem = None
            return True
        except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
            self.users = LocalUsers({})
            self.problem = str(e)
            return False

    def current(self) -> LocalUsers:
        """The users now, reloading first if the file changed."""
        if self._stat() != self._stamp:
            self.reload()
        return self.users


# ---------------------------------------------------------------- API sessions


class SessionTokens:
    """Short-lived bearer tokens for the service API."""

    def __init__(self, secret: bytes, issuer: str, ttl: int = 3600) -> None:
        if len(secret) < 32:
            raise ValueError("the session secret must be at least 32 bytes")
        self._secret = secret
        self.issuer = issuer
        self.ttl = ttl

    def issue(self, who: Identity, now: float | None = None) -> tuple[str, float]:
        now = time.time() if now is None else now
        exp = int(now) + self.ttl
        claims = {
            "iss": self.issuer,
            "aud": SESSION_AUDIENCE,
            "sub": who.user,
            "groups": list(who.groups),
            "amr": who.method,
            "iat": int(now),
            "exp": exp,
            "jti": secrets.token_hex(8),
            "typ": "session",
            "t": now,  # sub-second issue time: logouts and offboarding end sessions before it
        }
        return jwt.encode(claims, self._secret, algorithm=SESSION_ALGORITHM), float(exp)

    def verify(self, token: str) -> Identity:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise AuthFailed("session: no token", "log in first (breakglass login)")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[SESSION_ALGORITHM],
                audience=SESSION_AUDIENCE,
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iat", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("session: expired", "session expired; log in again") from None
        except jwt.PyJWTError:
            raise AuthFailed("session: invalid", "invalid session; log in again") from None
        if claims.get("typ") != "session":
            raise AuthFailed("session: wrong type", "invalid session; log in again")
        groups = claims.get("groups") or []
        return Identity(
            user=claims["sub"],
            groups=tuple(g for g in groups if isinstance(g, str)),
            method=str(claims.get("amr", "")),
        )

    def session_of(self, token: str) -> tuple[Identity, str, float]:
        """``verify`` plus the session's id and issue time (for logout and offboarding)."""
        who = self.verify(token)
        claims = jwt.decode(token, options={"verify_signature": False})  # verified just above
        t = claims.get("t", claims.get("iat"))
        return who, str(claims.get("jti", "")), float(t) if isinstance(t, int | float) else 0.0
