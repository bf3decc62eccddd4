"""Build the runtime pieces a command or the gateway needs from a ``Config``."""

from __future__ import annotations

import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from breakglass.policy.grants import GrantVerifier
from breakglass.policy.keys import load_private_key, load_public_key
from breakglass.policy.state import SqliteState, StateStore
from breakglass.proxy.config import Config, ConfigError


def trusted_issuer_keys(cfg: Config) -> dict[str, Ed25519PublicKey]:
    return {kid: load_public_key(p) for kid, p in cfg.trusted_issuer_keys.items()}


def trusted_recorder_keys(cfg: Config) -> dict[str, Ed25519PublicKey]:
    keys = {kid: load_public_key(p) for kid, p in cfg.trusted_recorder_keys.items()}
    if cfg.recorder_key_id not in keys and cfg.recorder_signing_key.exists():
        keys[cfg.recorder_key_id] = load_private_key(cfg.recorder_signing_key).public_key()
    return keys


def recorder_key(cfg: Config) -> Ed25519PrivateKey:
    return load_private_key(cfg.recorder_signing_key)


def issuer_key(cfg: Config) -> tuple[str, Ed25519PrivateKey]:
    if not cfg.issuer_signing_key or not cfg.issuer_key_id:
        raise ConfigError(
            ["issuer.signing_key and issuer.key_id are needed to issue grants here"], cfg.path
        )
    return cfg.issuer_key_id, load_private_key(cfg.issuer_signing_key)


def open_state(cfg: Config) -> StateStore:
    """PostgreSQL state when ``state.url``/``url_env`` is set (shared by gateways), else SQLite."""
    if cfg.state_url:
        from breakglass.policy.state_pg import PgState

        return PgState(cfg.state_url)
    return SqliteState(cfg.state_database)


def grant_verifier(cfg: Config, is_revoked=None) -> GrantVerifier:
    return GrantVerifier(
        trusted_issuer_keys(cfg),
        cfg.gateway_name,
        leeway=cfg.leeway,
        is_revoked=is_revoked,
        issuer=cfg.issuer_name,
        key_issuers=cfg.trusted_key_issuers,
    )


def open_audit(cfg: Config, role: str = "cli"):
    """The audit log writer for this process. ``role`` names its chain of segments (per host):
    ``"cli"`` (short runs of one OS user share one chain and its open segment: another user
    could not append to that user's file), ``"service"``, or ``"gateway-NAME-wN"``. Every
    append is written through: once it returns, the event is in the file."""
    from breakglass.recorder.audit import CLI_WRITER, AuditLog

    cfg.audit_dir.mkdir(parents=True, exist_ok=True)
    shared = role == CLI_WRITER
    return AuditLog(
        cfg.audit_dir,
        recorder_key(cfg),
        cfg.recorder_key_id,
        writer=f"{CLI_WRITER}-{os.getuid()}" if shared else role,
        shared=shared,
        checkpoint_interval=cfg.checkpoint_interval,
        checkpoint_events=cfg.checkpoint_events,
        commit_interval=cfg.commit_interval,
        write_through=True,
    )


def current_actor() -> str:
    """Who runs this command, for audit events: the name of the real uid. Not
    ``getpass.getuser()``, which believes $LOGNAME/$USER (anyone can set those)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


def audit_grant_issued(audit: Any, claims: dict[str, Any], actor: str, **extra: Any) -> None:
    """The one audit event for a signed grant (local `grant issue` and the grant service)."""
    audit.append(
        "grant.issued",
        actor=actor,
        subject=claims["sub"],
        jti=claims["jti"],
        **extra,
        template=claims["template"],
        targets=claims["targets"],
        reason=claims["reason"],
        ticket=claims.get("ticket"),
        approvers=claims["approvers"],
        breakglass=claims["breakglass"],
        expires_at=claims["exp"],
    )
