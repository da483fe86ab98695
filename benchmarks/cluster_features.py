"""Benchmark: which clustering features can correct a round-0 clustering mistake in round 1?

Runs FL-TAC's round 0 with the old clustering (full vectors, sketch 64, no
per-site constraint) on the 10-site setup of ``cluster_sites.py``, then trains
round 1 from the (partly wrong) cluster means and clusters the round-1 slots
in several ways, scoring each by ARI against the true tasks:

- features: ``full`` (the new vector), ``delta`` (new vector - the round's
  start), their LoRA-only and head-only parts; on the full-length vectors and
  on sketches of dimension 64 / 256 / 1024 / 4096 (3 projection seeds each);
- with and without the per-site distinct-cluster constraint;
- fresh K-means vs K-means warm-started from round 0's partition.

Also the mean cosine (centred) between slots of the same task and of
different tasks, for full and delta vectors: how much signal a sketch must
keep.

    .venv/bin/python benchmarks/cluster_features.py      # about 2 x a 10-site round

Writes benchmarks/results/cluster_features.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIMS = (64, 256, 1024, 4096)
SEEDS = (1, 2, 3)


def round1(threads: int) -> dict[str, Any]:
    """Round 0 (old clustering) then round 1's training: starts, new vectors, tasks, round-0 labels."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cluster_sites import FULL, VARIANTS, make_plan

    from fltac_secure.data import build_federated_data
    from fltac_secure.federation.rounds import client_round
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    plan = make_plan(ROOT / "plans" / "bench-4task.yaml", FULL, 10, VARIANTS["before"])
    ctx = SimContext(plan, build_federated_data(plan, require_every_site=False))
    method = FLTAC(ctx)
    labels0 = method.run_round(0).labels or {}
    starts = dict(method.state.vectors)
    new = {}
    for site in ctx.sites:
        for res in client_round(ctx.model, site, ctx.slots_of(site), starts, 1, plan, dp=method.dp(site)):
            new[res.key] = res.vector
    keys = list(new)
    from fltac_secure.learning.adapters import adapter_layout

    return {"keys": keys, "start": np.stack([starts[k] for k in keys]), "vec": np.stack([new[k] for k in keys]),
            "task": [ctx.key_task[k] for k in keys], "labels0": [labels0[k] for k in keys],
            "lora_size": adapter_layout(plan).lora_size}


def score(d: dict[str, Any]) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score as ari

    from fltac_secure.learning.cluster import ClusterResult, cluster_sketches, site_of
    from fltac_secure.learning.sketch import make_sketcher

    keys, task, L = d["keys"], np.array(d["task"]), d["lora_size"]
    prev = ClusterResult(k=4, labels=dict(zip(keys, d["labels0"], strict=True)))
    groups = {k: site_of(k) for k in keys}
    delta = d["vec"] - d["start"]
    feats = {"full": d["vec"], "delta": delta, "delta, LoRA part": delta[:, :L], "delta, head part": delta[:, L:]}

    def run(x: np.ndarray, constraint: bool, warm: bool = False, seed: int = 0) -> float:
        if warm:  # Lloyd from round 0's partition (the constraint's alternation does exactly that)
            from fltac_secure.learning.cluster import distinct_assign, normalize_rows

            z = normalize_rows(x - x.mean(axis=0))
            lab, _ = distinct_assign(z, np.array(d["labels0"]), [groups[k] if constraint else k for k in keys], 4)
            return float(ari(task, lab))
        r = cluster_sketches(dict(zip(keys, x, strict=True)), 4, seed=seed, previous=prev,
                             groups=groups if constraint else None)
        return float(ari(task, [r.labels[k] for k in keys]))

    out: dict[str, Any] = {"round0_ari": float(ari(task, d["labels0"])), "slots": len(keys), "rows": []}
    for name, x in feats.items():
        for constraint in (False, True):
            out["rows"].append({"features": name, "space": "full length", "constraint": constraint,
                                "fresh": [run(x, constraint)], "warm": run(x, constraint, warm=True)})
    for name in ("full", "delta"):
        for dim in DIMS:
            for constraint in (False, True):
                aris = [run(make_sketcher(dim, 1000 + s).sketch(feats[name]), constraint, seed=s) for s in SEEDS]
                out["rows"].append({"features": name, "space": f"sketch {dim}", "constraint": constraint,
                                    "fresh": aris})
    same = task[:, None] == task[None, :]
    np.fill_diagonal(same, False)
    diff = task[:, None] != task[None, :]
    for name in ("full", "delta"):
        x = feats[name] - feats[name].mean(axis=0)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = x @ x.T
        out[f"cosine_{name}"] = {"same_task": float(c[same].mean()), "different_task": float(c[diff].mean())}
    return out


def markdown(res: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = ["# Which features let round 1 correct round 0's clustering mistakes?", "",
             f"Setup: {meta['setup']}", f"Command: `{meta['command']}`; machine: {meta['machine']}.", "",
             f"Round 0 (full vectors, sketch 64, no constraint): ARI {res['round0_ari']:.3f} over {res['slots']} slots.",
             f"Centred cosine, same task vs different task: full {res['cosine_full']['same_task']:.3f} vs "
             f"{res['cosine_full']['different_task']:.3f}; delta {res['cosine_delta']['same_task']:.3f} vs "
             f"{res['cosine_delta']['different_task']:.3f}.", "",
             "| features | space | per-site constraint | round-1 ARI, fresh K-means (per projection seed) | "
             "round-1 ARI, warm start from round 0 |", "|---|---|---|---|---:|"]
    for r in res["rows"]:
        warm = f"{r['warm']:.3f}" if "warm" in r else "-"
        lines.append(f"| {r['features']} | {r['space']} | {'yes' if r['constraint'] else 'no'} | "
                     f"{' '.join(f'{a:.3f}' for a in r['fresh'])} | {warm} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="clustering features after a round-0 mistake (see module doc)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cluster_sites import FULL

    t0 = time.perf_counter()
    res = score(round1(args.threads))
    meta = {"setup": f"10 sites of cluster_sites.py's setup ({FULL['local_steps']} local steps, batch "
                     f"{FULL['batch_size']}, {FULL['max_seq_length']} tokens, min_share {FULL['min_share']}); "
                     f"wall {time.perf_counter() - t0:.0f} s",
            "command": "python benchmarks/cluster_features.py", "machine": f"{os.cpu_count()} cores"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster_features.json").write_text(json.dumps({"meta": meta, **res}, indent=2) + "\n")
    (RESULTS / "cluster_features.md").write_text(markdown(res, meta))
    print(markdown(res, meta))


if __name__ == "__main__":
    main()
