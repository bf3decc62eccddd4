"""``breakglass init``."""

from __future__ import annotations

import argparse
from pathlib import Path

from breakglass.cli.initdir import InitError, init_workdir, render_config
from breakglass.cli.output import CliError, emit_json
from breakglass.proxy.tls_files import TlsFilesError, load_existing, self_signed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="create a working directory: keys, TLS certificate, starter config",
        description="Create DIR with issuer and recorder Ed25519 keys, the gateway's SSH host key, "
        "a self-signed TLS certificate, an upstream SSH key and DIR/config.toml with starter "
        "templates (db-readonly, ops-commands, breakglass). Never overwrites existing files.",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", default="prod", help="gateway name (the grants' audience)")
    p.add_argument(
        "--hostname",
        dest="hostnames",
        metavar="NAME",
        nargs="+",
        action="extend",
        default=[],
        help="DNS names or IP addresses clients use to reach the gateway; they go in the TLS "
        "certificate (besides localhost, 127.0.0.1 and ::1) so sslmode=verify-full works",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="use this existing certificate (PEM; the gateway's own first, then intermediates) "
        "instead of a self-signed one; it is checked and copied into DIR/keys",
    )
    p.add_argument("--tls-key", metavar="FILE", help="the unencrypted PEM key of --tls-cert")
    p.add_argument("--json", action="store_true", help="print created files as JSON")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "demo",
        help="run a gateway with a throwaway PostgreSQL (and sshd) and print lines to try",
        description="Start a throwaway PostgreSQL with sample data (and an sshd target when the "
        "machine has one), fresh keys and config in DIR, the gateway, and demo grants; print the "
        "psql/ssh lines to try and write them to DIR/demo.env. Ctrl-C stops everything.",
    )
    p.add_argument("--dir", help="working directory (new or empty; default: a new temporary one)")
    p.add_argument("--no-ssh", action="store_true", help="do not start an SSH target")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from breakglass.cli.demo import DemoError, run_demo

    try:
        return run_demo(args.dir, with_ssh=not args.no_ssh)
    except DemoError as e:
        raise CliError(str(e)) from None


def cmd_init(args: argparse.Namespace) -> int:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("give both --tls-cert and --tls-key, or neither")
    try:
        tls = (
            load_existing(Path(args.tls_cert), Path(args.tls_key), args.hostnames)
            if args.tls_cert
            else self_signed(args.hostnames)
        )
        files = init_workdir(Path(args.directory), render_config(gateway_name=args.name), tls=tls)
    except (InitError, TlsFilesError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot create {args.directory}: {e.strerror}") from None
    if args.json:
        emit_json(
            {
                "directory": str(Path(args.directory).resolve()),
                "files": [str(f) for f in files],
                "tls_names": list(tls.names),
                "tls_not_after": tls.not_after.isoformat(),
            }
        )
        return 0
    print(f"Created {args.directory}:")
    for f in files:
        print(f"  {f}")
    print(
        f"\nTLS certificate for {', '.join(tls.names)} (valid until {tls.not_after:%Y-%m-%d} UTC)"
    )
    print(
        f"\nNext: edit {Path(args.directory) / 'config.toml'} (targets, templates, groups), then\n"
        f"  breakglass -c {Path(args.directory) / 'config.toml'} gateway"
    )
    return 0
