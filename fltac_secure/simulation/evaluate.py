"""Per-round metrics of a simulated method: accuracy per task and per site, clustering quality.

Per task: the method's global adapter(s) for that task on the task's global
held-out test set (several adapters, e.g. ``local``: their sample-weighted
mean). Per site: the adapter each of its slots got back, on that slot's own
held-out part. Clustering: ARI and NMI of the assigned clusters against the
true tasks (which only the simulator knows), cluster sizes and make-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from fltac_secure.learning.adapters import set_slot_vector
from fltac_secure.learning.train import evaluate_slot

if TYPE_CHECKING:
    from fltac_secure.learning.train import EncodedDataset
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import Method


def _score(method: Method, task: str, vector: np.ndarray, data: EncodedDataset) -> dict[str, float]:
    slot, label_range = method.eval_slot(task)
    set_slot_vector(method.model, slot, vector)
    res = evaluate_slot(method.model, slot, data, label_range=label_range,
                        batch_size=method.ctx.plan.training.eval_batch_size)
    return {"accuracy": float(res["accuracy"]), "macro_f1": float(res["macro_f1"]), "n": int(res["n"])}


def task_metrics(method: Method) -> dict[str, Any]:
    """``{"tasks": {task: {accuracy, macro_f1, n}}, "mean_accuracy", "mean_macro_f1"}``."""
    tasks: dict[str, dict[str, float]] = {}
    for task, candidates in method.global_adapters().items():
        if not candidates:
            continue
        data = method.test_data(task)
        scores = [(_score(method, task, vec, data), w) for vec, w in candidates]
        total = float(sum(w for _, w in scores))
        tasks[task] = {
            "accuracy": sum(s["accuracy"] * w for s, w in scores) / total,
            "macro_f1": sum(s["macro_f1"] * w for s, w in scores) / total,
            "n": scores[0][0]["n"],
            "adapters": len(scores),
        }
    return {
        "tasks": tasks,
        "mean_accuracy": float(np.mean([t["accuracy"] for t in tasks.values()])) if tasks else float("nan"),
        "mean_macro_f1": float(np.mean([t["macro_f1"] for t in tasks.values()])) if tasks else float("nan"),
    }


def site_metrics(method: Method) -> dict[str, Any]:
    """Per site: accuracy of each slot's returned adapter on its own held-out part, and their weighted mean."""
    out: dict[str, Any] = {}
    for site, per_task in method.site_adapters().items():
        slots, correct, total = {}, 0.0, 0
        for task, vec in per_task.items():
            data = method.site_test_data(site, task)
            if data is None:
                continue
            s = _score(method, task, vec, data)
            slots[task] = round(s["accuracy"], 4)
            correct += s["accuracy"] * s["n"]
            total += s["n"]
        if total:
            out[site] = {"accuracy": correct / total, "n": total, "slots": slots}
    return out


def clustering_metrics(ctx: SimContext, labels: dict[str, int]) -> dict[str, Any]:
    """ARI/NMI against the true tasks, sizes, and how many slots of each task every cluster holds."""
    keys = list(labels)
    truth = [ctx.key_task[k] for k in keys]
    pred = [labels[k] for k in keys]
    make_up: dict[int, dict[str, int]] = {}
    for t, c in zip(truth, pred, strict=True):
        make_up.setdefault(c, {}).setdefault(t, 0)
        make_up[c][t] += 1
    return {
        "ari": float(adjusted_rand_score(truth, pred)),
        "nmi": float(normalized_mutual_info_score(truth, pred)),
        "cluster_sizes": {str(c): sum(v.values()) for c, v in sorted(make_up.items())},
        "cluster_tasks": {str(c): dict(sorted(v.items())) for c, v in sorted(make_up.items())},
    }
