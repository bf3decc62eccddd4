"""The shape cache shares verdicts only between texts whose judgement cannot differ."""

from __future__ import annotations

import tests.sql_corpus as corpus
from policy.sql_rules import SqlChecker, SqlRules


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
