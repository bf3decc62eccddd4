"""The grant service and its clients: ``serve``, ``login``, ``request``, ``requests``,
``approve``, ``deny``, ``grant get``, ``grant revoke``, ``logout`` and
``users list|add|disable|enable|remove``.

Client state lives under the user's config directory (``$XDG_CONFIG_HOME/breakglass`` or
``~/.config/breakglass``), private to the user: ``session.json`` (the API session from
``login``) and ``grants/JTI.jwt`` (fetched grants, mode 0600). ``breakglass ssh`` / ``psql``
find a grant for a target with :func:`find_stored_grant`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from breakglass.cli.output import CliError, emit_json, table
from breakglass.policy.durations import format_duration
from breakglass.policy.grants import utc_text

SERVER_ENV = "BREAKGLASS_SERVER"
CA_ENV = "BREAKGLASS_CA_FILE"


# ------------------------------------------------------------------------ client state


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "breakglass"


def grants_dir() -> Path:
    return config_dir() / "grants"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _claims(token: str) -> dict[str, Any] | None:
    import jwt

    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None


def store_grant(token: str) -> Path:
    """Save a grant as ``grants/JTI.jwt`` (0600); expired grants there are removed."""
    c = _claims(token)
    if not c or not isinstance(c.get("jti"), str) or not c["jti"].isalnum():
        raise CliError("the service returned something that is not a grant")
    path = grants_dir() / f"{c['jti']}.jwt"
    _write_private(path, token + "\n")
    now = time.time()
    for p in grants_dir().glob("*.jwt"):
        old = _claims(p.read_text().strip())
        if old is None or not isinstance(old.get("exp"), int | float) or old["exp"] <= now:
            p.unlink(missing_ok=True)
    return path


def find_stored_grant(
    target: str, target_type: str | None = None, *, now: float | None = None
) -> str | None:
    """The stored, unexpired grant covering ``target`` (and ``target_type`` "ssh"/"postgres"
    if given) that lasts longest, or None. The gateway still verifies it."""
    d = grants_dir()
    if not d.is_dir():
        return None
    now = time.time() if now is None else now
    best: tuple[float, str] | None = None
    for p in d.glob("*.jwt"):
        try:
            token = p.read_text().strip()
        except OSError:
            continue
        c = _claims(token)
        if not c or not isinstance(c.get("exp"), int | float) or c["exp"] <= now:
            continue
        for t in c.get("targets") or []:
            if not isinstance(t, dict) or t.get("name") != target:
                continue
            if target_type and t.get("type") != target_type:
                continue
            if best is None or c["exp"] > best[0]:
                best = (float(c["exp"]), token)
    return best[1] if best else None


def _session_path() -> Path:
    return config_dir() / "session.json"


def _load_session() -> dict[str, Any]:
    try:
        return json.loads(_session_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------ HTTP client


class ServiceCallFailed(CliError):
    """The service answered with an error (``status``), or could not be reached (None)."""

    def __init__(self, message: str, code: int = 1, status: int | None = None) -> None:
        super().__init__(message, code)
        self.status = status


class Client:
    def __init__(self, server: str, token: str | None = None, ca_file: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ctx = None
        if self.server.startswith("https://"):
            self.ctx = (
                ssl.create_default_context(cafile=ca_file)
                if ca_file
                else ssl.create_default_context()
            )
        elif not _loopback_url(self.server):
            raise CliError(f"refusing plain HTTP to {self.server}: use https://")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 75) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ctx) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())
                msg = err.get("error") or e.reason
                rule = err.get("rule")
            except (json.JSONDecodeError, AttributeError):
                msg, rule = e.reason, None
            suffix = f" ({rule})" if rule else ""
            raise ServiceCallFailed(
                f"{msg}{suffix}", code=2 if e.code in (401, 403) else 1, status=e.code
            ) from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            why = getattr(e, "reason", None) or e
            raise ServiceCallFailed(
                f"cannot reach the grant service at {self.server}: {why}"
            ) from None


def _loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "::1", "localhost")


def _server_from_config(args) -> str | None:
    try:
        from breakglass.service.api import load_service_config

        _, settings = load_service_config(args.config)
    except Exception:
        return None
    return settings.url


def _client(args, *, need_session: bool = True) -> Client:
    session = _load_session()
    server = (
        getattr(args, "server", None)
        or os.environ.get(SERVER_ENV)
        or session.get("server")
        or _server_from_config(args)
    )
    if not server:
        raise CliError(f"no grant service: pass --server URL or set ${SERVER_ENV}")
    ca = getattr(args, "ca_file", None) or os.environ.get(CA_ENV) or session.get("ca_file")
    token = None
    if need_session:
        if not session.get("token") or session.get("server", server).rstrip("/") != server.rstrip(
            "/"
        ):
            raise CliError("not logged in to this service: run `breakglass login`", code=2)
        if float(session.get("expires_at", 0)) <= time.time():
            raise CliError("your session has expired: run `breakglass login`", code=2)
        token = session["token"]
    return Client(server, token, ca)


# ------------------------------------------------------------------------ commands


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        help=f"grant service URL (default: ${SERVER_ENV}, "
        "the logged-in service, or the config's service.listen)",
    )
    p.add_argument("--ca-file", metavar="PEM", help=f"CA for the service's TLS (or ${CA_ENV})")
    if json_flag:
        p.add_argument("--json", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the grant service (HTTP JSON API)",
        description="Run the grant service: requests, approvals, break-glass and revocations "
        "over an HTTP JSON API, with OIDC or local password+TOTP identity. Stops on SIGINT/SIGTERM.",
    )
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "login",
        help="log in to the grant service",
        description="Authenticate to the grant service with a local password and TOTP code, or "
        "an OIDC ID token from your identity provider, and keep the short-lived session in "
        "your config directory (private).",
    )
    _common(p, json_flag=False)
    p.add_argument("--user", help="local user name (default: your login name)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--totp", metavar="CODE", help="the current TOTP code (prompted otherwise)")
    p.add_argument("--id-token-file", metavar="FILE|-", help="log in with an OIDC ID token")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser(
        "request",
        help="ask for access",
        description="Ask for a grant from TEMPLATE to TARGET for a duration. Auto-approved or "
        "break-glass requests are granted at once; otherwise approvers are asked.",
    )
    _common(p)
    p.add_argument("--template", "-t", required=True)
    p.add_argument("--target", required=True, action="append", metavar="NAME", help="repeatable")
    p.add_argument("--for", dest="ttl", required=True, metavar="DURATION", help="e.g. 30m")
    p.add_argument("--reason", required=True)
    p.add_argument("--ticket")
    p.add_argument("--breakglass", action="store_true", help="emergency access (alerts security)")
    p.add_argument(
        "--wait", action="store_true", help="wait for the decision, then fetch the grant"
    )
    p.add_argument("--timeout", default="15m", help="how long --wait waits (default 15m)")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("requests", help="list access requests", description="List access requests.")
    _common(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mine", action="store_true", help="only yours")
    g.add_argument("--pending", action="store_true", help="only those waiting for your approval")
    p.set_defaults(func=cmd_requests)

    p = sub.add_parser("approve", help="approve a request", description="Approve request ID.")
    _common(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("--comment", default="")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("deny", help="deny a request", description="Deny request ID.")
    _common(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_deny)

    grant_sub = _grant_subparsers(sub)
    p = grant_sub.add_parser(
        "get",
        help="fetch the grant of an approved request",
        description="Fetch the grant of approved request ID and store it (mode 0600) under "
        f"{grants_dir()} where `breakglass ssh` and `breakglass psql` find it. "
        "--print also writes the token to stdout.",
    )
    _common(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("--print", action="store_true", help="also print the token on stdout")
    p.set_defaults(func=cmd_grant_get)

    p = grant_sub.add_parser(
        "revoke",
        help="revoke a grant through the grant service",
        description="Revoke grant JTI through the grant service; every gateway on the shared "
        "state ends its live sessions within a second.",
    )
    _common(p)
    p.add_argument("jti", metavar="JTI")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_grant_revoke)

    p = sub.add_parser(
        "users",
        help="manage the grant service's local users",
        description="Manage local users (password + TOTP) in identity.users_file.",
    )
    usub = p.add_subparsers(dest="users_command", metavar="COMMAND")
    usub.required = True
    p = usub.add_parser(
        "add",
        help="add or reset a local user; prints the TOTP enrolment secret once",
        description="Add (or reset) NAME in identity.users_file. The password is read from "
        "stdin (--password-stdin) or prompted; the new TOTP secret is printed once for the "
        "user's authenticator app.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--group", action="append", default=[], help="repeatable")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users_add)

    p = usub.add_parser(
        "list", help="list local users", description="List local users, groups and status."
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users_list)
    for name, func, what in (
        ("disable", "cmd_users_disable", "Disable NAME: logins refused"),
        ("remove", "cmd_users_remove", "Remove NAME from the users file"),
    ):
        p = usub.add_parser(
            name,
            help=f"{name} a local user; their service sessions end at once",
            description=f"{what}; NAME's grant-service sessions end at once (the service reads "
            "the users file on its next request). --revoke-grants also revokes NAME's unexpired "
            "grants, so gateways end NAME's live sessions within a second.",
        )
        p.add_argument("name", metavar="NAME")
        p.add_argument("--revoke-grants", action="store_true")
        p.add_argument("--reason", default="", help="recorded with the revocations")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=globals()[func])
    p = usub.add_parser(
        "enable", help="enable a disabled local user", description="Enable NAME again."
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_users_enable)

    p = sub.add_parser(
        "logout",
        help="end your grant-service session",
        description="End the stored grant-service session (on the server too) and forget it.",
    )
    _common(p, json_flag=False)
    p.set_defaults(func=cmd_logout)


def _grant_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``grant`` group's sub-commands (``grant_cmds`` creates the group; add to it)."""
    parser = sub.choices.get("grant")
    if parser is None:
        parser = sub.add_parser("grant", help="issue, inspect and fetch grants")
        gsub = parser.add_subparsers(dest="grant_command", metavar="COMMAND")
        gsub.required = True
        return gsub
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("the grant command has no sub-commands")  # pragma: no cover


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from breakglass.proxy.logs import configure_logging
    from breakglass.service.api import load_service_config, run_service

    cfg, settings = load_service_config(args.config)
    configure_logging(args.log_format, args.log_level)

    def ready(running) -> None:
        from breakglass.proxy.logs import log

        log.info("service.ready", gateway=cfg.gateway_name, url=running.url)  # the JSON log

    try:
        asyncio.run(run_service(cfg, settings, ready))
    except OSError as e:
        raise CliError(f"cannot listen on {settings.host}:{settings.port}: {e.strerror}") from None
    return 0


def _read_secret_line(prompt: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return getpass.getpass(prompt)


def cmd_login(args: argparse.Namespace) -> int:
    c = _client(args, need_session=False)
    if args.id_token_file:
        text = (
            sys.stdin.read() if args.id_token_file == "-" else Path(args.id_token_file).read_text()
        )
        body = {"method": "oidc", "id_token": text.strip()}
    else:
        user = args.user or getpass.getuser()
        password = _read_secret_line(f"password for {user}: ", args.password_stdin)
        code = args.totp or input("TOTP code: ").strip()
        body = {"method": "local", "username": user, "password": password, "totp": code}
    r = c.call("POST", "/v1/login", body)
    _write_private(
        _session_path(),
        json.dumps(
            {
                "server": c.server,
                "token": r["token"],
                "expires_at": r["expires_at"],
                "user": r["user"],
                "ca_file": args.ca_file or os.environ.get(CA_ENV),
            }
        ),
    )
    groups = f" (groups: {', '.join(r['groups'])})" if r.get("groups") else ""
    print(
        f"logged in to {c.server} as {r['user']}{groups} until {utc_text(r['expires_at'])}",
        file=sys.stderr,
    )
    return 0


def _describe(r: dict[str, Any]) -> str:
    status = r["status"]
    if status == "pending":
        need = f", waiting for approval until {utc_text(r['expires_at'])}"
    elif status == "approved":
        by = r.get("auto_approved_by")
        who = (
            "break-glass"
            if r.get("breakglass")
            else (f"auto-approved ({by})" if by else ", ".join(a["by"] for a in r["approvals"]))
        )
        exp = r.get("grant_expires_at")
        need = f" by {who}" + (f", grant valid until {utc_text(exp)}" if exp else "")
    elif status == "denied":
        d = r.get("denial") or {}
        need = f" by {d.get('by')}: {d.get('comment')}"
    else:
        need = ""
    return f"request {r['id']} {status}{need}"


def cmd_request(args: argparse.Namespace) -> int:
    from breakglass.policy.durations import parse_duration

    c = _client(args)
    r = c.call(
        "POST",
        "/v1/requests",
        {
            "template": args.template,
            "targets": args.target,
            "ttl": args.ttl,
            "reason": args.reason,
            "ticket": args.ticket,
            "breakglass": args.breakglass,
        },
    )
    if args.wait and r["status"] == "pending":
        print(_describe(r), file=sys.stderr)
        deadline = time.monotonic() + parse_duration(args.timeout)
        while r["status"] == "pending" and time.monotonic() < deadline:
            wait = min(55, max(1, int(deadline - time.monotonic())))
            r = c.call("GET", f"/v1/requests/{r['id']}?wait={wait}")
    got = None
    if args.wait and r["status"] == "approved":
        got = c.call("GET", f"/v1/requests/{r['id']}/grant")
        path = store_grant(got["token"])
    if args.json:
        emit_json(dict(r, grant_file=str(path) if got else None))
    else:
        print(_describe(r))
        if got:
            print(f"grant {got['jti']} stored in {path}")
        elif r["status"] == "approved":
            print(f"fetch it with: breakglass grant get {r['id']}")
    if args.wait and r["status"] != "approved":
        return 1
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    c = _client(args)
    q = "?mine=1" if args.mine else ("?pending=1" if args.pending else "")
    rows = c.call("GET", f"/v1/requests{q}")
    if args.json:
        emit_json(rows)
        return 0
    now = time.time()
    print(
        table(
            [
                (
                    r["id"],
                    r["status"],
                    r["requester"],
                    r["template"],
                    ",".join(r["targets"]),
                    format_duration(r["ttl"]),
                    format_duration(max(0, now - r["created_at"])) + " ago",
                    r["reason"],
                )
                for r in rows
            ],
            ("ID", "STATUS", "REQUESTER", "TEMPLATE", "TARGETS", "FOR", "ASKED", "REASON"),
        )
    )
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    r = _client(args).call("POST", f"/v1/requests/{args.id}/approve", {"comment": args.comment})
    emit_json(r) if args.json else print(_describe(r))
    return 0


def cmd_deny(args: argparse.Namespace) -> int:
    r = _client(args).call("POST", f"/v1/requests/{args.id}/deny", {"reason": args.reason})
    emit_json(r) if args.json else print(_describe(r))
    return 0


def cmd_grant_get(args: argparse.Namespace) -> int:
    got = _client(args).call("GET", f"/v1/requests/{args.id}/grant")
    path = store_grant(got["token"])
    if args.json:
        emit_json({k: v for k, v in got.items() if k != "token"} | {"file": str(path)})
    else:
        targets = ", ".join(f"{t['type']}:{t['name']}" for t in got["targets"])
        print(
            f"grant {got['jti']} for {targets}, valid until {utc_text(got['expires_at'])}, "
            f"stored in {path}",
            file=sys.stderr,
        )
    if args.print:
        print(got["token"])
    return 0


def cmd_grant_revoke(args: argparse.Namespace) -> int:
    r = _client(args).call("POST", f"/v1/grants/{args.jti}/revoke", {"reason": args.reason})
    emit_json(r) if args.json else print(f"revoked {r['jti']} at {utc_text(r['revoked_at'])}")
    return 0


def cmd_users_add(args: argparse.Namespace) -> int:
    import pyotp

    from breakglass.service.api import load_service_config
    from breakglass.service.identity import add_local_user

    _, settings = load_service_config(args.config)
    if settings.users_file is None:
        raise CliError("identity.users_file is not set in the config")
    if settings.oidc is not None and args.name in settings.oidc.user_map.values():
        raise CliError(
            f"{args.name} is the OIDC mapping of an IdP identity (identity.oidc.user_map); "
            "a name must belong to one identity source"
        )
    password = _read_secret_line(f"new password for {args.name}: ", args.password_stdin)
    if len(password) < 12:
        raise CliError("the password must be at least 12 characters")
    try:
        secret = add_local_user(settings.users_file, args.name, password, tuple(args.group))
    except ValueError as e:
        raise CliError(str(e)) from None
    uri = pyotp.TOTP(secret).provisioning_uri(name=args.name, issuer_name="breakglass")
    if args.json:
        emit_json({"user": args.name, "totp_secret": secret, "otpauth_uri": uri})
    else:
        print(f"user {args.name} saved in {settings.users_file}")
        print(
            f"TOTP secret (enter it in an authenticator app now; it is not shown again): {secret}"
        )
        print(uri)
    return 0


def _users_file(args: argparse.Namespace):
    from breakglass.service.api import load_service_config

    cfg, settings = load_service_config(args.config)
    if settings.users_file is None:
        raise CliError("identity.users_file is not set in the config")
    return cfg, settings, settings.users_file


def cmd_users_list(args: argparse.Namespace) -> int:
    from breakglass.service.identity import LocalUsers

    _, _, path = _users_file(args)
    try:
        users = LocalUsers.load(path).users if path.exists() else {}
    except ValueError as e:
        raise CliError(str(e)) from None
    rows = [
        {"user": u.name, "groups": list(u.groups), "disabled": u.disabled}
        for u in sorted(users.values(), key=lambda u: u.name)
    ]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            status = "disabled" if r["disabled"] else "active"
            print(f"{r['user']:<24} {status:<9} {', '.join(r['groups'])}")
    return 0


def cmd_users_enable(args: argparse.Namespace) -> int:
    from breakglass.service.identity import set_user_disabled

    cfg, _, path = _users_file(args)
    try:
        set_user_disabled(path, args.name, False)
    except KeyError:
        raise CliError(f"no local user {args.name}") from None
    _audit(cfg, "user.enabled", user=args.name)
    print(f"user {args.name} enabled", file=sys.stderr)
    return 0


def cmd_users_disable(args: argparse.Namespace) -> int:
    return _offboard(args, "disabled")


def cmd_users_remove(args: argparse.Namespace) -> int:
    return _offboard(args, "removed")


def _offboard(args: argparse.Namespace, what: str) -> int:
    """Disable or remove a user: the file first (new logins refused, sessions checked against
    it), then every service session cut off in the shared state, then (optionally) their
    grants revoked, which gateways act on within a second."""
    import asyncio
    import time

    from breakglass.proxy.context import current_actor
    from breakglass.service.api import open_service_state
    from breakglass.service.identity import remove_local_user, set_user_disabled

    cfg, settings, path = _users_file(args)
    try:
        if what == "removed":
            remove_local_user(path, args.name)
        else:
            set_user_disabled(path, args.name, True)
    except KeyError:
        raise CliError(f"no local user {args.name}") from None
    actor = current_actor()
    reason = args.reason.strip() or f"user {args.name} {what}"
    state = open_service_state(cfg, settings)

    async def run() -> list[str]:
        try:
            now = time.time()
            await state.end_sessions(f"user:{args.name}", now)
            revoked = []
            if args.revoke_grants:
                for g in await state.list_grants(subject=args.name, limit=10_000):
                    if g.expires_at > now and await state.revocation(g.jti) is None:
                        await state.revoke(g.jti, reason, actor)
                        revoked.append(g.jti)
            return revoked
        finally:
            await state.close()

    revoked = asyncio.run(run())
    _audit(cfg, f"user.{what}", user=args.name, revoked_grants=revoked)
    for jti in revoked:
        _audit(cfg, "grant.revoked", jti=jti, subject=args.name, reason=reason)
    if args.json:
        emit_json({"user": args.name, "status": what, "revoked_grants": revoked})
    else:
        extra = f"; {len(revoked)} grant(s) revoked" if args.revoke_grants else ""
        print(f"user {args.name} {what}; their service sessions ended{extra}", file=sys.stderr)
    return 0


def _audit(cfg, event: str, **fields: Any) -> None:
    from breakglass.proxy.context import current_actor, open_audit

    audit = open_audit(cfg)
    try:
        audit.append(event, actor=current_actor(), **fields)
    finally:
        audit.close()


def cmd_logout(args: argparse.Namespace) -> int:
    session = _load_session()
    path = _session_path()
    if not session:
        print("not logged in", file=sys.stderr)
        return 0
    try:
        _client(args).call("POST", "/v1/logout", {})
    except CliError as e:  # the session is forgotten here anyway
        print(f"breakglass: the server did not confirm the logout: {e}", file=sys.stderr)
    path.unlink(missing_ok=True)
    print(f"logged out {session.get('user', '')}".rstrip(), file=sys.stderr)
    return 0
