"""``simulate``: run one method on a federation in this process and write its outputs.

Outputs under ``out_dir``: ``metrics.jsonl`` (one JSON object per round),
``summary.json`` (the last round and the output paths), ``accuracy.png``,
``clusters.png`` (FL-TAC and oracle) and ``adapters/<task>/`` (peft format).
With ``privacy.dp`` on, each round's record holds ``epsilon_spent`` (per site
and task, accounted by this run alone).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fltac_secure.errors import ConfigError
from fltac_secure.simulation.context import SimContext
from fltac_secure.simulation.evaluate import (
    clustering_metrics,
    site_metrics,
    task_metrics,
)
from fltac_secure.simulation.methods import Method
from fltac_secure.simulation.registry import METHODS
from fltac_secure.simulation.report import (
    export_adapters,
    final_table,
    plot_accuracy,
    plot_clusters,
)

if TYPE_CHECKING:
    from fltac_secure.data import FederatedData
    from fltac_secure.plan import Plan


@dataclass
class SimulationResult:
    """What one simulated run produced (``rounds``: the per-round records of metrics.jsonl)."""

    method: str
    out_dir: Path
    rounds: list[dict[str, Any]]
    adapters: dict[str, str] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    epsilons: dict[str, dict[str, float]] = field(default_factory=dict)
    """With ``privacy.dp``: epsilon spent per site and task by the end of this run."""

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluated round's record."""
        done = [r for r in self.rounds if "mean_accuracy" in r]
        return done[-1] if done else {}


def simulate(
    plan: Plan,
    data: FederatedData,
    method: str = "fltac",
    out_dir: Path | str = "simulation",
    *,
    progress: bool = True,
    eval_every: int = 1,
    site_eval: bool = True,
    export: bool = True,
    plots: bool = True,
    context: SimContext | None = None,
) -> SimulationResult:
    """Run ``method`` for ``plan.rounds`` rounds; evaluate every ``eval_every`` rounds and at the end.

    ``context`` lets several methods share one tokenised data set and model.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = context if context is not None else SimContext(plan, data)
    runner = METHODS[method](ctx)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    records: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    units = 1 if method == "central" else len(ctx.sites)
    with _progress(progress, f"{method}", plan.rounds * units) as advance:
        for r in range(plan.rounds):
            rec = _one_round(runner, r, advance, evaluate=(r + 1) % eval_every == 0 or r + 1 == plan.rounds,
                             site_eval=site_eval, history=history)
            records.append(rec)
            if progress and rec.get("crowded_sites"):
                from rich.console import Console

                from fltac_secure.federation.rounds import crowded_warning

                Console(stderr=True).print(f"warning: {crowded_warning(r, rec['crowded_sites'], list(ctx.key_task), plan.k)}",
                                           soft_wrap=True, highlight=False)
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
    result = SimulationResult(method, out, records, epsilons=runner.epsilons())
    if export:
        result.adapters = export_adapters(runner, out / "adapters")
    if plots:
        result.plots["accuracy"] = str(plot_accuracy({method: records}, out / "accuracy.png", title=method))
        cl = plot_clusters(history, ctx.key_task, out / "clusters.png", normalize=plan.clustering.normalize)
        if cl is not None:
            result.plots["clusters"] = str(cl)
    result.vectors = {t: c[0][0] for t, c in runner.global_adapters().items() if c}
    summary = {"method": method, "final": result.final, "adapters": result.adapters, "plots": result.plots}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if progress:
        from rich.console import Console

        Console().print(final_table(method, result.final))
    return result


def _one_round(runner: Method, r: int, advance: Callable[[], None], *, evaluate: bool, site_eval: bool,
               history: list[dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    outcome = runner.run_round(r, advance)
    rec: dict[str, Any] = {
        "method": runner.name, "round": r, "up_params": outcome.up_params, "down_params": outcome.down_params,
        "up_bytes": outcome.up_bytes, "down_bytes": outcome.down_bytes, "bits": outcome.bits,
        "train_loss": outcome.train_loss, "train_steps": outcome.train_steps, "train_s": round(time.perf_counter() - t0, 3),
    }
    if runner.ctx.plan.privacy.dp:
        rec["epsilon_spent"] = runner.epsilons()
    if outcome.labels is not None:
        rec.update(clustering_metrics(runner.ctx, outcome.labels))
        rec.update(outcome.extra)
        history.append({"round": r, "sketches": outcome.sketches, "labels": outcome.labels, "ari": rec["ari"]})
    if evaluate:
        t1 = time.perf_counter()
        rec.update(task_metrics(runner))
        if site_eval:
            rec["sites"] = site_metrics(runner)
        rec["eval_s"] = round(time.perf_counter() - t1, 3)
    return rec


def _progress(enabled: bool, label: str, total: int) -> Any:
    """A rich progress bar yielding an ``advance()`` callable (a no-op when disabled)."""
    if not enabled:
        return nullcontext(lambda: None)
    from contextlib import contextmanager

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    @contextmanager
    def bar() -> Any:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn()) as prog:
            task = prog.add_task(label, total=total)
            yield lambda: prog.advance(task)

    return bar()
