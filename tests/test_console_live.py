"""Watching live sessions in the console (headless Chromium), on the gateway the grant service
shares a host with and on ANOTHER gateway sharing the PostgreSQL state.

A psql session's statements and their results appear as a live timeline within a second (a
running statement shows as running, then its result); hostile statement text stays text; the
engineer gets the NOTICE; the watch is audited where the console runs and, for another
gateway, where the session runs. A live SSH session on another gateway plays in the browser as
the engineer types."""

from __future__ import annotations

import asyncio
import shutil
import time

import asyncpg
import pytest

from breakglass.recorder.audit import read_audit
from breakglass.service.identity import add_local_user
from tests.harness import GatewayThread, ssh_shell
from tests.pg_client import client_tls
from tests.test_console import (
    REVIEWER,
    REVIEWER_PW,
    chromium_driver,
    login,
    screen_has,
    wait,
)
from tests.test_service_support import (
    ServiceThread,
    add_service_config,
    drop_state_db,
    fresh_state_db,
)
from tests.test_watch_across_gateways import published

pytestmark = pytest.mark.timeout(120)

HOSTILE_SQL = (
    "select '<img src=x onerror=window.__pwned=1>' as \"<script>window.__pwned=2</script>\", "
    "E'\\x1b]52;c;cHduZWQ=\\x07<b>bold</b>' as osc"
)


@pytest.fixture(scope="module")
def env(pg_server, ssh_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("console-live")
    dsn = fresh_state_db(pg_server, "bgconsole")
    shared = lambda text: text.replace('database = "state.db"', f'url = "{dsn}"', 1)  # noqa: E731
    g1 = GatewayThread(base / "gw1", pg=pg_server, ssh=ssh_server, edit_config=shared)
    g2 = GatewayThread(base / "gw2", pg=pg_server, ssh=ssh_server, edit_config=shared)
    # one cluster: one grant issuer, one recorder key (the console verifies what it shows)
    for f in ("issuer-1.key", "issuer-1.pub", "recorder-1.key", "recorder-1.pub"):
        shutil.copyfile(g1.dir / "keys" / f, g2.dir / "keys" / f)
    g1.start()
    g2.start()
    secrets = add_service_config(g1.dir)
    secrets[REVIEWER] = add_local_user(g1.dir / "users.toml", REVIEWER, REVIEWER_PW, ("security",))
    svc = ServiceThread(g1.dir / "config.toml").start()
    driver = chromium_driver(base)
    try:
        yield {"g1": g1, "g2": g2, "svc": svc, "driver": driver, "secrets": secrets}
    finally:
        driver.quit()
        svc.stop()
        g2.stop()
        g1.stop()
        asyncio.run(drop_state_db(pg_server, dsn))


def as_reviewer(env) -> None:
    """Log in as the reviewer unless the browser already is (a TOTP code works only once)."""
    d = env["driver"]
    d.get(env["svc"].url + "/console/sessions")
    if not d.find_elements("id", "filters"):
        login(env, REVIEWER, REVIEWER_PW)
    wait(d, lambda d: d.find_elements("id", "filters"))


def live_sid(gw: GatewayThread, user: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # bounded wait for the gateway's registry
        found = [s["id"] for s in gw.sessions() if s["user"] == user]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no live session of {user}")


def timeline_rows(d) -> list[list[str]]:
    return d.execute_script(
        "return Array.from(document.querySelectorAll('#timeline tr.stmt'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent));"
    )


def row_with(d, text: str, outcome: str | None = None, timeout: float = 10) -> list[str]:
    """Wait (bounded) until a timeline row's statement contains ``text`` (and, if given, its
    outcome is ``outcome``); return the row's cells."""
    found: list[list[str]] = []

    def ok(d) -> bool:
        found[:] = [
            r for r in timeline_rows(d) if text in r[2] and (outcome is None or r[1] == outcome)
        ]
        return bool(found)

    wait(d, ok, timeout)
    return found[0]


def audited(gw: GatewayThread, kind: str, sid: str) -> list[dict]:
    gw.flush_audit()
    return [e for e in read_audit(gw.cfg.audit_dir, type=kind) if e.get("session") == sid]


@pytest.mark.parametrize("where", ["this-gateway", "another-gateway"])
def test_live_postgres_timeline_in_the_browser(env, where):
    d, svc = env["driver"], env["svc"]
    g1 = env["g1"]
    gw = g1 if where == "this-gateway" else env["g2"]
    user = "erin" if where == "this-gateway" else "ina"
    as_reviewer(env)

    async def engineer() -> tuple[str, list[float]]:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=gw.pg_port,
            user=user,
            password=g1.grant("db-readonly", user=user),
            database="shop",
            ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
        )
        told = asyncio.Event()
        conn.add_log_listener(lambda _c, m: "is watching" in m.message and told.set())
        lags = []
        try:
            assert await conn.fetchval(f"select 'before-{where}'") == f"before-{where}"
            sid = await asyncio.to_thread(live_sid, gw, user)
            await asyncio.to_thread(published, g1, sid)
            await asyncio.to_thread(d.get, svc.url + f"/console/sessions/{sid}")
            await asyncio.to_thread(
                wait, d, lambda d: d.find_element("id", "timeline").get_attribute("data-state")
            )
            assert "NOTE: recording not finalized" in d.find_element("id", "verify").text
            await asyncio.to_thread(row_with, d, f"before-{where}", "OK")  # what came before
            # asyncpg reads asynchronous notices while a query runs
            slow = asyncio.ensure_future(conn.fetchval("select 'slow-marker', pg_sleep(1.5)"))
            await asyncio.wait_for(told.wait(), 10)  # the engineer is told
            # a running statement shows as running, then with its result
            await asyncio.to_thread(row_with, d, "slow-marker", "running")
            await slow
            t = time.monotonic()
            r = await asyncio.to_thread(row_with, d, "slow-marker", "OK")
            lags.append(time.monotonic() - t)
            assert r[4] == "1" and r[5].endswith(" ms")
            for sql in ("select 'live-marker-' || 6*7", HOSTILE_SQL):
                await conn.fetch(sql)
                t = time.monotonic()
                await asyncio.to_thread(row_with, d, sql[:40], "OK")
                lags.append(time.monotonic() - t)
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetch("select 1/0 as div_marker")
            t = time.monotonic()
            r = await asyncio.to_thread(row_with, d, "div_marker", "ERROR")
            lags.append(time.monotonic() - t)
            assert r[6].startswith("22012 division by zero")
        finally:
            await conn.close()
        return sid, lags

    sid, lags = asyncio.run(engineer())
    assert max(lags) < 1.0, lags
    wait(d, lambda d: d.find_element("id", "timeline").get_attribute("data-state") == "ended")
    assert "session ended" in d.find_element("id", "timeline-status").text
    # hostile text stayed text: no element made from it, nothing ran
    assert d.execute_script("return window.__pwned") is None
    assert not d.find_elements("css selector", "#timeline img, #timeline script, #timeline b")
    [hostile] = [r for r in timeline_rows(d) if "onerror" in r[2]]
    assert "<img src=x onerror=window.__pwned=1>" in hostile[2]
    # search covers rows that arrived live
    search = d.find_element("id", "timeline-search")
    search.send_keys("live-marker")
    visible = d.execute_script(
        "return Array.from(document.querySelectorAll('#timeline tr.stmt'))"
        ".filter(r => !r.hidden).map(r => r.cells[2].textContent);"
    )
    assert visible == ["select 'live-marker-' || 6*7"]
    # audited where the console runs; for another gateway, also where the session ran
    svc.call(asyncio.to_thread(svc.service.audit.flush))
    watched = audited(g1, "session.watched", sid)
    assert watched and watched[0]["actor"] == REVIEWER and watched[0]["via"] == "console"
    if where == "another-gateway":
        assert watched[0]["gateway"].startswith("test-gw@")
        [remote] = audited(gw, "session.watched_remotely", sid)
        assert remote["actor"] == REVIEWER and remote["via"] == "console"


def test_live_ssh_session_on_another_gateway_in_the_browser(env):
    d, svc, g1, g2 = env["driver"], env["svc"], env["g1"], env["g2"]
    as_reviewer(env)
    target = next(iter(g2.cfg.ssh_targets))

    async def engineer() -> tuple[str, float]:
        async with ssh_shell(g2, target, g1.grant("ssh-shell", target=target, user="carol")) as (
            proc,
            until,
        ):
            proc.stdin.write(b"echo remote-before-$((1+1))\n")
            await until(b"remote-before-2")
            sid = await asyncio.to_thread(live_sid, g2, "carol")
            await asyncio.to_thread(published, g1, sid)
            assert not [s for s in g1.sessions() if s["id"] == sid]
            await asyncio.to_thread(d.get, svc.url + f"/console/sessions/{sid}")
            await until(b"rita is watching this session (read-only)")
            await asyncio.to_thread(screen_has, d, "remote-before-2")
            proc.stdin.write(b"echo remote-live-$((2+3))\n")
            t_engineer = await until(b"remote-live-5\r\n")
            await asyncio.to_thread(screen_has, d, "remote-live-5")
            lag = time.monotonic() - t_engineer
            proc.stdin.write(b"exit\n")
            await asyncio.wait_for(proc.wait_closed(), 10)
            return sid, lag

    sid, lag = asyncio.run(engineer())
    assert lag < 1.0, lag
    wait(d, lambda d: d.find_element("id", "player").get_attribute("data-state") == "ended")
    svc.call(asyncio.to_thread(svc.service.audit.flush))
    [w] = audited(g1, "session.watched", sid)
    assert w["actor"] == REVIEWER and w["gateway"].startswith("test-gw@")
    [r] = audited(g2, "session.watched_remotely", sid)
    assert r["actor"] == REVIEWER
