"""The `fltac` command line: thin wrappers that parse, call one function, print.

Each command group lives in its own module with a ``register(app)`` function.
Exit codes: 0 success, 2 bad usage or invalid input, 1 other failures.
Errors are one clear line; ``--debug`` (anywhere on the line) shows the traceback.
"""

from __future__ import annotations

import logging
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


@app.callback()
def _options(
    debug: bool = typer.Option(  # noqa: ARG001 - read by main() from anywhere on the line, before parsing
        False, "--debug", help="On an error, show the full traceback instead of one line (allowed anywhere on "
        "the command line; or set FLTAC_DEBUG=1).",
    ),
) -> None:
    """Options that apply to every command (see ``main`` for where they take effect)."""


def _register_all() -> None:
    from fltac_secure.cli import (  # noqa: PLC0415 - registration order is the help order
        audit_cmd,
        data_cmd,
        demo_cmd,
        pki_cmd,
        plan_cmd,
        predict_cmd,
        privacy_cmd,
        roles_cmd,
        simulate_cmd,
        site_cmd,
    )

    for mod in (demo_cmd, plan_cmd, site_cmd, pki_cmd, data_cmd, simulate_cmd, roles_cmd, privacy_cmd, audit_cmd,
                predict_cmd):
        mod.register(app)


_register_all()


ROLE_COMMANDS = (["aggregator", "start"], ["collaborator", "start"])
"""Long-running roles: their process ends the moment the role does (see ``_exit_now``)."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if [a for a in args if a != "--debug"][:2] not in ROLE_COMMANDS:
        _main(args)
        return
    try:
        _main(args)
    except SystemExit as e:
        _exit_now(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
    _exit_now(0)


def _exit_now(code: int) -> None:
    """End a role's process at once with ``code``.

    Everything a role keeps is written atomically (and the ledger line by
    line) before it returns, so nothing is lost by skipping the interpreter's
    finalisation, which with torch, transformers and datasets loaded takes
    seconds (measured: 9 s on a busy 2-core machine) of garbage collection:
    the operator, or a supervisor restarting the role, would wait that long
    for the exit code.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _main(args: list[str]) -> None:
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
    except OSError as e:  # the machine said no: a full disk, a missing folder, no permission
        if debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        typer.echo(f"error: {e.strerror or e}{where}; fix that and run the same command again "
                   "(state files are written atomically: none is left half written)", err=True)  # fmt: skip
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, no traceback
        if debug:
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", err=True)
        sys.exit(1)
