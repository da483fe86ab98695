"""Summaries, markdown and targets of benchmarks/accuracy.py (every row over several seeds).

A row's per-seed records (one per partition + training seed) are summarised as
mean and sample standard deviation (ddof 1; 0 with one seed). Two rows are
compared on the same seeds: the difference of their mean accuracies per seed,
its mean and sd; a difference smaller than two such sds is called a tie.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAPER_NOTE = (
    "FedIT rows: `fedit` is the paper's FedIT (as its reference code siqi2000/FL-TAC runs it: one adapter, one "
    "head as wide as the widest task, label ids overlapping from 0, no task marker, tasks trained in turn); the "
    "paper's FedIT numbers correspond to this row. `fedit-tagged` adds a task tag before every input; "
    "`fedit-taskheads` gives each task its own head positions and reads only those at test, so it is told the "
    "task: an upper bound for FedIT. Steps: every row spends `local_steps` optimizer steps per task slot per "
    "round (FedIT: `local_steps` per task a site holds, in turn, or all of them on the mixed data for "
    "taskheads; central: `local_steps` x the slots holding the task), the same compute as FL-TAC; the "
    "reference code gives FedIT only `local_steps // n_tasks` per task."
)


def mean_sd(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def summarise(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of accuracy and macro-F1 (mean and per task), the per-round curve, sizes."""
    recs = [per_seed[s] for s in sorted(per_seed, key=int)]
    first = recs[0]
    tasks = list(first["tasks"])
    n_rounds = len(first["rounds"])
    curve = []
    for i in range(n_rounds):
        done = [r["rounds"][i] for r in recs if r["rounds"][i].get("mean_accuracy") is not None]
        if not done:
            continue
        curve.append({
            "round": i, "mean_accuracy": float(np.mean([d["mean_accuracy"] for d in done])),
            "tasks": {t: {"accuracy": float(np.mean([d["tasks"][t]["accuracy"] for d in done]))} for t in tasks},
        })
    aris = [[x.get("ari") for x in r["rounds"]] for r in recs]
    return {
        "method": first["method"], "rank": first["rank"], "seeds": sorted(per_seed, key=int),
        "mean_accuracy": mean_sd([r["mean_accuracy"] for r in recs]),
        "mean_macro_f1": mean_sd([r["mean_macro_f1"] for r in recs]),
        "tasks": {t: {"accuracy": mean_sd([r["tasks"][t]["accuracy"] for r in recs]),
                      "macro_f1": mean_sd([r["tasks"][t]["macro_f1"] for r in recs])} for t in tasks},
        "ari_per_round": ([float(np.mean(col)) for col in zip(*aris, strict=True)]
                          if all(a is not None for row in aris for a in row) else None),
        "up_params_per_round": first["up_params_per_round"], "down_params_per_round": first["down_params_per_round"],
        "train_steps_per_round": first.get("train_steps_per_round"),
        "wall_s": round(sum(r["wall_s"] for r in recs), 1),
        "curve": curve,
    }


def paired(results: dict[str, Any], a: str, b: str) -> dict[str, float] | None:
    """Mean accuracy of ``a`` minus ``b`` in points, over the seeds both have: mean, sd, n."""
    if a not in results or b not in results:
        return None
    sa, sb = results[a]["per_seed"], results[b]["per_seed"]
    common = sorted(set(sa) & set(sb), key=int)
    if not common:
        return None
    return mean_sd([100 * (sa[s]["mean_accuracy"] - sb[s]["mean_accuracy"]) for s in common])


def verdict(d: dict[str, float], target: float | None = None) -> str:
    text = f"{d['mean']:+.1f} points (sd {d['sd']:.1f} over {d['n']} seed(s))"
    if d["n"] < 2:
        text += ", one seed: no tie test"
    elif abs(d["mean"]) < 2 * d["sd"]:
        text += ", a tie (|diff| < 2 sd)"
    if target is not None:
        text += f"; target >= {target:+.0f}: {'met' if d['mean'] >= target else 'missed'}"
    return text


def _pm(x: dict[str, float]) -> str:
    return f"{x['mean']:.3f} ± {x['sd']:.3f}"


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    tasks = meta["tasks"]
    lines = [f"# Accuracy benchmark: FL-TAC vs FedIT and references ({meta['plan']})", "",
             f"Setup: {meta['setup']}", f"Command: `{meta['command']}`; machine: {meta['machine']}.", "",
             "Cells: mean ± sd over the seeds (each seed: its own partition and training seed).", "",
             "| variant | seeds | " + " | ".join(tasks)
             + " | mean acc | mean macro-F1 | ARI per round (mean) | params up/round | params down/round"
             " | steps/round | wall s |",
             "|---|---:|" + "---:|" * (len(tasks) + 7)]
    for name, row in results.items():
        s = row["summary"]
        ari = " ".join(f"{a:.2f}" for a in s["ari_per_round"]) if s["ari_per_round"] else "-"
        lines.append(f"| {name} | {len(s['seeds'])} | " + " | ".join(_pm(s["tasks"][t]["accuracy"]) for t in tasks)
                     + f" | {_pm(s['mean_accuracy'])} | {_pm(s['mean_macro_f1'])} | {ari} | "
                     f"{s['up_params_per_round']:,} | {s['down_params_per_round']:,} | "
                     f"{s['train_steps_per_round'] or '-'} | {s['wall_s']} |")
    lines += ["", PAPER_NOTE, "", *targets(results, meta["plan"])]
    return "\n".join(lines) + "\n"


def targets(results: dict[str, Any], plan_name: str) -> list[str]:
    """The issue's targets (bench-conflict) or the comparisons as they come (other plans)."""
    out = ["## Comparisons and targets", "",
           "Differences are paired over common seeds; smaller than two sds of the paired difference: a tie."]
    conflict = plan_name == "bench-conflict"
    pairs = [("fltac-r1", "fedit-r8", 10.0 if conflict else None), ("fltac-r1", "fedit-r1", None),
             ("fltac-r1", "fedit-tagged-r8", None), ("fltac-r1", "fedit-taskheads-r8", None),
             ("fltac-r4", "fedit-r8", None), ("fltac-r1", "central-r1", -2.0 if conflict else None),
             ("fltac-r1", "oracle-r1", None)]
    for a, b, target in pairs:
        d = paired(results, a, b)
        if d is not None:
            out.append(f"- {a} vs {b}: {verdict(d, target)}")
    fl = results.get("fltac-r1", {}).get("summary")
    if fl and fl["ari_per_round"]:
        later = [round(a, 3) for a in fl["ari_per_round"][1:]]
        ok = bool(later) and min(later) >= 0.95
        out.append(f"- fltac-r1 ARI from round 2 (mean over seeds): {later}"
                   + (f" (target >= 0.95): {'met' if ok else 'missed'}" if conflict else ""))
    fe = results.get("fedit-r8", {}).get("summary")
    if fl and fe:
        ok = fl["up_params_per_round"] + fl["down_params_per_round"] < fe["up_params_per_round"] + fe["down_params_per_round"]
        out.append(f"- parameters moved per round, fltac-r1 vs fedit-r8: "
                   f"{fl['up_params_per_round'] + fl['down_params_per_round']:,} vs "
                   f"{fe['up_params_per_round'] + fe['down_params_per_round']:,}"
                   + (f" (target: fewer): {'met' if ok else 'missed'}" if conflict else ""))
    return out
