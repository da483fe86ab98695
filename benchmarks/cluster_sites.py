"""Benchmark: does FL-TAC's clustering correct its mistakes as rounds go by, at 10, 50 and 100 sites?

The demo tasks (news, spam, sentiment, langid) on all-MiniLM-L6-v2 with LoRA
r1 on query+value (``plans/bench-4task.yaml``), split over N simulated sites
(Dirichlet alpha 0.5; a share under ``min_share`` is dropped, a site left with
no task sits out), a few local steps per slot per round. For each N and each
clustering variant the same data and the same round-0 training are used; the
script records per round the ARI of the clusters against the true tasks and
how many sites had two of their slots in one cluster, and at the end each
task's accuracy on its global test set (capped).

Variants (plan ``clustering`` settings):

- ``before``: K-means on 64-number sketches of the full adapter vectors, no
  per-site constraint (the behaviour before issue 15).
- ``distinct``: the same plus the per-site constraint (a site's slots go to
  distinct clusters).
- ``after``: sketches (1024 numbers) of each round's local update
  (``features: delta``), with the per-site constraint: the setting that lets
  later rounds correct round 0 (not the default; see the README).

    .venv/bin/python benchmarks/cluster_sites.py                 # 10, 50, 100 sites (long: see results)
    .venv/bin/python benchmarks/cluster_sites.py --quick         # 10 and 20 sites, 3 rounds: minutes
    .venv/bin/python benchmarks/cluster_sites.py --sites 50 --variants before,after

Writes benchmarks/results/cluster_sites.{json,md}; partial results are written
after every run, and ``--resume`` keeps the runs of the same setup.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"features": "full", "sketch_dim": 64, "distinct_per_site": False},
    "distinct": {"features": "full", "sketch_dim": 64, "distinct_per_site": True},
    "after": {"features": "delta", "sketch_dim": 1024, "distinct_per_site": True},
}
FULL = {"sites": [10, 50, 100], "rounds": 3, "local_steps": 5, "max_seq_length": 16, "batch_size": 8,
        "max_examples": 2000, "test_cap": 200, "min_share": 0.005}
QUICK = {"sites": [10, 20], "rounds": 3, "local_steps": 3, "max_seq_length": 24, "batch_size": 8,
         "max_examples": 600, "test_cap": 60, "min_share": 0.01}


def make_plan(base: Path, size: dict[str, Any], n_sites: int, clustering: dict[str, Any]) -> Any:
    from fltac_secure.plan import load_plan
    from fltac_secure.plan.schema import Plan

    raw = load_plan(base).model_dump()
    raw["federation"] = f"sites{n_sites}"
    raw["roster"] = [f"site{i:03d}" for i in range(1, n_sites + 1)]
    raw["rounds"] = size["rounds"]
    raw["quorum"]["min_collaborators"] = 1
    raw["training"].update(local_steps=size["local_steps"], max_seq_length=size["max_seq_length"],
                           batch_size=size["batch_size"])
    raw["partition"].update(max_examples_per_task=size["max_examples"], min_share=size["min_share"])
    raw["clustering"].update(clustering)
    return Plan.model_validate(raw)


def run_one(plan: Any, ctx: Any) -> dict[str, Any]:
    """FL-TAC for ``plan.rounds`` rounds on ``ctx``; ARI and collisions per round, accuracy at the end."""
    from fltac_secure.simulation.evaluate import clustering_metrics, task_metrics
    from fltac_secure.simulation.methods import FLTAC

    ctx.plan = plan
    method = FLTAC(ctx)
    rounds = []
    t0 = time.perf_counter()
    for r in range(plan.rounds):
        out = method.run_round(r)
        labels = out.labels or {}
        m = clustering_metrics(ctx, labels)
        rounds.append({"round": r, "ari": m["ari"], "nmi": m["nmi"], "collisions": collisions(labels),
                       "cluster_tasks": m.get("cluster_tasks")})
        print(f"  round {r}: ARI {m['ari']:.3f} collisions {rounds[-1]['collisions']}", flush=True)
    final = task_metrics(method)
    return {"rounds": rounds, "wall_s": round(time.perf_counter() - t0, 1),
            "tasks": {t: v["accuracy"] for t, v in final["tasks"].items()}, "mean_accuracy": final["mean_accuracy"]}


def collisions(labels: dict[str, int]) -> int:
    """Sites with two or more slots in one cluster."""
    seen: dict[str, list[int]] = {}
    for key, cid in labels.items():
        seen.setdefault(key.rpartition("/")[0], []).append(cid)
    return sum(1 for cids in seen.values() if len(set(cids)) < len(cids))


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = ["# Clustering over rounds at 10 / 50 / 100 simulated sites", "",
             f"Setup: {meta['setup']} (each run's rounds: the ARI columns)",
             "Commands: " + "; ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]]))
             + f"; machine: {meta['machine']}.", *meta.get("notes", []), "",
             "| sites (slots) | variant | ARI per round | sites with 2 slots in 1 cluster, per round | "
             "mean acc | " + " | ".join(meta["tasks"]) + " | wall s |",
             "|---|---|---|---|---:|" + "---:|" * (len(meta["tasks"]) + 1)]
    legend = {run["variant"]: run.get("clustering", {}) for run in results.values()}
    lines[4:4] = ["Variants (clustering settings): " + "; ".join(
        f"{v}: " + ", ".join(f"{k} {x}" for k, x in c.items()) for v, c in legend.items()), ""]
    for run in results.values():
        aris = " ".join(f"{x['ari']:.3f}" for x in run["rounds"])
        coll = " ".join(str(x["collisions"]) for x in run["rounds"])
        accs = " | ".join(f"{run['tasks'].get(t, float('nan')):.3f}" for t in meta["tasks"])
        lines.append(f"| {run['sites']} ({run['slots']}) | {run['variant']} | {aris} | {coll} | "
                     f"{run['mean_accuracy']:.3f} | {accs} | {run['wall_s']} |")
    return "\n".join(lines) + "\n"


def _same_setup(a: str, b: str) -> bool:
    """Setups equal up to the number of rounds (each run records its own rounds)."""
    import re

    strip = lambda s: re.sub(r"\d+ rounds, ", "", s)  # noqa: E731
    return strip(a) == strip(b)


def main() -> None:
    ap = argparse.ArgumentParser(description="FL-TAC clustering over rounds at several site counts (see module doc)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 and 20 sites, tiny sizes, minutes")
    ap.add_argument("--sites", default="", help="comma-separated site counts (default 10,50,100)")
    ap.add_argument("--variants", default="before,after", help=f"comma-separated, from {list(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    ap.add_argument("--resume", action="store_true", help="keep saved runs of the same setup")
    ap.add_argument("--plan", type=Path, default=ROOT / "plans" / "bench-4task.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "cluster_sites")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from fltac_secure.data import build_federated_data, stratified_sample
    from fltac_secure.simulation.context import SimContext

    size = dict(QUICK if args.quick else FULL)
    if args.rounds:
        size["rounds"] = args.rounds
    sites = [int(s) for s in args.sites.split(",") if s] or size["sites"]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    meta = {
        "tasks": ["news", "spam", "sentiment", "langid"],
        "setup": f"bench-4task tasks and model, alpha 0.5, min_share {size['min_share']}, {size['rounds']} rounds, "
                 f"{size['local_steps']} local steps per slot per round, batch {size['batch_size']}, "
                 f"max {size['max_seq_length']} tokens, <= {size['max_examples']} examples per task, "
                 f"test sets capped at {size['test_cap']} per task",
        "command": "python benchmarks/cluster_sites.py" + (" --quick" if args.quick else "")
                   + (f" --sites {args.sites}" if args.sites else "") + f" --variants {args.variants}"
                   + (f" --rounds {args.rounds}" if args.rounds else "") + (" --resume" if args.resume else ""),
        "machine": f"{os.cpu_count()} cores, torch threads {args.threads}",
    }
    out_json = args.out.with_suffix(".json")
    results: dict[str, Any] = {}
    if args.resume and out_json.exists():
        old = json.loads(out_json.read_text())
        if _same_setup(old["meta"]["setup"], meta["setup"]):  # runs of other round counts are kept, and say so
            results = old["runs"]
            meta["commands"] = [c for c in old["meta"].get("commands", [old["meta"]["command"]]) if c != meta["command"]]
            meta["notes"] = old["meta"].get("notes", [])
    meta["commands"] = [*meta.get("commands", []), meta["command"]]
    for n in sites:
        todo = [v for v in variants if f"{n}/{v}" not in results]
        if not todo:
            continue
        base = make_plan(args.plan, size, n, VARIANTS[todo[0]])
        data = build_federated_data(base, require_every_site=False)
        data.test = {t: stratified_sample(ds, size["test_cap"], 0) for t, ds in data.test.items()}
        ctx = SimContext(base, data)
        slots = sum(len(v) for v in data.train.values())
        for v in todo:
            print(f"[{time.strftime('%H:%M:%S')}] {n} sites ({slots} slots), {v}", flush=True)
            run = run_one(make_plan(args.plan, size, n, VARIANTS[v]), ctx)
            results[f"{n}/{v}"] = {"sites": n, "active_sites": len(ctx.sites), "slots": slots, "variant": v,
                                   "rounds_run": size["rounds"], "clustering": VARIANTS[v], **run}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps({"meta": meta, "runs": results}, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(results, meta))
    print(f"wrote {out_json} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
