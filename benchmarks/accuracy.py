"""Benchmark: FL-TAC against FedIT, oracle clusters, local-only and centralised LoRA.

On ``plans/bench-4task.yaml`` (10 sites, Dirichlet alpha 0.5 over the four
shipped text tasks, all-MiniLM-L6-v2, LoRA on query+value) every variant
runs on the same data with the same local steps per task slot per round:

    fltac-r1, fltac-r4, fedit-r1, fedit-r8, oracle-r1, local-r1, central-r1

Sized to finish in about an hour on 2 cores (rounds, steps, sequence length
and example caps below); ``--quick`` is a smoke run of a few minutes. After
each variant the partial results are written, so an interrupted run keeps
what it measured; ``--only`` re-runs chosen variants and merges them in.

    .venv/bin/python benchmarks/accuracy.py            # full (about an hour)
    .venv/bin/python benchmarks/accuracy.py --quick    # smoke run
    .venv/bin/python benchmarks/accuracy.py --only fltac-r1,fedit-r1
    .venv/bin/python benchmarks/accuracy.py --resume   # run only the variants not saved yet

Writes benchmarks/results/accuracy.{json,md}, accuracy.png (accuracy per
round, all variants) and accuracy_clusters_<variant>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {  # name -> (method, rank), in run order (most important first)
    "fltac-r1": ("fltac", 1), "fedit-r1": ("fedit", 1), "central-r1": ("central", 1), "oracle-r1": ("oracle", 1),
    "fltac-r4": ("fltac", 4), "fedit-r8": ("fedit", 8), "local-r1": ("local", 1),
}
FULL = {"rounds": 5, "local_steps": 10, "max_seq_length": 40, "batch_size": 16, "max_examples": 2000, "test_cap": 300}
QUICK = {"rounds": 2, "local_steps": 3, "max_seq_length": 32, "batch_size": 8, "max_examples": 600, "test_cap": 60}


def make_plan(base: Path, size: dict[str, int], rank: int, features: str | None) -> Any:
    from fltac_secure.plan import load_plan
    from fltac_secure.plan.schema import Plan

    raw = load_plan(base).model_dump()
    raw["rounds"] = size["rounds"]
    raw["model"]["lora"]["rank"] = rank
    raw["training"].update(local_steps=size["local_steps"], max_seq_length=size["max_seq_length"],
                           batch_size=size["batch_size"])
    raw["partition"]["max_examples_per_task"] = size["max_examples"]
    if features:
        raw["clustering"]["features"] = features
    return Plan.model_validate(raw)


def cap_tests(data: Any, cap: int, seed: int) -> Any:
    """Stratified cap on each global test set (evaluation time), same for every variant."""
    from fltac_secure.data import stratified_sample

    data.test = {t: stratified_sample(ds, cap, seed) for t, ds in data.test.items()}
    return data


def run_variant(name: str, plan: Any, data: Any, out: Path, contexts: dict[int, Any]) -> dict[str, Any]:
    from fltac_secure.simulation import SimContext, simulate

    method, rank = VARIANTS[name]
    ctx = contexts.setdefault(rank, SimContext(plan, data))
    t0 = time.perf_counter()
    res = simulate(plan, data, method, out / name, progress=False, site_eval=False, export=False,
                   eval_every=plan.rounds if method == "local" else 1, context=ctx)
    final = res.final
    rec = {
        "variant": name, "method": method, "rank": rank, "wall_s": round(time.perf_counter() - t0, 1),
        "tasks": {t: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]} for t, m in final["tasks"].items()},
        "mean_accuracy": final["mean_accuracy"], "mean_macro_f1": final["mean_macro_f1"],
        "up_params_per_round": final["up_params"], "down_params_per_round": final["down_params"],
        "rounds": [{k: r.get(k) for k in ("round", "mean_accuracy", "ari", "nmi", "cluster_tasks", "train_loss", "tasks")}
                   for r in res.rounds],
    }
    clusters = out / name / "clusters.png"
    if clusters.exists():
        shutil.copy(clusters, RESULTS / f"accuracy_clusters_{name}.png")
    return rec


def write_report(results: dict[str, Any], meta: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=2) + "\n")
    (RESULTS / "accuracy.md").write_text(markdown(results, meta))
    from fltac_secure.simulation.report import plot_accuracy

    plot_accuracy({n: r["rounds"] for n, r in results.items()}, RESULTS / "accuracy.png", title="bench-4task")


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    tasks = meta["tasks"]
    lines = ["# Accuracy benchmark: FL-TAC vs FedIT and references (bench-4task)", "",
             f"Setup: {meta['setup']}", f"Command: `{meta['command']}`; machine: {meta['machine']}.", "",
             "| variant | " + " | ".join(tasks) + " | mean acc | mean macro-F1 | ARI (per round) | params up/round | params down/round | wall s |",
             "|---|" + "---:|" * (len(tasks) + 6)]
    for name, r in results.items():
        aris = [x["ari"] for x in r["rounds"] if x.get("ari") is not None]
        ari = " ".join(f"{a:.2f}" for a in aris) if aris else "-"
        lines.append(f"| {name} | " + " | ".join(f"{r['tasks'][t]['accuracy']:.3f}" for t in tasks)
                     + f" | {r['mean_accuracy']:.3f} | {r['mean_macro_f1']:.3f} | {ari} | "
                     f"{r['up_params_per_round']:,} | {r['down_params_per_round']:,} | {r['wall_s']} |")
    lines += ["", *targets(results)]
    return "\n".join(lines) + "\n"


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against what was measured."""
    out = ["## Targets"]
    acc = {n: r["mean_accuracy"] for n, r in results.items()}
    if "fltac-r1" in acc and "fedit-r1" in acc:
        d = 100 * (acc["fltac-r1"] - acc["fedit-r1"])
        out.append(f"- FL-TAC r1 vs FedIT r1: {d:+.1f} points (target >= +5): {'met' if d >= 5 else 'missed'}")
    if "fltac-r4" in acc and "fedit-r8" in acc:
        out.append(f"- FL-TAC r4 vs FedIT r8 (FedIT with twice the rank): {100 * (acc['fltac-r4'] - acc['fedit-r8']):+.1f} points")
    if "fltac-r1" in acc and "central-r1" in acc:
        d = 100 * (acc["fltac-r1"] - acc["central-r1"])
        out.append(f"- FL-TAC r1 vs centralised r1: {d:+.1f} points (target >= -2): {'met' if d >= -2 else 'missed'}")
    if "fltac-r1" in results:
        aris = [x["ari"] for x in results["fltac-r1"]["rounds"] if x.get("ari") is not None]
        later = aris[1:]
        ok = bool(later) and min(later) >= 0.95
        out.append(f"- FL-TAC r1 ARI from round 2: {[round(a, 3) for a in later]} (target >= 0.95): {'met' if ok else 'missed'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="FL-TAC accuracy benchmark (see module doc)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, minutes")
    ap.add_argument("--only", default="", help="comma-separated variants to (re)run; merged into saved results")
    ap.add_argument("--resume", action="store_true", help="keep saved variants of the same setup, run the rest")
    ap.add_argument("--plan", type=Path, default=ROOT / "plans" / "bench-4task.yaml")
    ap.add_argument("--features", choices=["full", "lora", "delta"], default=None, help="override clustering.features")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fltac-bench-accuracy")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from fltac_secure.data import build_federated_data

    size = QUICK if args.quick else FULL
    names = [n for n in (args.only.split(",") if args.only else VARIANTS) if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    base_plan = make_plan(args.plan, size, 1, args.features)
    data = cap_tests(build_federated_data(base_plan), size["test_cap"], base_plan.partition.seed)
    meta = {
        "tasks": [t.name for t in base_plan.tasks],
        "setup": f"{len(base_plan.roster)} sites, alpha {base_plan.partition.alpha}, {size['rounds']} rounds, "
                 f"{size['local_steps']} local steps per slot per round, batch {size['batch_size']}, "
                 f"max {size['max_seq_length']} tokens, <= {size['max_examples']} examples per task, "
                 f"global test sets capped at {size['test_cap']} per task, lr {base_plan.training.learning_rate}, "
                 f"clustering features {base_plan.clustering.features}, center {base_plan.clustering.center}, "
                 f"normalize {base_plan.clustering.normalize}, "
                 f"sketch dim {base_plan.clustering.sketch_dim}; slots: "
                 f"{sum(len(v) for v in data.train.values())}",
        "command": "python benchmarks/accuracy.py" + (" --quick" if args.quick else "")
                   + (f" --features {args.features}" if args.features else ""),
        "machine": f"{os.cpu_count()} cores, torch threads {args.threads}",
    }
    saved = RESULTS / "accuracy.json"
    results: dict[str, Any] = {}
    if (args.only or args.resume) and saved.exists():
        old = json.loads(saved.read_text())
        if old["meta"]["setup"] == meta["setup"]:
            results = old["variants"]
        elif args.resume:
            raise SystemExit("saved results are from another setup; run without --resume")
    if args.resume:
        names = [n for n in names if n not in results]
    contexts: dict[int, Any] = {}
    for name in names:
        plan = make_plan(args.plan, size, VARIANTS[name][1], args.features)
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        results[name] = run_variant(name, plan, data, args.work, contexts)
        r = results[name]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: mean acc {r['mean_accuracy']:.3f} "
              f"ARI {[x.get('ari') for x in r['rounds']]} ({r['wall_s']} s)", flush=True)
        ordered = {n: results[n] for n in VARIANTS if n in results}
        write_report(ordered, meta)
    print(f"wrote {RESULTS}/accuracy.{{json,md,png}}")


if __name__ == "__main__":
    main()
