"""``breakglass ssh TARGET [command...]``: the machine's OpenSSH client through the gateway.

The grant reaches ssh through ``SSH_ASKPASS`` (with ``SSH_ASKPASS_REQUIRE=force``): a tiny
script in a private temporary directory prints it when ssh asks for the "Grant token:" or
the password, and refuses every other question (a host-key confirmation is never answered
with a grant). The token is never on a command line, in shell history or in ssh's
environment; it sits in a 0600 file in a 0700 directory removed when ssh exits.

Where the grant comes from, first match: ``--grant-file``, ``$BREAKGLASS_GRANT_FILE``,
``$BREAKGLASS_GRANT``, then the newest stored grant for TARGET (``breakglass grant get``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ASKPASS_SCRIPT = """#!/bin/sh
# breakglass askpass: answers only the gateway's grant prompt, from a private file.
case "$1" in
  *"Grant token:"*|*"password:"*)
    IFS= read -r grant < "$BREAKGLASS_ASKPASS_FILE" || exit 1
    printf '%s\\n' "$grant" ;;
  *) exit 1 ;;
esac
"""


class ClientError(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="SSH target name (as in the grant)")
    p.add_argument("--login", help="target login (default: the grant's login for TARGET)")
    p.add_argument("--grant-file", help="file holding the grant token")
    p.add_argument("--host", help="gateway host (default: the config's gateway.ssh_listen)")
    p.add_argument("--port", type=int, help="gateway port (default: the config's ssh_listen)")
    p.add_argument(
        "--known-hosts",
        help="known_hosts file holding the gateway's host key (default: yours, or the key "
        "from the config when this machine can read it)",
    )
    p.add_argument("-t", dest="tty", action="store_true", help="force a terminal (ssh -t)")
    p.add_argument(
        "-o",
        dest="ssh_options",
        action="append",
        default=[],
        metavar="OPTION",
        help="extra ssh -o option (repeatable)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="remote command")


_VALUE_OPTIONS = {
    "--login": "login",
    "--grant-file": "grant_file",
    "--host": "host",
    "--port": "port",
    "--known-hosts": "known_hosts",
}


def take_leading_options(args: argparse.Namespace) -> None:
    """Let our options also follow TARGET (``breakglass ssh web-1 --grant-file F uptime``):
    leading options we know are taken out of the remote command; the command starts at the
    first other word, or after a literal ``--``."""
    rest = list(args.command)
    while rest:
        word = rest[0]
        if word == "--":
            rest.pop(0)
            break
        name, eq, value = word.partition("=")
        if name in _VALUE_OPTIONS:
            rest.pop(0)
            if not eq:
                if not rest:
                    raise ClientError(f"{name} needs a value")
                value = rest.pop(0)
            dest = _VALUE_OPTIONS[name]
            if dest == "port":
                try:
                    value = int(value)
                except ValueError:
                    raise ClientError(f"--port expects a number, got {value!r}") from None
            setattr(args, dest, value)
        elif word == "-t":
            rest.pop(0)
            args.tty = True
        elif word == "-o" and len(rest) > 1:
            rest.pop(0)
            args.ssh_options.append(rest.pop(0))
        else:
            break
    args.command = rest


def _read_grant(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """(token, file): a file is used as is; a token from elsewhere is written to a temp file."""
    path = args.grant_file or os.environ.get("BREAKGLASS_GRANT_FILE")
    if path:
        p = Path(path).expanduser()
        try:
            token = p.read_text().strip()
        except OSError as e:
            raise ClientError(f"cannot read grant file {path}: {e.strerror}") from None
        if not token or "\n" in token:
            raise ClientError(f"grant file {path} must hold one token on one line")
        return token, None
    token = os.environ.get("BREAKGLASS_GRANT", "").strip()
    if not token:
        try:
            from breakglass.cli.service_cmds import find_stored_grant

            token = find_stored_grant(args.target, "ssh") or ""
        except ImportError:
            token = ""
    if not token:
        raise ClientError(
            "no grant: pass --grant-file FILE, set $BREAKGLASS_GRANT_FILE or $BREAKGLASS_GRANT, "
            "or fetch one with `breakglass grant get`"
        )
    return token, None


def _gateway_address(args: argparse.Namespace, tmp: Path) -> tuple[str, int, Path | None]:
    host, port, known = args.host, args.port, args.known_hosts
    cfg = None
    if host is None or port is None or known is None:
        try:
            from breakglass.proxy.config import load_config

            cfg = load_config(getattr(args, "config", None))
        except Exception:
            cfg = None
    if host is None or port is None:
        if cfg is None or cfg.ssh_listen is None:
            raise ClientError("no gateway address: pass --host and --port (or -c CONFIG)")
        host = host or cfg.ssh_listen.host
        port = port or cfg.ssh_listen.port
    pinned: Path | None = Path(known) if known else None
    if pinned is None and cfg is not None and cfg.ssh_host_key is not None:
        try:
            import asyncssh

            key = asyncssh.read_private_key(str(cfg.ssh_host_key))
        except Exception:  # not readable here (an engineer's laptop): use their known_hosts
            key = None
        if key is not None:
            pinned = tmp / "known_hosts"
            name = host if port == 22 else f"[{host}]:{port}"
            pinned.write_text(f"{name} {key.export_public_key().decode().strip()}\n")
    return host, port, pinned


def build_command(
    args: argparse.Namespace, tmp: Path, token: str
) -> tuple[list[str], dict[str, str]]:
    """The ssh argv and environment (the token itself is in neither)."""
    ssh = shutil.which("ssh")
    if not ssh:
        raise ClientError("OpenSSH's ssh is not installed on this machine")
    host, port, known = _gateway_address(args, tmp)
    askpass = tmp / "askpass"
    askpass.write_text(ASKPASS_SCRIPT)
    askpass.chmod(0o700)
    grant_path = tmp / "grant"
    fd = os.open(grant_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    user = f"{args.login}@{args.target}" if args.login else args.target
    argv = [
        ssh,
        "-p",
        str(port),
        "-o",
        "PreferredAuthentications=keyboard-interactive,password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "GSSAPIAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "IdentityAgent=none",
        "-o",
        "ForwardAgent=no",
        "-o",
        "ForwardX11=no",
    ]
    if known is not None:
        argv += ["-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes"]
    if args.tty:
        argv.append("-t")
    for opt in args.ssh_options:
        argv += ["-o", opt]
    argv += ["-l", user, host, *args.command]
    env = {k: v for k, v in os.environ.items() if k not in ("BREAKGLASS_GRANT", "DISPLAY")}
    env.update(
        SSH_ASKPASS=str(askpass),
        SSH_ASKPASS_REQUIRE="force",
        BREAKGLASS_ASKPASS_FILE=str(grant_path),
    )
    env.pop("BREAKGLASS_GRANT_FILE", None)
    return argv, env


def run_ssh_client(args: argparse.Namespace) -> int:
    """Run ssh to ``args.target`` through the gateway; returns ssh's exit status."""
    try:
        take_leading_options(args)
        token, _ = _read_grant(args)
        assert token is not None
        tmp = Path(tempfile.mkdtemp(prefix="breakglass-ssh-"))
        try:
            os.chmod(tmp, 0o700)
            argv, env = build_command(args, tmp, token)
            # ssh owns the terminal: let it see Ctrl-C; we only wait and clean up.
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                proc = subprocess.Popen(argv, env=env)
                return proc.wait()
            finally:
                signal.signal(signal.SIGINT, old)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except ClientError as e:
        print(f"breakglass: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="breakglass ssh")
    p.add_argument("-c", "--config", default=None)
    add_arguments(p)
    return run_ssh_client(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
