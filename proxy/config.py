"""Load and validate ``config.toml``; every problem is reported with its key path.

Relative paths are resolved against the directory holding the config file.
Secrets (upstream passwords) are read lazily by ``PostgresTarget.password()``
so that they are never part of a printed config.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breakglass.policy.durations import DurationError, parse_duration
from breakglass.policy.templates import SQL_MODES, SqlAccess, SshAccess, TargetPattern, Template

CONFIG_ENV = "BREAKGLASS_CONFIG"


class ConfigError(Exception):
    """Configuration problems; ``problems`` lists ``key.path: what is wrong``."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SshTarget:
    name: str
    host: str
    port: int
    known_hosts: Path
    logins: dict[str, Path]  # login -> private key file


@dataclass(frozen=True)
class PostgresTarget:
    name: str
    host: str
    port: int
    database: str
    users: dict[str, tuple[str, str]]  # db_user -> ("file"|"env", path-or-variable)
    tls: str = "disable"  # disable | verify-full (certificate checked against ca_file)
    ca_file: Path | None = None
    record_parameters: bool = True
    #: seconds between the upstream's checks that the gateway's connection is still there
    #: (client_connection_check_interval, PostgreSQL 14+; 0: not set)
    connection_check: int = 1

    def password(self, db_user: str) -> str:
        """Read the upstream password for ``db_user``; raises ``ConfigError`` if unavailable."""
        kind, where = self.users[db_user]
        path = f"targets.postgres.{self.name}.users.{db_user}"
        if kind == "env":
            value = os.environ.get(where)
            if value is None:
                raise ConfigError([f"{path}.password_env: environment variable {where} is not set"])
            return value
        try:
            return Path(where).read_text().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(
                [f"{path}.password_file: cannot read {where}: {e.strerror}"]
            ) from None


@dataclass(frozen=True)
class Config:
    path: Path | None
    gateway_name: str
    ssh_listen: Listen | None
    postgres_listen: Listen | None
    ssh_host_key: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    admin_socket: Path
    warn_before_expiry: int
    leeway: int
    failed_auth_limit: int
    issuer_name: str
    issuer_key_id: str | None
    issuer_signing_key: Path | None
    trusted_issuer_keys: dict[str, Path]
    recordings_dir: Path
    audit_dir: Path
    recorder_key_id: str
    recorder_signing_key: Path
    trusted_recorder_keys: dict[str, Path]
    checkpoint_interval: float
    checkpoint_events: int
    commit_interval: float
    state_database: Path
    groups: dict[str, tuple[str, ...]]
    templates: dict[str, Template]
    ssh_targets: dict[str, SshTarget]
    postgres_targets: dict[str, PostgresTarget]
    workers: int = 1  # gateway processes sharing the listening ports (SO_REUSEPORT)
    metrics_listen: Listen | None = None  # Prometheus /metrics and /health/* (port + worker)
    store: Any = None  # recorder.store.StoreConfig: [recorder.store], S3 with Object Lock
    #: risky but valid settings (shells, interpreters, pagers, find -exec ... in templates)
    warnings: tuple[str, ...] = ()
    #: unauthenticated connections per source address / in total (both listeners)
    preauth_per_source: int = 32
    preauth_total: int = 1024
    #: listen(2) backlog of the SSH and PostgreSQL listeners (the kernel caps it at somaxconn)
    listen_backlog: int = 4096
    banner_timeout: int = 10  # seconds an SSH client has to send its version line
    #: kid -> the issuer (``iss``) that key vouches for; kids not listed vouch for issuer_name.
    trusted_key_issuers: dict[str, str] = field(default_factory=dict)
    state_url: str | None = field(default=None, repr=False)  # PostgreSQL state (a secret: no repr)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def known_targets(self) -> dict[str, str]:
        out = {n: "ssh" for n in self.ssh_targets}
        out.update({n: "postgres" for n in self.postgres_targets})
        return out


class _Reader:
    """Typed access into a TOML document that records problems instead of raising."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []
        self.warnings: list[str] = []  # risky but valid: logged when the gateway starts

    def bad(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def table(self, doc: dict, key: str, path: str, required: bool = False) -> dict:
        v = doc.get(key)
        if v is None:
            if required:
                self.bad(path, "missing table")
            return {}
        if not isinstance(v, dict):
            self.bad(path, "expected a table")
            return {}
        return v

    def get(
        self, doc: dict, key: str, path: str, kind: type | tuple, default: Any = ..., what: str = ""
    ) -> Any:
        if key not in doc:
            if default is ...:
                self.bad(path, "missing")
                return None
            return default
        v = doc[key]
        if (
            isinstance(v, bool)
            and kind is not bool
            and (not isinstance(kind, tuple) or bool not in kind)
        ):
            self.bad(path, f"expected {what or _kind_name(kind)}")
            return None if default is ... else default
        if not isinstance(v, kind):
            self.bad(path, f"expected {what or _kind_name(kind)}")
            return None if default is ... else default
        return v

    def string(self, doc, key, path, default: Any = ...) -> str | None:
        v = self.get(doc, key, path, str, default)
        if isinstance(v, str) and not v.strip() and default is ...:
            self.bad(path, "must not be empty")
        return v

    def integer(
        self, doc, key, path, default: Any = ..., lo: int | None = None, hi: int | None = None
    ) -> int | None:
        v = self.get(doc, key, path, int, default, "an integer")
        if isinstance(v, int) and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            self.bad(path, f"must be between {lo} and {hi}")
            return None
        return v

    def number(self, doc, key, path, default: Any = ..., lo: float = 0.0) -> float | None:
        v = self.get(doc, key, path, (int, float), default, "a number")
        if isinstance(v, int | float) and v < lo:
            self.bad(path, f"must be at least {lo}")
            return None
        return float(v) if v is not None else None

    def boolean(self, doc, key, path, default: Any = ...) -> bool | None:
        return self.get(doc, key, path, bool, default, "true or false")

    def duration(self, doc, key, path, default: Any = ...) -> int | None:
        v = self.get(doc, key, path, (str, int), default, 'a duration like "30m"')
        if v is None:
            return None
        try:
            return parse_duration(v)
        except DurationError as e:
            self.bad(path, str(e))
            return None

    def strings(self, doc, key, path, default: Any = ...) -> tuple[str, ...]:
        v = self.get(doc, key, path, list, default, "a list of strings")
        if v is None:
            return ()
        if not all(isinstance(x, str) for x in v):
            self.bad(path, "expected a list of strings")
            return ()
        return tuple(v)

    def file(self, doc, key, path, default: Any = ..., must_exist: bool = True) -> Path | None:
        v = self.string(doc, key, path, default)
        if not v:
            return None
        p = (self.base / Path(v).expanduser()).resolve() if not Path(v).is_absolute() else Path(v)
        if must_exist and not p.exists():
            self.bad(path, f"file not found: {p}")
        return p

    def listen(self, doc, key, path) -> Listen | None:
        v = self.get(doc, key, path, str, None, 'an address like "127.0.0.1:2222"')
        if not v:
            return None
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            self.bad(path, f'expected "HOST:PORT", got {v!r}')
            return None
        return Listen(host, int(port))


def _kind_name(kind: type | tuple) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _keys(r: _Reader, doc: dict, path: str) -> dict[str, Path]:
    out = {}
    for kid in doc:
        p = r.file(doc, kid, f"{path}.{kid}")
        if p:
            out[kid] = p
    return out


def _issuer_keys(r: _Reader, doc: dict) -> tuple[dict[str, Path], dict[str, str]]:
    """``kid = "path"`` (vouches for ``issuer.name``) or ``kid = { key = "path", issuer = "ISS" }``."""
    keys: dict[str, Path] = {}
    issuers: dict[str, str] = {}
    for kid, v in doc.items():
        path = f"issuer.trusted_keys.{kid}"
        if isinstance(v, dict):
            for k in v:
                if k not in ("key", "issuer"):
                    r.bad(f"{path}.{k}", "unknown key (expected key and issuer)")
            p = r.file(v, "key", f"{path}.key")
            iss = r.string(v, "issuer", f"{path}.issuer")
            if p and iss:
                keys[kid], issuers[kid] = p, iss
        else:
            p = r.file(doc, kid, path)
            if p:
                keys[kid] = p
    return keys, issuers


def _template(r: _Reader, name: str, t: dict, path: str) -> Template | None:
    n = len(r.problems)
    patterns = []
    for i, s in enumerate(r.strings(t, "targets", f"{path}.targets")):
        type_, sep, glob = s.partition(":")
        if not sep or type_ not in ("ssh", "postgres") or not glob:
            r.bad(f"{path}.targets[{i}]", f'expected "ssh:GLOB" or "postgres:GLOB", got {s!r}')
        else:
            patterns.append(TargetPattern(type_, glob))
    if not patterns and len(r.problems) == n:
        r.bad(f"{path}.targets", "name at least one target pattern")
    ssh_doc = r.table(t, "ssh", f"{path}.ssh")
    sql_doc = r.table(t, "sql", f"{path}.sql")
    mode = r.string(sql_doc, "mode", f"{path}.sql.mode", "read-only")
    if mode not in SQL_MODES:
        r.bad(f"{path}.sql.mode", f"expected one of {', '.join(SQL_MODES)}, got {mode!r}")
    ssh = SshAccess(
        commands=r.strings(ssh_doc, "commands", f"{path}.ssh.commands", []),
        shell=r.boolean(ssh_doc, "shell", f"{path}.ssh.shell", False),
        forwarding=r.boolean(ssh_doc, "forwarding", f"{path}.ssh.forwarding", False),
        sftp=r.boolean(ssh_doc, "sftp", f"{path}.ssh.sftp", False),
    )
    try:
        from breakglass.policy.commands import CommandRules

        rules = CommandRules.from_claim(ssh.claim())
        r.warnings.extend(f"{path}.ssh: {w}" for w in rules.warnings())
    except ImportError:
        pass
    except ValueError as e:
        r.bad(f"{path}.ssh.commands", str(e))
    tpl = Template(
        name=name,
        description=r.string(t, "description", f"{path}.description", ""),
        targets=tuple(patterns),
        max_ttl=r.duration(t, "max_ttl", f"{path}.max_ttl") or 0,
        approvals=r.integer(t, "approvals", f"{path}.approvals", 1, lo=0, hi=10) or 0,
        # Nobody may request a template that does not say who may (explicit "*" for everyone).
        requesters=r.strings(t, "requesters", f"{path}.requesters", []),
        approvers=r.strings(t, "approvers", f"{path}.approvers", []),
        breakglass=bool(r.boolean(t, "breakglass", f"{path}.breakglass", False)),
        login=r.string(t, "login", f"{path}.login", None),
        db_user=r.string(t, "db_user", f"{path}.db_user", None),
        ssh=ssh,
        sql=SqlAccess(
            mode=mode or "read-only",
            tables=r.strings(sql_doc, "tables", f"{path}.sql.tables", []),
            catalog=bool(r.boolean(sql_doc, "catalog", f"{path}.sql.catalog", True)),
        ),
        role_management=bool(r.boolean(t, "role_management", f"{path}.role_management", False)),
    )
    if tpl.role_management and mode != "all":
        r.bad(f"{path}.role_management", 'only meaningful with sql mode = "all"')
    if any(p.type == "ssh" for p in patterns) and not tpl.login:
        r.bad(f"{path}.login", "required when the template covers ssh targets")
    if any(p.type == "postgres" for p in patterns) and not tpl.db_user:
        r.bad(f"{path}.db_user", "required when the template covers postgres targets")
    if tpl.breakglass and "*" in tpl.requesters:
        r.bad(f"{path}.requesters", "a break-glass template must name who may use it, not '*'")
    if not tpl.breakglass and tpl.approvals > 0 and not tpl.approvers:
        r.bad(f"{path}.approvers", "name who may approve (users or @group)")
    return tpl if len(r.problems) == n else None


def _state_url(r: _Reader, st: dict) -> str | None:
    """``state.url`` or the variable named by ``state.url_env``: PostgreSQL state for several gateways."""
    if "url" in st:
        url = r.string(st, "url", "state.url")
    elif "url_env" in st:
        var = r.string(st, "url_env", "state.url_env") or ""
        url = os.environ.get(var)
        if not url:
            r.bad("state.url_env", f"environment variable {var} is not set")
            return None
    else:
        return None
    if url and not url.startswith(("postgresql://", "postgres://")):
        r.bad("state.url" if "url" in st else "state.url_env", "expected a postgresql:// URL")
        return None
    return url


def _store(r: _Reader, doc: dict) -> Any:
    """``[recorder.store]``: S3-compatible object storage with Object Lock (None: local only)."""
    if not doc:
        return None
    from breakglass.recorder import store as st

    p = "recorder.store"
    known = {
        "url",
        "endpoint_url",
        "region",
        "credentials_file",
        "profile",
        "retention",
        "upload_lag",
        "anchor_interval",
        "spool_limit",
        "timeout",
        "addressing_style",
    }
    for k in doc:
        if k in (
            "access_key_id",
            "secret_access_key",
            "aws_access_key_id",
            "aws_secret_access_key",
        ):
            r.bad(
                f"{p}.{k}",
                "credentials never go in the config: use the environment "
                "(AWS_ACCESS_KEY_ID, ...) or credentials_file",
            )
        elif k not in known:
            r.bad(f"{p}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    n = len(r.problems)
    bucket = prefix = ""
    url = r.string(doc, "url", f"{p}.url")
    if url:
        try:
            bucket, prefix = st.parse_url(url)
        except st.StoreError as e:
            r.bad(f"{p}.url", str(e))
    mode, days = "COMPLIANCE", 400
    retention = r.string(doc, "retention", f"{p}.retention", "compliance:400d")
    if retention:
        try:
            mode, days = st.parse_retention(retention)
        except st.StoreError as e:
            r.bad(f"{p}.retention", str(e))
    spool = 4 << 30
    raw_spool = r.get(
        doc, "spool_limit", f"{p}.spool_limit", (str, int), "4GiB", 'a size like "4GiB"'
    )
    if raw_spool is not None:
        try:
            spool = st.parse_size(raw_spool)
        except st.StoreError as e:
            r.bad(f"{p}.spool_limit", str(e))
    endpoint = r.string(doc, "endpoint_url", f"{p}.endpoint_url", None)
    if endpoint and not endpoint.startswith(("http://", "https://")):
        r.bad(f"{p}.endpoint_url", "expected an http:// or https:// URL")
    style = r.string(doc, "addressing_style", f"{p}.addressing_style", "path")
    if style not in ("path", "virtual", "auto"):
        r.bad(f"{p}.addressing_style", "expected path, virtual or auto")
    lag = r.number(doc, "upload_lag", f"{p}.upload_lag", 5.0, lo=0.1)
    cfg = st.StoreConfig(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=r.string(doc, "region", f"{p}.region", None),
        credentials_file=r.file(doc, "credentials_file", f"{p}.credentials_file", None),
        profile=r.string(doc, "profile", f"{p}.profile", None),
        retention_mode=mode,
        retention_days=days,
        upload_lag=lag or 5.0,
        anchor_interval=r.number(doc, "anchor_interval", f"{p}.anchor_interval", 1.0, lo=0.1)
        or 1.0,
        spool_limit=spool,
        timeout=r.number(doc, "timeout", f"{p}.timeout", 30.0, lo=0.5) or 30.0,
        addressing_style=style or "path",
    )
    return cfg if len(r.problems) == n else None


def parse_config(doc: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    r = _Reader(base)
    # service/identity: the grant service (service/api.py); review/alerts/index: recorder/alerts.py.
    # Those modules validate their own sections.
    known_top = {
        "gateway",
        "issuer",
        "recorder",
        "state",
        "groups",
        "templates",
        "targets",
        "service",
        "identity",
        "review",
        "alerts",
        "index",
        "console",
    }
    for k in doc:
        if k not in known_top:
            r.bad(k, f"unknown section (known: {', '.join(sorted(known_top))})")
    gw = r.table(doc, "gateway", "gateway", required=True)
    iss = r.table(doc, "issuer", "issuer", required=True)
    rec = r.table(doc, "recorder", "recorder", required=True)
    st = r.table(doc, "state", "state")
    gateway_name = r.string(gw, "name", "gateway.name")
    ssh_listen = r.listen(gw, "ssh_listen", "gateway.ssh_listen")
    pg_listen = r.listen(gw, "postgres_listen", "gateway.postgres_listen")
    ssh_host_key = r.file(gw, "ssh_host_key", "gateway.ssh_host_key", None)
    tls_cert = r.file(gw, "tls_cert", "gateway.tls_cert", None)
    tls_key = r.file(gw, "tls_key", "gateway.tls_key", None)
    if ssh_listen and not ssh_host_key:
        r.bad("gateway.ssh_host_key", "required when gateway.ssh_listen is set")
    if pg_listen and not (tls_cert and tls_key):
        r.bad(
            "gateway.tls_cert",
            "tls_cert and tls_key are required when gateway.postgres_listen is set",
        )
    leeway = r.duration(gw, "leeway", "gateway.leeway", "5s")
    if leeway is not None and leeway > 30:
        r.bad("gateway.leeway", "must be at most 30s")
    trusted_issuers, key_issuers = _issuer_keys(
        r, r.table(iss, "trusted_keys", "issuer.trusted_keys", required=True)
    )
    if not trusted_issuers and "trusted_keys" in iss:
        r.bad("issuer.trusted_keys", "name at least one trusted issuer key")
    trusted_recorders = _keys(
        r, r.table(rec, "trusted_keys", "recorder.trusted_keys"), "recorder.trusted_keys"
    )
    recorder_key_id = r.string(rec, "key_id", "recorder.key_id")
    recorder_key = r.file(rec, "signing_key", "recorder.signing_key")
    groups = {}
    for g, members in r.table(doc, "groups", "groups").items():
        groups[g] = r.strings({g: members}, g, f"groups.{g}")
    templates = {}
    for name, t in r.table(doc, "templates", "templates").items():
        if not isinstance(t, dict):
            r.bad(f"templates.{name}", "expected a table")
            continue
        tpl = _template(r, name, t, f"templates.{name}")
        if tpl:
            templates[name] = tpl
    targets = r.table(doc, "targets", "targets")
    for k in targets:
        if k not in ("ssh", "postgres"):
            r.bad(f"targets.{k}", "unknown target type (expected ssh or postgres)")
    ssh_targets = {}
    for name, t in r.table(targets, "ssh", "targets.ssh").items():
        p = f"targets.ssh.{name}"
        if not isinstance(t, dict):
            r.bad(p, "expected a table")
            continue
        logins = {}
        for login, lt in r.table(t, "logins", f"{p}.logins", required=True).items():
            if not isinstance(lt, dict):
                r.bad(f"{p}.logins.{login}", "expected a table")
                continue
            key = r.file(lt, "private_key", f"{p}.logins.{login}.private_key")
            if key:
                logins[login] = key
        ssh_targets[name] = SshTarget(
            name=name,
            host=r.string(t, "host", f"{p}.host") or "",
            port=r.integer(t, "port", f"{p}.port", 22, lo=1, hi=65535) or 22,
            known_hosts=r.file(t, "known_hosts", f"{p}.known_hosts") or Path(),
            logins=logins,
        )
    pg_targets = {}
    for name, t in r.table(targets, "postgres", "targets.postgres").items():
        p = f"targets.postgres.{name}"
        if not isinstance(t, dict):
            r.bad(p, "expected a table")
            continue
        if name in ssh_targets:
            r.bad(p, f"target name {name!r} is also an ssh target; names must be unique")
        users = {}
        for user, ut in r.table(t, "users", f"{p}.users", required=True).items():
            up = f"{p}.users.{user}"
            if not isinstance(ut, dict):
                r.bad(up, "expected a table")
                continue
            if "password_file" in ut:
                f = r.file(ut, "password_file", f"{up}.password_file")
                if f:
                    users[user] = ("file", str(f))
            elif "password_env" in ut:
                users[user] = ("env", r.string(ut, "password_env", f"{up}.password_env") or "")
            else:
                r.bad(up, "set password_file or password_env")
        tls = r.string(t, "tls", f"{p}.tls", "disable")
        if tls not in ("disable", "verify-full"):
            r.bad(f"{p}.tls", f"expected disable or verify-full, got {tls!r}")
        ca = r.file(t, "ca_file", f"{p}.ca_file", None)
        if tls == "verify-full" and not ca:
            r.bad(f"{p}.ca_file", 'required when tls = "verify-full"')
        pg_targets[name] = PostgresTarget(
            name=name,
            host=r.string(t, "host", f"{p}.host") or "",
            port=r.integer(t, "port", f"{p}.port", 5432, lo=1, hi=65535) or 5432,
            database=r.string(t, "database", f"{p}.database") or "",
            users=users,
            tls=tls or "disable",
            ca_file=ca,
            record_parameters=bool(
                r.boolean(t, "record_parameters", f"{p}.record_parameters", True)
            ),
            connection_check=r.duration(t, "connection_check", f"{p}.connection_check", "1s") or 0,
        )
    for tname, tpl in templates.items():
        for pat in tpl.targets:
            pool = ssh_targets if pat.type == "ssh" else pg_targets
            account = tpl.login if pat.type == "ssh" else tpl.db_user
            for n, target in pool.items():
                if pat.matches(pat.type, n) and account:
                    have = target.logins if pat.type == "ssh" else target.users
                    if account not in have:
                        field_ = "logins" if pat.type == "ssh" else "users"
                        r.bad(
                            f"templates.{tname}", f"{pat.type} target {n} has no {field_}.{account}"
                        )
    fields = dict(
        path=source,
        gateway_name=gateway_name,
        ssh_listen=ssh_listen,
        postgres_listen=pg_listen,
        ssh_host_key=ssh_host_key,
        tls_cert=tls_cert,
        tls_key=tls_key,
        admin_socket=r.file(
            gw, "admin_socket", "gateway.admin_socket", "run/admin.sock", must_exist=False
        ),
        warn_before_expiry=r.duration(gw, "warn_before_expiry", "gateway.warn_before_expiry", "2m"),
        leeway=leeway,
        workers=r.integer(gw, "workers", "gateway.workers", 1, lo=1, hi=64) or 1,
        metrics_listen=r.listen(gw, "metrics_listen", "gateway.metrics_listen"),
        failed_auth_limit=r.integer(
            gw, "failed_auth_limit", "gateway.failed_auth_limit", 10, lo=1, hi=10000
        ),
        preauth_per_source=r.integer(
            gw, "preauth_per_source", "gateway.preauth_per_source", 32, lo=1, hi=100_000
        ),
        preauth_total=r.integer(
            gw, "preauth_total", "gateway.preauth_total", 1024, lo=1, hi=1_000_000
        ),
        listen_backlog=r.integer(
            gw, "listen_backlog", "gateway.listen_backlog", 4096, lo=1, hi=1_000_000
        )
        or 4096,
        banner_timeout=r.duration(gw, "banner_timeout", "gateway.banner_timeout", "10s") or 10,
        issuer_name=r.string(iss, "name", "issuer.name", "breakglass"),
        issuer_key_id=r.string(iss, "key_id", "issuer.key_id", None),
        issuer_signing_key=r.file(iss, "signing_key", "issuer.signing_key", None),
        trusted_issuer_keys=trusted_issuers,
        trusted_key_issuers=key_issuers,
        recordings_dir=r.file(
            rec, "directory", "recorder.directory", "recordings", must_exist=False
        ),
        audit_dir=r.file(
            rec, "audit_directory", "recorder.audit_directory", "audit", must_exist=False
        ),
        recorder_key_id=recorder_key_id,
        recorder_signing_key=recorder_key,
        trusted_recorder_keys=trusted_recorders,
        checkpoint_interval=r.number(
            rec, "checkpoint_interval", "recorder.checkpoint_interval", 1.0
        ),
        checkpoint_events=r.integer(
            rec, "checkpoint_events", "recorder.checkpoint_events", 1000, lo=1, hi=10**7
        ),
        commit_interval=r.number(rec, "commit_interval", "recorder.commit_interval", 0.05),
        state_database=r.file(st, "database", "state.database", "state.db", must_exist=False),
        state_url=_state_url(r, st),
        store=_store(r, r.table(rec, "store", "recorder.store")),
        groups=groups,
        templates=templates,
        ssh_targets=ssh_targets,
        postgres_targets=pg_targets,
        raw=doc,
        warnings=tuple(r.warnings),
    )
    # Every value above is read before this check, so no problem goes unreported.
    if r.problems:
        raise ConfigError(r.problems, source)
    return Config(**fields)


def find_config_path(explicit: str | os.PathLike | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path("config.toml")


def load_config(path: str | os.PathLike | None = None) -> Config:
    p = find_config_path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            [
                f"config file not found: {p} (pass -c PATH, set {CONFIG_ENV}, or run `breakglass init DIR`)"
            ]
        ) from None
    except OSError as e:
        raise ConfigError([f"cannot read config file {p}: {e.strerror}"]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], p) from None
    return parse_config(doc, p.resolve().parent, p)
