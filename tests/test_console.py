"""The web console in a real browser (headless Chromium via Selenium), served by the real grant
service, showing recordings a real gateway made from real SSH and PostgreSQL sessions.

Log in (password + TOTP), list and filter sessions, open an SSH session (verified first), play
and seek it in xterm.js and read the terminal's text, search a PostgreSQL statement timeline,
record a review; CSRF and non-reviewers refused; a recording crafted with HTML, script tags,
OSC and DCS sequences runs nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import pyotp
import pytest

from breakglass.recorder.audit import read_audit
from breakglass.service.identity import add_local_user
from tests.conftest import _unavailable
from tests.harness import GatewayThread, ssh_connect, ssh_shell
from tests.pg_client import client_tls
from tests.test_index_helpers import Recorder
from tests.test_service_support import PASSWORDS, ServiceThread, add_service_config

pytestmark = pytest.mark.timeout(120)

REVIEWER, REVIEWER_PW = "rita", "rita-password-12"
HOSTILE_USER = "<img src=x onerror=window.__pwned=1>"
HOSTILE_OUTPUT = (
    b"<script>window.__pwned=2</script> <img src=x onerror=window.__pwned=3>\r\n"
    b"\x1b]52;c;cHduZWQ=\x07\x1b]8;;javascript:window.__pwned=4\x07click\x1b]8;;\x07\r\n"
    b"\x1bP+q544e\x1b\\\x1b]0;pwned-title\x07\x1b[21t\x1b[6n hostile-end\r\n"
)


def chromium_driver(tmp: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    binary = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if not binary or not driver_bin:
        _unavailable("chromium and chromium-driver are not installed (apt-get install them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


async def ssh_pty_session(gw: GatewayThread, target: str, token: str) -> None:
    async with ssh_shell(gw, target, token) as (proc, until):
        proc.stdin.write(b"echo first-marker-$((6*7))\n")
        await until(b"first-marker-42")
        proc.stdin.write(b"echo second-marker-$((7*9))\n")
        await until(b"second-marker-63")
        proc.stdin.write(b"exit\n")
        await asyncio.wait_for(proc.wait_closed(), 10)


async def ssh_exec(gw: GatewayThread, target: str, token: str) -> None:
    async with ssh_connect(gw, target, token) as conn:
        assert (await conn.run("uptime")).exit_status == 0
        assert (await conn.run("rm -rf /tmp/x")).exit_status != 0  # denied


async def pg_session(gw: GatewayThread, token: str, user: str, statements: list[str]) -> None:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.pg_port,
        user=user,
        password=token,
        database="shop",
        ssl=client_tls(gw.dir / "keys/gateway_tls.crt"),
    )
    try:
        for s in statements:
            try:
                await conn.fetch(s)
            except asyncpg.PostgresError:
                pass
    finally:
        await conn.close()


def write_hostile(cfg) -> str:
    rec = Recorder.for_config(cfg)
    w = rec.open(protocol="ssh", user=HOSTILE_USER, reason="<b>bold</b><script>x()</script>")
    w.event("pty", channel="0", term="xterm", cols=100, rows=30)
    w.output(HOSTILE_OUTPUT, "0")
    w.close("client disconnected", commands=0, denials=0)
    return w.path.stem


@pytest.fixture(scope="module")
def env(pg_server, ssh_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    gw = GatewayThread(base / "gw", pg=pg_server, ssh=ssh_server).start()
    ssh_target = next(iter(gw.cfg.ssh_targets))
    asyncio.run(ssh_pty_session(gw, ssh_target, gw.grant("ssh-shell", target=ssh_target)))
    asyncio.run(ssh_exec(gw, ssh_target, gw.grant("ops-commands", target=ssh_target, user="bob")))
    asyncio.run(
        pg_session(
            gw,
            gw.grant("breakglass", user="ina", breakglass=True),
            "ina",
            ["select count(*) from orders", "select 'needle-' || 7", "select 1/0"],
        )
    )
    gw.wait_idle()
    hostile = write_hostile(gw.cfg)
    secrets = add_service_config(base / "gw")
    secrets[REVIEWER] = add_local_user(
        base / "gw" / "users.toml", REVIEWER, REVIEWER_PW, ("security",)
    )
    svc = ServiceThread(base / "gw" / "config.toml").start()
    driver = chromium_driver(base)
    try:
        yield {"gw": gw, "svc": svc, "driver": driver, "secrets": secrets, "hostile": hostile}
    finally:
        driver.quit()
        svc.stop()
        gw.stop()


def wait(driver, cond, timeout: float = 15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)


def login(env, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    d = env["driver"]
    d.delete_all_cookies()
    d.get(env["svc"].url + "/console/login")
    d.find_element(By.ID, "username").send_keys(user)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "totp").send_keys(pyotp.TOTP(env["secrets"][user]).now())
    d.find_element(By.ID, "login-submit").click()


def as_reviewer(env) -> None:
    """Log in as the reviewer unless the browser already is (a TOTP code works only once)."""
    from selenium.webdriver.common.by import By

    d = env["driver"]
    d.get(env["svc"].url + "/console/sessions")
    if not d.find_elements(By.ID, "sessions"):
        login(env, REVIEWER, REVIEWER_PW)
    wait(d, lambda d: d.find_elements(By.ID, "sessions"))


def screen_has(d, text: str, present: bool = True) -> str:
    """Wait until xterm.js has drawn (or no longer shows) ``text``; return the screen."""
    wait(d, lambda d: (text in terminal_text(d)) == present)
    return terminal_text(d)


def terminal_text(d) -> str:
    return d.execute_script(
        "const r = document.querySelector('#terminal .xterm-rows');"
        "return r ? Array.from(r.children).map(c => c.textContent).join('\\n') : '';"
    )


def test_non_reviewer_refused_and_pages_need_login(env):
    from selenium.webdriver.common.by import By

    d = env["driver"]
    d.delete_all_cookies()
    d.get(env["svc"].url + "/console/sessions")
    assert d.current_url.endswith("/console/login")
    login(env, "erin", PASSWORDS["erin"])
    err = wait(d, lambda d: d.find_element(By.ID, "login-error"))
    assert "may not open the console" in err.text
    # and the JSON API's bearer tokens do not open it either
    req = urllib.request.Request(env["svc"].url + "/console/sessions")
    with urllib.request.urlopen(req) as r:  # redirected to the login page
        assert r.url.endswith("/console/login")


def test_login_list_play_seek_timeline_and_review(env):
    from selenium.webdriver.common.by import By

    d, svc, gw = env["driver"], env["svc"], env["gw"]
    as_reviewer(env)
    rows = d.find_elements(By.CSS_SELECTOR, "tr.session-row")
    assert len(rows) == 4
    cookies = {c["name"]: c for c in d.get_cookies()}
    sess = cookies["__Host-bg_console"]
    assert sess["secure"] and sess["httpOnly"] and sess["sameSite"] == "Strict"

    # filters: break-glass only
    d.get(svc.url + "/console/sessions?breakglass=1")
    rows = d.find_elements(By.CSS_SELECTOR, "tr.session-row")
    assert len(rows) == 1 and "postgres:shop" in rows[0].text and "break-glass" in rows[0].text
    d.get(svc.url + "/console/sessions?user=nobody")
    assert d.find_elements(By.ID, "no-sessions")

    # the SSH session: verified, then played in xterm.js
    d.get(svc.url + "/console/sessions?user=erin")
    d.find_element(By.CSS_SELECTOR, "tr.session-row a").click()
    assert "VERIFIED" in wait(d, lambda d: d.find_element(By.ID, "verify")).text
    wait(d, lambda d: d.find_element(By.ID, "player").get_attribute("data-ready") == "1")
    d.execute_script(
        "document.getElementById('speed').value='16';"
        "document.getElementById('speed').dispatchEvent(new Event('change'));"
    )
    d.find_element(By.ID, "play").click()
    wait(d, lambda d: d.find_element(By.ID, "player").get_attribute("data-state") == "ended", 30)
    text = screen_has(d, "second-marker-63")
    assert "first-marker-42" in text, text
    # seek back to the start: the screen is redrawn from there
    d.execute_script(
        "const s=document.getElementById('seek'); s.value='0';s.dispatchEvent(new Event('input'));"
    )
    screen_has(d, "second-marker-63", present=False)
    assert d.find_element(By.ID, "clock").text.startswith("0:00 /")
    # typed input shown on request (reverse-video markers of the keystrokes)
    d.find_element(By.ID, "show-input").click()
    d.execute_script(
        "const s=document.getElementById('seek'); s.value=s.max;"
        "s.dispatchEvent(new Event('input'));"
    )
    screen_has(d, "second-marker-63")

    # commands and denials are markers on the timeline; a marker seeks there
    d.get(svc.url + "/console/sessions?user=bob")
    d.find_element(By.CSS_SELECTOR, "tr.session-row a").click()
    wait(d, lambda d: d.find_element(By.ID, "player").get_attribute("data-ready") == "1")
    markers = d.find_elements(By.CSS_SELECTOR, "#markers .marker")
    labels = [m.text for m in markers]
    assert any("exec: uptime" in x for x in labels), labels
    assert any("DENIED exec: rm -rf /tmp/x" in x for x in labels), labels
    markers[-1].click()
    wait(d, lambda d: float(d.find_element(By.ID, "player").get_attribute("data-position")) > 0)
    screen_has(d, "load average")

    # the PostgreSQL session: statement timeline with search
    d.get(svc.url + "/console/sessions?breakglass=1")
    d.find_element(By.CSS_SELECTOR, "tr.session-row a").click()
    stmts = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline tr.stmt"))
    assert any("division by zero" in r.text for r in stmts)
    d.find_element(By.ID, "timeline-search").send_keys("needle")
    visible = [r for r in d.find_elements(By.CSS_SELECTOR, "#timeline tr.stmt") if r.is_displayed()]
    assert len(visible) == 1 and "needle" in visible[0].text

    # review it
    d.get(svc.url + "/console/review")
    row = wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "tr.queue-row"))
    sid = row.get_attribute("data-session")
    row.find_element(By.NAME, "notes").send_keys("checked the statements in the console")
    row.find_element(By.CSS_SELECTOR, "select[name=outcome]").send_keys("follow-up")
    row.find_element(By.CSS_SELECTOR, "button").click()
    assert sid in wait(d, lambda d: d.find_element(By.ID, "review-done")).text
    svc.call(asyncio.to_thread(svc.service.audit.flush))
    done = [e for e in read_audit(gw.cfg.audit_dir, type="review.done") if e["session"] == sid]
    assert done and done[-1]["actor"] == REVIEWER and done[-1]["outcome"] == "follow-up"
    viewed = read_audit(gw.cfg.audit_dir, type="recording.replayed")
    assert any(e.get("actor") == REVIEWER and e.get("via") == "console" for e in viewed)

    # CSRF: the same logged-in cookie without the form's token is refused
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in d.get_cookies())
    req = urllib.request.Request(
        svc.url + f"/console/review/{sid}",
        data=b"notes=forged&outcome=ok",
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req)
    assert exc.value.code == 403


def test_hostile_recording_runs_nothing(env):
    from selenium.webdriver.common.by import By

    d, svc = env["driver"], env["svc"]
    as_reviewer(env)
    d.get(svc.url + f"/console/sessions/{env['hostile']}")
    assert "VERIFIED" in d.find_element(By.ID, "verify").text
    page = d.page_source
    assert "<img src=x" not in page and "<b>bold</b>" not in page
    assert "&lt;img src=x onerror" in page
    wait(d, lambda d: d.find_element(By.ID, "player").get_attribute("data-ready") == "1")
    d.execute_script(
        "const s=document.getElementById('seek'); s.value=s.max;"
        "s.dispatchEvent(new Event('input'));"
    )
    text = screen_has(d, "hostile-end")
    assert "<script>window.__pwned=2</script>" in text
    assert "⟦OSC 52⟧" in text and "⟦DCS⟧" in text
    # links in the terminal are not followed: click where the OSC 8 text is
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains

    for _ in range(5):  # xterm.js redraws rows (cursor blink): find and click in one go
        try:
            el = d.execute_script(
                "return Array.from(document.querySelectorAll('#terminal .xterm-rows div'))"
                ".find(r => r.textContent.includes('click'));"
            )
            ActionChains(d).move_to_element_with_offset(el, -280, 0).click().perform()
            break
        except StaleElementReferenceException:
            continue
    assert d.execute_script("return window.__pwned") is None
    assert d.current_url.endswith(f"/console/sessions/{env['hostile']}")
    assert "pwned" not in d.title
    # the CSP is there, and nothing the page loads broke it
    with urllib.request.urlopen(svc.url + "/console/login") as r:
        csp = r.headers["Content-Security-Policy"]
    assert (
        "script-src 'self'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    logs = json.dumps(d.get_log("browser"))
    assert "Content Security Policy" not in logs, logs


def test_watch_a_live_ssh_session_in_the_browser(env):
    """A live session opened in the console follows it: the engineer is told, and what they
    see appears in the browser within a second; the watch is audited."""
    d, svc, gw = env["driver"], env["svc"], env["gw"]
    as_reviewer(env)
    target = next(iter(gw.cfg.ssh_targets))

    async def engineer() -> float:
        async with ssh_shell(gw, target, gw.grant("ssh-shell", target=target, user="carol")) as (
            proc,
            until,
        ):
            proc.stdin.write(b"echo before-$((1+1))\n")
            await until(b"before-2")
            sid = next(s["id"] for s in gw.sessions() if s["user"] == "carol")
            await asyncio.to_thread(d.get, svc.url + f"/console/sessions/{sid}")
            await until(b"rita is watching this session (read-only)")
            await asyncio.to_thread(screen_has, d, "before-2")
            proc.stdin.write(b"echo live-$((2+3))\n")
            t_engineer = await until(b"live-5\r\n")
            await asyncio.to_thread(screen_has, d, "live-5")
            t_browser = time.monotonic()
            proc.stdin.write(b"exit\n")
            await asyncio.wait_for(proc.wait_closed(), 10)
            return t_browser - t_engineer

    lag = asyncio.run(engineer())
    assert lag < 1.0, lag
    svc.call(asyncio.to_thread(svc.service.audit.flush))
    watched = read_audit(gw.cfg.audit_dir, type="session.watched")
    assert any(e.get("actor") == REVIEWER and e.get("via") == "console" for e in watched)


def test_player_follows_recorded_resizes(env):
    """A session that starts at 100x30 and is enlarged to 120x35 inside a full-screen program:
    the player starts at the recorded size and resizes where the engineer did, so the last
    commands and the logout are on screen; seeking back restores the first size."""
    from selenium.webdriver.common.by import By

    from tests.test_replay_fixes import write_fullscreen_then_resize

    d, svc, gw = env["driver"], env["svc"], env["gw"]
    sid = write_fullscreen_then_resize(Recorder.for_config(gw.cfg)).stem
    as_reviewer(env)
    d.get(svc.url + f"/console/sessions/{sid}")
    assert "VERIFIED" in d.find_element(By.ID, "verify").text
    player = wait(d, lambda d: d.find_element(By.ID, "player"))
    wait(d, lambda d: player.get_attribute("data-ready") == "1")
    assert player.get_attribute("data-size") == "100x30"
    rows = "return document.querySelectorAll('#terminal .xterm-rows > div').length"
    assert d.execute_script(rows) == 30
    d.execute_script(
        "const s=document.getElementById('seek'); s.value=s.max;"
        "s.dispatchEvent(new Event('input'));"
    )
    text = screen_has(d, "$ logout")
    wait(d, lambda d: player.get_attribute("data-size") == "120x35")
    assert d.execute_script(rows) == 35
    for i in range(3, 12):  # the last commands, one per line, none piled on the bottom row
        assert f"after-{i}" in text.split("\n"), text
    d.execute_script(
        "const s=document.getElementById('seek'); s.value=0; s.dispatchEvent(new Event('input'));"
    )
    wait(d, lambda d: player.get_attribute("data-size") == "100x30")
    wait(d, lambda d: d.execute_script(rows) == 30)
