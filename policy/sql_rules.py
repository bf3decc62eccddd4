"""SQL rules: judge statements against a grant's ``sql`` claim, using PostgreSQL's own parser.

Pure: no I/O. The Postgres gateway calls :meth:`SqlChecker.check` for every simple-Query
message (``single=False``) and every extended-protocol Parse (``single=True``) and forwards
the text only if ``verdict.allowed``.

    rules = SqlRules.from_claim({"mode": "read-only", "tables": ["public.orders", "audit.*"]})
    checker = SqlChecker(rules)
    verdict = checker.check("SELECT * FROM orders")

How a statement is judged
-------------------------
The text is parsed by libpg_query (the PostgreSQL server's own grammar, through pglast);
nothing here looks at the raw text with a regex. Every node of every statement is walked
(iteratively, so no depth blows the Python or C stack):

* every statement node, wherever it appears (top level, inside EXPLAIN, COPY (...),
  DECLARE, a WITH clause, ...) must be allowed in the grant's mode. Statement types not
  explicitly allowed are denied;
* every ``FuncCall`` (anywhere: target lists, WHERE, ORDER BY, DEFAULT, VALUES, function
  arguments, LATERAL/ROWS FROM, CTEs, sub-queries) is checked against a denylist, matched
  case-insensitively on the last name part, whatever the schema or quoting
  (``"PG_READ_FILE"`` and ``U&"\\0070g_read_file"`` are denied too: fail closed). Field
  notation (``t.pg_read_file``), which PostgreSQL may treat as a function call, is denied
  for denylisted names as well;
* with a table allowlist, every relation named anywhere (FROM, JOIN, sub-queries, DML
  targets, USING/FROM of UPDATE/DELETE/MERGE, COPY, ``TABLE x``) must be listed. CTE names
  are not relations and are resolved with PostgreSQL's scoping rules (a non-recursive CTE
  does not see itself; DML targets never resolve to CTEs).

Modes
-----
``read-only``
    SELECT/VALUES/TABLE (no FOR UPDATE/SHARE, no SELECT INTO, no data-modifying WITH),
    EXPLAIN [ANALYZE] of an allowed statement, SHOW, SET/RESET and literal set_config() of
    harmless settings and search_path (:mod:`policy.sql_settings`), BEGIN/START (not READ
    WRITE), COMMIT, ROLLBACK, SAVEPOINT, RELEASE, ROLLBACK TO, SET TRANSACTION (not READ
    WRITE), DECLARE CURSOR of an allowed query, FETCH, MOVE, CLOSE [ALL], COPY table|(query)
    TO STDOUT, PREPARE of an allowed statement, EXECUTE, LOCK ... IN ACCESS SHARE MODE, and
    the hygiene statements DISCARD, RESET ALL, DEALLOCATE [ALL], UNLISTEN.
``read-write``
    read-only plus INSERT/UPDATE/DELETE/MERGE, data-modifying WITH, SELECT ... FOR UPDATE,
    COPY ... FROM STDIN, BEGIN/SET TRANSACTION READ WRITE, SET [default_]transaction_read_only.
``all``
    everything, including text that does not parse. Statements are still parsed, for kinds.

Denied in both restricted modes: DDL, SELECT INTO, TRUNCATE, GRANT/REVOKE, VACUUM/ANALYZE/
CLUSTER/REINDEX/CHECKPOINT, LOCK in any mode but ACCESS SHARE, CALL, DO, LISTEN/NOTIFY,
LOAD, ALTER SYSTEM, SET ROLE/SESSION AUTHORIZATION (and RESET of them), COPY ... PROGRAM,
COPY to/from a server file, two-phase commit, SET/set_config() of anything
:func:`policy.sql_settings.judge_setting` refuses, and the functions in
:data:`DENIED_FUNCTIONS` / :data:`DENIED_FUNCTION_PREFIXES`. In read-only only:
:data:`READ_ONLY_DENIED_FUNCTIONS` (sequences, advisory locks, transaction ids).

What this module does NOT catch, and what the gateway must therefore do
------------------------------------------------------------------------
* User-defined functions (and operators, triggers, rules, views over functions) can write.
  A read-only grant does not allowlist functions (that would be unusable); instead the
  gateway MUST open read-only sessions with ``default_transaction_read_only=on`` upstream
  (defence in depth), as a startup parameter: RESET ALL and DISCARD ALL restore it.
  Everything that could turn it off (SET, set_config(), BEGIN/SET TRANSACTION READ WRITE,
  SET SESSION CHARACTERISTICS) is denied.
* The text checked must be exactly the text forwarded. The gateway MUST decode client
  bytes as UTF-8, refuse a client ``client_encoding`` other than UTF8 (``SET
  client_encoding`` to anything else is denied here): in SJIS/BIG5/GBK a multi-byte
  character can swallow a quote or backslash, so the server would tokenize differently.
* The gateway MUST keep ``standard_conforming_strings=on`` (the default, and what the
  parser here assumes) and judge client startup ``options``/GUC parameters with
  :meth:`SqlRules.startup_settings` (the same rules as SET): with it off,
  ``SELECT 'x\\'' ; DROP TABLE t; SELECT ' --'`` is one SELECT to this checker and a
  DROP TABLE to the server (verified against PostgreSQL 15).
  :meth:`SqlRules.upstream_parameters` lists what to send upstream, and
  :meth:`SqlRules.parameter_problem` judges every upstream ParameterStatus: a
  user-defined function could still call set_config() server-side, and the session must
  then end.
* Unqualified relation names are judged as ``public.<name>`` (catalogue names known to
  every PostgreSQL as ``pg_catalog.<name>``; other ``pg_*`` names as both). The gateway
  MUST pin the upstream ``search_path`` to ``public`` (startup parameter) for
  table-restricted grants unless the client asked for an allowed path; SET search_path
  only accepts paths that keep this true (:func:`policy.sql_settings.search_path_problem`).
* Views are judged by their own name; what a listed view reads is not re-checked.
* The parser is PostgreSQL 18's; an older server rejects newer syntax, it does not
  re-interpret it.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast import ast as _pg_ast
from pglast.parser import ParseError, parse_sql_json
from pglast.parser import normalize as pg_normalize

from breakglass.policy.sql_settings import (
    READ_ONLY_SETTINGS,
    SAFE_SETTINGS,
    UTF8_NAMES,
    judge_setting,
    judge_startup,
    norm_encoding,
    search_path_problem,
    split_identifier_list,
)

__all__ = [
    "DENIED_FUNCTIONS",
    "DENIED_FUNCTION_PREFIXES",
    "MODES",
    "RULES",
    "SAFE_SETTINGS",
    "SqlChecker",
    "SqlRules",
    "Verdict",
]

MODES = ("read-only", "read-write", "all")

#: Every rule id a Verdict can carry, with what it means.
RULES: dict[str, str] = {
    "allowed": "the statement(s) may run",
    "unparseable": "PostgreSQL's parser rejects the text (or it holds a NUL byte / invalid text)",
    "too-large": "the text is longer than the checker accepts",
    "too-complex": "the statement nests deeper than the parser accepts",
    "multi-statement": "several statements in one extended-protocol Parse",
    "read-only": "a write (DML, FOR UPDATE/SHARE, data-modifying WITH, COPY FROM) in a read-only grant",
    "transaction-read-write": "READ WRITE transaction or read-only settings changed in a read-only grant",
    "select-into": "SELECT INTO creates a table",
    "ddl": "schema or role changes (CREATE/ALTER/DROP/COMMENT/REFRESH/...)",
    "grant": "GRANT/REVOKE/ALTER DEFAULT PRIVILEGES",
    "truncate": "TRUNCATE",
    "maintenance": "VACUUM/ANALYZE/CLUSTER/REINDEX/CHECKPOINT",
    "lock": "LOCK TABLE in any mode but ACCESS SHARE",
    "call": "CALL of a procedure",
    "do-block": "DO (anonymous code block)",
    "prepare-execute": "no longer used: PREPARE is judged by the statement it prepares",
    "listen-notify": "LISTEN/NOTIFY (UNLISTEN is allowed)",
    "load": "LOAD of a shared library",
    "alter-system": "ALTER SYSTEM",
    "set-role": "SET/RESET ROLE or SESSION AUTHORIZATION",
    "set-not-allowed": "SET/RESET of a setting outside the allowlist",
    "session-reset": "no longer used: RESET ALL / DISCARD restore the pinned startup settings",
    "copy-program": "COPY ... PROGRAM (runs a shell command on the server)",
    "copy-file": "COPY to or from a file on the server",
    "function-denied": "a call to a denied function",
    "table-not-allowed": "a relation outside the grant's table list",
    "statement-not-allowed": "any other statement the grant's mode does not allow",
    "internal-error": "the checker failed; denied to fail closed",
}

_READ_ONLY_SETTINGS = READ_ONLY_SETTINGS
_UTF8_NAMES = UTF8_NAMES
_norm_encoding = norm_encoding


#: Functions denied in every mode but ``all`` (matched on the lower-cased last name part,
#: whatever the schema), with the reason shown to the engineer.
DENIED_FUNCTIONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "pg_read_file",
            "pg_read_binary_file",
            "pg_stat_file",
            "pg_ls_dir",
            "pg_logdir_ls",
        ),
        "it reads files on the database server",
    ),
    **dict.fromkeys(
        ("lo_import", "lo_export"), "it moves files between the server and large objects"
    ),
    **dict.fromkeys(
        (
            "lo_from_bytea",
            "lo_put",
            "lowrite",
            "lo_create",
            "lo_creat",
            "lo_unlink",
            "lo_truncate",
            "lo_truncate64",
        ),
        "it writes large objects",
    ),
    **dict.fromkeys(
        (
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_rotate_logfile_old",
            "pg_promote",
            "pg_switch_wal",
            "pg_switch_xlog",
            "pg_wal_replay_pause",
            "pg_wal_replay_resume",
            "pg_xlog_replay_pause",
            "pg_xlog_replay_resume",
            "pg_backup_start",
            "pg_backup_stop",
            "pg_start_backup",
            "pg_stop_backup",
            "pg_log_backend_memory_contexts",
            "pg_log_standby_snapshot",
            "pg_import_system_collations",
            "pg_nextoid",
            "pg_drop_replication_slot",
            "pg_replication_slot_advance",
            "pg_sync_replication_slots",
        ),
        "it controls the server, other sessions or replication",
    ),
    "pg_truncate_visibility_map": "it rewrites a table's visibility map",
    "pg_notify": "it sends NOTIFY to other sessions",
    **dict.fromkeys(
        ("ts_stat", "ts_rewrite"),
        "it runs an SQL string that the gateway cannot check",
    ),
    **dict.fromkeys(
        (
            "get_raw_page",
            "heap_page_items",
            "heap_page_item_attrs",
            "bt_page_items",
            "brin_page_items",
            "gin_leafpage_items",
            "hash_page_items",
            "gist_page_items",
            "gist_page_items_bytea",
        ),
        "it reads raw table pages, bypassing table rules",
    ),
}

#: Prefixes denied in every mode but ``all``.
DENIED_FUNCTION_PREFIXES: dict[str, str] = {
    "pg_ls_": "it lists files on the database server",
    "pg_file_": "it writes or renames files on the database server",
    "dblink": "it opens connections and runs SQL the gateway cannot check",
    "query_to_": "it runs an SQL string that the gateway cannot check",
    "cursor_to_": "it runs an SQL string that the gateway cannot check",
    "table_to_": "it dumps a table by name, bypassing table rules",
    "schema_to_": "it dumps a whole schema, bypassing table rules",
    "database_to_": "it dumps the whole database, bypassing table rules",
    "pg_create_": "it creates replication slots or restore points",
    "pg_copy_": "it copies replication slots",
    "pg_logical_": "it reads or writes logical replication data, bypassing table rules",
    "pg_replication_origin_": "it changes replication origins",
    "pg_get_wal_": "it reads WAL contents, bypassing table rules",
    "pg_stat_reset": "it resets server statistics",
    "pg_stat_statements_reset": "it resets server statistics",
    "pg_set_": "it overwrites planner statistics",
    "pg_clear_": "it overwrites planner statistics",
    "pg_restore_": "it overwrites planner statistics",
    "pg_background": "it runs SQL in a background worker",
    "binary_upgrade_": "it is an internal pg_upgrade function",
}

#: Schemas whose functions are all denied (pg_cron schedules arbitrary SQL).
DENIED_FUNCTION_SCHEMAS: dict[str, str] = {
    "cron": "pg_cron runs SQL the gateway cannot check",
}

#: Writing functions denied in read-only mode only.
READ_ONLY_DENIED_FUNCTIONS: dict[str, str] = {
    "nextval": "it advances a sequence (a write)",
    "setval": "it sets a sequence (a write)",
    **dict.fromkeys(
        (
            "pg_advisory_lock",
            "pg_advisory_lock_shared",
            "pg_try_advisory_lock",
            "pg_try_advisory_lock_shared",
            "pg_advisory_xact_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_xact_lock",
            "pg_try_advisory_xact_lock_shared",
        ),
        "advisory locks can block production jobs that use the same locks "
        "(the unlock functions stay allowed)",
    ),
    **dict.fromkeys(
        ("txid_current", "pg_current_xact_id"),
        "it assigns a transaction id (a lasting write); use the *_if_assigned variant",
    ),
}

#: Functions judged by their arguments rather than by name: set_config(name, value,
#: is_local) is judged exactly like ``SET [LOCAL] name = value``.
JUDGED_FUNCTIONS = frozenset({"set_config"})

#: Large-object reads: allowed unless the grant restricts tables (large objects are
#: not tables, so they would bypass the list).
_LARGE_OBJECT_READS = frozenset(
    {"lo_get", "loread", "lo_open", "lo_close", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64"}
)

#: The functions behind pg_stat_activity and pg_stat_statements: other sessions' query
#: texts (which may carry data). Denied with a table list, like the views (CATALOG_HIDDEN).
_QUERY_TEXT_READS = frozenset(
    {"pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_stat_statements"}
)

DEFAULT_MAX_LENGTH = 1 << 20  # characters
DEFAULT_CACHE_CHARS = 8 << 20  # total characters of cached texts


@dataclass(frozen=True)
class Verdict:
    """The checker's answer. ``message`` is safe to show to the engineer."""

    allowed: bool
    rule: str
    message: str
    statements: int = 0
    kinds: tuple[str, ...] = ()
    #: The verdict read a literal's value (set_config('name', 'value')): never shared
    #: between texts that differ only in constants.
    by_literal: bool = field(default=False, compare=False, repr=False)


# --------------------------------------------------------------------------- rules

#: Catalogue schemas a table-restricted grant may read by default (``sql.catalog``).
CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
#: Catalogue relations that hold or reveal row data, credentials or other sessions'
#: queries: never covered by ``catalog`` (list them in ``tables`` to allow them).
CATALOG_HIDDEN = frozenset(
    {
        ("pg_catalog", "pg_statistic"),
        ("pg_catalog", "pg_statistic_ext_data"),
        ("pg_catalog", "pg_stats"),  # most_common_vals/histogram_bounds: column values
        ("pg_catalog", "pg_stats_ext"),
        ("pg_catalog", "pg_stats_ext_exprs"),
        ("pg_catalog", "pg_largeobject"),  # large-object contents
        ("pg_catalog", "pg_stat_activity"),  # other sessions' query texts
        ("pg_catalog", "pg_user_mapping"),  # foreign-server credentials
        ("pg_catalog", "pg_user_mappings"),
        ("pg_catalog", "pg_authid"),  # password hashes
        ("pg_catalog", "pg_shadow"),
        ("information_schema", "user_mapping_options"),
    }
)
#: pg_catalog relations present in every supported PostgreSQL (10 and later): an
#: unqualified use resolves to pg_catalog, which the search_path rule keeps first.
_CATALOG_RELATIONS = frozenset(
    """
pg_aggregate pg_am pg_amop pg_amproc pg_attrdef pg_attribute pg_auth_members pg_authid
pg_available_extension_versions pg_available_extensions pg_cast pg_class pg_collation
pg_config pg_constraint pg_conversion pg_cursors pg_database pg_db_role_setting
pg_default_acl pg_depend pg_description pg_enum pg_event_trigger pg_extension
pg_file_settings pg_foreign_data_wrapper pg_foreign_server pg_foreign_table pg_group
pg_hba_file_rules pg_index pg_indexes pg_inherits pg_init_privs pg_language
pg_largeobject pg_largeobject_metadata pg_locks pg_matviews pg_namespace pg_opclass
pg_operator pg_opfamily pg_partitioned_table pg_policies pg_policy
pg_prepared_statements pg_prepared_xacts pg_proc pg_publication pg_publication_rel
pg_publication_tables pg_range pg_replication_origin pg_replication_origin_status
pg_replication_slots pg_rewrite pg_roles pg_rules pg_seclabel pg_seclabels pg_sequence
pg_sequences pg_settings pg_shadow pg_shdepend pg_shdescription pg_shseclabel
pg_stat_activity pg_stat_all_indexes pg_stat_all_tables pg_stat_archiver
pg_stat_bgwriter pg_stat_database pg_stat_database_conflicts pg_stat_progress_vacuum
pg_stat_replication pg_stat_ssl pg_stat_subscription pg_stat_sys_indexes
pg_stat_sys_tables pg_stat_user_functions pg_stat_user_indexes pg_stat_user_tables
pg_stat_wal_receiver pg_stat_xact_all_tables pg_stat_xact_sys_tables
pg_stat_xact_user_functions pg_stat_xact_user_tables pg_statio_all_indexes
pg_statio_all_sequences pg_statio_all_tables pg_statio_sys_indexes
pg_statio_sys_sequences pg_statio_sys_tables pg_statio_user_indexes
pg_statio_user_sequences pg_statio_user_tables pg_statistic pg_statistic_ext pg_stats
pg_subscription pg_subscription_rel pg_tables pg_tablespace pg_timezone_abbrevs
pg_timezone_names pg_transform pg_trigger pg_ts_config pg_ts_config_map pg_ts_dict
pg_ts_parser pg_ts_template pg_type pg_user pg_user_mapping pg_user_mappings pg_views
    """.split()
)


_IDENT_PART = re.compile(
    r'"((?:[^"]|"")+)"|([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)'
)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _parse_table_entry(entry: Any) -> tuple[str, str | None]:
    """``"schema.table"`` -> ``("schema", "table")``; ``"table"`` -> ``("public", "table")``;
    ``"schema.*"`` -> ``("schema", None)``. Unquoted parts fold to lower case (ASCII, as
    PostgreSQL does); ``"Quoted"`` parts keep their case."""
    if not isinstance(entry, str):
        raise ValueError(f"sql.tables entries must be strings, got {entry!r}")
    text = entry.strip()
    parts: list[str | None] = []
    pos = 0
    while True:
        if len(parts) == 1 and text[pos : pos + 1] == "*":
            parts.append(None)
            pos += 1
        else:
            m = _IDENT_PART.match(text, pos)
            if not m:
                parts = []  # a part was expected here
                break
            quoted, bare = m.group(1), m.group(2)
            parts.append(
                quoted.replace('""', '"') if quoted is not None else bare.translate(_ASCII_LOWER)
            )
            pos = m.end()
        if pos == len(text) or text[pos] != "." or len(parts) == 2:
            break
        pos += 1
    if pos != len(text) or not parts:
        raise ValueError(
            f"bad sql.tables entry {entry!r}: expected 'table', 'schema.table' or 'schema.*'"
        )
    if len(parts) == 1:
        if parts[0] is None:
            raise ValueError(f"bad sql.tables entry {entry!r}")
        return ("public", parts[0])
    schema, name = parts
    assert schema is not None
    return (schema, name)


@dataclass(frozen=True)
class SqlRules:
    """What statements a grant allows.

    ``mode``: ``"read-only"``, ``"read-write"`` or ``"all"``.
    ``tables``: optional allowlist of relations every statement may touch:
    ``"schema.table"``, ``"schema.*"`` or ``"table"`` (which means ``public.table``, not
    "any schema"). Identifiers follow SQL rules: unquoted parts are folded to lower case,
    ``"Double Quoted"`` parts are exact. Empty means no table restriction. A table list
    cannot be combined with mode ``all`` (DO, functions and DDL would bypass it).
    ``catalog``: with a table list, also allow reading pg_catalog and information_schema
    (schema, types, functions, settings), except :data:`CATALOG_HIDDEN`.
    """

    mode: str
    tables: tuple[str, ...] = ()
    catalog: bool = True
    _patterns: frozenset[tuple[str, str | None]] = field(
        default=frozenset(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown sql mode {self.mode!r}: expected one of {', '.join(MODES)}")
        tables = self.tables
        if isinstance(tables, str) or not isinstance(tables, Iterable):
            raise ValueError(f"sql.tables must be a list of strings, got {tables!r}")
        tables = tuple(tables)
        patterns = frozenset(_parse_table_entry(t) for t in tables)
        if tables and self.mode == "all":
            raise ValueError(
                "sql mode 'all' cannot be restricted to tables: it allows DO blocks, "
                "functions and DDL that would bypass any table check"
            )
        object.__setattr__(self, "tables", tables)
        object.__setattr__(self, "_patterns", patterns)

    @classmethod
    def from_claim(cls, claim: Any) -> SqlRules:
        """Build from a grant's ``sql`` claim ``{"mode": ..., "tables": [...]}``.

        Raises ValueError with a clear message on anything unexpected (including unknown
        keys: a restriction we do not understand must not be silently ignored)."""
        if not isinstance(claim, Mapping):
            raise ValueError(
                f"sql claim must be an object like {{'mode': 'read-only'}}, got {type(claim).__name__}"
            )
        unknown = sorted(str(k) for k in claim if k not in ("mode", "tables", "catalog"))
        if unknown:
            raise ValueError(f"sql claim has unknown keys: {', '.join(unknown)}")
        if "mode" not in claim:
            raise ValueError("sql claim has no mode (expected read-only, read-write or all)")
        mode = claim["mode"]
        if not isinstance(mode, str):
            raise ValueError(f"sql.mode must be a string, got {mode!r}")
        tables = claim.get("tables")
        if tables is None:
            tables = ()
        if not isinstance(tables, list | tuple):
            raise ValueError(f"sql.tables must be a list of strings, got {tables!r}")
        catalog = claim.get("catalog", True)
        if not isinstance(catalog, bool):
            raise ValueError(f"sql.catalog must be true or false, got {catalog!r}")
        return cls(mode=mode, tables=tuple(tables), catalog=catalog)

    def upstream_parameters(self) -> dict[str, str]:
        """Startup parameters the gateway must send upstream (overriding the client's) so
        the server reads statement text exactly as this checker does, and so a read-only
        grant is also read-only in the server."""
        if self.mode == "all":
            return {}
        params = {"client_encoding": "UTF8", "standard_conforming_strings": "on"}
        if self.mode == "read-only":
            params["default_transaction_read_only"] = "on"
        if self._patterns:
            params["search_path"] = "public"
        return params

    def parameter_problem(self, name: str, value: str) -> str | None:
        """Judge an upstream ParameterStatus: a reason to end the session if the server's
        state no longer matches what the checker assumes (e.g. a user-defined function ran
        set_config('standard_conforming_strings', 'off')), else None."""
        if self.mode == "all" or not isinstance(name, str) or not isinstance(value, str):
            return None
        key, val = name.lower(), value.strip()
        if key == "standard_conforming_strings" and val.lower() != "on":
            return "standard_conforming_strings was turned off; statements can no longer be checked"
        if key == "client_encoding" and _norm_encoding(val) not in _UTF8_NAMES:
            return f"client_encoding changed to {val[:40]!r}; statements can no longer be checked"
        if (
            key == "default_transaction_read_only"
            and self.mode == "read-only"
            and val.lower() != "on"
        ):
            return "default_transaction_read_only was turned off in a read-only session"
        if key == "search_path":
            schemas = [] if val in ("", '""') else split_identifier_list(val)
            why = search_path_problem(schemas, bool(self._patterns))
            if why:
                return f"search_path changed to {val[:80]!r}; {why}"
        return None

    def startup_settings(self, params: Mapping[str, str]) -> dict[str, str]:
        """The client's startup settings to send upstream, judged like SET, with what the
        gateway pins; raises :class:`policy.sql_settings.StartupRefused` naming the first
        parameter or ``-c`` option that may not be applied."""
        pinned = self.upstream_parameters()
        out = judge_startup(params, mode=self.mode, restricted=bool(self._patterns), pinned=pinned)
        for key, value in pinned.items():
            if not any(k.lower() == key for k in out):
                out[key] = value
        return out

    def table_allowed(self, schema: str | None, name: str) -> bool:
        """Is relation ``schema.name`` (``schema=None``: unqualified) in the list?"""
        if not self._patterns:
            return True
        if self.catalog:
            if schema is None and name in _CATALOG_RELATIONS:
                schema = "pg_catalog"  # searched first: the search_path rule keeps it so
            if schema in CATALOG_SCHEMAS and (schema, name) not in CATALOG_HIDDEN:
                return True
        if schema is not None:
            candidates = [(schema, name)]
        else:
            # Resolved through search_path, pinned by the gateway to public; pg_catalog is
            # always searched first and holds only pg_* relations.
            candidates = [("public", name)]
            if name.startswith("pg_"):
                candidates.append(("pg_catalog", name))
        return all((s, n) in self._patterns or (s, None) in self._patterns for s, n in candidates)


# --------------------------------------------------------------------------- parsing


# Node field -> node type, for fields libpg_query's JSON writes without a type wrapper
# (e.g. InsertStmt.relation is a bare RangeVar).
def _build_field_types() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for name, cls in vars(_pg_ast).items():
        if not (inspect.isclass(cls) and issubclass(cls, _pg_ast.Node)):
            continue
        slots = cls.__dict__.get("__slots__")
        if not isinstance(slots, dict):
            continue
        for fname, info in slots.items():
            ctype = getattr(info, "c_type", "")
            base = ctype.rstrip("*")
            if base in ("Node", "List", "Expr", "char") or not hasattr(_pg_ast, base):
                continue
            out[(name, fname)] = base
    return out


_FIELD_TYPES = _build_field_types()

_JSON_TOKEN = re.compile(
    r'\s*(?:"((?:[^"\\]|\\.)*)"|([{}\[\],:])|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null))',
    re.S,
)


def _json_loads_deep(text: str) -> Any:
    """Iterative JSON decoder for libpg_query output too deep for json.loads."""
    match = _JSON_TOKEN.match
    stack: list[Any] = []
    keys: list[Any] = []
    root: Any = None
    pos, end = 0, len(text.rstrip())
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise ValueError(f"bad parser output at {pos}")
        pos = m.end()
        s, punct, num, lit = m.groups()
        if punct is not None:
            if punct in "{[":
                value: Any = {} if punct == "{" else []
                if stack:
                    top = stack[-1]
                    if isinstance(top, list):
                        top.append(value)
                    else:
                        top[keys[-1]] = value
                        keys[-1] = None
                else:
                    root = value
                stack.append(value)
                keys.append(None)
            elif punct in "}]":
                stack.pop()
                keys.pop()
            continue
        if s is not None:
            value = json.loads(f'"{s}"') if "\\" in s else s
        elif num is not None:
            value = float(num) if any(c in num for c in ".eE") else int(num)
        else:
            value = {"true": True, "false": False, "null": None}[lit]
        if not stack:
            root = value
            continue
        top = stack[-1]
        if isinstance(top, list):
            top.append(value)
        elif keys[-1] is None:
            keys[-1] = value
        else:
            top[keys[-1]] = value
            keys[-1] = None
    if stack:
        raise ValueError("truncated parser output")
    return root


def _parse(text: str) -> list[dict[str, Any]]:
    """Parse to libpg_query's JSON tree: a list of ``{"stmt": {Type: fields}, ...}``.

    Deliberately not pglast.parse_sql(): its C conversion recurses without a depth check
    and crashes the process (SIGSEGV) on e.g. ``SELECT 1+1+...`` with 25k terms."""
    out = parse_sql_json(text)
    try:
        tree = json.loads(out)
    except RecursionError:
        tree = _json_loads_deep(out)
    return tree.get("stmts", [])


def _wrapped(value: Any) -> tuple[str, dict[str, Any]] | None:
    """``{"Type": {fields}}`` -> ``("Type", fields)``; None if not a wrapped node."""
    if isinstance(value, dict) and len(value) == 1:
        ((k, v),) = value.items()
        if isinstance(k, str) and k[:1].isupper() and isinstance(v, dict):
            return k, v
    return None


def _children(ntype: str, key: str, value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Nodes held in field ``key`` of a ``ntype`` node."""
    if isinstance(value, dict):
        w = _wrapped(value)
        if w is not None:
            yield w
        elif value:
            yield _FIELD_TYPES.get((ntype, key), "?"), value
    elif isinstance(value, list):
        pending = list(reversed(value))
        while pending:
            item = pending.pop()
            if isinstance(item, list):
                pending.extend(reversed(item))
                continue
            w = _wrapped(item)
            if w is not None:
                yield w
            elif isinstance(item, dict) and item:
                yield "?", item


def _string(node: Any) -> str | None:
    w = _wrapped(node)
    if w is not None and w[0] == "String":
        sval = w[1].get("sval", "")
        return sval if isinstance(sval, str) else None
    return None


def _const(node: Any) -> Any:
    """Value of an A_Const (or bare String/Integer) node; ``_NOT_CONST`` otherwise."""
    w = _wrapped(node)
    if w is None:
        return _NOT_CONST
    t, f = w
    if t == "A_Const":
        if f.get("isnull"):
            return None
        for k in ("sval", "ival", "fval", "boolval", "bsval"):
            if k in f:
                v = f[k]
                inner = v.get(k) if isinstance(v, dict) else v
                if inner is None:
                    return {"sval": "", "ival": 0, "fval": "0", "boolval": False, "bsval": ""}[k]
                return inner
        return _NOT_CONST
    if t == "String":
        return f.get("sval", "")
    if t == "Integer":
        return f.get("ival", 0)
    return _NOT_CONST


_NOT_CONST = object()


def _truthy(value: Any) -> bool | None:
    """PostgreSQL boolean spelling -> bool; None if unknown."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("on", "true", "yes", "1", "t", "y", "tr", "tru", "ye"):
            return True
        if v in ("off", "false", "no", "0", "f", "n", "fa", "fal", "fals", "of"):
            return False
    return None


_PLAIN_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")


def _show(name: str, limit: int = 80) -> str:
    """An identifier as SQL would spell it, made safe and short for an error message."""
    if not _PLAIN_IDENT.fullmatch(name):
        name = '"' + name.replace('"', '""') + '"'
    if len(name) > limit:
        name = name[: limit - 3] + "..."
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in name)


# --------------------------------------------------------------------------- kinds


_KIND_NAMES = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "ExplainStmt": "EXPLAIN",
    "CopyStmt": "COPY",
    "VariableShowStmt": "SHOW",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "ClosePortalStmt": "CLOSE CURSOR",
    "TruncateStmt": "TRUNCATE TABLE",
    "LockStmt": "LOCK TABLE",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "ListenStmt": "LISTEN",
    "NotifyStmt": "NOTIFY",
    "UnlistenStmt": "UNLISTEN",
    "LoadStmt": "LOAD",
    "CheckPointStmt": "CHECKPOINT",
    "DiscardStmt": "DISCARD",
    "ClusterStmt": "CLUSTER",
    "ReindexStmt": "REINDEX",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "CreateStmt": "CREATE TABLE",
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "CreateExtensionStmt": "CREATE EXTENSION",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "RenameStmt": "ALTER (RENAME)",
    "DefineStmt": "CREATE (DEFINE)",
}

_TXN_KINDS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*")


def _kind(ntype: str, f: dict[str, Any]) -> str:
    if ntype == "TransactionStmt":
        return _TXN_KINDS.get(str(f.get("kind")), "TRANSACTION")
    if ntype == "VariableSetStmt":
        return "RESET" if str(f.get("kind", "")).startswith("VAR_RESET") else "SET"
    if ntype == "FetchStmt":
        return "MOVE" if f.get("ismove") else "FETCH"
    if ntype == "VacuumStmt":
        return "VACUUM" if f.get("is_vacuumcmd") else "ANALYZE"
    if ntype == "GrantStmt":
        return "GRANT" if f.get("is_grant") else "REVOKE"
    if ntype == "GrantRoleStmt":
        return "GRANT ROLE" if f.get("is_grant") else "REVOKE ROLE"
    if ntype == "DropStmt":
        obj = str(f.get("removeType", "OBJECT_")).removeprefix("OBJECT_").replace("_", " ")
        return f"DROP {obj}".strip()
    if ntype == "CreateTableAsStmt" and f.get("objtype") == "OBJECT_MATVIEW":
        return "CREATE MATERIALIZED VIEW"
    if ntype == "CreateFunctionStmt":
        return "CREATE PROCEDURE" if f.get("is_procedure") else "CREATE FUNCTION"
    if ntype in _KIND_NAMES:
        return _KIND_NAMES[ntype]
    words = _CAMEL.findall(ntype.removesuffix("Stmt"))
    return " ".join(w.upper() for w in words) or ntype


# --------------------------------------------------------------------------- checking


def _settings_row_calls(select: dict[str, Any], named: dict[int, str]) -> None:
    """For ``SELECT set_config(name, ...) FROM [pg_catalog.]pg_settings WHERE name = 'x'``
    (one row at most: name is unique), map each such set_config() call to ``x``."""
    froms = select.get("fromClause") or []
    where = _wrapped(select.get("whereClause"))
    if len(froms) != 1 or where is None or where[0] != "A_Expr":
        return
    rel = _wrapped(froms[0])
    if rel is None or rel[0] != "RangeVar":
        return
    r = rel[1]
    if r.get("relname") != "pg_settings" or r.get("schemaname") not in (None, "pg_catalog"):
        return
    if r.get("catalogname") is not None or r.get("alias") is not None:
        return
    cond = where[1]
    ops = [_string(n) for n in cond.get("name") or []]
    if cond.get("kind") != "AEXPR_OP" or ops != ["="]:
        return
    if not _is_name_column(cond.get("lexpr")):
        return
    value = _const(cond.get("rexpr"))
    if not isinstance(value, str):
        return
    for target in select.get("targetList") or []:
        t = _wrapped(target)
        call = _wrapped(t[1].get("val")) if t is not None and t[0] == "ResTarget" else None
        if call is not None and call[0] == "FuncCall":
            args = call[1].get("args") or []
            if args and _is_name_column(args[0]):
                named[id(call[1])] = value


def _is_name_column(node: Any) -> bool:
    w = _wrapped(node)
    if w is None or w[0] != "ColumnRef":
        return False
    fields = [_string(x) for x in w[1].get("fields") or []]
    return fields in (["name"], ["pg_settings", "name"])


_DML = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_WITH_HOLDERS = _DML | {"SelectStmt"}
_ALWAYS_OK = frozenset(
    {"VariableShowStmt", "FetchStmt", "ClosePortalStmt", "DeclareCursorStmt", "ExplainStmt"}
)
#: Pool and driver hygiene: they only forget session state (prepared statements,
#: LISTEN registrations, plans, temporary tables, SET values). What the gateway relies on
#: is pinned as startup parameters, which is what RESET/DISCARD restore; the upstream's
#: ParameterStatus reports are still checked afterwards.
_HYGIENE = frozenset({"DiscardStmt", "DeallocateStmt", "UnlistenStmt"})
#: SQL PREPARE is judged by the statement it prepares (walked like any other, so a
#: denied one never reaches the server) and EXECUTE by its arguments: every prepared
#: statement in the session was judged under the same rules, exactly like an
#: extended-protocol Parse and Bind. pg_dump 15.14+ PREPAREs its catalogue queries.
_PREPARED = frozenset({"PrepareStmt", "ExecuteStmt"})
#: LOCK ... IN ACCESS SHARE MODE takes the lock every SELECT takes (pg_dump locks each
#: table it dumps this way); any stronger mode is denied.
_ACCESS_SHARE_LOCK = 1
_FIXED_RULES = {
    "TruncateStmt": "truncate",
    "LockStmt": "lock",
    "CallStmt": "call",
    "DoStmt": "do-block",
    "ListenStmt": "listen-notify",
    "NotifyStmt": "listen-notify",
    "LoadStmt": "load",
    "AlterSystemStmt": "alter-system",
    "VacuumStmt": "maintenance",
    "ClusterStmt": "maintenance",
    "ReindexStmt": "maintenance",
    "CheckPointStmt": "maintenance",
    "GrantStmt": "grant",
    "GrantRoleStmt": "grant",
    "AlterDefaultPrivilegesStmt": "grant",
    "CreateTableAsStmt": "ddl",
}
_FIXED_REASONS = {
    "prepare-execute": "prepared statements would run text the gateway checked only once, out of context",
    "do-block": "it runs procedural code the gateway cannot check",
    "call": "procedures can run anything",
    "session-reset": "it would undo the gateway's session settings",
    "load": "it loads a shared library into the server",
}
_DDL_PREFIXES = (
    "Create",
    "Alter",
    "Drop",
    "Comment",
    "SecLabel",
    "Rename",
    "Define",
    "Refresh",
    "Import",
    "CompositeType",
    "Index",
    "View",
    "Rule",
    "Reassign",
    "ReplicaIdentity",
)
_CONTEXT = {
    ("ExplainStmt", "query"): "inside EXPLAIN",
    ("CopyStmt", "query"): "inside COPY",
    ("DeclareCursorStmt", "query"): "inside DECLARE",
    ("CommonTableExpr", "ctequery"): "inside WITH",
    ("PrepareStmt", "query"): "inside PREPARE",
}

_Denial = tuple[str, str]


class _Judge:
    """Walks one statement tree for one SqlRules."""

    __slots__ = ("rules", "mode")

    def __init__(self, rules: SqlRules) -> None:
        self.rules = rules
        self.mode = rules.mode

    # -- statement level ---------------------------------------------------

    def _not_allowed(self, rule: str, what: str, ctx: str, why: str = "") -> _Denial:
        where = f" ({ctx})" if ctx else ""
        tail = f": {why}" if why else ""
        return rule, f"{self.mode} grant: {what} is not allowed{where}{tail}"

    def statement(self, ntype: str, f: dict[str, Any], ctx: str) -> _Denial | None:
        mode = self.mode
        kind = _kind(ntype, f)
        if ntype == "SelectStmt":
            if f.get("intoClause"):
                return self._not_allowed("select-into", "SELECT INTO", ctx, "it creates a table")
            if f.get("lockingClause") and mode == "read-only":
                return self._not_allowed(
                    "read-only", "SELECT ... FOR UPDATE/SHARE", ctx, "row locks are writes"
                )
            return None
        if ntype in _DML:
            if mode == "read-only":
                return self._not_allowed("read-only", kind, ctx)
            return None
        if ntype in _ALWAYS_OK or ntype in _HYGIENE or ntype in _PREPARED:
            return None
        if ntype == "LockStmt" and f.get("mode") == _ACCESS_SHARE_LOCK:
            return None
        if ntype == "CopyStmt":
            return self._copy(f, ctx)
        if ntype == "TransactionStmt":
            return self._transaction(f, kind, ctx)
        if ntype == "VariableSetStmt":
            return self._set(f, ctx)
        if ntype in _FIXED_RULES:
            rule = _FIXED_RULES[ntype]
            return self._not_allowed(rule, kind, ctx, _FIXED_REASONS.get(rule, ""))
        if ntype.startswith(_DDL_PREFIXES) or ntype.endswith("dbStmt"):
            return self._not_allowed(
                "ddl", kind, ctx, "schema and role changes need an 'all' grant"
            )
        return self._not_allowed("statement-not-allowed", kind, ctx)

    def _copy(self, f: dict[str, Any], ctx: str) -> _Denial | None:
        if f.get("is_program"):
            return self._not_allowed(
                "copy-program",
                "COPY ... PROGRAM",
                ctx,
                "it runs a shell command on the database server",
            )
        if f.get("filename") is not None:
            return self._not_allowed(
                "copy-file", "COPY to or from a server file", ctx, "use STDIN/STDOUT (psql \\copy)"
            )
        if f.get("is_from") and self.mode == "read-only":
            return self._not_allowed("read-only", "COPY ... FROM STDIN", ctx)
        return None

    def _txn_options(self, options: Any, what: str, ctx: str) -> _Denial | None:
        for t, opt in _children("", "", options or []):
            name = opt.get("defname") if t == "DefElem" else None
            if name == "transaction_read_only":
                value = _truthy(_const(opt.get("arg")))
                if value is None:
                    return self._not_allowed(
                        "statement-not-allowed", what, ctx, "unrecognised READ ONLY value"
                    )
                if not value and self.mode == "read-only":
                    return self._not_allowed("transaction-read-write", f"{what} READ WRITE", ctx)
            elif name not in ("transaction_isolation", "transaction_deferrable"):
                shown = _show(name) if isinstance(name, str) else "?"
                return self._not_allowed(
                    "statement-not-allowed", f"{what} with option {shown}", ctx
                )
        return None

    def _transaction(self, f: dict[str, Any], kind: str, ctx: str) -> _Denial | None:
        tk = str(f.get("kind"))
        if tk in ("TRANS_STMT_BEGIN", "TRANS_STMT_START"):
            return self._txn_options(f.get("options"), kind, ctx)
        if tk in (
            "TRANS_STMT_COMMIT",
            "TRANS_STMT_ROLLBACK",
            "TRANS_STMT_SAVEPOINT",
            "TRANS_STMT_RELEASE",
            "TRANS_STMT_ROLLBACK_TO",
        ):
            return None
        return self._not_allowed(
            "statement-not-allowed", kind, ctx, "two-phase commit leaves transactions behind"
        )

    def _set(self, f: dict[str, Any], ctx: str) -> _Denial | None:
        vkind = str(f.get("kind"))
        raw_name = f.get("name")
        verb = "RESET" if vkind.startswith("VAR_RESET") else "SET"
        if vkind == "VAR_RESET_ALL":
            # Restores every setting to its startup value, and the gateway pins what it
            # relies on as startup parameters (RESET ALL never touches role).
            return None
        if not isinstance(raw_name, str):
            return self._not_allowed("set-not-allowed", verb, ctx)
        name = raw_name.lower()
        if vkind == "VAR_SET_MULTI":
            if raw_name in ("TRANSACTION", "SESSION CHARACTERISTICS"):
                what = (
                    "SET TRANSACTION"
                    if raw_name == "TRANSACTION"
                    else "SET SESSION CHARACTERISTICS"
                )
                return self._txn_options(f.get("args"), what, ctx)
            return self._not_allowed("set-not-allowed", f"SET {raw_name}", ctx)
        reset = vkind in ("VAR_RESET", "VAR_SET_DEFAULT")
        value: str | list[str] | None = None
        if vkind == "VAR_SET_VALUE":
            consts = [_const(a) for a in f.get("args") or []]
            if consts and all(isinstance(c, str | int | float | bool) for c in consts):
                texts = [str(c) for c in consts]
                value = texts if name == "search_path" else ", ".join(texts)
        problem = judge_setting(
            name, value, mode=self.mode, restricted=bool(self.rules.tables), reset=reset
        )
        if problem is None:
            return None
        rule, what, why = problem
        shown = what if rule == "set-role" or " " in what else _show(what)
        return self._not_allowed(rule, f"{verb} {shown}", ctx, why)

    def set_config(
        self, parts: list[str], f: dict[str, Any], ctx: str, row_name: str | None = None
    ) -> _Denial | None:
        """``set_config('name', value, is_local)``: judged exactly like ``SET name = value``.
        The name must be a literal; a non-literal value only passes for settings where
        every value is allowed (asyncpg restores ``jit`` with ``$1``). ``row_name``: the
        setting named by ``... FROM pg_settings WHERE name = 'x'`` when the first argument
        is that row's ``name`` column (pg_dump 15.14+ sets restrict_nonsystem_relation_kind
        this way)."""
        shown = ".".join(_show(p) for p in parts)
        where = f" ({ctx})" if ctx else ""
        args = f.get("args") or []
        plain = not any(
            f.get(k)
            for k in (
                "agg_star",
                "agg_distinct",
                "func_variadic",
                "agg_order",
                "agg_filter",
                "over",
                "agg_within_group",
            )
        )
        name = _const(args[0]) if len(args) == 3 and plain else _NOT_CONST
        if row_name is not None and len(args) == 3 and plain:
            name = row_name
        if not isinstance(name, str) or any(_wrapped(a) is None for a in args):
            return (
                "function-denied",
                f"function {shown}() is not allowed{where}: "
                "only set_config('literal name', value, is_local) can be judged",
            )
        value = _const(args[1])
        reset = value is None  # a NULL value resets the setting
        text = None if value is _NOT_CONST or reset else str(value)
        problem = judge_setting(
            name, text, mode=self.mode, restricted=bool(self.rules.tables), reset=reset
        )
        if problem is None:
            return None
        return (
            "function-denied",
            f"function {shown}() is not allowed{where}: set_config({_show(name)}, ...) is "
            f"judged like SET {problem[1]}: {problem[2]}",
        )

    # -- expressions and relations -----------------------------------------

    def function(self, parts: list[str], ctx: str, field_notation: bool = False) -> _Denial | None:
        names = [p.lower() for p in parts]
        name = names[-1]
        schema = names[-2] if len(names) > 1 else None
        reason = DENIED_FUNCTIONS.get(name)
        if reason is None:
            for prefix, why in DENIED_FUNCTION_PREFIXES.items():
                if name.startswith(prefix):
                    reason = why
                    break
        if reason is None and schema in DENIED_FUNCTION_SCHEMAS and not field_notation:
            reason = DENIED_FUNCTION_SCHEMAS[schema]
        if reason is None and field_notation and name in JUDGED_FUNCTIONS:
            reason = "its arguments cannot be judged"
        if reason is None and self.mode == "read-only":
            reason = READ_ONLY_DENIED_FUNCTIONS.get(name)
        if reason is None and self.rules.tables and name in _LARGE_OBJECT_READS:
            reason = "large objects are outside this grant's table list"
        if reason is None and self.rules.tables and name in _QUERY_TEXT_READS:
            reason = "it shows other sessions' query texts, outside this grant's table list"
        if reason is None:
            return None
        shown = ".".join(_show(p) for p in parts) if not field_notation else _show(name)
        where = f" ({ctx})" if ctx else ""
        how = " (field notation calls functions)" if field_notation else ""
        return "function-denied", f"function {shown}() is not allowed{how}{where}: {reason}"

    def relation(self, f: dict[str, Any], ctx: str) -> _Denial | None:
        name = f.get("relname")
        schema = f.get("schemaname")
        if not isinstance(name, str) or not (schema is None or isinstance(schema, str)):
            return "internal-error", "unexpected relation in parse tree"
        if self.rules.table_allowed(schema, name):
            return None
        where = f" ({ctx})" if ctx else ""
        shown = _show(name)
        if schema is None:
            also = f" and pg_catalog.{shown}" if name.startswith("pg_") else ""
            return (
                "table-not-allowed",
                f"table {shown} is not in this grant "
                f"(unqualified names are checked as public.{shown}{also}){where}",
            )
        return "table-not-allowed", f"table {_show(schema)}.{shown} is not in this grant{where}"

    # -- the walk ----------------------------------------------------------

    def walk(
        self, root_type: str, root: dict[str, Any], flags: list[str] | None = None
    ) -> _Denial | None:
        """The first denial in the tree, or None. ``flags`` gets ``"literal"`` when the
        verdict depended on a literal's value (so it must not be shared by shape)."""
        restricted = bool(self.rules.tables)
        named: dict[int, str] = {}  # set_config(name, ...) FuncCall -> the setting it sets
        empty: frozenset[str] = frozenset()
        stack: list[tuple[str, dict[str, Any], frozenset[str], str]] = [
            (root_type, root, empty, "")
        ]
        while stack:
            ntype, f, scope, ctx = stack.pop()
            denial: _Denial | None = None
            if ntype.endswith("Stmt") or ntype == "Query":
                denial = self.statement(ntype, f, ctx)
                if ntype == "SelectStmt":
                    _settings_row_calls(f, named)
            elif ntype == "RangeVar" or (ntype == "?" and "relname" in f):
                if restricted and not (
                    f.get("schemaname") is None
                    and f.get("catalogname") is None
                    and f.get("relname") in scope
                ):
                    denial = self.relation(f, ctx)
            elif ntype == "FuncCall":
                parts = [_string(p) for p in f.get("funcname") or []]
                if not parts or any(p is None for p in parts):
                    denial = ("function-denied", "function call with an unrecognised name")
                else:
                    names = [p for p in parts if p is not None]
                    denial = self.function(names, ctx)
                    if denial is None and names[-1].lower() in JUDGED_FUNCTIONS:
                        if flags is not None:
                            flags.append("literal")
                        denial = self.set_config(names, f, ctx, named.get(id(f)))
            elif ntype in ("ColumnRef", "A_Indirection"):
                names = f.get("fields") if ntype == "ColumnRef" else f.get("indirection")
                strs = [_string(n) for n in names or []]
                candidates = strs[1:] if ntype == "ColumnRef" else strs
                for s in candidates:
                    if s is not None:
                        denial = self.function([s], ctx, field_notation=True)
                        if denial:
                            break
            if denial is not None:
                return denial

            inner = scope
            ctes: list[tuple[str, dict[str, Any], frozenset[str], str]] = []
            with_clause = f.get("withClause") if ntype in _WITH_HOLDERS else None
            if isinstance(with_clause, dict):
                entries = [
                    c for c in _children("WithClause", "ctes", with_clause.get("ctes") or [])
                ]
                cte_names = [
                    c.get("ctename") if t == "CommonTableExpr" else None for t, c in entries
                ]
                names_set = frozenset(n for n in cte_names if isinstance(n, str))
                inner = scope | names_set
                recursive = bool(with_clause.get("recursive"))
                for i, (t, c) in enumerate(entries):
                    visible = (
                        names_set
                        if recursive
                        else frozenset(n for n in cte_names[:i] if isinstance(n, str))
                    )
                    ctes.append((t, c, scope | visible, ctx))
            children: list[tuple[str, dict[str, Any], frozenset[str], str]] = []
            for key, value in f.items():
                if key == "withClause" and isinstance(with_clause, dict):
                    children.extend(ctes)
                    continue
                if not isinstance(value, dict | list):
                    continue
                if ntype == "LockingClause" and key == "lockedRels":
                    # FOR UPDATE OF x names FROM items (often aliases) already checked;
                    # PostgreSQL rejects a name that is not in FROM.
                    continue
                # A DML target is always a real table, never a CTE of the same name.
                child_scope = empty if key == "relation" and ntype in _DML else inner
                child_ctx = _CONTEXT.get((ntype, key), ctx)
                for ct, cf in _children(ntype, key, value):
                    children.append((ct, cf, child_scope, child_ctx))
            stack.extend(reversed(children))
        return None


#: Statement kinds whose verdict depends only on the statement's shape (relations,
#: functions, clauses), never on a literal constant's value: safe to share one verdict
#: between texts that differ only in constants.
_SHAPE_KINDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES"})
_SHAPE_MAX_LENGTH = 64 * 1024
#: Quick shapes are only taken of short, plain texts: nothing quoted, escaped or commented.
_QUICK_MAX_LENGTH = 4096
_QUICK_UNSAFE = (b"'", b'"', b"$", b"\\", b"--", b"/*")
_DIGITS_BLANKED = bytes.maketrans(b"0123456789", b"##########")
_DIGIT_RUN = re.compile(r"(?<![\w.])[0-9]+(?![\w.])")
_ASCII_DIGIT = re.compile(r"[0-9]")
_PARAM_REF = re.compile(r"\$[0-9]+")


def _quick_shape(text: str) -> bytes | None:
    """``text`` with every ASCII digit blanked (no parsing: a translate), or None when the
    text is not plain enough to judge that way. Two texts with one quick shape differ only in
    digits, at the same places; it is used as a cache key only once PostgreSQL's normaliser
    agreed that those places are whole constants (``_quick_shape_is_faithful``)."""
    if len(text) > _QUICK_MAX_LENGTH:
        return None
    try:
        raw = text.encode()  # UTF-8: an ASCII digit byte is always the digit itself
    except UnicodeError:
        return None
    for unsafe in _QUICK_UNSAFE:
        if unsafe in raw:
            return None
    return raw.translate(_DIGITS_BLANKED)


def _quick_shape_is_faithful(text: str, normalized: str) -> bool:
    """Whether every digit of ``text`` is part of a standalone run of digits that PostgreSQL's
    normalisation (``normalized``) replaced as one constant, and nothing else was replaced."""
    if _ASCII_DIGIT.search(_DIGIT_RUN.sub("", text)) is not None:
        return False  # a digit inside a name, a decimal, an exponent...
    return _DIGIT_RUN.sub("0", text) == _PARAM_REF.sub("0", normalized)


class SqlChecker:
    """Checks SQL text against :class:`SqlRules`; verdicts are cached per exact text.

    ``cache_size`` bounds the number of cached verdicts (0 disables the cache);
    ``cache_chars`` bounds the total length of cached texts; ``max_length`` is the longest
    text accepted in restricted modes (longer -> ``too-large``).
    """

    def __init__(
        self,
        rules: SqlRules,
        cache_size: int = 4096,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        cache_chars: int = DEFAULT_CACHE_CHARS,
        role_guard: Any = None,
    ) -> None:
        if not isinstance(rules, SqlRules):
            raise TypeError("rules must be SqlRules")
        if cache_size < 0 or cache_chars < 0 or max_length <= 0:
            raise ValueError("cache_size/cache_chars must be >= 0 and max_length > 0")
        self.rules = rules
        self.cache_size = cache_size
        self.cache_chars = cache_chars
        self.max_length = max_length
        self.role_guard = role_guard  # policy.role_guard.RoleGuard: the gateway's own roles
        self._judge = _Judge(rules)
        self._cache: OrderedDict[tuple[str, bool], Verdict] = OrderedDict()
        self._shapes: OrderedDict[tuple[str, bool], Verdict] = OrderedDict()
        #: Verdicts by quick shape (``_quick_shape``), checked against ``_shapes`` when stored.
        self._quick: OrderedDict[tuple[bytes, bool], Verdict] = OrderedDict()
        self._cached_chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Number of cached verdicts."""
        return len(self._cache)

    def check(self, sql_text: str, single: bool = False) -> Verdict:
        """Judge ``sql_text``. Never raises: an internal failure is a denial."""
        try:
            if not isinstance(sql_text, str):
                return Verdict(False, "internal-error", "statement text is not a string")
            single = bool(single)
            key = (sql_text, single)
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
            quick = _quick_shape(sql_text) if self.cache_size else None
            if quick is not None:
                quick_key = (quick, single)
                with self._lock:
                    hit = self._quick.get(quick_key)
                    if hit is not None:
                        self._quick.move_to_end(quick_key)
                        return hit
            shape = self._shape_key(sql_text, single)
            if shape is not None:
                with self._lock:
                    hit = self._shapes.get(shape)
                    if hit is not None:
                        self._shapes.move_to_end(shape)
                if hit is not None:  # not copied into the exact cache: it would churn it
                    self._remember_quick(quick, sql_text, shape, hit)
                    return hit
            verdict = self._check(sql_text, single)
            self._remember(key, verdict)
            if (
                shape is not None
                and verdict.kinds
                and set(verdict.kinds) <= _SHAPE_KINDS
                and not verdict.by_literal
            ):
                with self._lock:
                    self._shapes[shape] = verdict
                    while len(self._shapes) > self.cache_size:
                        self._shapes.popitem(last=False)
                self._remember_quick(quick, sql_text, shape, verdict)
            return verdict
        except Exception as exc:  # fail closed, whatever happened
            return Verdict(
                False, "internal-error", f"the SQL checker failed ({type(exc).__name__}); denied"
            )

    def _remember_quick(
        self, quick: bytes | None, text: str, shape: tuple[str, bool], verdict: Verdict
    ) -> None:
        """Share a shape's verdict under the quick shape of ``text``, but only when PostgreSQL's
        own normalisation replaced exactly the digit runs the quick shape blanks: then any
        text with the same quick shape differs only in the values of those constants."""
        if quick is None or not _quick_shape_is_faithful(text, shape[0]):
            return
        with self._lock:
            self._quick[(quick, shape[1])] = verdict
            while len(self._quick) > self.cache_size:
                self._quick.popitem(last=False)

    def _shape_key(self, text: str, single: bool) -> tuple[str, bool] | None:
        """The statement with its literal constants replaced by ``$n`` (PostgreSQL's own
        normalisation, as in pg_stat_statements), so ``... WHERE aid = 1`` and ``= 2`` share
        one verdict. Only used for statement kinds whose judgement never reads a constant's
        value (``_SHAPE_KINDS``); SET, transaction and utility statements are judged by
        exact text only."""
        if self.cache_size == 0 or len(text) > _SHAPE_MAX_LENGTH or "\x00" in text:
            return None
        try:
            return (pg_normalize(text), single)
        except Exception:
            return None

    def _remember(self, key: tuple[str, bool], verdict: Verdict) -> None:
        size = len(key[0])
        if self.cache_size == 0 or size > self.cache_chars:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = verdict
            self._cached_chars += size
            while len(self._cache) > self.cache_size or self._cached_chars > self.cache_chars:
                old, _ = self._cache.popitem(last=False)
                self._cached_chars -= len(old[0])

    def _check(self, text: str, single: bool) -> Verdict:
        everything = self.rules.mode == "all"
        if len(text) > self.max_length:
            if everything:
                return Verdict(True, "allowed", "not parsed (too large); allowed by an 'all' grant")
            return Verdict(
                False,
                "too-large",
                f"statement text is {len(text)} characters; this gateway checks at most {self.max_length}",
            )
        problem: _Denial | None = None
        stmts: list[dict[str, Any]] = []
        if "\x00" in text:
            problem = ("unparseable", "statement text contains a NUL byte")
        else:
            try:
                stmts = _parse(text)
            except ParseError as exc:
                msg = str(exc)
                if "stack depth" in msg or "memory exhausted" in msg:
                    problem = ("too-complex", f"statement nests too deeply to check: {msg}")
                else:
                    problem = ("unparseable", f"cannot parse SQL: {msg}")
            except UnicodeError:
                problem = ("unparseable", "statement text is not valid Unicode")
            except RecursionError:
                problem = ("too-complex", "statement nests too deeply to check")
        if problem is not None:
            if everything:
                return Verdict(
                    True, "allowed", f"not parsed ({problem[1]}); allowed by an 'all' grant"
                )
            return Verdict(False, problem[0], problem[1])

        roots: list[tuple[str, dict[str, Any]]] = []
        for raw in stmts:
            w = _wrapped(raw.get("stmt")) if isinstance(raw, dict) else None
            if w is None:
                return Verdict(False, "internal-error", "unexpected parse tree shape", len(stmts))
            roots.append(w)
        kinds = tuple(_kind(t, f) for t, f in roots)
        n = len(roots)
        if single and n > 1:
            return Verdict(
                False,
                "multi-statement",
                f"a prepared statement must be a single statement; got {n}",
                n,
                kinds,
            )
        guarded = self.role_guard.judge(roots) if self.role_guard is not None else None
        if guarded is not None:
            return Verdict(False, guarded[0], guarded[1], n, kinds)
        if everything:
            return Verdict(True, "allowed", "", n, kinds)
        flags: list[str] = []
        for ntype, f in roots:
            denial = self._judge.walk(ntype, f, flags)
            if denial is not None:
                return Verdict(False, denial[0], denial[1], n, kinds, bool(flags))
        return Verdict(True, "allowed", "", n, kinds, bool(flags))
