"""The bypass corpus against a command allowlist, through the real gateway to a real sshd:
each attempt refused, recorded, and nothing ran on the target (marker file absent)."""

from __future__ import annotations

import asyncio

import pytest

from tests.ssh_bypass_corpus import ALLOWLIST, CORPUS
from tests.ssh_gateway_fixture import GatewayHarness, ssh_gateway  # noqa: F401

pytestmark = pytest.mark.timeout(180)


@pytest.fixture()
def setup(ssh_gateway: GatewayHarness):  # noqa: F811
    work = ssh_gateway.sshd.workdir
    (work / "logs").mkdir(exist_ok=True)
    (work / "logs" / "app.log").write_text("app log line\n")
    (work / "secret").write_text("top secret\n")
    marker = work / "PWNED"
    marker.unlink(missing_ok=True)
    fmt = {"W": str(work), "M": str(marker)}
    allow = [p.format(**fmt) for p in ALLOWLIST]
    corpus = [(name, cmd.format(**fmt)) for name, cmd in CORPUS]
    yield ssh_gateway, allow, corpus, marker
    assert not marker.exists(), "a bypass attempt created the marker file on the target"


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30
    assert len({name for name, _ in CORPUS}) == len(CORPUS)


def test_exec_bypass_corpus_refused_recorded_and_never_run(setup):
    h, allow, corpus, marker = setup
    claims = h.claims(commands=allow)
    work = h.sshd.workdir

    async def go():
        results = []
        async with await h.connect(h.sign(claims)) as conn:
            # the grant does work for what it allows
            ok = await conn.run(f"cat {work}/logs/app.log", encoding=None)
            assert ok.exit_status == 0 and ok.stdout == b"app log line\n"
            for name, cmd in corpus:
                res = await conn.run(cmd, encoding=None)
                results.append((name, cmd, res))
        return results

    results = asyncio.run(go())
    for name, _cmd, res in results:
        assert res.exit_status == 126, (name, res.stdout, res.stderr)
        assert res.stdout == b"", name
        assert res.stderr.startswith(b"breakglass: denied: "), (name, res.stderr)
    assert not marker.exists()
    h.wait_session_ended(claims["jti"])
    evs = h.events(claims["jti"])
    decisions = [e for e in evs if e["kind"] == "decision"]
    assert len(decisions) == 1 + len(corpus)
    assert decisions[0]["allowed"] is True
    for (name, cmd, _res), d in zip(results, decisions[1:], strict=True):
        assert d["allowed"] is False, name
        assert d["text"] == cmd, name
        assert d["rule"] != "allowed", name
    upstream = [e for e in evs if e["kind"] == "upstream"]
    assert len(upstream) == 1  # only the allowed cat ever reached the target
    end = evs[-1]
    assert end["commands"] == 1 and end["denials"] == len(corpus)


# Lines the restricted shell's editor changes before judging (tab, escape sequences) or
# that are not single lines, or blank: covered by the exec test above.
_NOT_SHELL_LINES = {
    "newline",
    "carriage-return",
    "line-continuation",
    "nul-byte",
    "tab-in-quotes",
    "escape-sequence",
    "empty",
    "blank",
}


def test_restricted_shell_bypass_corpus_refused(setup):
    h, allow, corpus, marker = setup
    lines = [(name, cmd) for name, cmd in corpus if name not in _NOT_SHELL_LINES]
    claims = h.claims(commands=allow)
    script = "".join(cmd + "\n" for _, cmd in lines) + "uptime\nexit\n"
    res = h.ssh(h.sign(claims), input=script.encode(), tty=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.decode().count("breakglass: denied: ") == len(lines)
    assert b"load average" in res.stdout
    assert not marker.exists()
    h.wait_session_ended(claims["jti"])
    decisions = [e for e in h.events(claims["jti"]) if e["kind"] == "decision"]
    assert [d["allowed"] for d in decisions] == [False] * len(lines) + [True]
