"""`fltac demo`: a whole federation on this machine, from CA to per-task accuracy and audit."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fltac_secure.cli.audit_cmd import print_audit
from fltac_secure.cli.common import console
from fltac_secure.errors import ConfigError


def demo_plan(sites: int | None, rounds: int | None, base: str | None, secagg: bool = True):  # type: ignore[no-untyped-def]
    """plans/demo.yaml with the command's overrides (validated again)."""
    from fltac_secure.plan import DEMO_PLAN, Plan, load_plan

    plan = load_plan(DEMO_PLAN)
    data: dict[str, Any] = plan.model_dump(mode="json")
    if sites is not None:
        if not 1 <= sites <= 64:
            raise ConfigError(f"--sites must be between 1 and 64, got {sites}")
        data["roster"] = [f"site{i + 1}" for i in range(sites)]
        data["quorum"]["min_collaborators"] = min(data["quorum"]["min_collaborators"], sites)
    if rounds is not None:
        if rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {rounds}")
        data["rounds"] = rounds
    if base is not None:
        data["model"]["base"] = base
    data["secure_aggregation"]["enabled"] = secagg
    data["secure_aggregation"]["fractional_bits"] = None  # re-derived for this roster size
    return Plan.model_validate(data)


def _workdir(workdir: Path | None, keep: bool) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="fltac-demo-")), not keep
    workdir = workdir.expanduser().resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise ConfigError(f"--workdir {workdir} is not empty; give a new or empty folder")
    return workdir, False


def demo(
    sites: int | None = typer.Option(None, "--sites", help="Number of sites (default: the demo plan's 4)."),
    rounds: int | None = typer.Option(None, "--rounds", help="Number of rounds (default: the demo plan's)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Keep everything in this (new or empty) folder."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary folder at the end."),
    base: str | None = typer.Option(None, "--base", hidden=True, help="Base model override (tests: tiny-bert)."),
    secagg: bool = typer.Option(True, "--secagg/--no-secagg",
                                help="Secure aggregation inside clusters (default on); --no-secagg runs the plain "
                                     "round, each site's adapter sent to the aggregator, for comparison."),
) -> None:
    """Run a whole federation on this machine, then show per-task accuracy and the audit.

    Makes a CA, enrolls the aggregator and every site through the real CSR +
    fingerprint flow, splits the shipped data over the sites, and starts the
    aggregator and the sites as separate processes over mutual TLS on loopback.
    Each cluster's adapters are summed under secure aggregation unless
    --no-secagg is given.
    """
    from fltac_secure.federation.demo import build_federation
    from fltac_secure.federation.demo_run import (
        cluster_check, evaluate_final, participation, run_processes, secure_summary,
    )  # fmt: skip

    started = time.monotonic()
    plan = demo_plan(sites, rounds, base, secagg)
    root, remove = _workdir(workdir, keep)
    try:
        mode = "secure aggregation on" if secagg else "secure aggregation off (--no-secagg)"
        console.rule(f"fltac demo: {len(plan.roster)} sites, {len(plan.tasks)} tasks, {plan.rounds} rounds, {mode}")
        layout = build_federation(plan, root)
        console.print(f"workspace {root}: CA, {len(layout.sites) + 1} enrolled certificates (CSR + fingerprint), "
                      f"demo data; aggregator on {layout.endpoint}")
        run_processes(layout, console, timeout=plan.rounds * plan.timeouts.round_s * 3 + 300)
        console.rule("results")
        _print_accuracy(evaluate_final(layout, plan))
        _print_participation(participation(layout), plan.rounds)
        check = cluster_check(layout, plan)
        console.print(f"clusters match tasks: {'yes' if check['match'] else 'no'}  {check['clusters']}")
        print_audit(layout.aggregator, plan)
        _print_secure(secure_summary(layout), secagg)
        console.print(f"global adapters (peft): {layout.aggregator / 'out'}/cluster_*  and  <site>/out/<task>/")
        console.print(f"plots: {layout.aggregator / 'out' / 'clusters.png'}, <site>/out/accuracy.png")
        console.print(f"full audit: fltac audit --workspace {layout.aggregator}")
        console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    finally:
        if remove:
            shutil.rmtree(root, ignore_errors=True)
            console.print("(temporary workspace removed; use --keep or --workdir DIR to keep it)")


def _print_accuracy(rows: list[dict[str, Any]]) -> None:
    t = Table(title="Final global adapters on the held-out test sets")
    for col in ("task", "test examples", "majority class", "accuracy", "macro F1"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["task"], str(r["n"]), f"{r['majority']:.3f}", f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}")
    console.print(t)


def _print_participation(record: dict[str, Any], rounds: int) -> None:
    t = Table(title=f"Participation ({rounds} round(s), numbered from 0)",
              caption=f"stale: not updated in the last {record['stale_after']} round(s)")
    for col in ("site", "rounds taken part in", "adapters"):
        t.add_column(col, justify="right")
    for site, row in record["sites"].items():
        took = ", ".join(str(r) for r in row["rounds"]) or "none"
        t.add_row(site, took, "stale" if row["stale"] else "up to date")
    console.print(t)


def _print_secure(summary: dict[str, Any], secagg: bool) -> None:
    if not secagg:
        console.print("secure aggregation: off (--no-secagg): every site's adapter reached the aggregator, inside TLS")
        return
    console.print(f"secure aggregation: {summary['summed']} cluster-round(s) securely summed, "
                  f"{len(summary['skipped'])} not summed; the aggregator never held a site's adapter; "
                  f"the protocol added {summary['overhead_bytes']:,} bytes on the wire "
                  f"({summary['overhead_bytes_per_round']:,.0f} per round)")  # fmt: skip
    for row in summary["skipped"]:
        console.print(f"  round {row['round']} cluster {row['cluster']}: {row['reason']}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
