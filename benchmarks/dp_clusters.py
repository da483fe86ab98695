"""Benchmark: why clustering fails under DP, and which clustering survives it.

Two steps, so that one expensive DP run serves many clustering choices:

1. ``record``: one FL-TAC run under DP with the *true* tasks as clusters
   (``--method oracle``, the default) on the reduced or full bench-4task
   (sizes from ``benchmarks/dp.py``). Every slot's round start and trained
   vector are saved per round (``<work>/<name>.npz``). Round 0 starts every
   slot at the shared initial adapter, so round 0 is what any clustering sees
   from scratch; later rounds are what a clustering that had the clusters
   right would see next (the question ``clustering.settle`` answers).
2. ``analyse``: for each saved run and round, each clustering choice
   (features, sketch size, accumulation, centring) is applied to those
   vectors exactly as the aggregator would (``clustering_features``, the
   round's shared projection, ``cluster_sketches`` with a site's slots in
   distinct clusters) and scored against the true tasks (ARI). Also per
   round: the separation (silhouette) of the K-means partition and of the
   true partition, which is what ``settle`` compares, and the signal-to-noise
   of the features (distance between task means against the spread of a
   task's slots around their mean).

Everything here is post-processing of the DP output.

    .venv/bin/python benchmarks/dp_clusters.py record --epsilon 8 --seed 1            # reduced, ~30 min
    .venv/bin/python benchmarks/dp_clusters.py record --epsilon 8 --seed 0 --full     # 10 sites, ~1 h
    .venv/bin/python benchmarks/dp_clusters.py analyse                                # seconds

Writes RESULTS/dp_clusters.{json,md} (``analyse``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import dp as dpbench  # noqa: E402  (benchmarks/dp.py: sizes and the plan maker)

CHOICES: list[dict[str, Any]] = [
    {"features": "full", "sketch_dim": 64},
    {"features": "full", "sketch_dim": 1024},
    {"features": "full", "sketch_dim": 8192},
    {"features": "lora", "sketch_dim": 1024},
    {"features": "head", "sketch_dim": 1024},
    {"features": "head", "sketch_dim": 8192},
    {"features": "delta", "sketch_dim": 1024},
    {"features": "head-delta", "sketch_dim": 1024},
    {"features": "delta", "sketch_dim": 1024, "accumulate": True},
    {"features": "head-delta", "sketch_dim": 1024, "accumulate": True},
]


def record(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch

    import fltac_secure.simulation.methods as methods
    from fltac_secure.data import build_federated_data, stratified_sample

    torch.set_num_threads(args.threads)
    size = dpbench.full_size() if args.full else dict(dpbench.QUICK if args.quick else dpbench.SIZE)
    bench = ROOT / "plans" / "bench-4task.yaml"
    data = build_federated_data(dpbench.make_plan(bench, size, math.inf, args.seed))
    data.test = {t: stratified_sample(ds, size["test_cap"], args.seed) for t, ds in data.test.items()}
    plan = dpbench.make_plan(bench, size, args.epsilon, args.seed, recipe=args.recipe_over)
    rounds: list[dict[str, Any]] = []
    original = methods.client_round

    def recording(model, site, slots, starts, r, plan_, **kw):  # type: ignore[no-untyped-def]
        out = original(model, site, slots, starts, r, plan_, **kw)
        while len(rounds) <= r:
            rounds.append({})
        for res in out:
            rounds[r][res.key] = (np.asarray(starts[res.key], np.float32), np.asarray(res.vector, np.float32))
        return out

    methods.client_round = recording
    try:
        rec = dpbench.run_epsilon(args.epsilon, plan, data, args.work / args.name, args.method)
    finally:
        methods.client_round = original
    from fltac_secure.simulation import SimContext

    key_task = SimContext(plan, data).key_task
    from fltac_secure.learning.adapters import adapter_layout
    from fltac_secure.privacy.settings import learning_rate_text

    arrays: dict[str, np.ndarray] = {}
    for r, slots in enumerate(rounds):
        for key, (start, vec) in slots.items():
            arrays[f"r{r}/start/{key}"] = start
            arrays[f"r{r}/vector/{key}"] = vec
    args.work.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.work / f"{args.name}.npz", **arrays)
    meta = {"name": args.name, "epsilon": args.epsilon, "seed": args.seed, "full": args.full, "size": size,
            "method": args.method, "learning_rate": learning_rate_text(plan), "key_task": key_task, "lora_size": adapter_layout(plan).lora_size,
            "k": plan.k, "clustering_seed": plan.clustering.seed, "run": rec}
    (args.work / f"{args.name}.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {args.name}: mean acc {rec['mean_accuracy']:.3f}, "
          f"{len(rounds)} rounds saved to {args.work / (args.name + '.npz')}", flush=True)


def load_run(path: Path) -> tuple[dict[str, Any], list[dict[str, tuple[np.ndarray, np.ndarray]]]]:
    meta = json.loads(path.with_suffix(".json").read_text())
    z = np.load(path)
    rounds: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for name in z.files:
        r, kind, key = name.split("/", 2)
        i = int(r[1:])
        while len(rounds) <= i:
            rounds.append({})
        start, vec = rounds[i].get(key, (None, None))
        rounds[i][key] = (z[name], vec) if kind == "start" else (start, z[name])
    return meta, rounds


def snr(feats: np.ndarray, truth: list[str]) -> float:
    """Mean distance between task means over the mean spread of a task's slots around its mean."""
    tasks = sorted(set(truth))
    lab = np.asarray(truth)
    means = np.stack([feats[lab == t].mean(axis=0) for t in tasks])
    between = np.mean([np.linalg.norm(means[i] - means[j]) for i in range(len(tasks)) for j in range(i)])
    within = np.mean([np.linalg.norm(feats[lab == t] - means[i], axis=1).mean() for i, t in enumerate(tasks)
                      if (lab == t).sum() > 1])
    return float(between / within) if within > 0 else math.inf


def analyse_run(meta: dict[str, Any], rounds: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                choice: dict[str, Any]) -> list[dict[str, Any]]:
    from sklearn.metrics import adjusted_rand_score

    from fltac_secure.federation.rounds import clustering_features
    from fltac_secure.learning.cluster import cluster_sketches, normalize_rows, separation, site_of
    from fltac_secure.learning.seeding import derive_seed
    from fltac_secure.learning.sketch import make_sketcher, round_sketch_seed

    key_task, k = meta["key_task"], meta["k"]
    out, acc = [], {}
    for r, slots in enumerate(rounds):
        keys = sorted(slots)
        feats = np.stack([clustering_features(slots[key][1], slots[key][0], meta["lora_size"], choice["features"])
                          for key in keys]).astype(np.float64)
        sk = make_sketcher(choice["sketch_dim"], round_sketch_seed(meta["clustering_seed"], r)).sketch(feats)
        if choice.get("accumulate"):
            for i, key in enumerate(keys):
                acc[key] = acc.get(key, 0) + sk[i]
            sk = np.stack([acc[key] for key in keys])
        truth = [key_task[key] for key in keys]
        res = cluster_sketches(dict(zip(keys, sk, strict=True)), k, center=True,
                               seed=derive_seed("kmeans", meta["clustering_seed"], r),
                               groups={key: site_of(key) for key in keys})
        x = sk - sk.mean(axis=0, keepdims=True)
        x = normalize_rows(x)
        true_lab = np.unique(truth, return_inverse=True)[1]
        out.append({"round": r, "ari": float(adjusted_rand_score(truth, [res.labels[key] for key in keys])),
                    "separation": res.separation, "true_separation": separation(x, true_lab),
                    "snr": snr(x, truth), "snr_raw": snr(feats, truth)})
    return out


def analyse(args: argparse.Namespace) -> None:
    runs = sorted(args.work.glob("*.npz"))
    if not runs:
        raise SystemExit(f"no recorded runs under {args.work}; run 'record' first")
    res: dict[str, Any] = {"runs": {}, "choices": CHOICES}
    for path in runs:
        meta, rounds = load_run(path)
        entry = {"epsilon": meta["epsilon"], "seed": meta["seed"], "full": meta["full"], "method": meta["method"],
                 "learning_rate": meta.get("learning_rate"), "slots": len(rounds[0]),
                 "mean_accuracy": meta["run"]["mean_accuracy"], "tasks": meta["run"]["tasks"],
                 "accuracy_per_round": [r["mean_accuracy"] for r in meta["run"]["rounds"]],
                 "train_loss_per_round": [r["train_loss"] for r in meta["run"]["rounds"]],
                 "slots_per_task": {t: list(meta["key_task"].values()).count(t) for t in meta["run"]["tasks"]},
                 "choices": {}}
        for choice in CHOICES:
            label = choice_label(choice)
            entry["choices"][label] = analyse_run(meta, rounds, choice)
        res["runs"][path.stem] = entry
        print(f"{path.stem}: analysed {len(rounds)} rounds", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.results / f"{args.name}.md").write_text(markdown(res))
    print(markdown(res))


def choice_label(choice: dict[str, Any]) -> str:
    return f"{choice['features']} d{choice['sketch_dim']}" + (" acc" if choice.get("accumulate") else "")


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Clustering under DP: which features separate the tasks", "",
             "Each run: FL-TAC under DP with the true tasks as clusters (`dp_clusters.py record`), every slot's start "
             "and trained vector saved per round; each clustering choice applied to them as the aggregator would "
             "(centred, normalised sketches, K-means with a site's slots in distinct clusters). Round 0 is what any "
             "clustering sees from scratch; later rounds are what a clustering that had the clusters right sees next.",
             "ARI: K-means partition against the true tasks. sep: its separation (silhouette); true sep: the true "
             "partition's (what `settle` compares). SNR: distance between task means over the spread of a task's "
             "slots (normalised sketches).", "",
             "Command: `python benchmarks/dp_clusters.py analyse` on the runs recorded with "
             "`python benchmarks/dp_clusters.py record ...`.", ""]
    for name, run in res["runs"].items():
        size = "bench-4task (10 sites)" if run["full"] else "reduced bench-4task (3 sites)"
        lr = "" if run.get("learning_rate") is None else f", DP learning rate {run['learning_rate']:g}"
        tasks = ", ".join(f"{t} {a:.3f} ({run['slots_per_task'][t]} slots)" for t, a in run["tasks"].items()) \
            if run.get("slots_per_task") else ""
        lines += [f"## {name}: {size}, epsilon {run['epsilon']:g}, seed {run['seed']}{lr}, {run['slots']} slots "
                  f"({run['method']})", "",
                  f"Final mean accuracy {run['mean_accuracy']:.3f}: {tasks}. Per round: "
                  + " ".join(f"{a:.3f}" for a in run.get("accuracy_per_round", [])) + "; train loss per round: "
                  + " ".join(f"{x:.2f}" for x in run.get("train_loss_per_round", [])) + ".", "",
                  "| choice | ARI per round | sep per round | true sep per round | SNR per round |", "|---|---|---|---|---|"]
        for label, rows in run["choices"].items():
            def col(key: str) -> str:
                return " ".join("-" if r[key] is None else f"{r[key]:.2f}" for r in rows)
            lines.append(f"| {label} | {col('ari')} | {col('separation')} | {col('true_separation')} | {col('snr')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="one DP run with every slot's vectors saved per round")
    rec.add_argument("--epsilon", type=float, default=8.0)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--full", action="store_true", help="10 sites, 5 rounds (the accuracy benchmark's size)")
    rec.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    rec.add_argument("--method", choices=("oracle", "fltac"), default="oracle")
    rec.add_argument("--threads", type=int, default=1)
    rec.add_argument("--lr", type=float, default=None, help="privacy.learning_rate (default: the recipe's)")
    rec.add_argument("--name", default=None, help="run name (default from size, epsilon, seed)")
    an = sub.add_parser("analyse", help="score clustering choices on the recorded runs")
    an.add_argument("--name", default="dp_clusters", help="results file stem")
    an.add_argument("--results", type=Path, default=RESULTS)
    for p in (rec, an):
        p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fltac-dp-clusters")
    args = ap.parse_args()
    if args.cmd == "record":
        args.recipe_over = {} if args.lr is None else {"learning_rate": args.lr}
        if args.name is None:
            args.name = (f"{'full' if args.full else 'quick' if args.quick else 'reduced'}-eps{args.epsilon:g}"
                         f"-seed{args.seed}-{args.method}" + ("" if args.lr is None else f"-lr{args.lr:g}"))
    return args


def main() -> None:
    args = parse()
    record(args) if args.cmd == "record" else analyse(args)


if __name__ == "__main__":
    main()
