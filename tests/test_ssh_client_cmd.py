"""``breakglass ssh`` front door: OpenSSH through the gateway, the grant only via askpass."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from breakglass.proxy.ssh.client_cmd import add_arguments, build_command
from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]


def front_door(h: GatewayHarness, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "BREAKGLASS_"))}
    full.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "breakglass.proxy.ssh.client_cmd",
            "-c",
            str(h.dir / "config.toml"),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=full,
        timeout=30,
        cwd=ROOT,
    )


def test_breakglass_ssh_runs_command_with_grant_from_env(ssh_gateway: GatewayHarness):  # noqa: F811
    tok = ssh_gateway.token(commands=["echo *"])
    res = front_door(
        ssh_gateway, "-o", "LogLevel=ERROR", "web-1", "echo", "hi", env={"BREAKGLASS_GRANT": tok}
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"hi\n"


def test_breakglass_ssh_grant_file_and_refusal(ssh_gateway: GatewayHarness, tmp_path):  # noqa: F811
    gf = tmp_path / "grant"
    gf.write_text(ssh_gateway.token(commands=["uptime"], ttl=-1) + "\n")
    res = front_door(ssh_gateway, "web-1", "--grant-file", str(gf), "uptime", env={})
    assert res.returncode == 255
    assert b"breakglass: access refused: grant expired" in res.stderr


def test_breakglass_ssh_without_grant_explains(ssh_gateway: GatewayHarness, tmp_path):  # noqa: F811
    res = front_door(ssh_gateway, "web-1", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert res.returncode == 2
    assert b"no grant" in res.stderr


def test_token_never_on_the_command_line(ssh_gateway: GatewayHarness, tmp_path):  # noqa: F811
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config")
    add_arguments(p)
    args = p.parse_args(["-c", str(ssh_gateway.dir / "config.toml"), "web-1", "uptime"])
    tok = ssh_gateway.token(commands=["uptime"])
    argv, env = build_command(args, tmp_path, tok)
    assert not any(tok in a for a in argv)
    assert not any(tok in v for v in env.values())
    assert env["SSH_ASKPASS_REQUIRE"] == "force"
    askpass = env["SSH_ASKPASS"]
    ok = subprocess.run([askpass, "Grant token: "], capture_output=True, env=env, text=True)
    assert ok.stdout == tok + "\n"
    # any other question (e.g. a host-key confirmation) is refused, never answered with it
    other = subprocess.run(
        [askpass, "Are you sure you want to continue connecting (yes/no)? "],
        capture_output=True,
        env=env,
        text=True,
    )
    assert other.returncode != 0 and other.stdout == ""
    assert oct(Path(env["BREAKGLASS_ASKPASS_FILE"]).stat().st_mode & 0o777) == "0o600"


def test_options_after_target_and_command_words(tmp_path):
    from breakglass.proxy.ssh.client_cmd import take_leading_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(
        ["web-1", "--grant-file", "F", "-t", "--port=2222", "ls", "-l", "--login", "x"]
    )
    take_leading_options(args)
    assert (args.grant_file, args.tty, args.port) == ("F", True, 2222)
    assert args.command == ["ls", "-l", "--login", "x"]
    args = p.parse_args(["web-1", "-t", "--", "-x", "y"])
    take_leading_options(args)
    assert args.command == ["-x", "y"] and args.tty
