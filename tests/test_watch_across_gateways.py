"""`breakglass watch` of a session that runs on ANOTHER gateway sharing the PostgreSQL state:
run with gateway A's config, it follows a session on gateway B (SSH output, PostgreSQL
statements and results) within a second; the engineer on B is told (terminal line / NOTICE,
recorded on B); the watch is audited on both sides; nothing the watcher types reaches the
session."""

from __future__ import annotations

import asyncio
import shutil
import time

import asyncpg
import pytest

from breakglass.recorder.audit import read_audit
from breakglass.recorder.replay import load_events
from tests.harness import GatewayThread, ssh_shell
from tests.pg_client import client_tls
from tests.test_service_support import drop_state_db, fresh_state_db
from tests.test_watch import STARTUP, Watcher, live_session

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(pg_server, ssh_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("watchgw")
    dsn = fresh_state_db(pg_server, "bgwatch")
    shared = lambda text: text.replace('database = "state.db"', f'url = "{dsn}"', 1)  # noqa: E731
    g1 = GatewayThread(base / "gw1", pg=pg_server, ssh=ssh_server, edit_config=shared)
    g2 = GatewayThread(base / "gw2", pg=pg_server, ssh=ssh_server, edit_config=shared)
    for f in ("issuer-1.key", "issuer-1.pub"):  # one cluster: one issuer
        shutil.copyfile(g1.dir / "keys" / f, g2.dir / "keys" / f)
    g1.start()
    g2.start()
    yield g1, g2
    g2.stop()
    g1.stop()
    asyncio.run(drop_state_db(pg_server, dsn))


def published(gw: GatewayThread, sid: str) -> None:
    """Bounded wait until the owning gateway has published ``sid`` to the shared state (within
    its LIVE_POLL): what `breakglass sessions --live` and a watch from elsewhere see."""
    from breakglass.cli.admin_cmds import shared_live

    deadline = time.monotonic() + 10
    while not any(s["id"] == sid for s in shared_live(gw.cfg)):
        assert time.monotonic() < deadline, f"{sid} not published"
        time.sleep(0.05)


def audited(gw: GatewayThread, kind: str, sid: str) -> list[dict]:
    gw.flush_audit()
    return [e for e in read_audit(gw.cfg.audit_dir, type=kind) if e.get("session") == sid]


async def test_watch_ssh_session_on_another_gateway(cluster):
    g1, g2 = cluster
    target = next(iter(g2.cfg.ssh_targets))
    async with ssh_shell(g2, target, g1.grant("ssh-shell", target=target)) as (proc, until):
        proc.stdin.write(b"echo before-remote-$((3*3))\n")
        await until(b"before-remote-9")
        sid = await asyncio.to_thread(live_session, g2, "ssh")
        await asyncio.to_thread(published, g1, sid)
        assert not [s for s in g1.sessions()]  # the session is not on gateway A
        w = Watcher(g1, sid, stdin=True)  # with gateway A's config
        # told on B before anything shows (the bound covers the CLI's start on a busy machine)
        await until(b"is watching this session (read-only)", STARTUP)
        await asyncio.to_thread(w.wait_for, b"before-remote-9")  # what came before, too
        # the watcher's keyboard goes nowhere
        w.proc.stdin.write(b"echo injected-$((5*5))\n")
        w.proc.stdin.flush()
        proc.stdin.write(b"echo remote-live-$((6*7))\n")
        t_engineer = await until(b"remote-live-42\r\n")
        t_watcher = await asyncio.to_thread(w.wait_for, b"remote-live-42\r\n")
        assert t_watcher - t_engineer < 1.0, t_watcher - t_engineer
        proc.stdin.write(b"exit\n")
        await asyncio.wait_for(proc.wait_closed(), 10)
    rc, err = await asyncio.to_thread(w.finish)
    assert rc == 0 and f"session {sid} ended" in err, err
    assert "on test-gw@" in err  # says where the session runs
    assert b"injected-25" not in until.output() and b"injected-25" not in w.out
    await asyncio.to_thread(g2.wait_idle)
    events = load_events(g2.cfg.recordings_dir / f"{sid}.rec")
    assert any(e["kind"] == "notice" and "is watching" in e["message"] for e in events)
    typed = b"".join(e["data"] for e in events if e["kind"] == "input")
    assert b"injected" not in typed
    # audited where the watcher ran (A) and where the session ran (B)
    [a] = await asyncio.to_thread(audited, g1, "session.watched", sid)
    assert a["actor"] and a["gateway"].startswith("test-gw@")
    [b] = await asyncio.to_thread(audited, g2, "session.watched_remotely", sid)
    assert b["actor"] == a["actor"] and b["via"] == "cli"


async def test_watch_postgres_session_on_another_gateway(cluster):
    g1, g2 = cluster
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=g2.pg_port,
        user="erin",
        password=g1.grant(),
        database="shop",
        ssl=client_tls(g2.dir / "keys/gateway_tls.crt"),
    )
    told = asyncio.Event()
    conn.add_log_listener(lambda _c, m: "is watching" in m.message and told.set())
    try:
        assert await conn.fetchval("select 'before-the-watch'") == "before-the-watch"
        sid = await asyncio.to_thread(live_session, g2, "postgres")
        await asyncio.to_thread(published, g1, sid)
        w = Watcher(g1, sid)
        sleeper = asyncio.ensure_future(conn.fetchval("select pg_sleep(0.5)"))
        # the NOTICE, while a query runs (the bound covers the CLI's start on a busy machine)
        await asyncio.wait_for(told.wait(), STARTUP)
        await sleeper
        await asyncio.to_thread(w.wait_for, b"> select 'before-the-watch'")
        assert await conn.execute("select 'remote-pg-marker'") == "SELECT 1"
        t_done = time.monotonic()
        t_seen = await asyncio.to_thread(w.wait_for, b"> select 'remote-pg-marker'\n  SELECT 1")
        assert t_seen - t_done < 1.0, t_seen - t_done
    finally:
        await conn.close()
    rc, err = await asyncio.to_thread(w.finish)
    assert rc == 0 and "ended" in err, err


async def test_watch_refuses_unknown_and_says_where_it_looked(cluster):
    g1, _ = cluster
    w = Watcher(g1, "20991231T000000Z-0000000000")
    rc, err = await asyncio.to_thread(w.finish, STARTUP)
    assert rc != 0 and "no live session" in err and "sharing the state" in err
    assert "Traceback" not in err
