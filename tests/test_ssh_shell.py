"""Shells through the gateway, driven through a real PTY (pexpect + OpenSSH client)."""

from __future__ import annotations

import pexpect
import pytest

from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def spawn(h: GatewayHarness, token: str, *remote: str, **kw) -> pexpect.spawn:
    gf = h.grant_file(token)
    argv = h.ssh_argv("web-1", *remote, tty=True, **kw)
    child = pexpect.spawn(argv[0], argv[1:], env=h.client_env(gf), timeout=20, dimensions=(24, 100))
    return child


def test_restricted_shell_runs_allowed_and_refuses_others(ssh_gateway: GatewayHarness):  # noqa: F811
    work = ssh_gateway.sshd.workdir
    (work / "notes.txt").write_text("first\nsecond\n")
    marker = work / "restricted-marker"
    claims = ssh_gateway.claims(commands=["uptime", f"cat {work}/*.txt", "sleep *"])
    child = spawn(ssh_gateway, ssh_gateway.sign(claims))
    prompt = f"{ssh_gateway.sshd.login}@web-1 (breakglass)$ "
    child.expect_exact("type 'help' to list them")
    child.expect_exact(prompt)

    child.sendline("help")
    child.expect_exact("sleep *")
    child.expect_exact(prompt)

    child.sendline(f"cat {work}/notes.txt")
    child.expect_exact("first\r\nsecond\r\n")
    child.expect_exact(prompt)

    child.sendline(f"uptime; touch {marker}")
    child.expect_exact("breakglass: denied: shell metacharacter ';'")
    child.expect_exact(prompt)

    child.sendline(f"touch {marker}")
    child.expect_exact("breakglass: denied: command not allowed by this grant")
    child.expect_exact(prompt)

    # line editing: the backspaced characters never reach the command
    child.send("uptimX\x7fe\r")
    child.expect(r"load average")
    child.expect_exact(prompt)

    # Ctrl-C interrupts a running command
    child.sendline("sleep 600")
    child.expect_exact("sleep 600\r\n")
    child.send("\x03")
    # INT ends it where the target's sshd delivers signals; otherwise the gateway detaches
    # (OpenSSH refuses signal requests for root logins, as in this test).
    child.expect(["command ended by signal INT", "detached from it"])
    child.expect_exact(prompt)

    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert not marker.exists()
    ssh_gateway.wait_session_ended(claims["jti"])
    evs = ssh_gateway.events(claims["jti"])
    decisions = [(e["text"], e["allowed"]) for e in evs if e["kind"] == "decision"]
    assert decisions == [
        (f"cat {work}/notes.txt", True),
        (f"uptime; touch {marker}", False),
        (f"touch {marker}", False),
        ("uptime", True),
        ("sleep 600", True),
    ]
    assert [e["count"] for e in evs if e["kind"] == "interrupt"] == [1]
    end = [e for e in evs if e["kind"] == "end"][0]
    assert end["commands"] == 3 and end["denials"] == 2


def test_restricted_shell_line_editing_and_tab_completion(ssh_gateway: GatewayHarness):  # noqa: F811
    work = ssh_gateway.sshd.workdir
    (work / "notes.txt").write_text("first\nsecond\n")
    claims = ssh_gateway.claims(commands=["uptime", f"cat {work}/*.txt"])
    child = spawn(ssh_gateway, ssh_gateway.sign(claims))
    prompt = f"{ssh_gateway.sshd.login}@web-1 (breakglass)$ "
    child.expect_exact(prompt)
    # Left, Home, End, Ctrl-A/E/K/U/W fix a line before it is judged
    child.send("ptme\x1b[D\x1b[Di\x1b[Hu\x1b[F; id\x1b[D\x1b[D\x1b[D\x1b[D\x0b\r")
    child.expect(r"load average")
    child.expect_exact(prompt)
    child.send("rm -rf uptime\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x15\x05\r")
    child.expect(r"load average")
    child.expect_exact(prompt)
    # Tab: the program, then the literal start of the path pattern
    child.send("ca\t")
    child.expect_exact("cat ")
    child.send("\t")
    child.expect_exact(f"{work}/")
    child.send("notes.txt\r")
    child.expect_exact("first\r\nsecond\r\n")
    child.expect_exact(prompt)
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    ssh_gateway.wait_session_ended(claims["jti"])
    evs = ssh_gateway.events(claims["jti"])
    assert [(e["text"], e["allowed"]) for e in evs if e["kind"] == "decision"] == [
        ("uptime", True),
        ("uptime", True),
        (f"cat {work}/notes.txt", True),
    ]


def test_restricted_shell_stderr_comes_before_the_next_prompt(ssh_gateway: GatewayHarness):  # noqa: F811
    work = ssh_gateway.sshd.workdir
    script = work / "warn.sh"
    script.write_text("#!/bin/sh\necho out-line\necho err-line >&2\n")
    script.chmod(0o755)
    child = spawn(ssh_gateway, ssh_gateway.token(commands=[str(script)]))
    prompt = f"{ssh_gateway.sshd.login}@web-1 (breakglass)$ "
    child.expect_exact(prompt)
    for _ in range(8):
        child.sendline(str(script))
        child.expect_exact(prompt)
        assert "out-line\r\nerr-line\r\n" in child.before.decode()
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_restricted_shell_without_tty_reads_lines(ssh_gateway: GatewayHarness):  # noqa: F811
    claims = ssh_gateway.claims(commands=["echo *"])
    res = ssh_gateway.ssh(
        ssh_gateway.sign(claims), input=b"echo hello\necho a;b\nhelp\necho bye\n", tty=False
    )
    assert res.returncode == 0
    out = res.stdout.decode()
    assert "hello\n" in out and "bye\n" in out
    assert "echo *" in out  # help
    assert "breakglass: denied: shell metacharacter ';'" in res.stderr.decode()


def test_pty_shell_recording_is_byte_exact(ssh_gateway: GatewayHarness):  # noqa: F811
    claims = ssh_gateway.claims(shell=True)
    child = spawn(ssh_gateway, ssh_gateway.sign(claims))
    shown = bytearray()
    child.logfile_read = _Sink(shown)
    # The remote shell's first prompt: ssh has put the local terminal in raw mode by then,
    # so nothing typed below is echoed locally (every byte shown comes from the gateway).
    child.expect(r"[#$] ")
    child.sendline("export PS1='READY> '")
    child.expect_exact("READY> ")
    child.sendline("printf 'caf\\303\\251 \\033[1mbold\\033[0m\\n'; stty size")
    child.expect_exact("24 100")
    child.expect_exact("READY> ")
    child.setwinsize(30, 120)
    child.sendline("stty size")
    child.expect_exact("30 120")
    child.expect_exact("READY> ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    ssh_gateway.wait_session_ended(claims["jti"])
    evs = ssh_gateway.events(claims["jti"])
    recorded = b"".join(e["data"] for e in evs if e["kind"] == "output")
    assert recorded == bytes(shown)
    typed = b"".join(e["data"] for e in evs if e["kind"] == "input")
    assert b"stty size\n" in typed
    assert any(e["kind"] == "resize" and e["cols"] == 120 and e["rows"] == 30 for e in evs)


class _Sink:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def write(self, data: bytes) -> None:
        self.buf += data

    def flush(self) -> None:
        pass
