"""`fltac data prepare-demo`: each site's demo data files and site file, from shipped data."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fltac_secure.cli.common import console
from fltac_secure.plan import DEMO_PLAN, load_plan

data_app = typer.Typer(help="Prepare task data for the sites of a federation.", no_args_is_help=True)


PREPARE_HELP = (
    "Split the plan's tasks over its roster and write every site's files.\n\n"
    "Each task's shipped data set (its demo_source) gets a fixed, stratified held-out test set; "
    "the rest is split over the roster with Dirichlet(partition.alpha) shares, and a site whose "
    "share is under partition.min_share gets none of that task, so sites hold different numbers of tasks. "
    "Each site keeps a local held-out part of every task it holds.\n\n"
    "Writes OUT/<site>/data/<task>.train.csv and .test.csv (columns text,label; label names), "
    "OUT/<site>/site.yaml, OUT/aggregator/site.yaml, OUT/test/<task>.csv (the global test sets) "
    "and OUT/partition.json (examples per site per task). Site files expect certificates under "
    "each folder's certs/ (see `fltac pki`)."
)


@data_app.command("prepare-demo", help=PREPARE_HELP)
def prepare_demo_cmd(
    plan: Path = typer.Option(
        DEMO_PLAN, "--plan", help="Plan YAML.", show_default="the embedded demo plan"
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write (empty, or one made by prepare-demo).", show_default=False),
    seed: int | None = typer.Option(None, "--seed", help="Partition seed (default: the plan's partition.seed)."),
    aggregator: str = typer.Option(
        "tcp://127.0.0.1:5555", "--aggregator", help="Endpoint the aggregator binds and the sites connect to."
    ),
) -> None:
    """Write each site's demo data and site file (see PREPARE_HELP)."""
    from fltac_secure.data.federated import build_federated_data
    from fltac_secure.data.layout import AGGREGATOR, PARTITION_FILE, SITE_FILE, write_federated_dir

    p = load_plan(plan)
    s = p.partition.seed if seed is None else seed
    fed = build_federated_data(p, seed=s)
    write_federated_dir(p, fed, out, s, aggregator)
    table = Table(title=f"examples per site and task (train/local test), seed {s}")
    table.add_column("site")
    for t in p.tasks:
        table.add_column(t.name, justify="right")
    table.add_column("tasks", justify="right")
    counts = fed.counts()
    for site in p.roster:
        cells = [f"{c['train']}/{c['test']}" if (c := counts[site].get(t.name)) else "-" for t in p.tasks]
        table.add_row(site, *cells, str(len(counts[site])))
    table.add_row("global test", *[str(len(fed.test[t.name])) for t in p.tasks], "", style="bold")
    console.print(table)
    console.print(f"site files:       {out}/<site>/{SITE_FILE} ({len(p.roster)} sites)", soft_wrap=True)
    console.print(f"aggregator:       {out / AGGREGATOR / SITE_FILE}", soft_wrap=True)
    console.print(f"global test sets: {out / 'test'}/<task>.csv", soft_wrap=True)
    console.print(f"counts:           {out / PARTITION_FILE}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `data` group to the main app."""
    app.add_typer(data_app, name="data")
