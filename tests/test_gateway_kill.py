"""``kill -9`` of a real gateway process in the middle of real sessions: everything the
client had received must already be in the recording (written before it was forwarded)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breakglass.recorder.reader import read_events
from breakglass.recorder.verify import verify_recording
from breakglass.throwaway.workdir import build_local_workdir, issue_local_grant
from tests.harness import ssh_client_command

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def gateway_process(directory: Path, cfg):
    """``breakglass gateway`` as its own process; yields it once both listeners accept."""
    log = open(directory / "gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "breakglass.cli.main",
            "-c",
            str(directory / "config.toml"),
            "gateway",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for addr in (cfg.postgres_listen, cfg.ssh_listen):
            if addr is None:
                continue
            for _ in range(300):  # bounded: up to ~30 s under load
                assert proc.poll() is None, (directory / "gateway.log").read_text()
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((addr.host, addr.port), timeout=0.5),
                ):
                    break
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


def _only_recording(cfg) -> Path:
    recs = sorted(cfg.recordings_dir.glob("*.rec"))
    assert len(recs) == 1, recs
    return recs[0]


def _trusted(cfg):
    from breakglass.proxy.context import trusted_recorder_keys

    return trusted_recorder_keys(cfg)


def test_kill_9_loses_no_query_result_the_client_saw(pg_server, tmp_path):
    d = tmp_path / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=None, name="test-gw")
    token = issue_local_grant(cfg, "db-readonly", "shop")
    with gateway_process(d, cfg) as gw:
        script = d / "script.sql"
        script.write_bytes(b"".join(b"select 'row-%d';\n" % i for i in range(1, 20001)))
        env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require")
        psql = subprocess.Popen(
            ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(cfg.postgres_listen.port)]
            + ["-U", "erin", "-d", "shop", "-f", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        seen: list[bytes] = []
        for line in psql.stdout:  # bounded: the script ends, or the gateway dies
            seen.append(line.strip())
            if len(seen) == 300:
                os.kill(gw.pid, signal.SIGKILL)
        psql.wait(30)
    assert len(seen) >= 300
    events = list(read_events(_only_recording(cfg)))
    texts = {e["n"]: e["text"] for e in events if e["kind"] == "query"}
    answered = {texts[e["n"]] for e in events if e["kind"] == "result" and e["n"] in texts}
    for value in seen:
        assert f"select '{value.decode()}';" in answered, value
    res = verify_recording(_only_recording(cfg), _trusted(cfg))
    assert not res.ok and res.problem in ("missing-trailer", "truncated"), res
    assert res.problem == "missing-trailer"  # cut only between whole lines


def test_kill_9_loses_no_ssh_output_the_client_saw(pg_server, ssh_server, tmp_path):
    d = tmp_path / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=ssh_server, name="test-gw")
    token = issue_local_grant(cfg, "ssh-shell", "web-1")
    argv, env = ssh_client_command(d, cfg, token, "seq 1 2000000")
    with gateway_process(d, cfg) as gw:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        received = b""
        while len(received) < 200_000:  # then kill, mid-stream
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            received += chunk
        os.kill(gw.pid, signal.SIGKILL)
        received += proc.stdout.read()
        proc.wait(30)
    assert len(received) >= 200_000
    events = list(read_events(_only_recording(cfg)))
    recorded = b"".join(e["data"] for e in events if e["kind"] == "output")
    assert recorded.startswith(received), (len(recorded), len(received))


def test_sigterm_under_a_full_audit_directory_is_prompt_and_clean(pg_server, tmp_path):
    from tests.storage import fill, tmpfs

    d = tmp_path / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=None, name="test-gw")
    token = issue_local_grant(cfg, "db-readonly", "shop")
    with tmpfs(cfg.audit_dir, "4m"), gateway_process(d, cfg) as gw:
        fill(cfg.audit_dir, leave=0)
        env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require")
        for _ in range(100):  # until the audit log's last page is full: then refused
            r = subprocess.run(
                ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(cfg.postgres_listen.port)]
                + ["-U", "erin", "-d", "shop", "-c", "select 1"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if r.returncode != 0:
                break
        assert "audit log cannot be written" in r.stderr, r.stderr
        t0 = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(10) == 0
        assert time.monotonic() - t0 < 5
    log = (d / "gateway.log").read_text()
    assert "internal error" not in log and "Traceback" not in log


def test_kill_9_leaves_no_statement_running_upstream(pg_server, tmp_path):
    """A statement still running upstream when the gateway process dies does not run on
    without it: PostgreSQL checks the gateway's connection every ``connection_check``
    (client_connection_check_interval, set at login) and ends the statement once it is gone,
    instead of at its end (a minute here; an UPDATE would commit)."""
    d = tmp_path / "gw"
    cfg = build_local_workdir(d, pg=pg_server, ssh=None, name="test-gw")
    token = issue_local_grant(cfg, "db-readonly", "shop")
    sleeper = "select pg_sleep(60) as killed_gateway"
    running = (
        f"select count(*) from pg_stat_activity where query = '{sleeper}' and state = 'active'"
    )
    env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require")
    try:
        with gateway_process(d, cfg) as gw:
            psql = subprocess.Popen(
                ["psql", "-X", "-h", "127.0.0.1", "-p", str(cfg.postgres_listen.port)]
                + ["-U", "erin", "-d", "shop", "-c", sleeper],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(200):  # bounded: until the statement runs upstream
                if pg_server.query(running) == "1":
                    break
                time.sleep(0.05)
            assert pg_server.query(running) == "1"
            gw.send_signal(signal.SIGKILL)
            gw.wait(10)
            killed = time.monotonic()
        for _ in range(100):  # bounded: 5 s, against the statement's 60
            if pg_server.query(running) == "0":
                break
            time.sleep(0.05)
        assert pg_server.query(running) == "0", "still running upstream"
        assert time.monotonic() - killed < 3.0
        psql.wait(10)
    finally:  # a failed run leaves no sleeper behind for the other tests
        pg_server.query(
            f"select pg_terminate_backend(pid) from pg_stat_activity where query = '{sleeper}'"
        )
