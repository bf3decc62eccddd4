"""Keys, grants and configs for tests (generated at run time, never committed)."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.policy.grants import new_jti, sign_grant

AUDIENCE = "test-gw"


def grant_claims(
    *,
    sub: str = "erin",
    targets: list[dict[str, Any]] | None = None,
    ttl: float = 600,
    now: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": "breakglass",
        "aud": AUDIENCE,
        "sub": sub,
        "jti": new_jti(),
        "iat": int(now),
        "nbf": int(now),
        "exp": now + ttl,
        "targets": targets
        if targets is not None
        else [{"type": "postgres", "name": "orders", "db_user": "app_ro"}],
        "reason": "test",
        "template": "test",
        "approvers": ["bob"],
        "breakglass": False,
    }
    claims.update(extra)
    return claims


class GrantFactory:
    """Signs grants with a fresh issuer key; ``trusted`` is what a verifier should trust."""

    def __init__(self, kid: str = "test-issuer") -> None:
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()
        self.trusted = {kid: self.key.public_key()}

    def token(self, **kw: Any) -> str:
        return sign_grant(grant_claims(**kw), self.key, self.kid)

    def sign(self, claims: dict[str, Any]) -> str:
        return sign_grant(claims, self.key, self.kid)
