"""The `fltac` command line: thin wrappers that parse, call one function, print.

Each command group lives in its own module with a ``register(app)`` function.
Exit codes: 0 success, 2 bad usage or invalid input, 1 other failures.
Errors are one clear line; ``--debug`` (anywhere on the line) shows the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from fltac_secure.errors import FltacError

app = typer.Typer(
    name="fltac",
    help="fltac_secure: federated fine-tuning with task-specific LoRA adapter clustering (FL-TAC), "
    "over mutually authenticated TLS on ZeroMQ.\n\n"
    "Start with `fltac demo` for a whole federation on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register_all() -> None:
    from fltac_secure.cli import (  # noqa: PLC0415 - registration order is the help order
        audit_cmd,
        data_cmd,
        demo_cmd,
        pki_cmd,
        plan_cmd,
        privacy_cmd,
        roles_cmd,
        simulate_cmd,
    )

    for mod in (demo_cmd, plan_cmd, pki_cmd, data_cmd, simulate_cmd, roles_cmd, privacy_cmd, audit_cmd):
        mod.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("FLTAC_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="fltac")
    except FltacError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug:
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", err=True)
        sys.exit(1)
