"""`fltac privacy report`: a site's privacy ledger (epsilon per task per round, budget left)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fltac_secure.cli.common import console, print_json


def _num(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def _tables(summary: dict[str, Any], path: Path) -> tuple[Table, Table]:
    rounds = Table(title=f"Privacy ledger {path} (delta = {summary['delta']:g}, {summary['accountant']})")
    for col in ("task", "round", "steps", "sample rate", "noise", "clip", "epsilon so far"):
        rounds.add_column(col, justify="left" if col == "task" else "right")
    totals = Table(title="Per task")
    for col in ("task", "examples", "steps", "final epsilon", "target epsilon", "budget left", "status"):
        totals.add_column(col, justify="left" if col in ("task", "status") else "right", no_wrap=col == "status")
    for task, s in summary["slots"].items():
        for e in s["rounds"]:
            rounds.add_row(task, str(e["round"]), str(e["steps"]), _num(e["sample_rate"]),
                           _num(e["noise_multiplier"]), _num(e["max_grad_norm"]), _num(e["epsilon"]))
        totals.add_row(task, str(s["data_size"]), str(s["steps"]), _num(s["epsilon"]), _num(s["target_epsilon"]),
                       _num(s["budget_left"]), s["status"])
    return rounds, totals


def _stop_lines(summary: dict[str, Any]) -> list[str]:
    return [f"{task}: stopped before round {s['stopped']['round']}: that round would reach epsilon "
            f"{s['stopped']['next_epsilon']:.4g} > target {s['target_epsilon']:g}; it keeps its last adapter"
            for task, s in summary["slots"].items() if s["stopped"]]


def report(
    workspace: Path = typer.Option(..., "--workspace", "-w", help="A collaborator's workspace (holds state/privacy.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the ledger summary as JSON."),
) -> None:
    """Show the site's DP spending: epsilon per task per round, final epsilon and budget left."""
    from fltac_secure.privacy.ledger import ledger_path, load_ledger  # Opacus: only for this command

    summary = load_ledger(workspace).summary()
    if json_out:
        print_json(summary)
        return
    for table in _tables(summary, ledger_path(workspace)):
        console.print(table)
    for line in _stop_lines(summary):
        console.print(line, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``privacy`` group to the main app."""
    group = typer.Typer(help="Differential privacy: inspect a site's privacy ledger.", no_args_is_help=True)
    group.command("report")(report)
    app.add_typer(group, name="privacy")
