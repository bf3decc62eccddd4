"""The shape cache shares verdicts only between texts whose judgement cannot differ."""

from __future__ import annotations

import tests.sql_corpus as corpus
from breakglass.policy.sql_rules import SqlChecker, SqlRules


def fresh(mode: str, text: str):
    return SqlChecker(SqlRules.from_claim({"mode": mode}), cache_size=0).check(text)


def test_constants_share_a_verdict():
    c = SqlChecker(SqlRules.from_claim({"mode": "read-only"}))
    for i in range(50):
        assert c.check(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i}").allowed
    assert len(c._shapes) == 1


def test_value_dependent_statements_are_never_shared():
    c = SqlChecker(SqlRules.from_claim({"mode": "read-only"}))
    assert c.check("SET client_encoding = 'UTF8'").allowed
    assert not c.check("SET client_encoding = 'SJIS'").allowed
    assert c.check("BEGIN READ ONLY").allowed
    assert not c.check("BEGIN READ WRITE").allowed
    assert not c.check("SET TRANSACTION READ WRITE").allowed


def test_shape_cache_agrees_with_a_fresh_checker_on_the_corpus():
    texts = []
    for value in vars(corpus).values():
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, str):
                    texts.append(item)
                elif isinstance(item, tuple) and item and isinstance(item[0], str):
                    texts.append(item[0])
    assert len(texts) > 50
    for mode in ("read-only", "read-write"):
        warm = SqlChecker(SqlRules.from_claim({"mode": mode}))
        # warm the shape cache with the same statements under other constants first
        for t in texts:
            warm.check(t.replace("1", "7").replace("'x'", "'y'"))
        for t in texts:
            a, b = warm.check(t), fresh(mode, t)
            assert (a.allowed, a.rule) == (b.allowed, b.rule), t


def test_quick_shape_skips_the_parser_for_new_constants(monkeypatch):
    import breakglass.policy.sql_rules as sql_rules

    c = SqlChecker(SqlRules.from_claim({"mode": "read-only"}))
    # one quick shape per length of the constant: warm one and two digits
    assert c.check("SELECT abalance FROM pgbench_accounts WHERE aid = 1").allowed
    assert c.check("SELECT abalance FROM pgbench_accounts WHERE aid = 10").allowed
    calls = []
    real = sql_rules.pg_normalize
    monkeypatch.setattr(sql_rules, "pg_normalize", lambda t: calls.append(t) or real(t))
    for i in range(2, 100):
        assert c.check(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i}").allowed
    assert calls == [] and len(c._quick) == 2


def test_quick_shape_only_where_postgres_normalises_the_same_digits():
    c = SqlChecker(SqlRules.from_claim({"mode": "read-only"}))
    # PostgreSQL keeps ORDER BY positions and folds signs and decimals into constants:
    # the quick key (digit runs only) disagrees, so it is never used for these.
    for text in ("SELECT a FROM t ORDER BY 1", "SELECT -1", "SELECT 1.5 FROM t", "SELECT 1e5"):
        assert c.check(text).allowed
    assert len(c._quick) == 0
    # Quoted, dollar-quoted, escaped or commented text never gets a quick key.
    for text in (
        "SELECT 'a1' FROM t WHERE b = 2",
        'SELECT "c1" FROM t WHERE b = 2',
        "SELECT $$1$$ FROM t WHERE b = 2",
        "SELECT a FROM t WHERE b = 2 -- 3",
        "SELECT a FROM t /* 4 */ WHERE b = 2",
    ):
        assert c.check(text).allowed
    assert len(c._quick) == 0


def test_quick_shape_keeps_denials_and_allowances_apart():
    c = SqlChecker(SqlRules.from_claim({"mode": "read-only", "tables": ["orders"]}))
    assert c.check("SELECT * FROM orders WHERE id = 1").allowed
    assert not c.check("SELECT * FROM customers WHERE id = 1").allowed
    assert not c.check("SELECT * FROM customers WHERE id = 2").allowed
    assert c.check("SELECT * FROM orders WHERE id = 2").allowed
    rw = SqlChecker(SqlRules.from_claim({"mode": "read-only"}))
    assert rw.check("SELECT * FROM t WHERE id = 1").allowed
    assert not rw.check("DELETE FROM t WHERE id = 1").allowed  # same digits, other statement
    assert not rw.check("DELETE FROM t WHERE id = 2").allowed
