"""Compatibility matrix rows for pgJDBC (Debian's libpostgresql-jdbc-java) and node-postgres.

Each client runs its everyday tasks through the real gateway on a read-only and a read-write
grant: the task works, and on read-only a write is refused with 42501. The client programs are
in tests/clients/ (one run per grant, printing one line per task).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from breakglass.recorder.reader import read_events
from tests.conftest import _unavailable
from tests.harness import GatewayThread

pytestmark = pytest.mark.timeout(120)

CLIENTS = Path(__file__).parent / "clients"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
GRANTS = {"read-only": "db-readonly", "read-write": "db-readwrite"}


@pytest.fixture(scope="module")
def gw(pg_server, tmp_path_factory):
    g = GatewayThread(tmp_path_factory.mktemp("pg-clients") / "gw", pg=pg_server).start()
    yield g
    g.stop()


def ca(gw: GatewayThread) -> str:
    return str(gw.dir / "keys/gateway_tls.crt")


# ------------------------------------------------------------------------------------ pgJDBC


@pytest.fixture(scope="module")
def jdbc(tmp_path_factory):
    """CompatCheck.java compiled once against Debian's pgJDBC."""
    if not JDBC_JAR.exists():
        _unavailable(
            f"pgJDBC is not installed ({JDBC_JAR}; apt-get install libpostgresql-jdbc-java)"
        )
    if not shutil.which("javac") or not shutil.which("java"):
        _unavailable("a JDK is not installed (apt-get install default-jdk-headless)")
    out = tmp_path_factory.mktemp("jdbc")
    subprocess.run(
        ["javac", "-cp", str(JDBC_JAR), "-d", str(out), str(CLIENTS / "jdbc/CompatCheck.java")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def run_jdbc(classes: Path, gw: GatewayThread, token: str) -> dict[str, str]:
    r = subprocess.run(
        [
            "java",
            "-cp",
            f"{classes}:{JDBC_JAR}",
            "CompatCheck",
            str(gw.pg_port),
            token,
            ca(gw),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def jdbc_results(gw, jdbc):
    """grant -> (task results, the session's recording): one JVM run per grant."""
    out = {}
    for grant, template in GRANTS.items():
        before = set(gw.cfg.recordings_dir.glob("*.rec"))
        res = run_jdbc(jdbc, gw, gw.grant(template))
        gw.wait_idle()
        sessions = [list(read_events(p)) for p in set(gw.cfg.recordings_dir.glob("*.rec")) - before]
        [events] = [
            evs for evs in sessions if any("/* fetchsize */" in e.get("text", "") for e in evs)
        ]
        out[grant] = (res, events)
    return out


@pytest.mark.parametrize("grant", GRANTS)
def test_jdbc_everyday_tasks(jdbc_results, grant):
    res, events = jdbc_results[grant]
    assert res["fetchSize"] == "500"
    assert res["prepared"] == "Customer 42"
    assert res["write"] == ("error 42501" if grant == "read-only" else "1")
    assert res["readOnlySelect"] == "200"
    # setReadOnly(true): refused by the gateway on read-only, by the server (25006) on read-write
    assert res["readOnlyWrite"] == ("error 42501" if grant == "read-only" else "error 25006")
    assert res["cancel"] == "error 57014"
    assert int(res["cancelSeconds"]) < 10
    assert res["afterCancel"] == "1"
    [q] = [e for e in events if e["kind"] == "query" and "/* fetchsize */" in e.get("text", "")]
    [result] = [e for e in events if e["kind"] == "result" and e.get("n") == q["n"]]
    assert (result["rows"], result["fetches"]) == (500, 11)  # 10 batches of 50, then none left
    [p] = [e for e in events if e["kind"] == "query" and "/* prepared */" in e.get("text", "")]
    assert p["params"] == ["42"]  # sent in binary (int8), recorded as its value
    assert any(e["kind"] == "cancel" for e in events)


@pytest.mark.parametrize("grant", GRANTS)
def test_jdbc_current_schema(jdbc_results, grant):
    """pgJDBC's currentSchema is a search_path startup parameter (applied: these grants have
    no table list); setSchema() runs SET search_path."""
    res, _events = jdbc_results[grant]
    assert res["currentSchema"] == "secret"
    assert res["setSchema"] == "public"


# ------------------------------------------------------------------------------ node-postgres


@pytest.fixture(scope="module")
def node_pg():
    """tests/clients/node with `pg` installed from the npm registry (once; .ci/run does it too)."""
    if not shutil.which("node") or not shutil.which("npm"):
        _unavailable("node and npm are not installed (apt-get install nodejs npm)")
    here = CLIENTS / "node"
    if not (here / "node_modules/pg/package.json").exists():
        r = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            _unavailable(f"npm ci failed in {here}: {r.stderr[-500:]}")
    return here


def run_node(here: Path, gw: GatewayThread, token: str) -> dict:
    r = subprocess.run(
        ["node", str(here / "compat.js"), str(gw.pg_port), token, ca(gw)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_results(gw, node_pg):
    return {grant: run_node(node_pg, gw, gw.grant(template)) for grant, template in GRANTS.items()}


@pytest.mark.parametrize("grant", GRANTS)
def test_node_pool(node_results, grant):
    res = node_results[grant]
    assert res["pool"] == [200 - i for i in range(9)]
    expected = {"error": "42501"} if grant == "read-only" else {"ok": 1}
    assert res["poolWrite"] == expected
    assert res["afterTimeout"] == 1


@pytest.mark.parametrize("grant", GRANTS)
def test_node_statement_timeout(node_results, grant):
    """node-postgres sends statement_timeout as a startup parameter: applied, and it fires."""
    res = node_results[grant]
    assert res["statementTimeoutSetting"] == "300ms"
    assert res["statementTimeout"] == {"error": "57014"}
