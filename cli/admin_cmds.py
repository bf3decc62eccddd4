"""``breakglass gateway``, ``sessions``, ``kill`` and the ``psql`` front door."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

from breakglass.cli import review_cmds
from breakglass.cli.acting import as_service_user, os_actor
from breakglass.cli.output import CliError, emit_json
from breakglass.proxy.config import load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="run the SSH and PostgreSQL gateway",
        description="Run the gateway: the listeners in the config, the admin socket, "
        "expiry and revocation enforcement. Stops on SIGINT/SIGTERM.",
    )
    p.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--worker", help=argparse.SUPPRESS)  # I/N: set by the supervisor
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser(
        "sessions",
        help="list finished and live sessions",
        description="Sessions from the recordings index, newest first, with duration, end reason "
        "and integrity; live sessions of the local gateway come from its admin socket.",
    )
    review_cmds.add_sessions_options(p)
    p.set_defaults(func=review_cmds.cmd_sessions)

    p = sub.add_parser(
        "kill",
        help="end a live session now",
        description="End a live session: the engineer sees 'killed by USER' and both sides "
        "close. Logged in to the grant service (`breakglass login`), the kill goes through the "
        "service and USER is your service identity (service admins only); otherwise it acts "
        "locally and USER is the OS account, os:NAME.",
    )
    p.add_argument("session", metavar="SESSION", help="session id (or a unique suffix of it)")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser(
        "psql",
        help="run psql to a target through the gateway with your grant",
        description="Run the machine's psql against TARGET through the gateway. The grant is read "
        "from --grant-file, $BREAKGLASS_GRANT or $BREAKGLASS_GRANT_FILE and passed to psql in the "
        "environment (PGPASSWORD), never on the command line. Extra arguments go to psql.",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--user", help="your user name (default: the grant's subject)")
    p.add_argument("--grant-file", help="file holding the grant token")
    p.add_argument("--host", help="gateway host (default: the config's postgres_listen)")
    p.add_argument("--port", type=int, help="gateway port (default: the config's postgres_listen)")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, metavar="-- PSQL ARGS")
    p.set_defaults(func=cmd_psql)

    from breakglass.proxy.ssh.client_cmd import add_arguments, run_ssh_client

    p = sub.add_parser(
        "ssh",
        help="run ssh to a target through the gateway with your grant",
        description="Run the machine's OpenSSH client to TARGET through the gateway. The grant "
        "comes from --grant-file, $BREAKGLASS_GRANT_FILE, $BREAKGLASS_GRANT or a stored grant, "
        "and reaches ssh through SSH_ASKPASS, never the command line.",
    )
    add_arguments(p)
    p.set_defaults(func=run_ssh_client)


def cmd_gateway(args: argparse.Namespace) -> int:
    from breakglass.proxy.gateway import run_async, run_gateway
    from breakglass.proxy.logs import configure_logging

    cfg = load_config(args.config)
    configure_logging(args.log_format, args.log_level)
    worker, workers = 0, 1
    if args.worker:
        try:
            worker, workers = (int(x) for x in args.worker.split("/"))
        except ValueError:
            raise CliError("--worker takes I/N") from None
    elif cfg.workers > 1:
        from breakglass.proxy.gateway import supervise_workers

        argv = [sys.executable, "-m", "breakglass.cli.main", "-c", str(cfg.path), "gateway"]
        argv += ["--log-format", args.log_format, "--log-level", args.log_level]
        return supervise_workers(argv, cfg.workers)

    def ready(gw) -> None:
        if worker:
            return
        from breakglass.proxy.logs import log

        # A log event, not a print: stderr is the (JSON) log, one format per line.
        log.info(
            "gateway.ready",
            gateway=cfg.gateway_name,
            ssh=str(cfg.ssh_listen) if cfg.ssh_listen else None,
            postgres=str(cfg.postgres_listen) if cfg.postgres_listen else None,
        )

    run_async(run_gateway(cfg, ready, worker, workers))
    return 0


def _admin(args: argparse.Namespace, request: dict) -> dict:
    """Send ``request`` to each worker of the local gateway; the first that succeeds answers."""
    from breakglass.proxy.admin import admin_request, admin_sockets

    cfg = load_config(args.config)
    sockets = admin_sockets(cfg.admin_socket)
    if not sockets:
        raise CliError(
            f"no gateway is running with this config (no admin socket at {cfg.admin_socket})"
        )
    reply: dict = {}
    for path in sockets:
        try:
            reply = asyncio.run(admin_request(path, request))
        except (FileNotFoundError, ConnectionRefusedError):
            continue
        except (OSError, TimeoutError) as e:
            raise CliError(f"cannot talk to the gateway at {path}: {e}") from None
        if reply.get("ok"):
            return reply
    raise CliError(reply.get("error", "no gateway is running with this config"))


def cmd_kill(args: argparse.Namespace) -> int:
    """Logged in to the grant service: through the service, as the service user (it checks
    the token and that the user is an admin). Otherwise as the OS account (``os:NAME``): on
    this host's gateway if the session is there, else through the shared state on whichever
    gateway runs it (it acts within a second)."""
    import urllib.parse

    if not args.session.strip():
        raise CliError("no session id given")
    path = f"/v1/sessions/{urllib.parse.quote(args.session.strip(), safe='')}/kill"
    reply = as_service_user("killing it", "POST", path, {"reason": args.reason}, local_if=(404,))
    if reply is not None:
        reply = {"ok": True, **reply, "actor": reply.get("actor") or "?"}
    else:
        reply = _kill_locally(args)
    if args.json:
        emit_json(reply)
    else:
        where = f" on {reply['gateway']}" if reply.get("gateway") else ""
        print(f"killed {reply['killed']}{where} as {reply['actor']}")
    return 0


def _kill_locally(args: argparse.Namespace) -> dict:
    request = {"op": "kill", "session": args.session, "actor": os_actor(), "reason": args.reason}
    try:
        reply = _admin(args, request)
    except CliError as e:
        if "ambiguous" in str(e) or not load_config(args.config).state_url:
            raise  # only gateways sharing a PostgreSQL state publish their sessions
        reply = _kill_via_state(args, request)
    return {**reply, "actor": request["actor"]}


def shared_live(cfg) -> list[dict]:
    """Live sessions every gateway sharing this config's state has published (best effort)."""
    import time

    from breakglass.proxy.context import open_state
    from breakglass.proxy.gateway import LIVE_STALE

    if not cfg.state_url:
        return []

    async def run() -> list[dict]:
        state = open_state(cfg)
        try:
            return await state.live_sessions(time.time() - LIVE_STALE)
        finally:
            await state.close()

    try:
        return asyncio.run(run())
    except Exception:  # the local admin sockets still answer
        return []


def _kill_via_state(args: argparse.Namespace, request: dict) -> dict:
    import time

    from breakglass.proxy.admin import match_session
    from breakglass.proxy.context import open_state
    from breakglass.proxy.gateway import LIVE_STALE

    cfg = load_config(args.config)
    state = open_state(cfg)

    async def run() -> dict:
        try:
            live = await state.live_sessions(time.time() - LIVE_STALE)
            by_id = {s["id"]: s for s in live}
            try:
                sid = match_session(request["session"], by_id)
            except LookupError as e:
                raise CliError(str(e)) from None
            await state.request_kill(sid, request["actor"], request["reason"], time.time())
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # bounded wait for the owning gateway to act
                await asyncio.sleep(0.1)
                if sid not in {s["id"] for s in await state.live_sessions(time.time() - 60)}:
                    return {"ok": True, "killed": sid, "gateway": by_id[sid]["gateway_instance"]}
            raise CliError(f"asked {by_id[sid]['gateway_instance']} to kill {sid}; it has not "
                           "confirmed yet (check with `breakglass sessions --live`)")  # fmt: skip
        finally:
            await state.close()

    return asyncio.run(run())


def read_grant(
    grant_file: str | None,
    env_var: str = "BREAKGLASS_GRANT",
    *,
    target: str | None = None,
    target_type: str | None = None,
) -> str:
    """The grant token from a file, the environment, or the grants fetched with
    `breakglass grant get` (for ``target``); never from the command line."""
    path = grant_file or os.environ.get(f"{env_var}_FILE")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise CliError(f"cannot read grant file {path}: {e.strerror}") from None
    else:
        token = os.environ.get(env_var, "").strip()
    if not token and target is not None:
        from breakglass.cli.service_cmds import find_stored_grant

        token = (find_stored_grant(target, target_type) or "").strip()
    if not token:
        raise CliError(
            f"no grant: pass --grant-file FILE, set ${env_var} / ${env_var}_FILE, "
            "or fetch one with `breakglass grant get ID`"
        )
    return token


def split_front_door_args(args: argparse.Namespace, names: tuple[str, ...], rest_attr: str) -> None:
    """Let our own options also follow TARGET (``psql shop --grant-file F -c ...``).

    Everything after a literal ``--`` belongs to the wrapped client untouched.
    """
    rest = list(getattr(args, rest_attr))
    tail: list[str] = []
    if "--" in rest:
        i = rest.index("--")
        rest, tail = rest[:i], rest[i + 1 :]
    mine = argparse.ArgumentParser(add_help=False)
    for name in names:
        mine.add_argument(
            f"--{name}", dest=name.replace("-", "_"), type=int if name == "port" else str
        )
    known, unknown = mine.parse_known_args(rest)
    for k, v in vars(known).items():
        if v is not None:
            setattr(args, k, v)
    setattr(args, rest_attr, unknown + tail)


def cmd_psql(args: argparse.Namespace) -> int:
    import jwt

    split_front_door_args(args, ("user", "grant-file", "host", "port"), "psql_args")
    token = read_grant(args.grant_file, target=args.target, target_type="postgres")
    try:
        subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        raise CliError("the grant is not a token (check the file or variable)") from None
    host, port = args.host, args.port
    env = dict(os.environ, PGPASSWORD=token)
    if host is None or port is None:
        cfg = load_config(args.config)
        if not cfg.postgres_listen:
            raise CliError("the config has no gateway.postgres_listen; pass --host and --port")
        host = host or cfg.postgres_listen.host
        port = port or cfg.postgres_listen.port
        if cfg.tls_cert and cfg.tls_cert.exists() and "PGSSLMODE" not in os.environ:
            # Verify the gateway's certificate: the grant is a password and must not leak.
            env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(cfg.tls_cert))
    env.setdefault("PGSSLMODE", "require")
    psql = shutil.which("psql")
    if not psql:
        raise CliError("psql is not installed on this machine (apt-get install postgresql-client)")
    extra = [a for a in args.psql_args if a != "--"]
    argv = [
        psql,
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        args.user or subject,
        "-d",
        args.target,
        *extra,
    ]
    os.execve(psql, argv, env)
    return 0  # pragma: no cover
