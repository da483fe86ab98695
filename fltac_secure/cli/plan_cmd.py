"""`fltac plan validate|hash|show`."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from fltac_secure.cli.common import print_json
from fltac_secure.plan import load_plan, load_site, plan_hash

plan_app = typer.Typer(help="Validate, hash and show federation plans.", no_args_is_help=True)

PLAN_ARG = typer.Argument(..., help="Path to the plan YAML.", show_default=False)


@plan_app.command("validate")
def validate(
    plan: Path = PLAN_ARG,
    site: Path | None = typer.Option(None, "--site", help="Also validate this site file against the plan."),
) -> None:
    """Check a plan (and optionally a site file); exit 2 with one line per problem if invalid.

    With --site, also everything the site file points at: certificate, key (and that they match), CA,
    the aggregator's CRL, and a collaborator's data files (read as `collaborator start` reads them:
    UTF-8, columns, labels known to the plan, enough examples per task).
    """
    p = load_plan(plan)
    msg = f"plan {plan} is valid: federation {p.federation!r}, {p.rounds} rounds, {len(p.roster)} sites, {len(p.tasks)} tasks"
    if site is not None:
        from fltac_secure.federation.preflight import check_site

        s = load_site(site, p)
        check_site(s, p, site)
        msg += f"; site file {site} is valid for {s.role} {s.name!r}, and its certificates and data check out"
    typer.echo(msg)
    typer.echo(f"plan hash: {plan_hash(p)}")


@plan_app.command("hash")
def hash_(plan: Path = PLAN_ARG) -> None:
    """Print the plan's canonical SHA-256 (what every site must agree on)."""
    typer.echo(plan_hash(load_plan(plan)))


@plan_app.command("show")
def show(
    plan: Path = PLAN_ARG,
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print the plan with every default filled in."""
    p = load_plan(plan)
    data = p.model_dump(mode="json")
    if json_out:
        print_json({"plan": data, "hash": plan_hash(p)})
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        typer.echo(f"# hash: {plan_hash(p)}")


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")
