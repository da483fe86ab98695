"""`fltac simulate`: the whole federation in one process (no network), one method per run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fltac_secure.cli.common import console
from fltac_secure.errors import ConfigError
from fltac_secure.plan import DEMO_PLAN, Plan, load_plan

if TYPE_CHECKING:
    from fltac_secure.data import FederatedData

SIMULATE_HELP = (
    "Run a federation in this process with the same round functions the networked roles use.\n\n"
    "Methods: fltac (one LoRA adapter per site and task, K-means on sketches, averaged within clusters), "
    "oracle (fltac with the true task ids as clusters), three FedIT variants with one shared adapter "
    "and FedAvg: fedit (as the paper: one head as wide as the widest task, label ids overlapping from 0, "
    "no task marker, tasks trained in turn), fedit-tagged (the same with a task tag before every input) "
    "and fedit-taskheads (each task its own head positions, read alone at test: an upper bound), "
    "local (no federation) and central (all data pooled per task). Every method spends "
    "training.local_steps steps per task slot per round (FedIT: that many per task a site holds).\n\n"
    "Data: your own, as the sites hold it: --site FILE once per collaborator (their site files; each is "
    "read as `fltac collaborator start` reads it, so the simulation trains what the networked run trains), "
    "or --data DIR with DIR/<site>/site.yaml for every roster site (the layout `fltac data prepare-demo` "
    "writes). A task's global test set is DIR/test/<task>.csv (or --test DIR/<task>.csv), else the union "
    "of the sites' local test files. With neither, the plan's demo sources are split over its roster in "
    "memory (as prepare-demo would).\n\n"
    "Writes OUT/metrics.jsonl (per round: per-task test accuracy and macro-F1, each site's accuracy on "
    "its own slots, ARI/NMI of the clusters, cluster sizes, parameters up/down), OUT/summary.json, "
    "OUT/accuracy.png, OUT/clusters.png (PCA of the sketches per round) and OUT/adapters/<task>/ "
    "(peft format, loadable with PeftModel.from_pretrained, plus the head)."
)


def simulate_cmd(
    plan: Path = typer.Option(DEMO_PLAN, "--plan", help="Plan YAML.", show_default="the embedded demo plan"),
    data: Path | None = typer.Option(None, "--data", help="Folder with <site>/site.yaml per roster site (as "
                                     "`fltac data prepare-demo` writes; default: the plan's demo sources)."),
    site: list[Path] = typer.Option([], "--site", help="A collaborator's site file (its own data); repeat per site.",
                                    show_default=False),
    test: Path | None = typer.Option(None, "--test", help="Folder of global test sets <task>.csv (default: "
                                     "DIR/test with --data, else the union of the sites' test files)."),
    method: str = typer.Option("fltac", "--method", help="fltac | oracle | fedit | fedit-tagged | fedit-taskheads | local | central."),
    out: Path = typer.Option(Path("simulation"), "--out", help="Output folder (created)."),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Override the plan's number of rounds."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Override the training and partition seeds."),
    eval_every: int = typer.Option(1, "--eval-every", min=1, help="Evaluate every N rounds (and the last)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
) -> None:
    """Simulate the federation (see SIMULATE_HELP)."""
    from fltac_secure.simulation import METHODS, simulate

    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    p = _override(load_plan(plan), rounds, seed)
    if threads:
        import torch

        torch.set_num_threads(threads)
    fed = _load_data(p, data, site, test)
    for note in fed.notes:
        console.print(note, soft_wrap=True, highlight=False)
    result = simulate(p, fed, method, out, progress=True, eval_every=eval_every)
    console.print(f"metrics:  {result.out_dir / 'metrics.jsonl'}", soft_wrap=True)
    for name, path in result.plots.items():
        console.print(f"{name + ':':9} {path}", soft_wrap=True)
    if result.adapters:
        console.print(f"adapters: {out / 'adapters'} ({len(set(result.adapters.values()))} folders, peft format)",
                      soft_wrap=True)


def _override(plan: Plan, rounds: int | None, seed: int | None) -> Plan:
    """The plan with --rounds / --seed applied (re-validated)."""
    if rounds is None and seed is None:
        return plan
    raw = plan.model_dump()
    if rounds is not None:
        raw["rounds"] = rounds
    if seed is not None:
        raw["training"]["seed"] = seed
        raw["partition"]["seed"] = seed
    return Plan.model_validate(raw)


def _load_data(plan: Plan, data: Path | None, sites: list[Path], test: Path | None) -> FederatedData:
    """The federation's data: the sites' own files, a data folder, or built in memory from demo sources."""
    if data is not None and sites:
        raise ConfigError("give either --data DIR or --site FILE (one per site), not both")
    if sites:
        from fltac_secure.data import load_sites

        return load_sites(plan, sites, test_dir=test)
    if data is not None:
        from fltac_secure.data import load_federated_dir

        return load_federated_dir(plan, data, test_dir=test)
    own = [t.name for t in plan.tasks if t.demo_source is None]
    if own:
        raise ConfigError(f"task(s) {own} have no demo_source, so there is no shipped data to split; simulate "
                          "on your own data with --site FILE per collaborator (its site file) or --data DIR "
                          "(DIR/<site>/site.yaml per roster site)")
    from fltac_secure.data import build_federated_data

    return build_federated_data(plan)


def register(app: typer.Typer) -> None:
    """Add `simulate` to the main app."""
    app.command("simulate", help=SIMULATE_HELP)(simulate_cmd)
