"""The `breakglass` command as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.harness import run_cli

pytestmark = pytest.mark.timeout(120)


def bg(*args: str, config: Path | None = None, input: str | None = None, env: dict | None = None):
    return run_cli(config, *args, input=input, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "w"
    r = bg("init", str(d))
    assert r.returncode == 0, r.stderr
    return d


def issue(workdir: Path, *extra: str):
    return bg(
        "grant",
        "issue",
        "--template",
        "db-readonly",
        "--to",
        "erin",
        "--target",
        "orders",
        "--ttl",
        "30m",
        "--reason",
        "INC-7 slow queries",
        *extra,
        config=workdir / "config.toml",
    )


def test_help_everywhere():
    for cmd in (
        [],
        ["grant"],
        ["grant", "issue"],
        ["verify"],
        ["audit"],
        ["gateway"],
        ["demo"],
        ["psql"],
        ["kill"],
    ):
        r = bg(*cmd, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, cmd


def test_init_refuses_existing(workdir):
    r = bg("init", str(workdir))
    assert r.returncode == 1
    assert "refusing to overwrite" in r.stderr and "Traceback" not in r.stderr


def test_issue_prints_only_the_token_and_inspect_verifies(workdir):
    r = issue(workdir, "--approved-by", "alice", "--ticket", "INC-7")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    r = bg("grant", "inspect", "-", config=workdir / "config.toml", input=token)
    assert r.returncode == 0, r.stderr
    assert "VALID now" in r.stdout and "postgres:orders as app_ro" in r.stdout
    r = bg("grant", "inspect", "--json", token, config=workdir / "config.toml")
    info = json.loads(r.stdout)
    assert info["valid"] and info["claims"]["ticket"] == "INC-7"


@pytest.mark.parametrize(
    "extra,rule",
    [
        (["--approved-by", "erin"], "self-approval"),
        ([], "approvals"),
        (["--approved-by", "alice", "--ttl", "2h"], "max-ttl"),
        (["--approved-by", "mallory"], "approver-not-allowed"),
    ],
)
def test_issue_refusals_name_the_rule(workdir, extra, rule):
    r = issue(workdir, *extra)
    assert r.returncode == 1
    assert f"refused ({rule})" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_breakglass_only_for_incident_managers(workdir):
    base = [
        "grant",
        "issue",
        "--template",
        "breakglass",
        "--target",
        "web-1",
        "--ttl",
        "1h",
        "--reason",
        "P1",
        "--breakglass",
    ]
    r = bg(*base, "--to", "erin", config=workdir / "config.toml")
    assert "refused (requester-not-allowed)" in r.stderr
    r = bg(*base, "--to", "ina", config=workdir / "config.toml")
    assert r.returncode == 0, r.stderr


def test_missing_reason(workdir):
    r = bg(
        "grant",
        "issue",
        "--template",
        "db-readonly",
        "--to",
        "erin",
        "--target",
        "orders",
        "--ttl",
        "10m",
        "--reason",
        " ",
        "--approved-by",
        "alice",
        config=workdir / "config.toml",
    )
    assert "refused (reason-required)" in r.stderr


def test_revoke_then_inspect_says_revoked_and_audit_shows_it(workdir):
    token = issue(workdir, "--approved-by", "bob").stdout.strip()
    jti = json.loads(
        bg("grant", "inspect", "--json", token, config=workdir / "config.toml").stdout
    )["claims"]["jti"]
    r = bg("revoke", jti, "--reason", "done early", config=workdir / "config.toml")
    assert r.returncode == 0 and "revoked" in r.stdout
    r = bg("grant", "inspect", token, config=workdir / "config.toml")
    assert r.returncode == 1 and "revoked" in r.stdout
    r = bg("audit", "--json", "--type", "grant.", config=workdir / "config.toml")
    events = json.loads(r.stdout)
    types = [e["type"] for e in events]
    assert "grant.issued" in types and "grant.revoked" in types and "grant.refused" in types
    assert all(token not in json.dumps(e) for e in events)
    r = bg("audit", "--user", "erin", "--since", "1h", config=workdir / "config.toml")
    assert "grant.issued" in r.stdout


def test_verify_audit_log_and_detect_tampering(workdir, tmp_path):
    issue(workdir, "--approved-by", "bob")  # at least one audit event, even when run alone
    r = bg("verify", str(workdir / "audit"), config=workdir / "config.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
    seg = sorted((workdir / "audit").glob("*.audit"))[0]
    copy = tmp_path / seg.name
    data = bytearray(seg.read_bytes())
    i = data.index(b'"grant.')
    data[i + 2] ^= 1
    copy.write_bytes(bytes(data))
    r = bg("verify", str(copy), config=workdir / "config.toml")
    assert r.returncode == 1 and "FAIL" in r.stdout and "altered" in r.stdout


def test_bad_config_reports_key_paths(tmp_path):
    (tmp_path / "c.toml").write_text("[gateway]\nname = 5\n[issuer]\n[recorder]\n")
    r = bg("audit", config=tmp_path / "c.toml")
    assert r.returncode == 1
    assert "gateway.name: expected a string" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config():
    r = bg("audit", config=Path("/nonexistent/config.toml"))
    assert r.returncode == 1 and "config file not found" in r.stderr


def test_sessions_without_gateway(workdir):
    r = bg("sessions", "--live", config=workdir / "config.toml")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr


def test_demo_runs_and_prints_working_lines(pg_server, tmp_path):
    """`breakglass demo` end to end: start, use the printed grant with real psql, stop."""
    d = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "breakglass.cli.main", "demo", "--dir", str(d), "--no-ssh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:  # wait for the ready banner (bounded by the test timeout)
            seen.append(line)
            if "Ctrl-C stops the demo" in line:
                break
        text = "".join(seen)
        assert "psql" in text and "select count(*) from orders" in text
        env_vars = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (d / "demo.env").read_text().splitlines()
        )
        import shlex

        env_vars = {k: shlex.split(v)[0] for k, v in env_vars.items()}
        grant = Path(env_vars["BREAKGLASS_PG_GRANT"]).read_text().strip()
        env = dict(os.environ, PGPASSWORD=grant)
        r = subprocess.run(
            ["psql", env_vars["BREAKGLASS_PG_DSN"], "-At", "-c", "select count(*) from orders"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "500"
        env["PGPASSWORD"] = Path(env_vars["BREAKGLASS_PG_EXPIRED_GRANT"]).read_text().strip()
        r = subprocess.run(
            ["psql", env_vars["BREAKGLASS_PG_DSN"], "-c", "select 1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "grant expired" in r.stderr
        r = bg(
            "psql",
            "shop",
            "--grant-file",
            env_vars["BREAKGLASS_PG_GRANT"],
            "-At",
            "-c",
            "select 40+2",
            config=d / "config.toml",
        )
        assert r.stdout.strip() == "42", r.stderr
        with urllib.request.urlopen(env_vars["BREAKGLASS_METRICS_URL"], timeout=10) as m:
            assert b"breakglass_sessions_total" in m.read()
        _demo_console_and_security_lines(d, text, env_vars)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"alert: .*\[DRILL\] Break-glass session", err), err
    r = bg("verify", str(d / "recordings"), config=d / "config.toml")
    assert r.returncode == 0, r.stdout


def test_demo_ssh_lines_work(pg_server, ssh_server, tmp_path):
    """The demo's SSH target and grants: an allowed command runs, a metacharacter is refused."""
    d = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "breakglass.cli.main", "demo", "--dir", str(d)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:  # bounded by the test timeout
            if "Ctrl-C stops the demo" in line:
                break
        import shlex

        env_vars = {
            k: shlex.split(v)[0]
            for k, v in (
                line.removeprefix("export ").split("=", 1)
                for line in (d / "demo.env").read_text().splitlines()
            )
        }
        assert env_vars["BREAKGLASS_SSH_TARGET"] == "web-1"
        grant = env_vars["BREAKGLASS_SSH_GRANT"]
        r = bg("ssh", "web-1", "--grant-file", grant, "uptime", config=d / "config.toml")
        assert r.returncode == 0, r.stderr
        assert "load average" in r.stdout
        r = bg("ssh", "web-1", "--grant-file", grant, "uptime; id", config=d / "config.toml")
        assert r.returncode == 126 and "metacharacter" in r.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _demo_console_and_security_lines(d: Path, text: str, env_vars: dict[str, str]) -> None:
    """The demo also serves the web console (its reviewer logs in) and an alert sink, so the
    printed drill and report lines work."""
    import pyotp

    console = env_vars["BREAKGLASS_CONSOLE_URL"]
    assert env_vars["BREAKGLASS_SERVICE_URL"] + "/console/" == console
    for needle in (f"open {console}", "watch SESSION", "report access", "drill --target"):
        assert needle in text, text
    # the demo reviewer logs in to the console (form post with the CSRF cookie)
    creds = dict(ln.split(" ", 1) for ln in (d / "reviewer.txt").read_text().splitlines())
    # (the console's cookies are Secure: urllib keeps them only for https, so by hand)
    with urllib.request.urlopen(console + "login") as r:
        assert b"TOTP" in r.read()
        csrf = re.search(r"__Host-bg_csrf=([^;]+)", r.headers["Set-Cookie"]).group(1)
    form = urllib.parse.urlencode(
        {
            "csrf": csrf,
            "username": creds["user"],
            "password": creds["password"],
            "totp": pyotp.TOTP(creds["totp"]).now(),
        }
    ).encode()
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(
        console + "login", data=form, headers={"Cookie": f"__Host-bg_csrf={csrf}"}
    )
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(req)
    assert redirect.value.code == 303
    assert redirect.value.headers["Location"] == "/console/sessions"
    session = re.search(r"__Host-bg_console=([^;]+)", str(redirect.value.headers)).group(1)
    req = urllib.request.Request(
        console + "sessions", headers={"Cookie": f"__Host-bg_console={session}"}
    )
    with urllib.request.urlopen(req) as r:
        assert r.url.endswith("/console/sessions") and b"id='filters'" in r.read()
    # the printed drill passes (alerts reach the demo's sink) and the report runs
    r = bg("drill", "--target", "shop", "--json", config=d / "config.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"]
    r = bg("report", "access", "--since", "1d", config=d / "config.toml")
    assert r.returncode == 0 and "BREAK-GLASS (drill)" in r.stdout, r.stderr


def test_config_option_after_the_subcommand(tmp_path):
    from breakglass.cli.main import build_parser

    p = build_parser()
    assert p.parse_args(["sessions", "-c", "x.toml"]).config == "x.toml"
    assert p.parse_args(["-c", "y.toml", "sessions"]).config == "y.toml"
    assert p.parse_args(["grant", "inspect", "-c", "z.toml", "-"]).config == "z.toml"
    assert p.parse_args(["users", "list", "--config", "u.toml"]).config == "u.toml"
    # psql's own -c (a command) still goes to psql
    args = p.parse_args(["-c", "a.toml", "psql", "shop", "-c", "select 1"])
    assert args.config == "a.toml" and args.psql_args[-2:] == ["-c", "select 1"]
