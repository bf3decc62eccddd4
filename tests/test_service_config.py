"""Validation of the grant service's config sections, with key paths in every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from breakglass.proxy.config import ConfigError
from breakglass.service.api import parse_service_settings


def problems(doc: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_service_settings(doc, Path("/nonexistent"))
    return e.value.problems


def test_plain_http_only_on_loopback():
    ps = problems({"service": {"listen": "0.0.0.0:8700"}, "identity": {"users_file": "u"}})
    assert any(p.startswith("service.tls_cert: TLS is required") for p in ps)
    s = parse_service_settings(
        {"service": {"listen": "127.0.0.1:8700"}, "identity": {"users_file": "u"}}, Path("/x")
    )
    assert s.url == "http://127.0.0.1:8700" and s.users_file == Path("/x/u")


def test_identity_required_and_checked():
    assert any(p.startswith("identity:") for p in problems({}))
    ps = problems({"identity": {"oidc": {"issuer": "i", "jwks_url": "http://idp.example/k"}}})
    assert "identity.oidc.audience: missing" in ps
    assert any(p.startswith("identity.oidc.jwks_url: must be https") for p in ps)
    ps = problems({"identity": {"users_file": "u", "colour": 1}})
    assert any(p.startswith("identity.colour: unknown key") for p in ps)


def test_auto_approve_rules_checked():
    ps = problems(
        {
            "identity": {"users_file": "u"},
            "service": {
                "auto_approve": {
                    "anyone": {"templates": ["db-*"]},
                    "bad": {"templates": ["x"], "windows": ["someday 9-5"], "oncall": "yes"},
                }
            },
        }
    )
    assert any(
        p.startswith("service.auto_approve.anyone: state at least one condition") for p in ps
    )
    assert any(p.startswith("service.auto_approve.bad.windows[0]:") for p in ps)
    assert "service.auto_approve.bad.oncall: expected true or false" in ps


def test_state_url(monkeypatch):
    base = {"identity": {"users_file": "u"}}
    monkeypatch.delenv("BG_TEST_URL", raising=False)
    ps = problems(dict(base, state={"url_env": "BG_TEST_URL"}))
    assert "state.url_env: environment variable BG_TEST_URL is not set" in ps
    monkeypatch.setenv("BG_TEST_URL", "postgresql://u:p@h/db")
    s = parse_service_settings(dict(base, state={"url_env": "BG_TEST_URL"}), Path("/x"))
    assert s.state_url == "postgresql://u:p@h/db" and "p@h" not in repr(s)
    assert any(p.startswith("state.url:") for p in problems(dict(base, state={"url": "mysql://x"})))
