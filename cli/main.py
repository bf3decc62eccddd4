"""The ``breakglass`` command: one entry point, one module per group of subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from breakglass.cli import (
    admin_cmds,
    console_cmds,
    grant_cmds,
    record_cmds,
    report_cmds,
    review_cmds,
    service_cmds,
    setup_cmds,
    store_cmds,
)
from breakglass.cli.output import CliError
from breakglass.policy.durations import DurationError
from breakglass.policy.keys import KeyFileError
from breakglass.proxy.config import CONFIG_ENV, ConfigError

# service_cmds adds `grant get` / `grant revoke` to the grant command: keep it after grant_cmds.
MODULES = (
    setup_cmds,
    grant_cmds,
    service_cmds,
    record_cmds,
    admin_cmds,
    review_cmds,
    store_cmds,
    report_cmds,
    console_cmds,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breakglass",
        description="Automated temporary production access: grants, an SSH/PostgreSQL "
        "gateway that enforces them, and tamper-evident recordings.",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=None,
        help=f"config file (default: ${CONFIG_ENV} or ./config.toml)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in MODULES:
        module.register(sub)
    _config_everywhere(sub)
    return parser


def _config_everywhere(sub: argparse._SubParsersAction) -> None:
    """Accept ``-c PATH`` after the subcommand too (``breakglass sessions -c cfg``). Not on
    commands that pass their remaining arguments to another program (``psql -c ...``)."""
    for parser in set(sub.choices.values()):
        passes_through = any(a.nargs == argparse.REMAINDER for a in parser._actions)
        taken = any("-c" in a.option_strings for a in parser._actions)
        if not passes_through and not taken:
            parser.add_argument(
                "-c", "--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _config_everywhere(action)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ConfigError, KeyFileError, DurationError) as e:
        print(f"breakglass: error: {e}", file=sys.stderr)
        return getattr(e, "code", 1)
    except BrokenPipeError:
        return 1
    except Exception as e:  # never a traceback for users; --debug shows it
        if args.debug or os.environ.get("BREAKGLASS_DEBUG"):
            raise
        print(
            f"breakglass: internal error: {type(e).__name__}: {e} (run with --debug for details)",
            file=sys.stderr,
        )
        return 70
    return rc or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
