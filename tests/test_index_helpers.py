"""Real recordings for the index/replay/export/search/review tests, written with the real
RecordingWriter, with the header the gateway writes (proxy.sessions.SessionRegistry.open).
No tests here."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from breakglass.recorder.writer import RecordingWriter

KEY_ID = "recorder-test"


class Recorder:
    """A recorder key and a recordings directory."""

    def __init__(self, directory: Path, key: Ed25519PrivateKey | None = None, key_id=KEY_ID):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key or Ed25519PrivateKey.generate()
        self.key_id = key_id
        self.trusted = {key_id: self.key.public_key()}

    @classmethod
    def for_config(cls, cfg) -> Recorder:
        """Record into a config's recordings directory with its recorder key (as the gateway)."""
        from breakglass.policy.keys import load_private_key

        return cls(
            cfg.recordings_dir, load_private_key(cfg.recorder_signing_key), cfg.recorder_key_id
        )

    def open(
        self,
        *,
        protocol: str = "ssh",
        user: str = "erin",
        target: str = "web-1",
        breakglass: bool = False,
        started_at: float | None = None,
        session_id: str | None = None,
        jti: str | None = None,
        **extra: Any,
    ) -> RecordingWriter:
        started_at = time.time() if started_at is None else started_at
        sid = session_id or (
            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_at)) + "-" + secrets.token_hex(5)
        )
        header = {
            "session_id": sid,
            "protocol": protocol,
            "gateway": "test-gw",
            "user": user,
            "target": target,
            "account": "deploy" if protocol == "ssh" else "app_ro",
            "client": "127.0.0.1",
            "grant_jti": jti or secrets.token_hex(16),
            "template": "breakglass" if breakglass else "ssh-shell",
            "reason": "incident" if breakglass else "demo",
            "ticket": "INC-7" if breakglass else None,
            "breakglass": breakglass,
            "started_at": started_at,
            "expires_at": started_at + 3600,
            **extra,
        }
        return RecordingWriter.create(
            self.dir / f"{sid}.rec", header, self.key, self.key_id, commit_interval=0.0
        )


#: A PTY shell session: prompt, the engineer types `cat /etc/motd` one key at a time, output in
#: chunks that split a UTF-8 character and contain a non-UTF-8 byte, then `exit`.
SHELL_OUTPUT = [
    b"\x1b[?2004h$ ",
    b"c",
    b"a",
    b"t /etc/m",
    b"otd\r\n",
    b"Welcome to web-1 \xe2\x9c",  # the check mark U+2713 split across two chunks
    b"\x93 maintenance window \xff\xfe\r\n",
    b"$ ",
    b"exit\r\n",
]
SHELL_INPUT = list(b"cat /etc/motd\r") + list(b"exit\r")


def write_shell_session(rec: Recorder, **kw: Any) -> Path:
    w = rec.open(protocol="ssh", **kw)
    w.event("pty", channel="0", term="xterm-256color", cols=100, rows=30)
    w.resize(100, 30)
    w.output(SHELL_OUTPUT[0], "0")
    typed = b"cat /etc/motd\r"
    for b in typed:
        w.input(bytes([b]), "0")
    for chunk in SHELL_OUTPUT[1:7]:
        w.output(chunk, "0")
    w.resize(120, 40)
    w.output(SHELL_OUTPUT[7], "0")
    for b in b"exit\r":
        w.input(bytes([b]), "0")
    w.output(SHELL_OUTPUT[8], "0")
    w.event("exit", channel="0", status=0, signal=None)
    w.close("client disconnected", commands=0, denials=0)
    return w.path


def write_exec_session(rec: Recorder, *, denials: int = 1, **kw: Any) -> Path:
    """Restricted-shell style session: allowed and denied commands."""
    w = rec.open(protocol="ssh", **kw)
    w.decision(kind="exec", allowed=True, rule="systemctl status *", text="systemctl status nginx")
    w.event("upstream", channel="0", type="exec", command="systemctl status nginx", pty=False)
    w.output(b"nginx.service - active (running)\n", "0")
    w.event("exit", channel="0", status=0, signal=None)
    for i in range(denials):
        w.decision(
            kind="exec", allowed=False, rule="", text=f"rm -rf /var/lib/nginx{i}", message="denied"
        )
    w.close("client disconnected", commands=1, denials=denials)
    return w.path


PG_STATEMENTS = [
    ("select count(*) from orders", "SELECT 1", 1, None),
    ("select * from orders where id = $1", "SELECT 1", 1, ["42"]),
    ("select 1/0", None, None, None),
]


def write_pg_session(rec: Recorder, **kw: Any) -> Path:
    w = rec.open(protocol="postgres", target="shop", **kw)
    w.query(n=1, text=PG_STATEMENTS[0][0], protocol="simple")
    w.event("result", n=1, tag="SELECT 1", rows=1, duration_ms=1.25)
    w.event("parse", statement="", text=PG_STATEMENTS[1][0])
    w.query(
        n=2, protocol="extended", statement="", portal="", text=PG_STATEMENTS[1][0], params=["42"]
    )
    w.event("result", n=2, tag="SELECT 1", rows=1, duration_ms=0.5)
    w.decision(
        kind="sql",
        allowed=False,
        rule="read-only",
        message="DELETE is not allowed (read-only)",
        text="delete from orders",
        protocol="simple",
    )
    w.query(n=4, text=PG_STATEMENTS[2][0], protocol="simple")
    w.event(
        "result",
        n=4,
        duration_ms=0.3,
        error={"sqlstate": "22012", "message": "division by zero"},
    )
    w.close("client disconnected", commands=3, denials=1)
    return w.path


def tamper(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes in a finalized (read-only) recording, as an attacker with file access could."""
    path.chmod(0o640)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    path.chmod(0o440)


def make_workdir(directory: Path):
    """``breakglass init`` in ``directory``; returns the loaded Config."""
    from breakglass.cli.initdir import init_workdir, render_config
    from breakglass.proxy.config import load_config

    init_workdir(Path(directory), render_config(gateway_name="test-gw"))
    return load_config(Path(directory) / "config.toml")


def run_cli(argv: list[str]) -> int:
    """Run ``breakglass`` with the review commands registered, as cli.main does (the
    commands are wired into main by its owner; this keeps the tests independent of that)."""
    import argparse

    from breakglass.cli import review_cmds
    from breakglass.cli.output import CliError
    from breakglass.proxy.config import ConfigError

    parser = argparse.ArgumentParser(prog="breakglass")
    parser.add_argument("-c", "--config")
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    review_cmds.register(sub)
    p = sub.add_parser("sessions")
    review_cmds.add_sessions_options(p)
    p.set_defaults(func=review_cmds.cmd_sessions)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (CliError, ConfigError) as e:
        import sys

        print(f"breakglass: error: {e}", file=sys.stderr)
        return getattr(e, "code", 1)
