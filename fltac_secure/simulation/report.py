"""Outputs of a simulation: the final table, the plots, the exported adapters.

Plots use matplotlib's Agg backend (no display needed): accuracy per round
(mean and per task, one line per method) and the clusters forming (2-D PCA
of each round's sketches, coloured by true task, marker by assigned cluster,
like figure 4 of the FL-TAC paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fltac_secure.learning.cluster import normalize_rows

if TYPE_CHECKING:
    from rich.table import Table

    from fltac_secure.simulation.methods import Method

MARKERS = "os^Dv<>pPX*h"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(records: Mapping[str, Sequence[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Mean and per-task test accuracy per round, one line per method."""
    plt = _pyplot()
    tasks = sorted({t for recs in records.values() for r in recs for t in (r.get("tasks") or {})})
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(3.2 * (len(tasks) + 1), 3.2), squeeze=False)
    for method, recs in records.items():
        done = [r for r in recs if r.get("mean_accuracy") is not None and r.get("tasks")]  # evaluated rounds only
        rounds = [r["round"] + 1 for r in done]
        axes[0][0].plot(rounds, [r["mean_accuracy"] for r in done], marker="o", ms=3, label=method)
        for ax, task in zip(axes[0][1:], tasks, strict=True):
            ax.plot(rounds, [r["tasks"].get(task, {}).get("accuracy", np.nan) for r in done], marker="o", ms=3)
    for ax, name in zip(axes[0], ["mean", *tasks], strict=True):
        ax.set(title=name, xlabel="round", ylim=(0, 1.02))
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_clusters(history: Sequence[dict[str, Any]], key_task: Mapping[str, str], path: Path,
                  *, normalize: bool = True, max_panels: int = 9) -> Path | None:
    """2-D PCA of each round's sketches: colour = true task, marker = assigned cluster."""
    rounds = [h for h in history if h.get("sketches")]
    if not rounds:
        return None
    if len(rounds) > max_panels:  # keep first, last and evenly spaced rounds
        idx = np.unique(np.linspace(0, len(rounds) - 1, max_panels).round().astype(int))
        rounds = [rounds[i] for i in idx]
    plt = _pyplot()
    tasks = sorted(set(key_task.values()))
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tasks)}
    cols = min(len(rounds), 3)
    rows = -(-len(rounds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(rounds):]:
        ax.axis("off")
    for ax, h in zip(axes.flat, rounds, strict=False):
        keys = list(h["sketches"])
        x = np.stack([h["sketches"][k] for k in keys])
        x = normalize_rows(x) if normalize else x
        xy = _pca2(x)
        for (px, py), key in zip(xy, keys, strict=True):
            cid = h["labels"].get(key, 0)
            ax.scatter(px, py, color=colours[key_task[key]], marker=MARKERS[cid % len(MARKERS)], s=36,
                       edgecolors="black", linewidths=0.4)
        ax.set_title(f"round {h['round'] + 1}  ARI {h.get('ari', float('nan')):.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], color=colours[t], marker="o", ls="", label=t) for t in tasks]
    fig.legend(handles=handles, loc="lower center", ncol=len(tasks), fontsize=8, title="colour: true task; "
               "marker: assigned cluster", title_fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pca2(x: np.ndarray) -> np.ndarray:
    """Two PCA coordinates per row (zero-padded when there are fewer than two components)."""
    from sklearn.decomposition import PCA

    n = min(2, x.shape[0], x.shape[1])
    xy = PCA(n_components=n).fit_transform(x) if x.shape[0] > 1 else np.zeros((x.shape[0], 0))
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def final_table(method: str, record: dict[str, Any]) -> Table:
    """A rich table of the last round: per task accuracy and macro-F1, mean, ARI and wire parameters."""
    from rich.table import Table

    table = Table(title=f"{method}: round {record['round'] + 1}")
    for col in ("task", "accuracy", "macro-F1", "test n"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, m in record.get("tasks", {}).items():
        table.add_row(task, f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", str(m["n"]))
    table.add_row("mean", f"{record.get('mean_accuracy', float('nan')):.3f}",
                  f"{record.get('mean_macro_f1', float('nan')):.3f}", "", style="bold")
    caption = [f"params/round up {record['up_params']:,} down {record['down_params']:,}"]
    if record.get("up_bytes"):
        bits = f" at {record['bits']} bits" if record.get("bits", 32) < 32 else ""
        caption.append(f"bytes/round up {record['up_bytes']:,}{bits} down {record['down_bytes']:,}")
    if "ari" in record:
        caption.append(f"ARI {record['ari']:.3f}  NMI {record['nmi']:.3f}")
    table.caption = "  |  ".join(caption)
    return table


def export_adapters(method: Method, out_dir: Path) -> dict[str, str]:
    """Final global adapters in peft format: one folder per task (FedIT: one shared folder)."""
    from fltac_secure.learning.adapters import set_slot_vector
    from fltac_secure.learning.export import export_peft

    plan = method.ctx.plan
    written: dict[str, str] = {}
    if method.name == "local":  # no global adapter exists; each site keeps its own
        return written
    adapters = method.global_adapters()
    if method.shared_adapter:
        slot, _ = method.eval_slot(plan.tasks[0].name)
        set_slot_vector(method.model, slot, adapters[plan.tasks[0].name][0][0])
        path = export_peft(method.model, slot, out_dir / "shared")
        return {t.name: str(path) for t in plan.tasks}
    for task in plan.tasks:
        if not adapters.get(task.name):
            continue
        set_slot_vector(method.model, task.name, adapters[task.name][0][0])
        written[task.name] = str(export_peft(method.model, task.name, out_dir / task.name, task=task))
    return written
