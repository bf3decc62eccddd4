"""Keep break-glass from taking over the gateway's own access (pure: no I/O).

An ``all`` grant may run anything, but not statements that change how the gateway itself
logs in upstream: with the gateway's role's password in hand, an engineer could connect to
PostgreSQL directly, around the gateway and its recording. :class:`RoleGuard` judges parsed
statements (libpg_query's JSON tree, as :mod:`policy.sql_rules` produces it) and refuses:

``gateway-role``
    ALTER ROLE/USER/GROUP (any option, or ``SET``), RENAME and DROP ROLE on one of the
    gateway's upstream roles for that target (``protected``) or on ``CURRENT_USER``,
    ``CURRENT_ROLE`` and ``SESSION_USER`` (which are, or can become, one of them); ALTER
    SYSTEM of a setting that affects authentication or loads code at start-up, and ALTER
    SYSTEM RESET ALL.
``role-management``
    unless the template allows role management (``role_management = true``): CREATE
    ROLE/USER that can log in with a password, and ALTER ROLE ... PASSWORD of any other role.

Function and DO bodies are judged too: an SQL-language body is parsed and judged like a
statement; any other language (PL/pgSQL can build statements at run time) is refused when its
text names role or authentication changes (``ALTER ROLE``, ``PASSWORD``, ``ALTER SYSTEM``...).
What this cannot see: dynamic SQL assembled from fragments (``EXECUTE chr(65) || ...``) and
a superuser's file access (``COPY ... TO PROGRAM``, ``pg_write_file``). The gateway's
break-glass role must therefore not be a superuser; see README ("Break-glass and the
gateway's own access").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pglast.parser import ParseError, parse_sql_json

#: ALTER SYSTEM settings that change who may log in and how, or load code at start-up.
AUTH_SETTINGS = frozenset(
    {
        "password_encryption",
        "scram_iterations",
        "authentication_timeout",
        "hba_file",
        "ident_file",
        "krb_server_keyfile",
        "krb_caseins_users",
        "db_user_namespace",
        "listen_addresses",
        "port",
        "ssl",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
        "dynamic_library_path",
        "config_file",
        "data_directory",
    }
)
AUTH_SETTING_PREFIXES = ("ssl_", "krb_", "unix_socket_", "gss", "ldap", "radius")

#: Role specs that stand for the session's own role (always treated as protected).
SELF_ROLESPECS = {
    "ROLESPEC_CURRENT_USER": "CURRENT_USER",
    "ROLESPEC_CURRENT_ROLE": "CURRENT_ROLE",
    "ROLESPEC_SESSION_USER": "SESSION_USER",
}

#: Text in a non-SQL function or DO body that suggests role or authentication changes.
_DYNAMIC = re.compile(
    r"\b(?:alter|create|drop)\s+(?:role|user|group)\b|\balter\s+system\b"
    r"|\bpassword\s*(?:'|\$|%|\"|e'|null\b)|\bvalid\s+until\b|\bnologin\b",
    re.IGNORECASE,
)
_COMMENT = re.compile(r"/\*.*?\*/|--[^\n]*", re.S)

GATEWAY_ROLE = "gateway-role"
ROLE_MANAGEMENT = "role-management"
RULES = (GATEWAY_ROLE, ROLE_MANAGEMENT)
MAX_BODY_DEPTH = 4

Denial = tuple[str, str]  # (rule, message)


def _unwrap(node: Any, name: str) -> dict[str, Any]:
    """``{"RoleSpec": {...}}`` or a bare ``{...}`` (libpg_query writes both) -> fields."""
    if isinstance(node, dict) and isinstance(node.get(name), dict) and len(node) == 1:
        return node[name]
    return node if isinstance(node, dict) else {}


def _strings(node: Any) -> list[str]:
    """Every ``String.sval`` under ``node`` (a DefElem argument: String or List of String)."""
    out: list[str] = []
    pending = [node]
    while pending:
        n = pending.pop()
        if isinstance(n, dict):
            s = n.get("String")
            if isinstance(s, dict) and isinstance(s.get("sval"), str):
                out.append(s["sval"])
            else:
                pending.extend(n.values())
        elif isinstance(n, list):
            pending.extend(n)
    return out


def _options(fields: dict[str, Any], key: str = "options") -> dict[str, Any]:
    """DefElem name -> its argument node (``None`` when given without one)."""
    out: dict[str, Any] = {}
    for item in fields.get(key) or ():
        d = _unwrap(item, "DefElem")
        if isinstance(d.get("defname"), str):
            out[d["defname"]] = d.get("arg")
    return out


def _is_true(arg: Any) -> bool:
    b = _unwrap(arg, "Boolean")
    return bool(b.get("boolval")) if isinstance(b, dict) else bool(arg)


def _show(name: str) -> str:
    name = name if len(name) <= 64 else name[:61] + "..."
    return "".join(c if c.isprintable() else "?" for c in name)


def auth_setting(name: str | None) -> bool:
    """Whether an ALTER SYSTEM of ``name`` (``None``: RESET ALL) can affect authentication."""
    if name is None:
        return True
    n = name.lower()
    return n in AUTH_SETTINGS or n.startswith(AUTH_SETTING_PREFIXES)


@dataclass(frozen=True)
class RoleGuard:
    """``protected``: the gateway's upstream roles on this target (exact role names)."""

    protected: frozenset[str]
    role_management: bool = False

    # -- entry points

    def check_text(self, text: str, depth: int = 0) -> Denial | None:
        """Parse ``text`` and judge it; ``None`` if nothing here is refused."""
        try:
            tree = json.loads(parse_sql_json(text))
        except (ParseError, ValueError, RecursionError):
            return None  # judged (and, in restricted modes, refused) by the SQL checker
        roots = []
        for raw in tree.get("stmts", []):
            stmt = raw.get("stmt") if isinstance(raw, dict) else None
            if isinstance(stmt, dict) and len(stmt) == 1:
                roots.append(next(iter(stmt.items())))
        return self.judge(roots, depth)

    def judge(self, roots: Iterable[tuple[str, dict[str, Any]]], depth: int = 0) -> Denial | None:
        """Judge top-level statements ``(NodeType, fields)``; the first denial, or None."""
        for ntype, fields in roots:
            if not isinstance(fields, dict):
                continue
            judge = getattr(self, f"_{ntype}", None)
            denial = judge(fields, depth) if judge is not None else None
            if denial is not None:
                return denial
        return None

    # -- helpers

    def _role(self, spec: Any) -> tuple[str, bool] | None:
        """(how to show it, protected?) for a RoleSpec; None for ``ALL``/missing."""
        f = _unwrap(spec, "RoleSpec")
        if not f:
            return None
        roletype = f.get("roletype")
        if roletype in SELF_ROLESPECS:
            return SELF_ROLESPECS[roletype], True
        name = f.get("rolename")
        if not isinstance(name, str):
            return None
        return _show(name), name in self.protected

    def _gateway_role(self, what: str, role: str) -> Denial:
        return (
            GATEWAY_ROLE,
            f"{what} {role} is not allowed: {role} is, or may be, a role the gateway itself "
            "logs in as, and changing it could open a way in around the gateway",
        )

    # -- statements (method names are libpg_query node types)

    def _AlterRoleStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        role = self._role(f.get("role"))
        if role is None:
            return None
        name, protected = role
        if protected:
            return self._gateway_role("ALTER ROLE", name)
        if "password" in _options(f) and not self.role_management:
            return (
                ROLE_MANAGEMENT,
                f"changing the password of role {name} needs a grant whose template allows "
                "role management",
            )
        return None

    def _AlterRoleSetStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        role = self._role(f.get("role"))
        if role is not None and role[1]:
            return self._gateway_role("ALTER ROLE ... SET on", role[0])
        setting = _unwrap(f.get("setstmt"), "VariableSetStmt")
        if role is None and auth_setting(setting.get("name")):
            return (GATEWAY_ROLE, "ALTER ROLE ALL of an authentication setting is not allowed")
        return None

    def _RenameStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        if f.get("renameType") != "OBJECT_ROLE":
            return None
        old = f.get("subname")
        if isinstance(old, str) and old in self.protected:
            return self._gateway_role("ALTER ROLE ... RENAME of", _show(old))
        return None

    def _DropRoleStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        for spec in f.get("roles") or ():
            role = self._role(spec)
            if role is not None and role[1]:
                return self._gateway_role("DROP ROLE", role[0])
        return None

    def _CreateRoleStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        if self.role_management:
            return None
        opts = _options(f)
        login = (
            _is_true(opts["canlogin"])
            if "canlogin" in opts
            else (f.get("stmt_type") == "ROLESTMT_USER")
        )
        if login and opts.get("password") is not None:
            name = f.get("role") if isinstance(f.get("role"), str) else "?"
            return (
                ROLE_MANAGEMENT,
                f"creating role {_show(name)} that can log in with a password needs a grant "
                "whose template allows role management",
            )
        return None

    def _AlterSystemStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        setting = _unwrap(f.get("setstmt"), "VariableSetStmt")
        name = setting.get("name") if setting.get("kind") != "VAR_RESET_ALL" else None
        if auth_setting(name):
            shown = "RESET ALL" if name is None else _show(str(name))
            return (
                GATEWAY_ROLE,
                f"ALTER SYSTEM {shown} is not allowed: it affects how the server authenticates",
            )
        return None

    def _DoStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        opts = _options(f, "args")
        return self._body("a DO block", opts, depth)

    def _CreateFunctionStmt(self, f: dict[str, Any], depth: int) -> Denial | None:  # noqa: N802
        return self._body("a function body", _options(f), depth)

    def _body(self, what: str, opts: dict[str, Any], depth: int) -> Denial | None:
        body = "\n".join(_strings(opts.get("as")))
        if not body:
            return None
        langs = _strings(opts.get("language"))
        language = langs[0].lower() if langs else ("plpgsql" if what == "a DO block" else "sql")
        if language == "sql" and depth < MAX_BODY_DEPTH:
            denial = self.check_text(body, depth + 1)
            if denial is not None:
                return denial[0], f"{what}: {denial[1]}"
            return None
        if _DYNAMIC.search(_COMMENT.sub(" ", body)):
            return (
                GATEWAY_ROLE,
                f"{what} in {_show(language)} that changes roles or authentication cannot be "
                "checked for changes to the gateway's own roles; run such statements directly",
            )
        return None


# --------------------------------------------------------------------------- SSH

#: Files through which a target login could let itself (or someone) in around the gateway.
SSH_ACCESS_MARKERS = (b"authorized_keys", b"sshd_config", b"authorizedkeys")
SSH_RULE = "authorized-keys"


class SshAccessWatch:
    """Spots input that names the target's SSH access files, across chunk boundaries.

    Best effort, for alerting (a full shell cannot be judged: tab completion, variables and
    aliases hide names); command lines judged by the gateway are seen whole."""

    TAIL = max(len(m) for m in SSH_ACCESS_MARKERS) - 1

    def __init__(self) -> None:
        self.tail = b""

    @staticmethod
    def names_access_file(text: str | bytes) -> bool:
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        low = data.lower()
        return any(m in low for m in SSH_ACCESS_MARKERS)

    def feed(self, data: bytes) -> bool:
        """True when the input stream, including this chunk, names an access file."""
        window = self.tail + data[-4096:]
        self.tail = window[-self.TAIL :]
        return self.names_access_file(window)
