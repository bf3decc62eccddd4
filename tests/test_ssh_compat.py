"""SSH client compatibility matrix: everyday tasks with real clients through the gateway.

Each test runs the task on the grant that should allow it, and checks that what the grant
does not cover is refused with a reason the client shows. The README's "Client
compatibility" SSH table lists these tests.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import _unavailable
from tests.servers import free_port
from tests.ssh_gateway_fixture import LOOPBACK, GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def work(ssh_gateway: GatewayHarness) -> Path:  # noqa: F811
    work = ssh_gateway.sshd.workdir
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / "app.log").write_bytes(b"hello from the app log\n")
    return work


def end_reason(h: GatewayHarness, jti: str) -> str:
    h.wait_session_ended(jti)
    return h.events(jti)[-1]["reason"]


def decisions(h: GatewayHarness, jti: str, kind: str) -> list[dict]:
    return [e for e in h.events(jti) if e.get("decision_kind") == kind]


# --------------------------------------------------------------------------- paramiko


def paramiko_client(h: GatewayHarness, token: str):
    try:
        import paramiko
    except ImportError:
        _unavailable("paramiko is not installed (pip install -e '.[test]')")
    client = paramiko.SSHClient()
    kind, b64 = h.host_key_line.split()[:2]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    client.get_host_keys().add(f"[{LOOPBACK}]:{h.port}", kind, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        LOOPBACK,
        h.port,
        username="web-1",
        password=token,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def test_paramiko_exec_allowed_refused_and_closed(ssh_gateway: GatewayHarness, work):  # noqa: F811
    h = ssh_gateway
    claims = h.claims(commands=[f"cat {work}/logs/*"])
    client = paramiko_client(h, h.sign(claims))
    try:
        _in, out, err = client.exec_command(f"cat {work}/logs/app.log")
        assert out.read() == b"hello from the app log\n"
        assert out.channel.recv_exit_status() == 0
        _in, out, err = client.exec_command(f"rm {work}/logs/app.log")
        assert out.channel.recv_exit_status() == 126
        assert err.read().startswith(b"breakglass: denied: command not allowed by this grant")
    finally:
        client.close()
    assert (work / "logs" / "app.log").exists()
    # paramiko closes the TCP connection without a DISCONNECT: still a clean end.
    assert end_reason(h, claims["jti"]) == "closed"


# --------------------------------------------------------------------------- ProxyJump


def jump_config(h: GatewayHarness, path: Path) -> Path:
    """An ssh_config with ``gw`` (the gateway, grant via askpass) and ``tgt`` (the test sshd,
    the engineer's own key) reached with ``ProxyJump gw``. ProxyJump's inner ssh reads -F
    but not -o, so everything lives in the file."""
    sshd = h.sshd
    path.write_text(
        f"""Host *
  UserKnownHostsFile {h.known_hosts} {sshd.known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  UpdateHostKeys no
  IdentityAgent none
  NumberOfPasswordPrompts 1
  ConnectTimeout 10
  LogLevel ERROR
Host gw
  HostName {LOOPBACK}
  Port {h.port}
  User web-1
  PubkeyAuthentication no
  PreferredAuthentications keyboard-interactive,password
Host tgt
  HostName {LOOPBACK}
  Port {sshd.port}
  User {sshd.login}
  IdentityFile {sshd.client_key}
  IdentitiesOnly yes
  PasswordAuthentication no
  ProxyJump gw
"""
    )
    return path


def test_proxyjump_with_forwarding_grant_and_reason_without(
    ssh_gateway: GatewayHarness,  # noqa: F811
    tmp_path,
):
    h = ssh_gateway
    cfg = jump_config(h, tmp_path / "ssh_config")
    results = {}
    for fw in (True, False):
        claims = h.claims(forwarding=fw)
        gf = h.grant_file(h.sign(claims))
        results[fw] = subprocess.run(
            ["ssh", "-F", str(cfg), "tgt", "echo", "through the jump"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=h.client_env(gf),
            timeout=30,
        )
        assert end_reason(h, claims["jti"]) == "closed"
        (fwd,) = decisions(h, claims["jti"], "forward")
        assert fwd["allowed"] is fw and fwd["text"] == f"{LOOPBACK}:{h.sshd.port}"
    assert results[True].returncode == 0, results[True].stderr
    assert results[True].stdout == b"through the jump\n"
    assert results[False].returncode == 255
    assert b"port forwarding is not allowed by this grant (ssh -L, -W and ProxyJump" in (
        results[False].stderr
    )


# --------------------------------------------------------------------------- big input


def test_one_megabyte_exec_refused_with_a_message(ssh_gateway: GatewayHarness, work):  # noqa: F811
    h = ssh_gateway
    claims = h.claims(commands=["echo *"])
    client = paramiko_client(h, h.sign(claims))
    try:
        _in, out, err = client.exec_command("echo " + "a" * 1_000_000)
        assert out.channel.recv_exit_status() == 126
        assert err.read().startswith(b"breakglass: denied: the command is too long (1000005 bytes")
        _in, out, err = client.exec_command("echo usable")
        assert out.read() == b"usable\n"
    finally:
        client.close()
    (deny, ok) = decisions(h, claims["jti"], "exec")
    assert deny["allowed"] is False and deny["rule"] == "too-long"
    assert ok["allowed"] is True


def read_until(chan, marker: bytes, timeout: float = 20) -> bytes:
    """Read a paramiko channel until ``marker`` shows (bounded by ``timeout``)."""
    chan.settimeout(timeout)
    buf = b""
    while marker not in buf:
        chunk = chan.recv(65536)
        assert chunk, f"channel closed before {marker!r}; got {buf[-300:]!r}"
        buf += chunk
    return buf


def test_paramiko_shell_and_a_paste_over_64k_in_one_packet(ssh_gateway: GatewayHarness, work):  # noqa: F811
    h = ssh_gateway
    claims = h.claims(commands=[f"cat {work}/logs/*", "echo *"])
    client = paramiko_client(h, h.sign(claims))
    prompt = f"{h.sshd.login}@web-1 (breakglass)$ ".encode()
    try:
        chan = client.invoke_shell(width=100, height=24)
        read_until(chan, prompt)
        chan.sendall(f"cat {work}/logs/app.log\r".encode())
        assert b"hello from the app log\r\n" in read_until(chan, prompt)
        chan.sendall(b"rm -rf /\r")
        assert b"breakglass: denied: command not allowed by this grant" in read_until(chan, prompt)
        # 100 KiB in one SSH packet (the gateway allows 256 KiB): 20 blank lines of 5000
        # spaces, a line too long to keep, then a command. Nothing is dropped.
        paste = (b" " * 5000 + b"\r") * 20 + b"x" * 10_000 + b"\recho pasted-ok\r"
        assert len(paste) > 100 * 1024
        chan.sendall(paste)
        out = read_until(chan, b"pasted-ok\r\n")
        assert out.count(prompt) >= 21
        assert b"breakglass: denied: the line is too long" in out
        read_until(chan, prompt)
        chan.sendall(b"exit\r")
        assert chan.recv_exit_status() == 0
    finally:
        client.close()
    assert end_reason(h, claims["jti"]) == "closed"
    shell = [(e["text"], e["allowed"]) for e in decisions(h, claims["jti"], "shell")]
    assert shell[-2:] == [("(line too long)", False), ("echo pasted-ok", True)]


def test_type_ahead_over_64k_while_a_command_runs_is_paced_not_dropped(
    ssh_gateway: GatewayHarness,  # noqa: F811
):
    h = ssh_gateway
    claims = h.claims(commands=["sleep 1", "echo *"])
    client = paramiko_client(h, h.sign(claims))
    prompt = f"{h.sshd.login}@web-1 (breakglass)$ ".encode()
    try:
        chan = client.invoke_shell(width=100, height=24)
        read_until(chan, prompt)
        chan.sendall(b"sleep 1\r")
        read_until(chan, b"sleep 1\r\n")
        # 200 KiB typed ahead while sleep runs: past 64 KiB the gateway stops reading
        # (the client's window fills) and takes the rest once the command is done.
        chan.sendall((b" " * 5000 + b"\r") * 40 + b"echo after-the-wait\r")
        out = read_until(chan, b"after-the-wait\r\n")
        assert out.count(prompt) >= 41
        chan.sendall(b"exit\r")
        assert chan.recv_exit_status() == 0
    finally:
        client.close()
    shell = [(e["text"], e["allowed"]) for e in decisions(h, claims["jti"], "shell")]
    assert shell == [("sleep 1", True), ("echo after-the-wait", True)]


# --------------------------------------------------------------------------- ssh -R


class PongServer:
    """A one-connection TCP server on the engineer's side of ssh -R: reads a line, answers
    ``pong:LINE`` and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(30)
        with contextlib.suppress(OSError), self.sock:
            conn, _ = self.sock.accept()
            with conn:
                line = conn.makefile("rb").readline()
                conn.sendall(b"pong:" + line)


def test_remote_forwarding_allowed_and_recorded_refused_with_reason(
    ssh_gateway: GatewayHarness,  # noqa: F811
):
    h = ssh_gateway
    pong = PongServer()
    claims = h.claims(commands=["cat"], forwarding=True)
    gf = h.grant_file(h.sign(claims))
    # `cat` keeps the session open until stdin closes: a clean end, no kill.
    proc = subprocess.Popen(
        h.ssh_argv(
            "web-1",
            "cat",
            options=["-o", "ExitOnForwardFailure=yes", "-R", f"0:{LOOPBACK}:{pong.port}"],
            log_level="INFO",
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=h.client_env(gf),
    )
    try:
        # The target picks the port; OpenSSH prints it once the listener exists.
        while b"Allocated port" not in (line := proc.stderr.readline()):
            assert line, "ssh ended before the remote forward was set up"
        listen = int(line.split(b"Allocated port ")[1].split()[0])
        with socket.create_connection((LOOPBACK, listen), timeout=10) as conn:  # the target
            conn.sendall(b"ping\n")
            answer = conn.makefile("rb").read()
        assert answer == b"pong:ping\n"
        out, err = proc.communicate(b"", timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert end_reason(h, claims["jti"]) == "closed"
    evs = h.events(claims["jti"])
    (fwd,) = decisions(h, claims["jti"], "forward")
    assert fwd["direction"] == "remote" and fwd["allowed"] is True
    (opened,) = [e for e in evs if e["kind"] == "forward-open"]
    cid = opened["channel"]
    assert b"".join(e["data"] for e in evs if e["kind"] == "output" and e["channel"] == cid) == (
        b"ping\n"
    )
    assert b"".join(e["data"] for e in evs if e["kind"] == "input" and e["channel"] == cid) == (
        b"pong:ping\n"
    )

    # without forwarding in the grant: refused, the reason shown on the session, recorded
    claims = h.claims(commands=["uptime"])
    res = h.ssh(h.sign(claims), "uptime", options=["-R", f"{free_port()}:{LOOPBACK}:9"])
    assert res.returncode == 0, res.stderr
    assert b"breakglass: remote port forwarding (ssh -R" in res.stderr
    assert b"is not allowed by this grant" in res.stderr
    (fwd,) = decisions(h, claims["jti"], "forward")
    assert fwd["direction"] == "remote" and fwd["allowed"] is False


# --------------------------------------------------------------------------- scp, sftp, rsync


def test_scp_sftp_mode_with_sftp_grant_and_reason_without(
    ssh_gateway: GatewayHarness,  # noqa: F811
    work,
    tmp_path,
):
    """OpenSSH 9's scp speaks sftp: it needs ``ssh.sftp`` (legacy ``scp -O`` needs command
    patterns instead: test_ssh_gateway.py::test_scp_legacy_allowed_by_pattern...)."""
    h = ssh_gateway
    base = ["scp", "-P", str(h.port), *h.client_options()]
    src = f"web-1@{LOOPBACK}:{work}/logs/app.log"
    claims = h.claims(sftp=True)
    gf = h.grant_file(h.sign(claims))
    res = subprocess.run(
        [*base, src, str(tmp_path / "got.log")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=h.client_env(gf),
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "got.log").read_bytes() == b"hello from the app log\n"
    h.wait_session_ended(claims["jti"])
    ops = [e.get("op") for e in h.events(claims["jti"]) if e["kind"] == "sftp"]
    assert "open" in ops

    gf = h.grant_file(h.token(commands=["uptime"]))
    res = subprocess.run(
        [*base, src, str(tmp_path / "nope.log")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=h.client_env(gf),
        timeout=30,
    )
    assert res.returncode != 0
    assert b"the sftp subsystem is not allowed by this grant" in res.stderr
    assert b"use 'scp -O'" in res.stderr
    assert not (tmp_path / "nope.log").exists()


def rsync_env(h: GatewayHarness, token: str) -> tuple[list[str], dict[str, str]]:
    if shutil.which("rsync") is None:
        _unavailable("rsync is not installed (apt-get install rsync)")
    rsh = " ".join(["ssh", "-p", str(h.port), *h.client_options()])
    return ["rsync", "-a", "-e", rsh], h.client_env(h.grant_file(token))


def rsync_server_command(src: str, dest: str, tmp_path: Path) -> list[str]:
    """The command this machine's rsync asks the remote side to run (it varies with the
    version and options): what a grant's pattern has to spell out."""
    capture = tmp_path / "rsh-capture"
    args = tmp_path / "rsh-args"
    capture.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\nexit 255\n')
    capture.chmod(0o755)
    subprocess.run(["rsync", "-a", "-e", str(capture), src, dest], capture_output=True)
    words = args.read_text().splitlines()
    return words[words.index("rsync") :]


def test_rsync_download_allowed_by_pattern_upload_refused(
    ssh_gateway: GatewayHarness,  # noqa: F811
    work,
    tmp_path,
):
    h = ssh_gateway
    src = f"web-1@{LOOPBACK}:{work}/logs/app.log"
    rsync, _ = rsync_env(h, "unused")
    server = rsync_server_command(src, str(tmp_path / "x"), tmp_path)
    assert server[:3] == ["rsync", "--server", "--sender"]
    pattern = " ".join([*server[:-1], f"{work}/logs/*"])  # the path: any log file
    claims = h.claims(commands=[pattern])
    rsync, env = rsync_env(h, h.sign(claims))
    res = subprocess.run(
        [*rsync, src, str(tmp_path / "got.log")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "got.log").read_bytes() == b"hello from the app log\n"
    (up := tmp_path / "upload.txt").write_text("should not arrive\n")
    rsync, env = rsync_env(h, h.token(commands=[pattern]))
    res = subprocess.run(
        [*rsync, str(up), f"web-1@{LOOPBACK}:{work}/logs/"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert res.returncode != 0
    assert b"breakglass: denied: command not allowed by this grant: rsync --server" in res.stderr
    assert not (work / "logs" / "upload.txt").exists()
    h.wait_session_ended(claims["jti"])
    (allowed,) = decisions(h, claims["jti"], "exec")
    assert allowed["allowed"] is True and allowed["pattern"] == pattern
