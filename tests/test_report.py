"""`breakglass report access`: grants issued through the CLI, used (or not) through a real
gateway with a real PostgreSQL client, revoked, reviewed; the report reads the state
database, the audit log and the session index, and refuses altered recordings."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time

import asyncpg
import pytest

from breakglass.cli.main import main
from tests.harness import GatewayThread
from tests.pg_client import client_tls
from tests.test_index_helpers import tamper

pytestmark = pytest.mark.timeout(90)

HOSTILE_REASON = "<script>alert(1)</script> INC-9"


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    def edit(text: str) -> str:
        assert 'deadline = "24h"' in text
        return text.replace('deadline = "24h"', 'deadline = "1s"')

    g = GatewayThread(tmp_path_factory.mktemp("report") / "gw", pg=pg_server, edit_config=edit)
    g.start()
    yield g
    g.stop()


def cli(gw, *argv: str) -> tuple[int, str, str]:
    """Run ``breakglass`` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-c", str(gw.dir / "config.toml"), *argv])
    return rc, out.getvalue(), err.getvalue()


def issue(gw, *argv: str) -> tuple[str, str]:
    rc, token, err = cli(gw, "grant", "issue", "--target", "shop", *argv)
    assert rc == 0, err
    import jwt

    token = token.strip()
    return token, jwt.decode(token, options={"verify_signature": False})["jti"]


async def use(gw, token: str, statements: list[str], user: str = "erin") -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user=user,
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    try:
        for s in statements:
            try:
                await conn.fetch(s)
            except asyncpg.PostgresError:
                pass
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def grants(gw):
    """Four grants: used with a denial, revoked unused, and two break-glass ones."""
    t1, used = issue(
        gw,
        "--template",
        "db-readonly",
        "--to",
        "erin",
        "--ttl",
        "30m",
        "--reason",
        HOSTILE_REASON,
        "--ticket",
        "INC-9",
        "--approved-by",
        "alice",
    )
    _, revoked = issue(
        gw,
        "--template",
        "db-readonly",
        "--to",
        "erin",
        "--ttl",
        "30m",
        "--reason",
        "look at orders",
        "--approved-by",
        "bob",
    )
    t3, bg1 = issue(
        gw,
        "--template",
        "breakglass",
        "--to",
        "ina",
        "--ttl",
        "30m",
        "--reason",
        "db down",
        "--ticket",
        "INC-10",
        "--breakglass",
    )
    t4, bg2 = issue(
        gw,
        "--template",
        "breakglass",
        "--to",
        "ina",
        "--ttl",
        "30m",
        "--reason",
        "db down again",
        "--ticket",
        "INC-11",
        "--breakglass",
    )
    asyncio.run(use(gw, t1, ["select count(*) from orders", "select 1", "delete from orders"]))
    asyncio.run(use(gw, t3, ["select 1"], "ina"))
    asyncio.run(use(gw, t4, ["select 2"], "ina"))
    gw.wait_idle()
    rc, _, err = cli(gw, "revoke", revoked, "--reason", "not needed")
    assert rc == 0, err
    rc, out, err = cli(gw, "sessions", "--json")
    assert rc == 0, err
    sid_bg1 = next(s["session_id"] for s in json.loads(out) if s["grant_jti"] == bg1)
    import os
    import pwd

    me = "os:" + pwd.getpwuid(os.getuid()).pw_name  # no service login: the OS account
    assert me != "os:ina"
    rc, _, err = cli(gw, "review", sid_bg1, "--notes", "checked", "--outcome", "ok")
    assert rc == 0, err
    # bg2's review is due 1 s after its session started ([review] deadline): let that pass
    started = max(s["started_at"] for s in json.loads(out) if s["grant_jti"] == bg2)
    time.sleep(max(0.0, started + 1.05 - time.time()))
    return {"used": used, "revoked": revoked, "bg1": bg1, "bg2": bg2, "reviewer": me}


def test_report_rows_summaries_and_flags(gw, grants):
    rc, out, err = cli(gw, "report", "access", "--since", "1h", "--format", "json")
    assert rc == 0, err
    rep = json.loads(out)
    rows = {r["jti"]: r for r in rep["grants"]}
    assert {grants[k] for k in ("used", "revoked", "bg1", "bg2")} <= set(rows)
    used = rows[grants["used"]]
    assert used["user"] == "erin" and used["targets"] == ["postgres:shop"]
    assert used["template"] == "db-readonly" and "sql read-only" in used["privileges"]
    assert used["reason"] == HOSTILE_REASON and used["ticket"] == "INC-9"
    assert used["approved_by"] == ["alice"] and used["approval"] == "alice"
    assert len(used["sessions"]) == 1 and used["statements"] >= 2 and used["denials"] == 1
    assert used["status"] == "active" and used["flags"] == []
    revoked = rows[grants["revoked"]]
    assert revoked["status"] == "revoked" and revoked["revoke_reason"] == "not needed"
    assert "never-used" in revoked["flags"] and revoked["sessions"] == []
    bg1, bg2 = rows[grants["bg1"]], rows[grants["bg2"]]
    assert bg1["approval"] == "BREAK-GLASS" and bg1["breakglass"]
    assert bg1["review"] == f"ok by {grants['reviewer']}"
    assert bg2["review"] == "overdue" and "review-overdue" in bg2["flags"]
    assert "repeated-breakglass" in bg1["flags"] and "repeated-breakglass" in bg2["flags"]
    ina = next(s for s in rep["by_user"] if s["key"] == "ina")
    assert (ina["grants"], ina["breakglass"], ina["overdue_reviews"]) == (2, 2, 1)
    shop = next(s for s in rep["by_target"] if s["key"] == "postgres:shop")
    assert shop["users"] == ["erin", "ina"] and shop["denials"] >= 1
    assert rep["warnings"] == []

    rc, out, _ = cli(gw, "report", "access", "--since", "1h", "--user", "ina", "--format", "csv")
    assert rc == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert {r["user"] for r in table} == {"ina"} and len(table) == 2

    rc, out, _ = cli(gw, "report", "access", "--since", "1h", "--format", "html")
    assert rc == 0 and "<script>alert" not in out and "&lt;script&gt;alert(1)" in out

    rc, out, _ = cli(gw, "report", "access", "--since", "1h")
    assert rc == 0 and "Per user" in out and "Per target" in out and "BREAK-GLASS" in out

    rc, out, _ = cli(
        gw, "report", "access", "--since", "2020-01-01", "--until", "2020-02-01", "--format", "json"
    )
    assert rc == 0 and json.loads(out)["grants"] == []


def test_report_refuses_altered_recordings_unless_forced(gw, grants):
    rc, out, _ = cli(gw, "sessions", "--json")
    sid = next(s["session_id"] for s in json.loads(out) if s["grant_jti"] == grants["bg2"])
    tamper(gw.cfg.recordings_dir / f"{sid}.rec", b"select 2", b"select 3")
    rc, out, err = cli(gw, "report", "access", "--since", "1h")
    assert rc == 3 and "FAIL verification" in err and sid in err and out == ""
    rc, out, err = cli(gw, "report", "access", "--since", "1h", "--force", "--format", "csv")
    assert rc == 0
    assert out.startswith("# WARNING: built with --force") and sid in out.splitlines()[0]
    rc, out, _ = cli(gw, "report", "access", "--since", "1h", "--force", "--format", "json")
    rep = json.loads(out)
    assert rep["warnings"] and "integrity-failed" in next(
        r["flags"] for r in rep["grants"] if r["jti"] == grants["bg2"]
    )


def test_drill_fails_naming_the_step(gw):
    """This gateway has no alert webhooks: a break-glass use would alert nobody, so the drill
    fails at `alerts` after the steps before it passed (tests/test_drill.py: the passing drill)."""
    rc, out, err = cli(gw, "drill", "--target", "shop")
    assert rc == 1
    assert "drill FAILED at step 'alerts'" in err and "alert nobody" in err
    assert "verify" in out  # the steps before it passed and were printed
    rc, out, err = cli(gw, "drill", "--target", "nosuch", "--json")
    assert rc == 1 and json.loads(out)["failed_step"] == "grant"
