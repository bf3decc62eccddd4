"""`breakglass demo` also runs the grant service with the web console (a demo reviewer can
log in) and an alert sink, so the printed `drill` and `report access` lines work."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pyotp
import pytest

pytestmark = pytest.mark.timeout(120)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def bg(*argv: str, config) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", "-c", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_demo_serves_console_and_the_printed_security_lines_work(pg_server, tmp_path):
    d = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli.main", "demo", "--dir", str(d), "--no-ssh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:  # the ready banner (bounded by the test timeout)
            seen.append(line)
            if "Ctrl-C stops the demo" in line:
                break
        text = "".join(seen)
        env = {
            k: shlex.split(v)[0]
            for k, v in (
                ln.removeprefix("export ").split("=", 1)
                for ln in (d / "demo.env").read_text().splitlines()
            )
        }
        console = env["BREAKGLASS_CONSOLE_URL"]
        assert env["BREAKGLASS_SERVICE_URL"] + "/console/" == console
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
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"alert: .*\[DRILL\] Break-glass session", err), err
