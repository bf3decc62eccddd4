"""The real CLI with PostgreSQL state: `grant issue` and `grant inspect` work (no "Event loop
is closed"), and issuing is atomic: stored, audited and printed, or none of them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from breakglass.policy.state_pg import PgState
from breakglass.recorder.audit import read_audit
from tests.harness import GatewayThread, run_cli
from tests.test_service_support import drop_state_db, fresh_state_db

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def workdir(pg_server, tmp_path):
    dsn = fresh_state_db(pg_server, "bgcli")
    gw = GatewayThread(tmp_path / "gw", pg=pg_server)  # config and keys; not started
    path = gw.dir / "config.toml"
    text = path.read_text()
    assert 'database = "state.db"' in text
    path.write_text(text.replace('database = "state.db"', f'url = "{dsn}"', 1))
    yield gw, dsn
    asyncio.run(drop_state_db(pg_server, dsn))


def cli(gw, *argv: str, **kw) -> subprocess.CompletedProcess:
    return run_cli(gw.dir / "config.toml", *argv, **kw)


ISSUE = ("grant", "issue", "--template", "db-readonly", "--to", "erin", "--target", "shop",
         "--ttl", "10m", "--reason", "cli test", "--approved-by", "alice")  # fmt: skip


async def _grant_state(dsn: str, jti: str):
    st = PgState(dsn)
    try:
        return await st.get_grant(jti), await st.revocation(jti)
    finally:
        await st.close()


def test_issue_and_inspect_with_postgres_state(workdir, tmp_path):
    gw, dsn = workdir
    r = cli(gw, *ISSUE)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.count(".") == 2 and "Event loop" not in r.stderr
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    stored, revoked = asyncio.run(_grant_state(dsn, jti))
    assert stored is not None and stored.subject == "erin" and revoked is None
    assert [e for e in read_audit(gw.cfg.audit_dir, type="grant.issued") if e["jti"] == jti]
    r = cli(gw, "grant", "inspect", token)
    assert r.returncode == 0 and "VALID now" in r.stdout, r.stderr
    f = tmp_path / "erin.readonly.token"
    f.write_text(token + "\n")
    r = cli(gw, "grant", "inspect", str(f))  # a file, as well as a token and '-'
    assert r.returncode == 0 and "VALID now" in r.stdout, r.stderr
    r = cli(gw, "revoke", jti, "--reason", "done")
    assert r.returncode == 0, r.stderr
    r = cli(gw, "grant", "inspect", token)
    assert r.returncode == 1 and "revoked" in r.stdout


def test_a_token_that_cannot_be_printed_is_not_left_valid(workdir):
    gw, dsn = workdir
    p = subprocess.Popen(
        [sys.executable, "-m", "breakglass.cli.main", "-c", str(gw.dir / "config.toml"), *ISSUE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    p.stdout.close()  # nobody will read the token
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0
    assert b"could not be printed, so the grant was revoked" in err
    issued = read_audit(gw.cfg.audit_dir, type="grant.issued")
    assert len(issued) == 1
    jti = issued[0]["jti"]
    stored, revoked = asyncio.run(_grant_state(dsn, jti))
    assert revoked is not None and "could not be delivered" in revoked.reason
    assert [e for e in read_audit(gw.cfg.audit_dir, type="grant.revoked") if e["jti"] == jti]
