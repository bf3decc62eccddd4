"""Storage faults, for real: recordings or audit log on a small tmpfs that fills up or turns
read-only under real clients. What the target executed and what the client received must be
in the recording; sessions end with a message; new ones are refused with one; nothing is left
half-written; service resumes by itself once there is room again."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from structlog.testing import capture_logs

from breakglass.recorder.reader import read_events
from breakglass.recorder.verify import verify_recording
from tests.harness import GatewayThread, ssh_client_command
from tests.ssh_gateway_fixture import GatewayHarness
from tests.storage import abort_ext4, ext4, fill, remount_fresh, tmpfs

pytestmark = pytest.mark.timeout(120)

ROWS = 400
PAD = "x" * 3000


def _superuser_psql(pg_server, sql: str) -> None:
    r = pg_server.psql(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
    assert r.returncode == 0, r.stderr


def _psql(gw: GatewayThread, token: str, *args: str, stdin: str | None = None):
    return gw.psql(token, *args, input=stdin)


def _trusted(cfg):
    from breakglass.proxy.context import trusted_recorder_keys

    return trusted_recorder_keys(cfg)


def _no_empty_or_torn_files(directory) -> None:
    for p in directory.glob("*.rec"):
        data = p.read_bytes()
        assert data, f"{p.name} is empty"


@pytest.fixture()
def fault_rows(pg_server):
    _superuser_psql(
        pg_server,
        "drop schema if exists faults cascade; create schema faults; "
        "create table faults.rows(id int primary key); "
        f"insert into faults.rows select generate_series(1, {ROWS}); "
        "grant usage on schema faults to app_rw; grant select, delete on faults.rows to app_rw",
    )
    yield
    _superuser_psql(pg_server, "drop schema if exists faults cascade")


def _remaining_ids(pg_server) -> set[int]:
    r = pg_server.psql(["-At", "-c", "select id from faults.rows"])
    assert r.returncode == 0, r.stderr
    return {int(x) for x in r.stdout.split()}


def test_pg_disk_full_nothing_runs_or_answers_unrecorded_and_service_recovers(
    pg_server, fault_rows, tmp_path
):
    gw = GatewayThread(tmp_path / "gw", pg=pg_server)
    with tmpfs(gw.cfg.recordings_dir, "4m"):
        gw.start()
        try:
            filler = fill(gw.cfg.recordings_dir, leave=96 * 1024)
            token = gw.grant("db-readwrite")
            script = "".join(
                f"delete from faults.rows where id = {i} /* {PAD} */;\n" for i in range(1, ROWS + 1)
            )
            r = _psql(gw, token, "-f", "-", stdin=script)
            acked = r.stdout.count("DELETE 1")
            assert r.returncode != 0, "the disk filled up, so the session must have ended"
            assert "recording" in r.stderr and "no recording, no access" not in r.stdout
            assert 0 < acked < ROWS

            executed = set(range(1, ROWS + 1)) - _remaining_ids(pg_server)
            gw.wait_idle()
            (rec,) = sorted(gw.cfg.recordings_dir.glob("*.rec"))
            events = list(read_events(rec))
            queried = {
                int(e["text"].split("id = ")[1].split()[0])
                for e in events
                if e["kind"] == "query" and "faults.rows" in e.get("text", "")
            }
            n_by_id = {
                e["n"]: int(e["text"].split("id = ")[1].split()[0])
                for e in events
                if e["kind"] == "query" and "faults.rows" in e.get("text", "")
            }
            answered = {
                n_by_id[e["n"]]
                for e in events
                if e["kind"] == "result" and e.get("tag") == "DELETE 1" and e["n"] in n_by_id
            }
            # every row the database deleted was recorded as a statement before it was sent
            assert executed <= queried, executed - queried
            # every "DELETE 1" the client saw was recorded before it was sent
            assert set(range(1, acked + 1)) <= answered
            # the recording ends cleanly: finalized from the space reserve, reason given
            res = verify_recording(rec, _trusted(gw.cfg))
            assert res.ok, res.message
            end = [e for e in events if e["kind"] == "end"][0]
            assert end["reason"] == "recorder-failed" and "No space" in end["recorder_error"]

            # new sessions are refused with the reason, and nothing is left behind
            r2 = _psql(gw, token, "-c", "select 1")
            assert r2.returncode != 0 and "recordings storage cannot be written" in r2.stderr
            _no_empty_or_torn_files(gw.cfg.recordings_dir)
            assert gw.sessions() == []

            # room again: service resumes by itself
            filler.unlink()
            r3 = _psql(gw, token, "-At", "-c", "select count(*) from faults.rows")
            assert r3.returncode == 0, r3.stderr
            assert int(r3.stdout.strip()) == ROWS - len(executed)
        finally:
            gw.stop()


def test_pg_read_only_recordings_end_running_sessions_and_recover(pg_server, tmp_path):
    """The filesystem turns read-only under a live session (EROFS on every write)."""
    gw = GatewayThread(tmp_path / "gw", pg=pg_server)
    image = tmp_path / "recordings.img"
    with ext4(gw.cfg.recordings_dir, image):
        gw.start()
        try:
            token = gw.grant()
            proc = subprocess.Popen(
                ["psql", "-X", "-h", "127.0.0.1", "-p", str(gw.pg_port), "-U", "erin"]
                + ["-d", "shop", "-v", "ON_ERROR_STOP=1", "-At"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, PGPASSWORD=token, PGSSLMODE="require"),
            )
            proc.stdin.write("select 'before';\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "before"
            abort_ext4(gw.cfg.recordings_dir)
            proc.stdin.write("select 'after';\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
            assert "after" not in out  # never answered unrecorded
            assert "recording" in err, err
            r = _psql(gw, token, "-c", "select 1")
            assert r.returncode != 0 and "cannot be written" in r.stderr, r.stderr
            gw.wait_idle()
            assert gw.sessions() == []
            remount_fresh(image, gw.cfg.recordings_dir)
            r = _psql(gw, token, "-At", "-c", "select 'back'")
            assert r.returncode == 0 and r.stdout.strip() == "back", r.stderr
        finally:
            gw.stop()


def test_audit_dir_full_refuses_both_protocols_without_phantoms_and_recovers(
    pg_server, ssh_server, tmp_path
):
    gw = GatewayThread(tmp_path / "gw", pg=pg_server, ssh=ssh_server)
    with tmpfs(gw.cfg.audit_dir, "4m"):
        gw.start()
        try:
            threads_before = threading.active_count()
            fds_before = len(os.listdir("/proc/self/fd"))
            token = gw.grant()
            assert _psql(gw, token, "-At", "-c", "select 1").returncode == 0
            filler = fill(gw.cfg.audit_dir, leave=0)
            for _ in range(100):  # the segment's last page still has room for a few events
                r = _psql(gw, token, "-At", "-c", "select 1")
                if r.returncode != 0:
                    break
            for _ in range(5):  # from then on, each attempt is refused with the reason
                assert r.returncode != 0 and "audit log cannot be written" in r.stderr, r.stderr
                r = _psql(gw, token, "-At", "-c", "select 1")
            ssh_token = gw.grant("ssh-shell", target="web-1")
            r = _ssh(gw, ssh_token, "true")
            assert r.returncode != 0 and b"audit log cannot be written" in r.stderr, r.stderr
            assert gw.sessions() == []  # no phantom live sessions
            _no_empty_or_torn_files(gw.cfg.recordings_dir)
            assert threading.active_count() <= threads_before + 1
            assert len(os.listdir("/proc/self/fd")) <= fds_before + 3
            filler.unlink()
            r = _psql(gw, token, "-At", "-c", "select 'back'")
            assert r.returncode == 0 and r.stdout.strip() == "back", r.stderr
        finally:
            gw.stop()


def _ssh(gw: GatewayThread, token: str, *remote: str, timeout: float = 60):
    """OpenSSH through a GatewayThread's SSH listener."""
    argv, env = ssh_client_command(gw.dir, gw.cfg, token, *remote)
    return subprocess.run(
        argv, env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_ssh_disk_full_client_never_gets_more_than_the_recording(ssh_server, tmp_path):
    gw = GatewayHarness(ssh_server)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    with tmpfs(gw.cfg.recordings_dir, "4m"):
        gw.start()
        try:
            fill(gw.cfg.recordings_dir, leave=512 * 1024)
            token = gw.token(shell=True)
            with capture_logs() as logs:
                r = gw.ssh(token, "cat", str(big))
            assert "ssh.recording_failed" in [e["event"] for e in logs]  # a real failure says so
            assert r.returncode != 0
            assert b"recording" in r.stderr, r.stderr
            received = r.stdout
            assert 0 < len(received) < big.stat().st_size
            recs = sorted(gw.cfg.recordings_dir.glob("*.rec"))
            assert len(recs) == 1
            gw.wait_session_ended(next(read_events(recs[0]))["grant_jti"])
            events = list(read_events(recs[0]))
            recorded = b"".join(
                e["data"] for e in events if e["kind"] == "output" and e.get("stream") is None
            )
            # the client received a prefix of what is recorded, never more
            assert recorded.startswith(received)
            assert big.read_bytes().startswith(recorded)
            res = verify_recording(recs[0], _trusted(gw.cfg))
            assert res.ok, res.message
            r2 = gw.ssh(token, "true")
            assert r2.returncode != 0 and b"cannot be written" in r2.stderr, r2.stderr
        finally:
            gw.stop()
