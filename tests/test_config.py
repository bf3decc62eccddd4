"""Config loading: the starter config loads; every problem is reported with its key path."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from breakglass.cli.initdir import InitError, init_workdir, render_config
from breakglass.proxy.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_the_init_config():
    assert (ROOT / "config.example.toml").read_text() == render_config()


def test_init_creates_working_directory(tmp_path):
    d = tmp_path / "w"
    files = init_workdir(d)
    cfg = load_config(d / "config.toml")
    assert set(cfg.templates) == {"db-readonly", "ops-commands", "breakglass"}
    assert cfg.templates["db-readonly"].sql.mode == "read-only"
    assert cfg.templates["db-readonly"].max_ttl == 3600
    assert (
        cfg.templates["ops-commands"].max_ttl == 1800 and cfg.templates["ops-commands"].ssh.commands
    )
    bg = cfg.templates["breakglass"]
    assert bg.breakglass and bg.approvals == 0 and bg.ssh.shell and bg.sql.mode == "all"
    assert bg.requesters == ("@incident-managers",)
    for f in files:
        if f.name.endswith((".key", "_host_key", "upstream_ssh_key")):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f


def test_init_refuses_to_overwrite(tmp_path):
    init_workdir(tmp_path / "w")
    with pytest.raises(InitError, match="refusing to overwrite"):
        init_workdir(tmp_path / "w")


def problems(doc: dict, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(doc, base)
    return e.value.problems


def test_every_problem_reported_with_key_path(tmp_path):
    init_workdir(tmp_path)
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    doc["targets"]["postgres"]["orders"]["port"] = "5432"
    doc["targets"]["ssh"]["web-1"]["known_hosts"] = "missing/known_hosts"
    doc["templates"]["db-readonly"]["max_ttl"] = "forever"
    doc["templates"]["db-readonly"]["sql"]["mode"] = "write-anything"
    doc["gateway"]["leeway"] = "2m"
    doc["templates"]["breakglass"]["requesters"] = ["*"]
    doc["bogus"] = {}
    p = problems(doc, tmp_path)
    joined = "\n".join(p)
    assert "targets.postgres.orders.port: expected an integer" in joined
    assert "targets.ssh.web-1.known_hosts: file not found" in joined
    assert "templates.db-readonly.max_ttl:" in joined
    assert "templates.db-readonly.sql.mode: expected one of" in joined
    assert "gateway.leeway: must be at most 30s" in joined
    assert "templates.breakglass.requesters:" in joined
    assert "bogus: unknown section" in joined
    assert len(p) >= 7


def test_missing_sections(tmp_path):
    p = problems({}, tmp_path)
    assert any(x.startswith("gateway: missing") for x in p)
    assert any(x.startswith("issuer: missing") for x in p)


def test_bad_toml_and_missing_file(tmp_path):
    (tmp_path / "c.toml").write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_password_read_lazily(tmp_path, monkeypatch):
    init_workdir(tmp_path)
    cfg = load_config(tmp_path / "config.toml")
    target = cfg.postgres_targets["orders"]
    monkeypatch.delenv("BREAKGLASS_ORDERS_APP_RO_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="BREAKGLASS_ORDERS_APP_RO_PASSWORD is not set"):
        target.password("app_ro")
    monkeypatch.setenv("BREAKGLASS_ORDERS_APP_RO_PASSWORD", "s3cret")
    assert target.password("app_ro") == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_state_url_from_environment(tmp_path, monkeypatch):
    init_workdir(tmp_path)
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    doc["state"]["url_env"] = "BG_TEST_STATE_URL"
    monkeypatch.delenv("BG_TEST_STATE_URL", raising=False)
    assert any(
        "state.url_env: environment variable BG_TEST_STATE_URL is not set" in x
        for x in problems(doc, tmp_path)
    )
    monkeypatch.setenv("BG_TEST_STATE_URL", "mysql://nope")
    assert any("state.url_env: expected a postgresql:// URL" in x for x in problems(doc, tmp_path))
    monkeypatch.setenv("BG_TEST_STATE_URL", "postgresql://u:secret@127.0.0.1/db")
    cfg = parse_config(doc, tmp_path)
    assert cfg.state_url.endswith("/db") and "secret" not in repr(cfg)


def test_problems_in_late_fields_are_reported(tmp_path):
    init_workdir(tmp_path)
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    doc["gateway"]["warn_before_expiry"] = "soon"
    doc["recorder"]["commit_interval"] = -1
    p = "\n".join(problems(doc, tmp_path))
    assert "gateway.warn_before_expiry:" in p and "recorder.commit_interval: must be at least" in p


def test_recorder_store_section(tmp_path, monkeypatch):
    """[recorder.store]: validated with key paths; credentials are never accepted inline."""
    init_workdir(tmp_path)
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    assert parse_config(doc, tmp_path).store is None  # local directories only, by default
    doc["recorder"]["store"] = {
        "url": "s3://Bad_Bucket/x",
        "retention": "forever",
        "spool_limit": "lots",
        "secret_access_key": "AKIA...",
        "upload_lag": 0,
        "endpoint_url": "s3.example.com",
    }
    p = "\n".join(problems(doc, tmp_path))
    for want in (
        "recorder.store.url: ",
        "recorder.store.retention: ",
        "recorder.store.spool_limit: ",
        "recorder.store.secret_access_key: credentials never go in the config",
        "recorder.store.upload_lag: must be at least",
        "recorder.store.endpoint_url: expected an http",
    ):
        assert want in p, p
    assert "AKIA" not in p
    doc["recorder"]["store"] = {
        "url": "s3://recordings/gw-1/",
        "retention": "governance:30d",
        "spool_limit": "512MiB",
        "endpoint_url": "http://127.0.0.1:8333",
    }
    st = parse_config(doc, tmp_path).store
    assert (st.bucket, st.prefix, st.retention_mode, st.retention_days) == (
        "recordings",
        "gw-1",
        "GOVERNANCE",
        30,
    )
    assert st.spool_limit == 512 << 20 and st.upload_lag == 5.0


def test_trusted_keys_tied_to_issuers(tmp_path):
    from breakglass.cli.initdir import init_workdir
    from breakglass.proxy.context import grant_verifier

    init_workdir(tmp_path / "w")
    path = tmp_path / "w/config.toml"
    text = path.read_text().replace(
        'issuer-1 = "keys/issuer-1.pub"',
        'issuer-1 = "keys/issuer-1.pub"\npartner = { key = "keys/issuer-1.pub", issuer = "partner" }',
    )
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.trusted_key_issuers == {"partner": "partner"}
    v = grant_verifier(cfg)
    assert v.key_issuers == {"issuer-1": cfg.issuer_name, "partner": "partner"}
    path.write_text(text.replace('issuer = "partner" }', 'isuer = "partner" }'))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "issuer.trusted_keys.partner.isuer" in str(e.value)


def test_risky_command_patterns_are_warned_about_at_load(tmp_path):
    init_workdir(tmp_path / "w")
    path = tmp_path / "w/config.toml"
    text = path.read_text()
    text += """
[templates.risky]
targets = ["ssh:*"]
login = "deploy"
ssh = { commands = ["bash -c *", "less /var/log/*", "find /srv -exec ...", "python3 ..."] }
max_ttl = "1h"
requesters = ["*"]
approvers = ["@approvers"]
"""
    path.write_text(text)
    cfg = load_config(path)
    risky = [w for w in cfg.warnings if w.startswith("templates.risky.ssh: ")]
    joined = "\n".join(risky)
    for what in ("'bash' is a shell", "'less' is interactive", "find -exec", "interpreter"):
        assert what in joined, joined
    # a program glob is not a warning but an error
    path.write_text(text.replace('"python3 ..."', '"py* ..."'))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "must be a literal name" in str(e.value)


def test_templates_without_requesters_are_open_to_nobody(tmp_path):
    from breakglass.policy.templates import is_member

    init_workdir(tmp_path / "w")
    path = tmp_path / "w/config.toml"
    path.write_text(
        path.read_text()
        + """
[templates.quiet]
targets = ["ssh:*"]
login = "deploy"
ssh = { commands = ["uptime"] }
max_ttl = "1h"
approvers = ["@approvers"]
"""
    )
    cfg = load_config(path)
    assert cfg.templates["quiet"].requesters == ()
    assert not is_member("erin", cfg.templates["quiet"].requesters, cfg.groups)


def test_postgres_connection_check(tmp_path):
    init_workdir(tmp_path)
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    assert parse_config(doc, tmp_path).postgres_targets["orders"].connection_check == 1
    doc["targets"]["postgres"]["orders"]["connection_check"] = "0s"  # an older server
    assert parse_config(doc, tmp_path).postgres_targets["orders"].connection_check == 0
    doc["targets"]["postgres"]["orders"]["connection_check"] = "often"
    assert "targets.postgres.orders.connection_check:" in "\n".join(problems(doc, tmp_path))
