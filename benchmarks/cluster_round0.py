"""Benchmark: which clustering features separate the tasks after one round from the common start?

Every slot of a benchmark plan trains round 0 from the plan's initial adapter
(the accuracy benchmark's sizes: ``accuracy.FULL``), optionally under DP with
the plan's DP recipe at ``--epsilon``. The new vectors are then clustered in
several ways and scored by ARI against the true tasks:

- features: the whole vector (``full``; in round 0 its centred form equals
  the centred delta, since every slot starts from the same vector), its LoRA
  part, its head part; full length and sketches of 64 / 256 / 1024 (three
  projection seeds each); K-means with the per-site distinct-cluster
  constraint, as the aggregator runs it;
- the centred cosine between slots of the same task and of different tasks,
  per part, and a separation score (same minus different): how much signal a
  sketch has to keep.

    .venv/bin/python benchmarks/cluster_round0.py --plan plans/bench-conflict.yaml
    .venv/bin/python benchmarks/cluster_round0.py --plan plans/bench-4task.yaml --epsilon 8

Writes RESULTS/cluster_round0-<plan stem>[-eps<E>].{json,md}; the trained
vectors are cached under --work, so re-scoring is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIMS = (64, 256, 1024)
SEEDS = (1, 2, 3)


def plan_for(path: Path, epsilon: float, seed: int) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import FULL, make_plan

    from fltac_secure.plan.schema import Plan

    raw = make_plan(path, FULL, 1, None, seed).model_dump()
    dp = math.isfinite(epsilon)
    raw["privacy"].update(dp=dp, target_epsilon=epsilon if dp else None, noise_multiplier=None)
    return Plan.model_validate(raw)


def dp_trainer(model: Any, plan: Any) -> Any:
    """A site's DP trainer for this one round (in-memory ledger: a benchmark, not a site)."""
    from fltac_secure.privacy.dp import DPTrainer
    from fltac_secure.privacy.ledger import PrivacyLedger

    p = plan.privacy
    return DPTrainer(model, plan, ledger=PrivacyLedger.in_memory(delta=p.delta, accountant=p.accountant))


def train_round0(plan: Any) -> dict[str, Any]:
    """Round 0 for every slot from the initial adapter: new vectors, tasks, the LoRA size."""
    from fltac_secure.data import build_federated_data
    from fltac_secure.federation.rounds import client_round
    from fltac_secure.learning.adapters import adapter_layout, initial_vector
    from fltac_secure.simulation.context import SimContext

    ctx = SimContext(plan, build_federated_data(plan, require_every_site=False))
    init = initial_vector(plan, plan.training.seed)
    vec: dict[str, np.ndarray] = {}
    for site in ctx.sites:
        slots = ctx.slots_of(site)
        kw = {"dp": dp_trainer(ctx.model, plan)} if plan.privacy.dp else {}
        for res in client_round(ctx.model, site, slots, {s.key: init for s in slots}, 0, plan, **kw):
            vec[res.key] = res.vector
        print(f"  {site}: {len(slots)} slots", flush=True)
    keys = list(vec)
    return {"keys": keys, "vec": np.stack([vec[k] for k in keys]), "task": [ctx.key_task[k] for k in keys],
            "lora_size": adapter_layout(plan).lora_size, "k": plan.k}


def separation(x: np.ndarray, task: np.ndarray) -> dict[str, float]:
    z = x - x.mean(axis=0)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    c = z @ z.T
    same = task[:, None] == task[None, :]
    np.fill_diagonal(same, False)
    s, d = float(c[same].mean()), float(c[task[:, None] != task[None, :]].mean())
    return {"same_task": s, "different_task": d, "separation": s - d}


def score(d: dict[str, Any]) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score as ari

    from fltac_secure.learning.cluster import cluster_sketches, site_of
    from fltac_secure.learning.sketch import make_sketcher

    keys, task, L, k = d["keys"], np.array(d["task"]), int(d["lora_size"]), int(d["k"])
    groups = {key: site_of(key) for key in keys}
    feats = {"full": d["vec"], "LoRA part": d["vec"][:, :L], "head part": d["vec"][:, L:]}

    def run(x: np.ndarray, seed: int = 0) -> float:
        r = cluster_sketches(dict(zip(keys, x, strict=True)), k, seed=seed, center=True, groups=groups)
        return float(ari(task, [r.labels[key] for key in keys]))

    rows = []
    for name, x in feats.items():
        rows.append({"features": name, "space": "full length", "ari": [run(x)], **separation(x, task)})
        for dim in DIMS:
            rows.append({"features": name, "space": f"sketch {dim}",
                         "ari": [run(make_sketcher(dim, 1000 + s).sketch(x), seed=s) for s in SEEDS]})
    return {"slots": len(keys), "tasks": sorted(set(task.tolist())), "rows": rows}


def markdown(res: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# Round-0 clustering features on {meta['plan']} ({meta['privacy']})", "",
             f"Setup: {meta['setup']}", f"Command: `{meta['command']}`; machine: {meta['machine']}.", "",
             f"{res['slots']} slots of {len(res['tasks'])} tasks; K-means on centred, normalised features with the "
             "per-site distinct-cluster constraint (as the aggregator runs it).", "",
             "| features | space | ARI (per projection seed) | centred cosine same / different task | separation |",
             "|---|---|---|---|---:|"]
    for r in res["rows"]:
        cos = f"{r['same_task']:.3f} / {r['different_task']:.3f}" if "same_task" in r else "-"
        sep = f"{r['separation']:.3f}" if "separation" in r else "-"
        lines.append(f"| {r['features']} | {r['space']} | {' '.join(f'{a:.3f}' for a in r['ari'])} | {cos} | {sep} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="round-0 clustering features (see module doc)")
    ap.add_argument("--plan", type=Path, default=ROOT / "plans" / "bench-conflict.yaml")
    ap.add_argument("--epsilon", type=float, default=math.inf, help="train under DP at this epsilon (default: no DP)")
    ap.add_argument("--seed", type=int, default=0, help="partition and training seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fltac-bench-round0")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    plan = plan_for(args.plan, args.epsilon, args.seed)
    stem = f"cluster_round0-{args.plan.stem.removeprefix('bench-')}" + (
        f"-eps{args.epsilon:g}" if math.isfinite(args.epsilon) else "")
    cache = args.work / f"{stem}-seed{args.seed}.npz"
    t0 = time.perf_counter()
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        d = {"keys": z["keys"].tolist(), "vec": z["vec"], "task": z["task"].tolist(), "lora_size": int(z["lora_size"]),
             "k": int(z["k"])}
    else:
        d = train_round0(plan)
        args.work.mkdir(parents=True, exist_ok=True)
        np.savez(cache, keys=np.array(d["keys"]), vec=d["vec"], task=np.array(d["task"]), lora_size=d["lora_size"],
                 k=d["k"])
    res = score(d)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import FULL

    from fltac_secure.privacy.settings import learning_rate_text

    p = plan.privacy
    meta = {"plan": plan.federation,
            "privacy": (f"DP epsilon {args.epsilon:g}, {p.optimizer} {learning_rate_text(plan)}, sample rate "
                        f"{p.sample_rate:g} (expected batch <= {p.max_batch_size}), {p.local_steps} steps, clip "
                        f"{p.max_grad_norm:g}, LoRA A {'trained' if plan.trains_lora_a else 'frozen'}")
            if p.dp else "no DP",
            "setup": f"{len(plan.roster)} sites, alpha {plan.partition.alpha}, seed {args.seed}, round 0 with "
                     f"{FULL['local_steps']} local steps, batch {FULL['batch_size']}, {FULL['max_seq_length']} tokens, "
                     f"<= {FULL['max_examples']} examples per task; wall {time.perf_counter() - t0:.0f} s",
            "command": f"python benchmarks/cluster_round0.py --plan {args.plan.name if args.plan.parent.name == 'plans' else args.plan}"
                       + (f" --epsilon {args.epsilon:g}" if math.isfinite(args.epsilon) else "")
                       + (f" --seed {args.seed}" if args.seed else ""),
            "machine": f"{os.cpu_count()} cores, torch threads {args.threads}"}
    meta["command"] = meta["command"].replace("--plan bench", "--plan plans/bench")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps({"meta": meta, **res}, indent=2) + "\n")
    (args.results / f"{stem}.md").write_text(markdown(res, meta))
    print(markdown(res, meta))


if __name__ == "__main__":
    main()
