"""Settings judged alike for SET, set_config() and the startup packet (policy/sql_settings.py)."""

from __future__ import annotations

import pytest

from breakglass.policy.sql_rules import SqlChecker, SqlRules
from breakglass.policy.sql_settings import (
    StartupRefused,
    parse_options,
    search_path_problem,
    split_identifier_list,
)

RO = SqlRules("read-only")
RW = SqlRules("read-write")
TABLES = SqlRules("read-only", ("public.orders",))
ALL = SqlRules("all")


def test_options_are_split_like_postgresql():
    assert parse_options(r"-c statement_timeout=5 -csearch_path=a,\ b --lock-timeout=1s") == [
        ("statement_timeout", "5"),
        ("search_path", "a, b"),
        ("lock_timeout", "1s"),
    ]
    assert parse_options("  ") == []
    for bad in ("-d 5", "-F", "statement_timeout=5", "-c", "-c =x", "--x"):
        with pytest.raises(StartupRefused):
            parse_options(bad)


def test_identifier_lists():
    assert split_identifier_list('Public, "My Schema", "$user"') == ["public", "My Schema", "$user"]
    assert split_identifier_list("") == []
    assert split_identifier_list("a,,b") is None
    assert split_identifier_list('"unterminated') is None


@pytest.mark.parametrize(
    "path,restricted,ok",
    [
        (["public"], True, True),
        (["pg_catalog", "public"], True, True),
        ([], True, True),
        (["secret", "public"], True, False),
        (["$user", "public"], True, False),
        (["app", "public"], False, True),
        (["app", "pg_catalog"], False, False),
        (["pg_temp"], False, False),
        (["public", "pg_temp_3"], False, False),
        (["cron"], False, False),
        (None, False, False),
    ],
)
def test_search_path_rule(path, restricted, ok):
    assert (search_path_problem(path, restricted) is None) is ok


def test_startup_settings_applied_with_pins():
    got = TABLES.startup_settings(
        {
            "user": "erin",
            "database": "shop",
            "application_name": "psql",
            "client_encoding": "'utf-8'",
            "options": "-c statement_timeout=1000 -c application_name=x",
            "DateStyle": "ISO, MDY",
            "_pq_.something": "1",
        }
    )
    assert got == {
        "statement_timeout": "1000",
        "application_name": "x",
        "client_encoding": "'utf-8'",
        "DateStyle": "ISO, MDY",
        "standard_conforming_strings": "on",
        "default_transaction_read_only": "on",
        "search_path": "public",
    }
    # libpq's client_encoding=auto under the C locale: ASCII is a subset of UTF-8
    assert RO.startup_settings({"client_encoding": "SQL_ASCII"})["client_encoding"] == "UTF8"
    # an allowed search_path replaces the pinned one
    assert TABLES.startup_settings({"search_path": "pg_catalog, public"})["search_path"] == (
        "pg_catalog, public"
    )
    assert RO.startup_settings({"search_path": "app"})["search_path"] == "app"
    assert RW.startup_settings({"default_transaction_read_only": "off"}) == {
        "default_transaction_read_only": "off",
        "client_encoding": "UTF8",
        "standard_conforming_strings": "on",
    }
    # mode all: applied as asked, options included
    assert ALL.startup_settings({"options": "-c role=admin", "search_path": "x"}) == {
        "role": "admin",
        "search_path": "x",
    }


@pytest.mark.parametrize(
    "rules,params,named",
    [
        (RO, {"options": "-c default_transaction_read_only=off"}, "default_transaction_read_only"),
        (RO, {"default_transaction_read_only": "off"}, "default_transaction_read_only"),
        (RO, {"standard_conforming_strings": "off"}, "standard_conforming_strings"),
        (RO, {"client_encoding": "SJIS"}, "client_encoding"),
        (RO, {"role": "postgres"}, "role"),
        (RO, {"session_authorization": "postgres"}, "session_authorization"),
        (RO, {"options": "-c session_replication_role=replica"}, "session_replication_role"),
        (RO, {"search_path": "pg_temp, public"}, "search_path"),
        (TABLES, {"search_path": "secret"}, "search_path"),
        (TABLES, {"options": "-c search_path=secret"}, "search_path"),
        (RO, {"replication": "database"}, "replication"),
        (ALL, {"replication": "true"}, "replication"),
        (ALL, {"options": "-B 100"}, "-B"),
        (RO, {"myext.flag": "1"}, "myext.flag"),
    ],
)
def test_startup_settings_refused_naming_them(rules, params, named):
    with pytest.raises(StartupRefused, match=named.replace(".", r"\.")):
        rules.startup_settings(params)


def test_parameter_status_search_path_follows_the_rule():
    assert TABLES.parameter_problem("search_path", "public") is None
    assert TABLES.parameter_problem("search_path", '""') is None
    assert TABLES.parameter_problem("search_path", "pg_catalog, public") is None
    assert "search_path" in TABLES.parameter_problem("search_path", "secret, public")
    assert RO.parameter_problem("search_path", "app, public") is None
    assert RO.parameter_problem("search_path", "app, pg_catalog") is not None
    assert RO.parameter_problem("default_transaction_read_only", "off") is not None
    assert RO.parameter_problem("client_encoding", "UTF8") is None


def test_set_config_verdicts_are_never_shared_by_shape():
    """set_config('jit', 'off') and set_config('default_transaction_read_only', 'off')
    normalise to the same shape: the first verdict must not answer for the second."""
    checker = SqlChecker(RO)
    assert checker.check("SELECT set_config('jit', 'off', false)").allowed
    assert checker.check("SELECT set_config('jit', 'off', false)", single=True).allowed
    for single in (False, True):
        v = checker.check(
            "SELECT set_config('default_transaction_read_only', 'off', false)", single
        )
        assert not v.allowed and v.rule == "function-denied"
        v = checker.check("SELECT set_config('search_path', 'pg_temp', false)", single)
        assert not v.allowed


def test_set_config_matches_set():
    """Literal set_config() and SET agree, statement for statement."""
    cases = [
        ("statement_timeout", "5s"),
        ("jit", "off"),
        ("search_path", "public"),
        ("search_path", "secret"),
        ("search_path", "x, pg_catalog"),
        ("default_transaction_read_only", "off"),
        ("default_transaction_read_only", "on"),
        ("client_encoding", "UTF8"),
        ("client_encoding", "LATIN1"),
        ("standard_conforming_strings", "off"),
        ("session_replication_role", "replica"),
        ("role", "postgres"),
    ]
    for rules in (RO, RW, TABLES):
        checker = SqlChecker(rules, cache_size=0)
        for name, value in cases:
            via_set = checker.check(f"SET {name} = '{value}'").allowed
            if name == "search_path":
                via_set = checker.check(f"SET {name} = {value}").allowed
            via_fn = checker.check(f"SELECT set_config('{name}', '{value}', false)").allowed
            assert via_set == via_fn, (rules.mode, rules.tables, name, value)


def test_template_catalog_switch_reaches_the_rules(tmp_path):
    """``catalog = false`` in a template's sql table ends up in the grant's rules."""
    from breakglass.cli.initdir import init_workdir
    from breakglass.proxy.config import load_config

    init_workdir(tmp_path)
    path = tmp_path / "config.toml"
    text = path.read_text()
    old = 'sql = { mode = "read-only", tables = [] }'
    assert old in text
    path.write_text(
        text.replace(old, 'sql = { mode = "read-only", tables = ["orders"], catalog = false }')
    )
    claim = load_config(path).templates["db-readonly"].sql.claim()
    assert claim == {"mode": "read-only", "tables": ["orders"], "catalog": False}
    rules = SqlRules.from_claim(claim)
    assert not SqlChecker(rules).check("SELECT * FROM pg_catalog.pg_class").allowed
    assert SqlChecker(SqlRules("read-only", ("orders",))).check("SELECT * FROM pg_class").allowed
