"""`breakglass watch`: follow live SSH and PostgreSQL sessions on a real gateway, read-only;
the engineer is told (terminal line / NOTICE); output and statements arrive within a second;
the watch is audited."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import asyncpg
import pytest

from breakglass.recorder.audit import read_audit
from tests.harness import GatewayThread, ssh_shell
from tests.pg_client import client_tls

pytestmark = pytest.mark.timeout(120)
STARTUP = 40.0  # a Python CLI's start-up, on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def gw(pg_server, ssh_server, tmp_path_factory):
    g = GatewayThread(tmp_path_factory.mktemp("watch") / "gw", pg=pg_server, ssh=ssh_server)
    g.start()
    yield g
    g.stop()


class Watcher:
    """``breakglass watch SID`` in a subprocess; its stdout collected as it arrives."""

    def __init__(self, gw: GatewayThread, sid: str, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "breakglass.cli.main",
                "-c",
                str(gw.dir / "config.toml"),
                "watch",
                sid,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        self.out = b""
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self.cond:
                self.out += chunk
                self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 10) -> float:
        with self.cond:
            assert self.cond.wait_for(lambda: needle in self.out, timeout), self.out[-2000:]
        return time.monotonic()

    def finish(self, timeout: float = 15) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        return rc, self.proc.stderr.read().decode()


def live_session(gw: GatewayThread, protocol: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # bounded wait for the gateway's registry
        found = [s["id"] for s in gw.sessions() if s["protocol"] == protocol]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no live session")


async def test_watch_ssh_session(gw):
    target = next(iter(gw.cfg.ssh_targets))
    async with ssh_shell(gw, target, gw.grant("ssh-shell", target=target)) as (proc, until):
        proc.stdin.write(b"echo before-watch-$((3*3))\n")
        await until(b"before-watch-9")
        sid = await asyncio.to_thread(live_session, gw, "ssh")
        w = Watcher(gw, sid)
        # told before anything is shown (the bound covers the CLI's start on a busy machine)
        await until(b"is watching this session (read-only)", STARTUP)
        await asyncio.to_thread(w.wait_for, b"before-watch-9")  # what came before, too
        proc.stdin.write(b"echo live-marker-$((6*7))\n")
        t_engineer = await until(b"live-marker-42\r\n")
        t_watcher = await asyncio.to_thread(w.wait_for, b"live-marker-42\r\n")
        assert t_watcher - t_engineer < 1.0
        proc.stdin.write(b"exit\n")
        await asyncio.wait_for(proc.wait_closed(), 10)
    rc, err = await asyncio.to_thread(w.finish)
    assert rc == 0 and f"session {sid} ended" in err
    gw.flush_audit()
    watched = [
        e for e in read_audit(gw.cfg.audit_dir, type="session.watched") if e.get("session") == sid
    ]
    assert watched and watched[0]["actor"]
    # the read-only watcher's presence is in the recording, as the engineer saw it
    from breakglass.recorder.replay import load_events

    events = load_events(gw.cfg.recordings_dir / f"{sid}.rec")
    assert any(e["kind"] == "notice" and "is watching" in e["message"] for e in events)


async def test_watch_postgres_session(gw):
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user="erin",
        password=gw.grant(),
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    notices: list[str] = []
    told = asyncio.Event()

    def on_notice(_c, msg):
        notices.append(msg.message)
        if "is watching" in msg.message:
            told.set()

    conn.add_log_listener(on_notice)
    try:
        sid = await asyncio.to_thread(live_session, gw, "postgres")
        w = Watcher(gw, sid)
        # asyncpg reads asynchronous notices while a query runs
        sleeper = asyncio.ensure_future(conn.fetchval("select pg_sleep(0.5)"))
        await asyncio.wait_for(told.wait(), STARTUP)
        await sleeper
        assert await conn.execute("select 'pg-watch-marker'") == "SELECT 1"  # simple protocol
        t_done = time.monotonic()
        t_seen = await asyncio.to_thread(w.wait_for, b"SELECT 1  1 rows")
        assert b"> select 'pg-watch-marker'" in w.out
        assert t_seen - t_done < 1.0
    finally:
        await conn.close()
    rc, err = await asyncio.to_thread(w.finish)
    assert rc == 0 and "ended" in err
