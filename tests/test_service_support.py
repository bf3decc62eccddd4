"""Helpers shared by the grant-service tests (no tests here): a fresh state database on the
test PostgreSQL, local users, and a running grant service."""

from __future__ import annotations

import secrets

import asyncpg


def fresh_state_db(pg_server, prefix: str = "bgstate") -> str:
    """Create an empty database for state on ``pg_server``; return its DSN (superuser)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    pg_server.query(f"CREATE DATABASE {name}")
    return pg_server.dsn("postgres", name)


async def drop_state_db(pg_server, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(**pg_server.connect_kwargs("postgres"))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()
