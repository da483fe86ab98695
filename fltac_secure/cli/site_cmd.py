"""`fltac site init`: a commented site-file template for a role."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from fltac_secure.errors import ConfigError

site_app = typer.Typer(help="Write this site's site file (local paths and addresses).", no_args_is_help=True)


@site_app.command("init")
def init(
    role: str = typer.Option(..., "--role", help="aggregator or collaborator.", show_default=False),
    name: str = typer.Option(..., "--name", help="This site's name (its certificate CN; in the plan's roster).",
                             show_default=False),
    out: Path = typer.Option(Path("site.yaml"), "--out", help="File to write."),
    plan: Path | None = typer.Option(None, "--plan", help="The federation's plan: list its tasks under `data`."),
    endpoint: str = typer.Option("tcp://127.0.0.1:5555", "--endpoint",
                                 help="Aggregator: the address to bind; collaborator: the aggregator's address."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Write a commented site-file template for a role; fill in paths, then check it with `fltac plan validate`."""
    from fltac_secure.atomic import atomic_write_text
    from fltac_secure.plan import load_plan
    from fltac_secure.plan.schema import NAME_RE
    from fltac_secure.plan.site_template import site_template

    if role not in ("aggregator", "collaborator"):
        raise ConfigError(f"invalid --role {role!r}: expected aggregator or collaborator")
    if not re.match(NAME_RE, name):
        raise ConfigError(f"invalid --name {name!r}: use 1-63 letters, digits, '_', '.', '-'")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; refusing to overwrite it (use --force to replace it)")
    text = site_template(role, name, load_plan(plan) if plan else None, endpoint)  # type: ignore[arg-type]
    atomic_write_text(out, text)
    typer.echo(f"wrote {out}: fill in the paths, then run  fltac plan validate PLAN --site {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(site_app, name="site")
