"""`grant issue` is atomic under real storage faults: a grant that cannot be audited (the audit
directory full, or read-only) is not left in the state and its token is never printed; the CLI
says why in one line (no traceback) and exits non-zero. Once there is room again, issuing
works."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from breakglass.proxy.context import open_state
from breakglass.recorder.audit import read_audit
from breakglass.throwaway.workdir import build_local_workdir
from tests.harness import run_cli
from tests.storage import abort_ext4, ext4, fill, remount_fresh, tmpfs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def workdir(pg_server, tmp_path):
    cfg = build_local_workdir(tmp_path / "gw", pg=pg_server, ssh=None, name="test-gw")
    return cfg


def issue(cfg, reason: str, *approval: str) -> subprocess.CompletedProcess:
    argv = ["grant", "issue", "--template", "db-readonly", "--to", "erin", "--target", "shop"]
    argv += ["--ttl", "10m", "--reason", reason, *(approval or ("--approved-by", "alice"))]
    env = {k: v for k, v in os.environ.items() if k != "BREAKGLASS_DEBUG"}
    return run_cli(cfg.path, *argv, env=env)


def stored_grants(cfg) -> list:
    async def run() -> list:
        state = open_state(cfg)
        try:
            return await state.list_grants(subject="erin")
        finally:
            await state.close()

    return asyncio.run(run())


def assert_refused_cleanly(cfg, r: subprocess.CompletedProcess, reason: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stdout == "", "no token (nor anything else) on stdout"
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("breakglass: error: "), r.stderr
    assert not [g for g in stored_grants(cfg) if g.reason == reason], "the grant stayed stored"


def assert_issued(cfg, r: subprocess.CompletedProcess, reason: str) -> None:
    import jwt

    assert r.returncode == 0, r.stderr
    jti = jwt.decode(r.stdout.strip(), options={"verify_signature": False})["jti"]
    assert [g.jti for g in stored_grants(cfg) if g.reason == reason] == [jti]
    issued = [e for e in read_audit(cfg.audit_dir, type="grant.issued") if e["jti"] == jti]
    assert len(issued) == 1 and issued[0]["reason"] == reason


def test_full_audit_directory_leaves_no_grant_behind(workdir):
    cfg = workdir
    with tmpfs(cfg.audit_dir, "1m"):
        filler = fill(cfg.audit_dir, leave=0)
        r = issue(cfg, "audit disk full")
        assert_refused_cleanly(cfg, r, "audit disk full")
        assert "could not be audited, so it was not issued" in r.stderr
        r = issue(cfg, "refused anyway", "--approved-by", "erin")  # self-approval, unauditable
        assert_refused_cleanly(cfg, r, "refused anyway")
        assert "refused (self-approval)" in r.stderr and "could not be audited" in r.stderr
        filler.unlink()
        assert not [e for e in read_audit(cfg.audit_dir) if e.get("reason") == "audit disk full"], (
            "nothing about the withdrawn grant was audited as issued"
        )
        assert_issued(cfg, issue(cfg, "room again"), "room again")


def test_read_only_audit_directory_leaves_no_grant_behind(workdir, tmp_path):
    cfg = workdir
    image = tmp_path / "audit.img"
    with ext4(cfg.audit_dir, image):
        assert_issued(cfg, issue(cfg, "before the fault"), "before the fault")
        abort_ext4(cfg.audit_dir)  # as the kernel does on an error: EROFS from now on
        r = issue(cfg, "audit read-only")
        assert_refused_cleanly(cfg, r, "audit read-only")
        assert "audit" in r.stderr
        remount_fresh(image, cfg.audit_dir)
        assert_issued(cfg, issue(cfg, "remounted"), "remounted")
