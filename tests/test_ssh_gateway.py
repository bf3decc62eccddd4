"""SSH gateway: auth, exec, refusals, host keys, forwarding/sftp — real sshd, real clients."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess

import asyncssh
import pytest

from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(120)

EMIT = """#!/bin/sh
printf 'line one\\n\\001\\377binary\\n'
printf 'to stderr\\n' >&2
exit 3
"""


@pytest.fixture(scope="module")
def files(ssh_gateway: GatewayHarness):  # noqa: F811
    work = ssh_gateway.sshd.workdir
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / "app.log").write_bytes(b"hello from the app log\n")
    emit = work / "emit.sh"
    emit.write_text(EMIT)
    emit.chmod(0o755)
    return work


def run(coro):
    return asyncio.run(coro)


def test_exec_exact_bytes_and_exit_status_asyncssh(ssh_gateway: GatewayHarness, files):  # noqa: F811
    tok = ssh_gateway.token(commands=[f"{files}/emit.sh"])

    async def go():
        async with await ssh_gateway.connect(tok) as conn:
            return await conn.run(f"{files}/emit.sh", encoding=None)

    res = run(go())
    assert res.stdout == b"line one\n\x01\xffbinary\n"
    assert res.stderr == b"to stderr\n"
    assert res.exit_status == 3


def test_exec_openssh_client_and_banner(ssh_gateway: GatewayHarness, files):  # noqa: F811
    tok = ssh_gateway.token(commands=[f"cat {files}/logs/*"])
    res = ssh_gateway.ssh(tok, f"cat {files}/logs/app.log", log_level="INFO")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hello from the app log\n"
    banner = res.stderr.decode()
    assert "breakglass: web-1 as" in banner
    assert "grant expires" in banner and "min left" in banner
    assert "reason: INC-42 disk full" in banner
    assert "this session is recorded" in banner


def test_exec_login_at_target_username(ssh_gateway: GatewayHarness, files):  # noqa: F811
    login = ssh_gateway.sshd.login
    tok = ssh_gateway.token(commands=["uptime"])
    ok = ssh_gateway.ssh(tok, "uptime", username=f"{login}@web-1")
    assert ok.returncode == 0, ok.stderr
    bad = ssh_gateway.ssh(tok, "uptime", username="nobody@web-1", bind="127.0.0.21")
    assert bad.returncode == 255
    assert b"the grant is for login" in bad.stderr


def test_exec_signal_passes_through(ssh_gateway: GatewayHarness, files):  # noqa: F811
    script = files / "selfkill.sh"
    script.write_text("#!/bin/sh\nkill -TERM $$\n")
    script.chmod(0o755)
    tok = ssh_gateway.token(commands=[str(script)])

    async def go():
        async with await ssh_gateway.connect(tok) as conn:
            return await conn.run(str(script))

    res = run(go())
    assert res.exit_signal is not None and res.exit_signal[0] == "TERM"


def test_exec_stdin_and_eof_pass_through(ssh_gateway: GatewayHarness, files):  # noqa: F811
    tok = ssh_gateway.token(commands=["cat", "wc -c"])
    data = os.urandom(300_000)
    res = ssh_gateway.ssh(tok, "cat", input=data)
    assert res.returncode == 0
    assert res.stdout == data
    res = ssh_gateway.ssh(tok, "wc -c", input=b"12345")
    assert res.stdout.strip() == b"5"


def test_exec_100mb_output_intact_and_recorded(ssh_gateway: GatewayHarness, files):  # noqa: F811
    big = files / "big.bin"
    with open(big, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(1024 * 1024))
    want = hashlib.sha256(big.read_bytes()).hexdigest()
    claims = ssh_gateway.claims(commands=[f"cat {files}/big.bin"])
    tok = ssh_gateway.sign(claims)
    gf = ssh_gateway.grant_file(tok)
    proc = subprocess.Popen(
        ssh_gateway.ssh_argv("web-1", f"cat {files}/big.bin"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ssh_gateway.client_env(gf),
    )
    h = hashlib.sha256()
    n = 0
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    assert proc.wait(60) == 0, proc.stderr.read()
    assert n == 100 * 1024 * 1024
    assert h.hexdigest() == want
    ssh_gateway.wait_session_ended(claims["jti"])
    rec = hashlib.sha256()
    for ev in ssh_gateway.events(claims["jti"]):
        if ev["kind"] == "output":
            rec.update(ev["data"])
    assert rec.hexdigest() == want
    big.unlink()


def test_exec_denied_shows_reason_and_is_recorded(ssh_gateway: GatewayHarness, files):  # noqa: F811
    claims = ssh_gateway.claims(commands=["uptime"])
    res = ssh_gateway.ssh(ssh_gateway.sign(claims), "id")
    assert res.returncode == 126
    assert res.stderr.startswith(b"breakglass: denied: command not allowed by this grant: id")
    ssh_gateway.wait_session_ended(claims["jti"])
    decisions = [e for e in ssh_gateway.events(claims["jti"]) if e["kind"] == "decision"]
    assert decisions and decisions[0]["allowed"] is False and decisions[0]["text"] == "id"
    assert not [e for e in ssh_gateway.events(claims["jti"]) if e["kind"] == "upstream"]


@pytest.mark.parametrize(
    "make,expect",
    [
        (lambda h: "not-a-token", b"grant is not a well-formed token"),
        (lambda h: h.token(ttl=-5), b"grant expired"),
        (lambda h: h.token(target="web-2"), b"grant does not cover ssh target web-1"),
        (lambda h: h.token(aud="other"), b"grant is for another gateway"),
    ],
    ids=["garbage", "expired", "other-target", "wrong-audience"],
)
def test_refused_grants_show_reason(ssh_gateway: GatewayHarness, make, expect):  # noqa: F811
    res = ssh_gateway.ssh(make(ssh_gateway), "uptime", bind="127.0.0.20")
    assert res.returncode == 255
    assert b"breakglass: access refused: " + expect in res.stderr


def test_revoked_grant_refused(ssh_gateway: GatewayHarness):  # noqa: F811
    claims = ssh_gateway.claims(commands=["uptime"])
    ssh_gateway.call(ssh_gateway.gw.state.revoke(claims["jti"], "test", "sec"))
    res = ssh_gateway.ssh(ssh_gateway.sign(claims), "uptime", bind="127.0.0.20")
    assert b"grant has been revoked" in res.stderr


def test_keyboard_interactive_prompt(ssh_gateway: GatewayHarness):  # noqa: F811
    tok = ssh_gateway.token(commands=["uptime"])
    responses = []

    class Client(asyncssh.SSHClient):
        def kbdint_auth_requested(self):
            return ""

        def kbdint_challenge_received(self, name, instructions, lang, prompts):
            responses.append(prompts)
            return [tok]

    async def go():
        async with asyncssh.connect(
            "127.0.0.1",
            ssh_gateway.port,
            username="web-1",
            client_factory=Client,
            known_hosts=asyncssh.import_known_hosts(ssh_gateway.known_hosts.read_text()),
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth="keyboard-interactive",
        ) as conn:
            return await conn.run("uptime")

    res = run(go())
    assert res.exit_status == 0
    assert responses == [[("Grant token: ", False)]]


@pytest.mark.parametrize("target", ["web-unknown", "web-changed"])
def test_untrusted_upstream_host_key_refused(ssh_gateway: GatewayHarness, target):  # noqa: F811
    claims = ssh_gateway.claims(commands=["uptime"], target=target)
    res = ssh_gateway.ssh(ssh_gateway.sign(claims), "uptime", username=target)
    assert res.returncode == 255
    assert b"is not in the gateway's known_hosts or has changed" in res.stderr
    assert ssh_gateway.recordings(claims["jti"]) == []  # no session was opened


def test_local_and_remote_forwarding_refused(ssh_gateway: GatewayHarness):  # noqa: F811
    claims = ssh_gateway.claims(commands=["uptime"])
    tok = ssh_gateway.sign(claims)

    async def go():
        async with await ssh_gateway.connect(tok) as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as local:
                await conn.open_connection("127.0.0.1", ssh_gateway.sshd.port)
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
            return local.value

    err = run(go())
    assert "port forwarding is not allowed" in err.reason
    ssh_gateway.wait_session_ended(claims["jti"])
    fw = [e for e in ssh_gateway.events(claims["jti"]) if e.get("decision_kind") == "forward"]
    assert [(e["direction"], e["allowed"]) for e in fw] == [("local", False), ("remote", False)]


def test_local_forwarding_allowed_when_granted_and_recorded(ssh_gateway: GatewayHarness):  # noqa: F811
    claims = ssh_gateway.claims(commands=[], forwarding=True)
    tok = ssh_gateway.sign(claims)

    async def go():
        async with await ssh_gateway.connect(tok) as conn:
            reader, writer = await conn.open_connection("127.0.0.1", ssh_gateway.sshd.port)
            banner = await reader.readline()
            writer.close()
            return banner

    banner = run(go())
    assert banner.startswith(b"SSH-2.0-OpenSSH")
    ssh_gateway.wait_session_ended(claims["jti"])
    evs = ssh_gateway.events(claims["jti"])
    assert any(e.get("decision_kind") == "forward" and e["allowed"] for e in evs)
    assert any(
        e["kind"] == "output" and e.get("channel", "").startswith("fwd") and b"SSH-2.0" in e["data"]
        for e in evs
    )


def test_agent_forwarding_not_forwarded(ssh_gateway: GatewayHarness, tmp_path):  # noqa: F811
    if shutil.which("ssh-agent") is None:
        pytest.skip("ssh-agent not installed")
    sock = tmp_path / "agent.sock"
    # Without -D, ssh-agent returns once its socket is listening and prints its pid.
    out = subprocess.run(
        ["ssh-agent", "-s", "-a", str(sock)], capture_output=True, text=True, check=True
    ).stdout
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        claims = ssh_gateway.claims(shell=True)
        gf = ssh_gateway.grant_file(ssh_gateway.sign(claims))
        argv = ssh_gateway.ssh_argv("web-1", 'echo "[$SSH_AUTH_SOCK]"', options=["-A"])
        # IdentityAgent=none would make ssh forget the agent: -A would ask for nothing.
        argv[argv.index("IdentityAgent=none")] = f"IdentityAgent={sock}"
        res = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=ssh_gateway.client_env(gf, {"SSH_AUTH_SOCK": str(sock)}),
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"[]\n"
        # never dropped without a word: said on the session, recorded as refused
        assert b"breakglass: agent forwarding (ssh -A) is not supported" in res.stderr
        ssh_gateway.wait_session_ended(claims["jti"])
        (agent,) = [
            e for e in ssh_gateway.events(claims["jti"]) if e.get("decision_kind") == "agent"
        ]
        assert agent["allowed"] is False
    finally:
        os.kill(pid, 15)


def test_sftp_refused_by_default(ssh_gateway: GatewayHarness, files):  # noqa: F811
    if shutil.which("sftp") is None:
        pytest.skip("sftp not installed")
    claims = ssh_gateway.claims(commands=["uptime"])
    gf = ssh_gateway.grant_file(ssh_gateway.sign(claims))
    res = subprocess.run(
        [
            "sftp",  # not -b: batch mode turns off password authentication
            "-P",
            str(ssh_gateway.port),
            *ssh_gateway.client_options(),
            "web-1@127.0.0.1",
        ],
        input=f"get {files}/logs/app.log /dev/null\n".encode(),
        capture_output=True,
        env=ssh_gateway.client_env(gf),
        timeout=30,
    )
    assert res.returncode != 0
    assert b"sftp subsystem is not allowed by this grant" in res.stderr
    ssh_gateway.wait_session_ended(claims["jti"])
    evs = ssh_gateway.events(claims["jti"])
    assert any(e.get("decision_kind") == "subsystem" and not e["allowed"] for e in evs)


def test_sftp_allowed_by_grant_records_each_operation(
    ssh_gateway: GatewayHarness,  # noqa: F811
    files,
    tmp_path,
):
    """A grant with sftp: the real OpenSSH sftp client works through the gateway, and the
    recording holds each operation (paths, flags, bytes, outcome), not just packets."""
    if shutil.which("sftp") is None:
        pytest.skip("sftp not installed")
    claims = ssh_gateway.claims(commands=["uptime"], sftp=True)
    gf = ssh_gateway.grant_file(ssh_gateway.sign(claims))
    area = files / "sftp-area"
    area.mkdir()
    up = tmp_path / "upload.bin"
    up.write_bytes(os.urandom(200_000))
    script = "\n".join(
        [
            f"put {up} {area}/up.bin",
            f"get {area}/up.bin {tmp_path}/down.bin",
            f"rename {area}/up.bin {area}/renamed.bin",
            f"mkdir {area}/sub",
            f"rmdir {area}/sub",
            f"chmod 600 {area}/renamed.bin",
            f"ls {area}",
            f"rm {area}/renamed.bin",
            f"rm {area}/no-such-file",
            "",
        ]
    )
    res = subprocess.run(
        ["sftp", "-P", str(ssh_gateway.port), *ssh_gateway.client_options(), "web-1@127.0.0.1"],
        input=script.encode(),
        capture_output=True,
        env=ssh_gateway.client_env(gf),
        timeout=60,
    )
    assert (tmp_path / "down.bin").read_bytes() == up.read_bytes(), res.stderr
    assert sorted(p.name for p in area.iterdir()) == []
    ssh_gateway.wait_session_ended(claims["jti"])
    ops = [e for e in ssh_gateway.events(claims["jti"]) if e["kind"] == "sftp"]

    def find(op: str, path: str, **want) -> dict:
        hits = [
            o for o in ops if o["op"] == op and o.get("path") == path and want.items() <= o.items()
        ]
        assert hits, f"no {op} {path} {want} in {ops}"
        return hits[0]

    assert "write" in find("open", f"{area}/up.bin", status="ok")["flags"].split(",")
    closes = [o for o in ops if o["op"] == "close" and o.get("path") == f"{area}/up.bin"]
    assert [(c["written"], c["read"]) for c in closes] == [(200_000, 0), (0, 200_000)]
    find("rename", f"{area}/up.bin", to=f"{area}/renamed.bin", status="ok")
    find("mkdir", f"{area}/sub", status="ok")
    find("rmdir", f"{area}/sub", status="ok")
    assert any(o["op"] in ("setstat", "lsetstat") and o.get("mode") == "0600" for o in ops), ops
    assert find("opendir", f"{area}/", status="ok")["op"] == "opendir"  # ls adds the slash
    find("remove", f"{area}/renamed.bin", status="ok")
    assert "No such file" in find("remove", f"{area}/no-such-file", status="error")["error"]
    # and `breakglass export --format jsonl` carries them
    from breakglass.recorder.export import jsonl_lines

    exported = [json.loads(x) for x in jsonl_lines(ssh_gateway.events(claims["jti"]))]
    assert [x["op"] for x in exported if x["type"] == "sftp"] == [o["op"] for o in ops]


def test_sftp_stream_that_cannot_be_decoded_is_closed_and_recorded(
    ssh_gateway: GatewayHarness,  # noqa: F811
):
    """Operations the gateway cannot record are not relayed: garbage on an allowed sftp
    channel closes that channel with a message; the connection and gateway carry on."""
    claims = ssh_gateway.claims(commands=["uptime"], sftp=True)
    tok = ssh_gateway.sign(claims)

    async def go():
        async with await ssh_gateway.connect(tok) as conn:
            proc = await conn.create_process(subsystem="sftp", encoding=None)
            proc.stdin.write(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")  # INIT v3
            version = await proc.stdout.read(4)
            proc.stdin.write(b"\x00\x00\x00\x05\x63junk")  # request type 99
            err = await asyncio.wait_for(proc.stderr.read(), 10)
            await asyncio.wait_for(proc.wait_closed(), 10)
            again = await conn.run("uptime", encoding=None)
            return version, err, again

    version, err, again = run(go())
    assert len(version) == 4  # the target answered INIT: the stream was relayed until then
    assert b"SFTP session closed (it could not be recorded)" in err
    assert again.exit_status == 0
    ssh_gateway.wait_session_ended(claims["jti"])
    evs = ssh_gateway.events(claims["jti"])
    bad = [e for e in evs if e["kind"] == "sftp"]
    assert [e["op"] for e in bad] == ["undecodable"] and "type 99" in bad[0]["error"]
    # the undecodable request never reached the target
    sent = b"".join(e["data"] for e in evs if e["kind"] == "input")
    assert sent.endswith(b"junk")


def test_scp_legacy_allowed_by_pattern_and_sftp_mode_refused(
    ssh_gateway: GatewayHarness,  # noqa: F811
    files,
    tmp_path,
):
    from breakglass.policy.commands import scp_download_patterns

    tok = ssh_gateway.token(commands=scp_download_patterns(f"{files}/logs/*"))
    gf = ssh_gateway.grant_file(tok)
    base = ["scp", "-P", str(ssh_gateway.port), *ssh_gateway.client_options()]
    dest = tmp_path / "app.log"
    res = subprocess.run(
        [*base, "-O", f"web-1@127.0.0.1:{files}/logs/app.log", str(dest)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=ssh_gateway.client_env(gf),
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert dest.read_bytes() == b"hello from the app log\n"
    res = subprocess.run(
        [*base, f"web-1@127.0.0.1:{files}/logs/app.log", str(tmp_path / "x")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=ssh_gateway.client_env(gf),
        timeout=30,
    )
    assert res.returncode != 0
    assert not (tmp_path / "x").exists()
