"""A real PTY shell through the SSH gateway (OpenSSH client in a pty): `breakglass replay` writes
exactly the bytes the engineer's terminal got, the asciicast export plays them in asciinema,
and search finds what was typed and shown."""

from __future__ import annotations

import json
import subprocess

import pexpect
import pytest

from breakglass.recorder.replay import END_RESET
from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401
from tests.test_export import asciinema
from tests.test_index_helpers import run_cli

pytestmark = pytest.mark.timeout(60)


class _Sink:
    def __init__(self, buf: bytearray) -> None:
        self.buf = buf

    def write(self, data: bytes) -> None:
        self.buf += data

    def flush(self) -> None:
        pass


def test_pty_session_replays_exactly_and_exports(
    ssh_gateway: GatewayHarness,  # noqa: F811
    capsysbinary,
    tmp_path,
):
    h = ssh_gateway
    claims = h.claims(shell=True)
    argv = h.ssh_argv("web-1", tty=True)
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        env=h.client_env(h.grant_file(h.sign(claims))),
        timeout=20,
        dimensions=(24, 100),
    )
    shown = bytearray()
    child.logfile_read = _Sink(shown)
    child.expect(r"[#$] ")
    child.sendline("export PS1='READY> '")
    child.expect_exact("READY> ")
    child.sendline("printf 'caf\\303\\251 replay-marker-9\\n'")
    child.expect_exact("replay-marker-9\r\n")
    child.expect_exact("READY> ")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    h.wait_session_ended(claims["jti"])
    (path,) = h.recordings(claims["jti"])
    sid = path.stem
    c = str(h.dir / "config.toml")

    capsysbinary.readouterr()
    assert run_cli(["-c", c, "replay", sid, "--idle-limit", "0", "--speed", "64"]) == 0
    # exactly what the engineer's terminal got, then the modes reset for the reviewer
    assert capsysbinary.readouterr().out == bytes(shown) + END_RESET

    cast = tmp_path / "s.cast"
    assert run_cli(["-c", c, "export", sid, "--format", "asciicast", "-o", str(cast)]) == 0
    head = json.loads(cast.read_text().splitlines()[0])
    assert (head["width"], head["height"]) == (100, 24)
    cat = subprocess.run(
        [*asciinema(), "cat", str(cast)], capture_output=True, timeout=20, stdin=subprocess.DEVNULL
    )
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == bytes(shown).decode("utf-8", "replace").encode()

    capsysbinary.readouterr()
    assert run_cli(["-c", c, "search", "replay-marker-9", "--json"]) == 0
    found = json.loads(capsysbinary.readouterr().out)
    assert [r["session"] for r in found] == [sid]
    assert {x["where"] for x in found[0]["hits"]} == {"input", "output"}
    assert run_cli(["-c", c, "search", "café", "--in", "output", "--json"]) == 0
    assert json.loads(capsysbinary.readouterr().out)[0]["session"] == sid
