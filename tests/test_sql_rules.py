"""policy.sql_rules: the SQL checker the Postgres gateway runs on every statement."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from pglast.parser import parse_sql_json

from breakglass.policy import sql_rules
from breakglass.policy.sql_rules import RULES, SqlChecker, SqlRules, Verdict
from tests import sql_corpus as corpus

READ_ONLY = SqlChecker(SqlRules("read-only"))
READ_WRITE = SqlChecker(SqlRules("read-write"))
ALL = SqlChecker(SqlRules("all"))
TABLES_RO = SqlChecker(SqlRules("read-only", ("public.orders", "customers", "app.*")))
TABLES_RW = SqlChecker(SqlRules("read-write", ("orders", "app.*")))


def _id(case: object) -> str:
    text = case[0] if isinstance(case, tuple) else case
    return repr(text[:60])


# --------------------------------------------------------------------------- read-only


def test_corpus_is_big_enough() -> None:
    assert len(corpus.READ_ONLY_DENIED) >= 60
    assert {rule for _, rule in corpus.READ_ONLY_DENIED} <= set(RULES)


@pytest.mark.parametrize("case", corpus.READ_ONLY_DENIED, ids=_id)
def test_read_only_denies_bypass(case: tuple[str, str]) -> None:
    sql, rule = case
    v = READ_ONLY.check(sql)
    assert not v.allowed, f"{sql!r} was allowed"
    assert v.rule == rule, (sql, v)
    assert v.message and "\x00" not in v.message


@pytest.mark.parametrize("case", corpus.READ_ONLY_ALLOWED, ids=_id)
def test_read_only_allows(case: tuple[str, tuple[str, ...]]) -> None:
    sql, kinds = case
    v = READ_ONLY.check(sql)
    assert v.allowed, (sql, v)
    assert v.rule == "allowed"
    assert v.kinds == kinds
    assert v.statements == len(kinds)


def test_denial_messages_are_human() -> None:
    assert READ_ONLY.check("DELETE FROM orders").message == (
        "read-only grant: DELETE is not allowed"
    )
    v = READ_ONLY.check("WITH d AS (DELETE FROM orders RETURNING 1) SELECT 1")
    assert v.message == "read-only grant: DELETE is not allowed (inside WITH)"
    assert "EXPLAIN" in READ_ONLY.check("EXPLAIN DELETE FROM orders").message
    v = READ_ONLY.check("SELECT pg_read_file('/etc/passwd')")
    assert v.message.startswith("function pg_read_file() is not allowed")
    assert TABLES_RO.check("SELECT * FROM secret.keys").message == (
        "table secret.keys is not in this grant"
    )
    assert "search_path" in READ_ONLY.check("SET search_path = x, pg_catalog").message
    assert "search_path" in TABLES_RO.check("SET search_path = x").message


def test_multi_statement_verdict_reports_every_statement() -> None:
    v = READ_ONLY.check("SELECT 1; DELETE FROM orders; SELECT 2")
    assert (v.allowed, v.rule, v.statements) == (False, "read-only", 3)
    assert v.kinds == ("SELECT", "DELETE", "SELECT")


def test_single_statement_for_parse_message() -> None:
    for checker in (READ_ONLY, READ_WRITE, ALL):
        v = checker.check("SELECT 1; SELECT 2", single=True)
        assert (v.allowed, v.rule, v.statements) == (False, "multi-statement", 2)
    assert READ_ONLY.check("SELECT 1; SELECT 2").allowed
    assert READ_ONLY.check("SELECT 1;", single=True).allowed
    assert READ_ONLY.check("", single=True).allowed
    assert READ_ONLY.check("DELETE FROM orders", single=True).rule == "read-only"


def test_huge_statement() -> None:
    checker = SqlChecker(SqlRules("read-only"), max_length=10_000)
    v = checker.check("SELECT 1" + " " * 10_000)
    assert (v.allowed, v.rule) == (False, "too-large")
    # within the limit, a long statement is parsed and judged like any other
    assert READ_ONLY.check(corpus.HUGE_HIDDEN_DELETE).rule == "read-only"
    big_in = "SELECT * FROM orders WHERE id IN (" + ",".join(map(str, range(20_000))) + ")"
    assert READ_ONLY.check(big_in).allowed


def test_deep_nesting_is_judged_or_denied_never_crashes() -> None:
    # pglast.parse_sql() segfaults around 25k terms; the checker must not.
    deep_ok = "SELECT " + " + ".join(["1"] * 2_000)
    assert READ_ONLY.check(deep_ok).allowed
    deep_hidden = "SELECT " + " + ".join(["1"] * 2_000) + " FROM orders FOR UPDATE"
    assert READ_ONLY.check(deep_hidden).rule == "read-only"
    unions = " UNION ALL ".join(["SELECT 1"] * 1_000) + " UNION ALL SELECT k FROM secret.keys"
    assert TABLES_RO.check(unions).rule == "table-not-allowed"
    deep_func = "SELECT " + " + ".join(["1"] * 2_000) + " + length(pg_read_file('x'))"
    assert READ_ONLY.check(deep_func).rule == "function-denied"
    too_deep = "SELECT " + " + ".join(["1"] * 30_000)
    v = READ_ONLY.check(too_deep)
    assert (v.allowed, v.rule) == (False, "too-complex")
    parens = "SELECT " + "(" * 20_000 + "1" + ")" * 20_000
    assert not READ_ONLY.check(parens).allowed


def test_deep_json_decoder_matches_json_loads() -> None:
    for sql in [s for s, _ in corpus.READ_ONLY_DENIED[:40]] + corpus.TABLE_ALLOWED:
        if "\x00" in sql or "\ud800" in sql:
            continue
        out = parse_sql_json(sql)
        assert sql_rules._json_loads_deep(out) == json.loads(out), sql
    assert sql_rules._json_loads_deep('{"a": "\\u00e9\\"", "b": [1, -2.5e3, true, null, {}]}') == {
        "a": 'é"',
        "b": [1, -2500.0, True, None, {}],
    }


# --------------------------------------------------------------------------- read-write


@pytest.mark.parametrize("sql", corpus.READ_WRITE_ALLOWED, ids=_id)
def test_read_write_allows_dml(sql: str) -> None:
    v = READ_WRITE.check(sql)
    assert v.allowed, (sql, v)
    assert not READ_ONLY.check(sql).allowed, sql


@pytest.mark.parametrize("case", corpus.READ_WRITE_DENIED, ids=_id)
def test_read_write_denies(case: tuple[str, str]) -> None:
    sql, rule = case
    v = READ_WRITE.check(sql)
    assert not v.allowed, sql
    assert v.rule == rule, (sql, v)


def test_read_write_still_denies_everything_but_writes() -> None:
    """Every read-only denial whose rule is not about writes stays denied in read-write."""
    write_rules = {"read-only", "transaction-read-write"}
    for sql, rule in corpus.READ_ONLY_DENIED:
        if (
            rule in write_rules
            or "nextval(" in sql
            or "setval(" in sql
            or "transaction_read_only" in sql  # set_config() of it: a read-write grant may
            or "advisory" in sql
            or "current_xact_id" in sql
            or "txid_current" in sql
        ):
            continue
        v = READ_WRITE.check(sql)
        assert not v.allowed, sql
        assert v.rule == rule, (sql, v)


# --------------------------------------------------------------------------- mode all


def test_all_allows_everything_and_still_reports_kinds() -> None:
    for sql, _ in corpus.READ_ONLY_DENIED:
        v = ALL.check(sql)
        assert v.allowed, (sql, v)
    v = ALL.check("DROP TABLE orders; COPY t TO PROGRAM 'x'")
    assert v.kinds == ("DROP TABLE", "COPY") and v.statements == 2
    v = ALL.check("this is not sql")
    assert v.allowed and v.kinds == ()


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("case", corpus.TABLE_DENIED, ids=_id)
def test_table_allowlist_denies(case: tuple[str, str]) -> None:
    sql, rule = case
    v = TABLES_RO.check(sql)
    assert not v.allowed, sql
    assert v.rule == rule, (sql, v)


@pytest.mark.parametrize("sql", corpus.TABLE_ALLOWED, ids=_id)
def test_table_allowlist_allows(sql: str) -> None:
    v = TABLES_RO.check(sql)
    assert v.allowed, (sql, v)


@pytest.mark.parametrize("case", corpus.TABLE_READ_WRITE_DENIED, ids=_id)
def test_table_allowlist_read_write_denies(case: tuple[str, str]) -> None:
    sql, rule = case
    v = TABLES_RW.check(sql)
    assert not v.allowed, sql
    assert v.rule == rule, (sql, v)


@pytest.mark.parametrize("sql", corpus.TABLE_READ_WRITE_ALLOWED, ids=_id)
def test_table_allowlist_read_write_allows(sql: str) -> None:
    v = TABLES_RW.check(sql)
    assert v.allowed, (sql, v)


def test_table_entries() -> None:
    rules = SqlRules("read-only", ("Orders", '"Mixed"."Case"', "audit.*"))
    assert rules.table_allowed(None, "orders")
    assert rules.table_allowed("public", "orders")
    assert not rules.table_allowed("other", "orders")
    assert rules.table_allowed("Mixed", "Case")
    assert not rules.table_allowed("mixed", "case")
    assert rules.table_allowed("audit", "anything")
    assert not rules.table_allowed(None, "anything")
    # an unqualified pg_* name may resolve to pg_catalog: both must be listed
    assert not SqlRules("read-only", ("public.*",), catalog=False).table_allowed(None, "pg_class")
    assert SqlRules("read-only", ("public.*", "pg_catalog.*"), catalog=False).table_allowed(
        None, "pg_class"
    )
    # catalogue reads are allowed by default (pg_catalog is searched first) ...
    assert SqlRules("read-only", ("public.*",)).table_allowed(None, "pg_class")
    assert SqlRules("read-only", ("orders",)).table_allowed("information_schema", "tables")
    # ... except what reveals row data or credentials, and names an older server may lack
    assert not SqlRules("read-only", ("orders",)).table_allowed("pg_catalog", "pg_stats")
    assert not SqlRules("read-only", ("orders",)).table_allowed(None, "pg_stat_wal")
    assert SqlRules("read-only", ("orders",)).table_allowed("pg_catalog", "pg_stat_wal")
    assert SqlRules.from_claim({"mode": "read-only", "catalog": False}).catalog is False
    with pytest.raises(ValueError, match="catalog"):
        SqlRules.from_claim({"mode": "read-only", "catalog": "yes"})
    assert SqlRules("read-only").table_allowed("secret", "keys")
    for bad in ("", "*", "a.b.c", "a.", ".a", "a b", "*.t", 'a."b', 5):
        with pytest.raises(ValueError):
            SqlRules("read-only", (bad,))


# --------------------------------------------------------------------------- claims


def test_from_claim() -> None:
    rules = SqlRules.from_claim({"mode": "read-only", "tables": ["public.orders", "app.*"]})
    assert rules == SqlRules("read-only", ("public.orders", "app.*"))
    assert SqlRules.from_claim({"mode": "all"}).tables == ()
    assert SqlRules.from_claim({"mode": "read-write", "tables": None}).tables == ()
    assert SqlRules("read-only", ["x"]).tables == ("x",)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "claim, fragment",
    [
        ({"mode": "readonly"}, "unknown sql mode"),
        ({"mode": "READ-ONLY"}, "unknown sql mode"),
        ({}, "no mode"),
        ({"mode": 1}, "must be a string"),
        ({"mode": "read-only", "tables": "orders"}, "list of strings"),
        ({"mode": "read-only", "tables": [1]}, "must be strings"),
        ({"mode": "read-only", "tables": ["a.b.c"]}, "bad sql.tables entry"),
        ({"mode": "read-only", "schemas": ["x"]}, "unknown keys: schemas"),
        ({"mode": "all", "tables": ["orders"]}, "cannot be restricted"),
        ("read-only", "must be an object"),
        (None, "must be an object"),
    ],
)
def test_from_claim_rejects_bad_claims(claim: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SqlRules.from_claim(claim)


# --------------------------------------------------------------------------- session assumptions


def test_upstream_parameters_pin_what_the_checker_assumes() -> None:
    assert SqlRules("read-only").upstream_parameters() == {
        "client_encoding": "UTF8",
        "standard_conforming_strings": "on",
        "default_transaction_read_only": "on",
    }
    assert SqlRules("read-write", ("orders",)).upstream_parameters() == {
        "client_encoding": "UTF8",
        "standard_conforming_strings": "on",
        "search_path": "public",
    }
    assert SqlRules("all").upstream_parameters() == {}


def test_standard_conforming_strings_off_would_change_the_statement() -> None:
    """Why the gateway must watch ParameterStatus: with standard_conforming_strings=off
    the server runs a DROP TABLE in this text (verified on PostgreSQL 15); the parser here
    assumes on, and sees one harmless SELECT."""
    text = "SELECT 'x\\'' ; DROP TABLE t; SELECT ' --'"
    v = READ_WRITE.check(text)
    assert v.allowed and v.kinds == ("SELECT",)
    rules = SqlRules("read-write")
    assert rules.parameter_problem("standard_conforming_strings", "off")
    assert rules.parameter_problem("standard_conforming_strings", "on") is None
    assert READ_ONLY.check("SET standard_conforming_strings = off").rule == "set-not-allowed"
    assert READ_ONLY.check(
        "SELECT set_config('standard_conforming_strings', 'off', false)"
    ).rule == ("function-denied")


def test_parameter_problem() -> None:
    ro = SqlRules("read-only", ("orders",))
    assert ro.parameter_problem("client_encoding", "SJIS")
    assert ro.parameter_problem("client_encoding", "UTF8") is None
    assert ro.parameter_problem("default_transaction_read_only", "off")
    assert ro.parameter_problem("default_transaction_read_only", "on") is None
    assert ro.parameter_problem("search_path", '"$user", public')
    assert ro.parameter_problem("search_path", "public") is None
    assert ro.parameter_problem("TimeZone", "UTC") is None
    rw = SqlRules("read-write")
    assert rw.parameter_problem("default_transaction_read_only", "off") is None
    assert rw.parameter_problem("search_path", '"$user", public') is None
    assert SqlRules("all").parameter_problem("standard_conforming_strings", "off") is None


# --------------------------------------------------------------------------- cache, robustness


def test_verdict_is_frozen() -> None:
    v = READ_ONLY.check("SELECT 1")
    assert isinstance(v, Verdict)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.allowed = False  # type: ignore[misc]


def test_cache_returns_identical_verdict_and_is_bounded() -> None:
    checker = SqlChecker(SqlRules("read-only"), cache_size=8)
    first = checker.check("SELECT * FROM orders")
    assert checker.check("SELECT * FROM orders") is first
    # keyed by (text, single)
    multi = checker.check("SELECT 1; SELECT 2")
    assert multi.allowed and not checker.check("SELECT 1; SELECT 2", single=True).allowed
    assert checker.check("SELECT 1; SELECT 2") is multi
    # distinct shapes (texts that differ only in constants share a verdict: test_sql_shape_cache.py)
    for i in range(100):
        checker.check(f"SELECT 1 AS c{i}")
    assert len(checker) == 8
    # least recently used goes first
    keep = checker.check("SELECT 1 AS c99")
    for i in range(200, 207):
        checker.check(f"SELECT 1 AS c{i}")
    assert checker.check("SELECT 1 AS c99") is keep
    # total cached text is bounded too
    small = SqlChecker(SqlRules("read-only"), cache_size=1000, cache_chars=1000)
    for i in range(50):
        small.check(f"SELECT {i} " + " " * 100)
    assert len(small) <= 10
    off = SqlChecker(SqlRules("read-only"), cache_size=0)
    assert off.check("SELECT 1") == off.check("SELECT 1") and len(off) == 0


def test_check_never_raises_on_fuzz() -> None:
    rng = random.Random(20240501)
    fragments = [
        "SELECT", "DELETE", "FROM", "orders", ";", "(", ")", "'", '"', "$$", "$q$", "--", "/*",
        "*/", "WITH", "AS", "pg_read_file", ",", "U&", "E'", "\\", "1", "\n", "INSERT", "INTO",
        "VALUES", "FOR UPDATE", "COPY", "TO", "STDOUT", "SET", "ROLE", "EXPLAIN", "UESCAPE",
    ]  # fmt: skip
    checkers = (READ_ONLY, READ_WRITE, ALL, TABLES_RO)
    for i in range(3000):
        if i % 2:
            text = rng.randbytes(rng.randint(0, 256)).decode("utf-8", errors="replace")
        else:
            text = " ".join(rng.choice(fragments) for _ in range(rng.randint(1, 25)))
        for checker in checkers:
            v = checker.check(text, single=bool(i % 3 == 0))
            assert isinstance(v, Verdict) and isinstance(v.allowed, bool)
            assert v.rule in RULES and v.rule != "internal-error", (text, v)
            if checker is not ALL and not v.allowed:
                assert v.message


def test_bad_input_types_are_internal_errors_not_exceptions() -> None:
    for value in (None, b"SELECT 1", 42):
        v = READ_ONLY.check(value)  # type: ignore[arg-type]
        assert (v.allowed, v.rule) == (False, "internal-error")


@pytest.mark.parametrize("target", ["_parse", "_Judge.walk"])
def test_internal_failure_is_a_denial(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    owner, _, name = target.rpartition(".")
    monkeypatch.setattr(getattr(sql_rules, owner) if owner else sql_rules, name, boom)
    checker = SqlChecker(SqlRules("read-only"))
    v = checker.check("SELECT 1")
    assert (v.allowed, v.rule) == (False, "internal-error")
    assert len(checker) == 0  # a failure is not cached
