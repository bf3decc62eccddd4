"""The shipped systemd units (deploy/systemd/) pass `systemd-analyze verify` and keep their
hardening (`systemd-analyze security --offline`). No running systemd is needed: both work
on unit files; ExecStart= is pointed at this machine's real `breakglass` so that verify's
"is the command executable" check is meaningful."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _unavailable

pytestmark = pytest.mark.timeout(60)

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
INSTALLED = "/opt/breakglass/venv/bin/breakglass"
SERVICES = (
    "breakglass-gateway.service",
    "breakglass-service.service",
    "breakglass-verify.service",
    "breakglass-drill@.service",
)
TIMERS = ("breakglass-verify.timer", "breakglass-drill@.timer")


@pytest.fixture(scope="module")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        _unavailable("systemd-analyze is not installed (Debian package systemd)")
    return tool


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The units with ExecStart= pointing at the `breakglass` of this interpreter."""
    exe = shutil.which("breakglass", path=str(Path(sys.executable).parent)) or shutil.which(
        "breakglass"
    )
    if exe is None:
        pytest.fail("the breakglass entry point is not installed (pip install -e .)")
    out = tmp_path_factory.mktemp("units")
    for f in UNITS.iterdir():
        (out / f.name).write_text(f.read_text().replace(INSTALLED, exe))
    return out


def run(analyze: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice", SYSTEMD_COLORS="0", SYSTEMD_PAGER="")
    return subprocess.run(
        [analyze, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def test_every_unit_is_shipped():
    assert sorted(f.name for f in UNITS.iterdir()) == sorted(SERVICES + TIMERS)
    for f in SERVICES:
        assert INSTALLED in (UNITS / f).read_text()


def test_units_pass_systemd_analyze_verify(analyze, units):
    r = run(analyze, "verify", "--man=no", *SERVICES, *TIMERS, cwd=units)
    # verify exits 0 on unknown keys and bad values; it only warns. Any output is a failure.
    assert r.returncode == 0 and (r.stdout + r.stderr).strip() == "", r.stdout + r.stderr


def test_verify_catches_a_broken_unit(analyze, units, tmp_path):
    """The check above can fail: a misspelt key and a bad value are reported."""
    text = (units / "breakglass-gateway.service").read_text()
    text = text.replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe")
    text = text.replace("ProtectSystem=strict", "ProtectSystm=strict")
    (tmp_path / "breakglass-gateway.service").write_text(text)
    r = run(analyze, "verify", "--man=no", "breakglass-gateway.service", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert "Failed to parse boolean value" in out and "Unknown key" in out, out


@pytest.mark.parametrize("unit", SERVICES)
def test_services_are_hardened(analyze, units, unit):
    text = (units / unit).read_text()
    for line in (
        "User=breakglass",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ):
        assert line in text, (unit, line)
    if unit == "breakglass-gateway.service":
        assert "LimitNOFILE=65536" in text
    writable = re.findall(r"^ReadWritePaths=(.*)$", text, re.M)
    assert writable in ([], ["/var/lib/breakglass"]), writable
    if writable:  # keys and config stay read-only inside the state directory
        assert "ReadOnlyPaths=/var/lib/breakglass/config.toml /var/lib/breakglass/keys" in text
    r = run(analyze, "security", "--offline=yes", "--man=no", "--no-pager", unit, cwd=units)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout  # "OK" on systemd's 0-10 scale; measured 1.1-1.5
