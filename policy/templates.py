"""Access templates: least-privilege recipes for common production tasks."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SQL_MODES = ("read-only", "read-write", "all")


@dataclass(frozen=True)
class TargetPattern:
    """``postgres:orders*`` — a target type and a glob over target names."""

    type: str
    glob: str

    def matches(self, type_: str, name: str) -> bool:
        return type_ == self.type and fnmatch.fnmatchcase(name, self.glob)

    def __str__(self) -> str:
        return f"{self.type}:{self.glob}"


@dataclass(frozen=True)
class SshAccess:
    commands: tuple[str, ...] = ()
    shell: bool = False
    forwarding: bool = False
    sftp: bool = False

    def claim(self) -> dict[str, Any]:
        return {
            "commands": list(self.commands),
            "shell": self.shell,
            "forwarding": self.forwarding,
            "sftp": self.sftp,
        }


@dataclass(frozen=True)
class SqlAccess:
    mode: str = "read-only"
    tables: tuple[str, ...] = ()
    catalog: bool = True  # with a table list: pg_catalog/information_schema readable too

    def claim(self) -> dict[str, Any]:
        claim: dict[str, Any] = {"mode": self.mode, "tables": list(self.tables)}
        if not self.catalog:
            claim["catalog"] = False  # only when set: older gateways refuse unknown keys
        return claim


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    targets: tuple[TargetPattern, ...]
    max_ttl: int  # seconds
    approvals: int = 1
    requesters: tuple[str, ...] = ()  # users, "@group" or "*"; nobody unless named
    approvers: tuple[str, ...] = ()
    breakglass: bool = False
    login: str | None = None  # ssh account the grant uses on the target
    db_user: str | None = None  # postgres role the grant uses on the target
    ssh: SshAccess = field(default_factory=SshAccess)
    sql: SqlAccess = field(default_factory=SqlAccess)
    #: may create login roles with passwords and change other roles' passwords (sql mode all)
    role_management: bool = False

    def covers(self, type_: str, name: str) -> bool:
        return any(p.matches(type_, name) for p in self.targets)


def is_member(
    user: str, principals: tuple[str, ...], groups: Mapping[str, tuple[str, ...]]
) -> bool:
    """Whether ``user`` is named by ``principals`` (a user, ``@group`` or ``*``)."""
    for p in principals:
        if p == "*" or p == user:
            return True
        if p.startswith("@") and user in groups.get(p[1:], ()):
            return True
    return False
