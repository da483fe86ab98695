"""`fltac aggregator start`, `fltac collaborator start`, `fltac collaborator ping`."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from fltac_secure.cli.common import console
from fltac_secure.errors import ConfigError, FltacError

aggregator_app = typer.Typer(help="Run the aggregator of a federation.", no_args_is_help=True)
collaborator_app = typer.Typer(help="Run or check a collaborator site.", no_args_is_help=True)

PLAN_HELP = "The federation's plan (the same file at every site)."
SITE_HELP = "This site's site file (name, workspace, certificates, addresses, data)."


def _threads(n: int | None) -> None:
    """Torch threads for this process (several site processes on one machine: use 1 each)."""
    if n is not None:
        if n < 1:
            raise ConfigError(f"--threads must be >= 1, got {n}")
        os.environ["OMP_NUM_THREADS"] = str(n)
        import torch

        torch.set_num_threads(n)


class Stopped(FltacError):
    """The operator stopped a role (Ctrl-C or SIGTERM); exit code 128 + the signal, as shells expect."""


class _Saved:
    """What a stopped role tells the operator is safe on disk; updated as the role gets going."""

    def __init__(self) -> None:
        self.what = "it had not started yet: nothing was written"


@contextmanager
def _stoppable(resume: str) -> Iterator[_Saved]:
    """Turn SIGTERM (like Ctrl-C) into an orderly stop: the role unwinds (closing its connection),
    and the CLI says what is saved and the command that resumes, instead of vanishing silently.

    Wraps the whole command, imports and set-up included, so a Ctrl-C at any moment gets the message.
    """
    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = _Saved()
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield saved
    except KeyboardInterrupt as exc:
        name = str(exc) or "SIGINT"
        code = 128 + int(getattr(signal, name, signal.SIGINT))
        how = "Ctrl-C" if name == "SIGINT" else name
        raise Stopped(f"stopped by {how}; {saved.what}; to resume, run the same command: {resume}",
                      exit_code=code) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume(role: str, plan_path: Path, site_path: Path) -> str:
    return f"fltac {role} start --plan {plan_path} --site {site_path}"


def _load(plan_path: Path, site_path: Path, role: str):  # type: ignore[no-untyped-def]
    from fltac_secure.plan import load_plan, load_site

    plan = load_plan(plan_path)
    site = load_site(site_path, plan)
    if site.role != role:
        raise ConfigError(f"site file {site_path} has role {site.role}; this command needs a {role} site file")
    return plan, site


@aggregator_app.command("start")
def aggregator_start(
    plan_path: Path = typer.Option(..., "--plan", help=PLAN_HELP),
    site_path: Path = typer.Option(..., "--site", help=SITE_HELP),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: torch's choice)."),
) -> None:
    """Bind, wait for the sites, run every round, write the global adapters. Resumes an existing workspace."""
    with _stoppable(_resume("aggregator", plan_path, site_path)) as saved:
        _threads(threads)
        from aggregator.service import Aggregator

        plan, site = _load(plan_path, site_path, "aggregator")
        saved.what = (f"every completed round is checkpointed in {site.workspace / 'state'} "
                      "(a round in progress runs again, with the same seeds)")
        state = Aggregator(plan, site).run()
    console.print(f"federation {plan.federation!r} finished {state.round} round(s); outputs in {site.workspace / 'out'}")


@collaborator_app.command("start")
def collaborator_start(
    plan_path: Path = typer.Option(..., "--plan", help=PLAN_HELP),
    site_path: Path = typer.Option(..., "--site", help=SITE_HELP),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: torch's choice)."),
) -> None:
    """Connect to the aggregator and serve its rounds for this site's tasks until the federation ends."""
    with _stoppable(_resume("collaborator", plan_path, site_path)) as saved:
        _threads(threads)
        from collaborator.service import Collaborator

        plan, site = _load(plan_path, site_path, "collaborator")
        saved.what = (f"this site's privacy ledger and its answered rounds are saved in {site.workspace / 'state'} "
                      "(a round interrupted in training is trained again)")
        Collaborator(plan, site).run()


@collaborator_app.command("ping")
def collaborator_ping(
    plan_path: Path = typer.Option(..., "--plan", help=PLAN_HELP),
    site_path: Path = typer.Option(..., "--site", help=SITE_HELP),
    timeout: float = typer.Option(15.0, "--timeout", help="Seconds to wait for the aggregator's answer."),
) -> None:
    """Connect and handshake only: print OK, the exact reason the aggregator refused, or that none answers (exit 1)."""
    from collaborator.ping import ping

    plan, site = _load(plan_path, site_path, "collaborator")
    ping(plan, site, timeout)
    console.print(f"OK: {site.name} is authenticated and authorised by the aggregator at {site.aggregator}")


def register(app: typer.Typer) -> None:
    app.add_typer(aggregator_app, name="aggregator")
    app.add_typer(collaborator_app, name="collaborator")
