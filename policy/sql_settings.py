"""Session settings a restricted grant may change: one judgement for SET, set_config() and
the startup packet (parameters and ``-c`` options). Pure: no I/O, no parsing of SQL.

The same rule answers all three, so ``SET statement_timeout = 5``,
``SELECT set_config('statement_timeout', '5', false)`` and a libpq
``options=-c statement_timeout=5`` are allowed or refused together.

search_path
-----------
* It may never list ``pg_temp`` (temporary objects would shadow tables and, listed
  explicitly, functions), nor a schema whose functions are all denied (``cron``: with
  it on the path, ``schedule()`` would be pg_cron's), and ``pg_catalog`` may only come
  first: later, another schema's function or operator could shadow a built-in the checker
  judges by name.
* With a table allowlist, unqualified names are judged as ``public.<name>`` (and catalogue
  names as ``pg_catalog.<name>``), so the path may only be empty, ``public``,
  ``pg_catalog`` or ``pg_catalog, public``: anything else could redirect an allowed name
  to another schema's table.
* Without a table allowlist the path only changes name resolution, so any other schema
  list is allowed (pgJDBC ``currentSchema``/``setSchema()``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = [
    "READ_ONLY_SETTINGS",
    "SAFE_SETTINGS",
    "StartupRefused",
    "judge_setting",
    "parse_options",
    "search_path_problem",
    "split_identifier_list",
]

#: Settings a restricted grant may SET/RESET (lower case). Deliberately absent: search_path
#: (its own rule, :func:`search_path_problem`), role, session_authorization,
#: default_transaction_read_only, transaction_read_only (handled by mode),
#: standard_conforming_strings/backslash_quote (change how the text tokenizes),
#: session_replication_role (disables triggers), and everything else.
SAFE_SETTINGS = frozenset(
    {
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "transaction_timeout",
        "application_name",
        "datestyle",
        "intervalstyle",
        "timezone",
        "extra_float_digits",
        "client_encoding",  # only to UTF8, see UTF8_NAMES
        "client_min_messages",
        "work_mem",
        "bytea_output",
        "transaction_isolation",
        "default_transaction_isolation",
        "transaction_deferrable",
        "default_transaction_deferrable",
        # pg_dump: row_security=off makes a query fail rather than silently filter rows
        # (it never bypasses a policy); synchronize_seqscans only orders a scan.
        "row_security",
        "synchronize_seqscans",
        # pg_dump 15.14+: it only forbids relation kinds (views, foreign tables)
        "restrict_nonsystem_relation_kind",
        # planner switches, for EXPLAIN work
        "enable_bitmapscan",
        "enable_hashagg",
        "enable_hashjoin",
        "enable_indexonlyscan",
        "enable_indexscan",
        "enable_material",
        "enable_memoize",
        "enable_mergejoin",
        "enable_nestloop",
        "enable_parallel_append",
        "enable_parallel_hash",
        "enable_seqscan",
        "enable_sort",
        "enable_incremental_sort",
        "jit",
        "max_parallel_workers_per_gather",
        "random_page_cost",
        "seq_page_cost",
        "effective_cache_size",
    }
)
READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})
UTF8_NAMES = frozenset({"utf8", "unicode"})
#: Schemas whose functions are all denied; they may not be put on the search_path either.
DENIED_PATH_SCHEMAS = frozenset({"cron"})
_TRUE = frozenset({"on", "true", "yes", "1", "t", "y", "tr", "tru", "ye"})


def norm_encoding(value: str) -> str:
    """PostgreSQL's clean_encoding_name: only letters and digits count (asyncpg sends
    ``'utf-8'``, quotes included)."""
    return re.sub(r"[^a-z0-9]", "", value.lower())


#: (rule, what, why) of a refused setting.
Problem = tuple[str, str, str]


def split_identifier_list(value: str) -> list[str] | None:
    """PostgreSQL's SplitIdentifierString for a list setting such as search_path:
    comma-separated, unquoted parts folded to lower case, ``"quoted"`` parts exact.
    None if the text is not a valid list (PostgreSQL would reject it too)."""
    out: list[str] = []
    text = value.strip()
    if not text:
        return out
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text.startswith('"', pos):
            end = pos + 1
            part = []
            while True:
                q = text.find('"', end)
                if q < 0:
                    return None
                part.append(text[end:q])
                if text.startswith('"', q + 1):
                    part.append('"')
                    end = q + 2
                    continue
                pos = q + 1
                break
            name = "".join(part)
            if not name:
                return None
        else:
            m = re.compile(r"[^\s,\"]+").match(text, pos)
            if m is None:
                return None
            name = m.group(0).lower()
            pos = m.end()
        out.append(name)
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return out
        if text[pos] != ",":
            return None
        pos += 1


def search_path_problem(schemas: list[str] | None, restricted: bool) -> str | None:
    """Why this search_path may not be used (see the module docstring), or None."""
    if schemas is None:
        return "it is not a valid schema list"
    lowered = [s.lower() for s in schemas]
    for s in lowered:
        if s == "pg_temp" or s.startswith("pg_temp_"):
            return "temporary schemas may not be searched"
        if s in DENIED_PATH_SCHEMAS:
            return f"functions in schema {s} are denied"
    if "pg_catalog" in schemas[1:]:
        return "pg_catalog must come first, so nothing shadows built-in functions"
    rest = schemas[1:] if schemas[:1] == ["pg_catalog"] else schemas
    if restricted and rest not in ([], ["public"]):
        return (
            "with a table list, unqualified names are judged as public.<name>; "
            "the path may only be public (optionally after pg_catalog) or empty"
        )
    return None


def judge_setting(
    name: str,
    value: str | list[str] | None,
    *,
    mode: str,
    restricted: bool,
    reset: bool = False,
) -> Problem | None:
    """Whether a restricted grant may set ``name`` (case-insensitive) to ``value``.

    ``value``: the text (a list for ``SET x = a, b``); None when it is not known (a
    parameter or expression in set_config()). ``reset``: RESET / SET TO DEFAULT / a NULL
    set_config() value, which restores the session's startup value (judged at startup)."""
    key = name.lower()
    if mode == "all":
        return None
    if key in ("role", "session_authorization"):
        return (
            "set-role",
            "ROLE" if key == "role" else "SESSION AUTHORIZATION",
            "the session runs as the grant's database user only",
        )
    if key in READ_ONLY_SETTINGS:
        if mode != "read-only":
            return None
        text = value if isinstance(value, str) else None
        if not reset and text is not None and text.strip().lower() in _TRUE:
            return None  # turning read-only on is harmless
        return ("transaction-read-write", key, "the session stays read-only")
    if key == "search_path":
        if reset:
            return None  # back to the startup value, judged when the session opened
        if value is None:
            return ("set-not-allowed", "search_path", "its value must be a literal")
        schemas = value if isinstance(value, list) else split_identifier_list(value)
        why = search_path_problem(schemas, restricted)
        return ("set-not-allowed", "search_path", why) if why else None
    if key not in SAFE_SETTINGS:
        return ("set-not-allowed", key, "only timeouts, display and planner settings may change")
    if key == "client_encoding" and not reset:
        text = value if isinstance(value, str) else None
        if text is None or norm_encoding(text) not in UTF8_NAMES:
            return (
                "set-not-allowed",
                "client_encoding to anything but UTF8",
                "the gateway checks statements as UTF-8 text",
            )
    return None


class StartupRefused(ValueError):
    """A startup parameter or option the gateway will not apply; the message names it."""


_SWITCH = re.compile(r"(?:-c|--)(.*)", re.S)


def parse_options(options: str) -> list[tuple[str, str]]:
    """The ``options`` startup parameter as PostgreSQL reads it (pg_split_opts: words
    split on whitespace, a backslash escapes the next character), keeping only
    ``-c name=value``, ``-cname=value`` and ``--name=value``; any other switch raises
    StartupRefused naming it (the gateway cannot apply it)."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i = 0
    while i < len(options):
        ch = options[i]
        if ch.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            if ch == "\\" and i + 1 < len(options):
                i += 1
                ch = options[i]
            cur.append(ch)
            in_word = True
        i += 1
    if in_word:
        words.append("".join(cur))
    out: list[tuple[str, str]] = []
    it = iter(words)
    for word in it:
        m = _SWITCH.fullmatch(word)
        if m is None:
            raise StartupRefused(
                f"startup option {word[:40]!r} is not supported (only -c name=value)"
            )
        arg = m.group(1)
        if word == "-c":
            arg = next(it, "")
        name, eq, value = arg.partition("=")
        if not name or not eq:
            raise StartupRefused(f"startup option {word[:40]!r}: expected -c name=value")
        out.append((name.replace("-", "_"), value))
    return out


#: Startup packet keys that are not settings.
_NOT_SETTINGS = frozenset({"user", "database", "options", "replication", "application_name"})


def judge_startup(
    params: Mapping[str, str],
    *,
    mode: str,
    restricted: bool,
    pinned: Mapping[str, str],
) -> dict[str, str]:
    """The client's startup settings (parameters and ``-c`` options) to send upstream, each
    judged like SET; raises StartupRefused naming the first one that may not be applied.

    ``pinned``: what the gateway forces (client_encoding, standard_conforming_strings,
    default_transaction_read_only, search_path); a client value for one of them must be
    allowed AND agree (search_path: allowed replaces the pinned value). The
    ``application_name`` parameter and protocol options (``_pq_.*``) are the caller's; an
    ``application_name`` given as ``-c`` is returned under that key for the caller."""
    replication = params.get("replication")
    if replication is not None and replication.strip().lower() not in ("off", "false", "no", "0"):
        raise StartupRefused("replication connections are not supported through the gateway")
    settings: list[tuple[str, str, str]] = []  # (name as sent, value, where)
    for name, value in parse_options(params.get("options", "")):
        settings.append((name, value, "startup option -c"))
    for name, value in params.items():
        if name in _NOT_SETTINGS or name.startswith("_pq_."):
            continue
        settings.append((name, value, "startup parameter"))
    out: dict[str, str] = {}
    pinned_lower = {k.lower(): v for k, v in pinned.items()}
    for name, value, where in settings:
        key = name.lower()
        if key == "application_name":
            out["application_name"] = value  # from -c; the caller prefixes it
            continue
        if key in pinned_lower and _same(key, value, pinned_lower[key]):
            out[_canonical(name, out)] = value
            continue  # asks for what the gateway pins anyway
        if key == "client_encoding" and norm_encoding(value) == "sqlascii":
            value = "UTF8"  # libpq's "auto" under the C locale; ASCII is a subset of UTF-8
        problem = judge_setting(name, value, mode=mode, restricted=restricted)
        if problem is not None:
            raise StartupRefused(f"{where} {name}={value[:60]!r} is not allowed: {problem[2]}")
        if (
            key in pinned_lower
            and key != "search_path"
            and not _same(key, value, pinned_lower[key])
        ):
            raise StartupRefused(
                f"{where} {name}={value[:60]!r} is not allowed: the gateway keeps "
                f"{key}={pinned_lower[key]}"
            )
        out[_canonical(name, out)] = value
    return out


def _same(key: str, a: str, b: str) -> bool:
    if key == "client_encoding":
        return norm_encoding(a) in UTF8_NAMES and norm_encoding(b) in UTF8_NAMES
    return a.strip().lower() == b.strip().lower() or (
        a.strip().lower() in _TRUE and b.strip().lower() in _TRUE
    )


def _canonical(name: str, existing: Iterable[str]) -> str:
    """One key per setting whatever its case (a later value replaces an earlier one)."""
    for k in existing:
        if k.lower() == name.lower():
            return k
    return name
