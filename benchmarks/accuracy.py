"""Benchmark: FL-TAC against the three FedIT variants, oracle clusters, local-only and centralised LoRA.

On a benchmark plan (default ``plans/bench-4task.yaml``: 10 sites, Dirichlet
alpha 0.5 over the four shipped text tasks; ``--plan plans/bench-conflict.yaml``:
8 conflicting binary tasks) every variant runs on the same data with the same
local steps per task slot per round (see ``fltac_secure/simulation/fedit.py``):

    fltac-r1, fedit-r8, fedit-r1, central-r1, oracle-r1, fltac-r4,
    fedit-tagged-r1, fedit-tagged-r8, fedit-taskheads-r1, fedit-taskheads-r8, local-r1

Every row runs over ``--seeds`` seeds (default 3; seed s sets the partition
and training seeds to s, so seed 0 is the plan's own split) and is reported as
mean and sd of accuracy and macro-F1. Sized so one seed of bench-4task takes
about an hour on 2 idle cores; ``--quick`` is a smoke run of a few minutes per
row and writes under ``--work`` unless ``--results`` is given, so it never
overwrites the committed results. After each (variant, seed) the partial
results are written; ``--resume`` runs only what is missing, ``--only``
re-runs chosen variants and merges them in. Jobs run side by side (each with
its own ``--results`` and ``--work``) are joined with ``--merge``.

    .venv/bin/python benchmarks/accuracy.py                                   # bench-4task, 3 seeds
    .venv/bin/python benchmarks/accuracy.py --plan plans/bench-conflict.yaml  # writes accuracy-conflict.*
    .venv/bin/python benchmarks/accuracy.py --quick --seeds 1 --only fltac-r1,fedit-r1
    .venv/bin/python benchmarks/accuracy.py --resume
    .venv/bin/python benchmarks/accuracy.py --merge /tmp/lane1/accuracy.json /tmp/lane2/accuracy.json

Writes RESULTS/<name>.{json,md}, <name>.png (mean accuracy per round over the
seeds, all variants) and <name>_clusters_<variant>.png (first seed), where
<name> is ``accuracy`` for bench-4task and ``accuracy-conflict`` for
bench-conflict (``accuracy-<plan stem>`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_report import markdown, summarise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {  # name -> (method, rank), in run order (most important first)
    "fltac-r1": ("fltac", 1), "fedit-r8": ("fedit", 8), "fedit-r1": ("fedit", 1), "central-r1": ("central", 1),
    "oracle-r1": ("oracle", 1), "fltac-r4": ("fltac", 4),
    "fedit-tagged-r1": ("fedit-tagged", 1), "fedit-tagged-r8": ("fedit-tagged", 8),
    "fedit-taskheads-r1": ("fedit-taskheads", 1), "fedit-taskheads-r8": ("fedit-taskheads", 8),
    "local-r1": ("local", 1),
}
FULL = {"rounds": 5, "local_steps": 10, "max_seq_length": 40, "batch_size": 16, "max_examples": 2000, "test_cap": 300}
QUICK = {"rounds": 2, "local_steps": 3, "max_seq_length": 32, "batch_size": 8, "max_examples": 600, "test_cap": 60}


def setting_value(value: str) -> Any:
    """A ``--set`` value as the plan wants it: true/false as bools, integers as ints, else the string."""
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def chosen_variants(only: str, variants: dict[str, Any]) -> list[str]:
    """The variants ``--only`` names (comma-separated; all of ``variants`` when empty), unknown ones refused."""
    names = [n for n in (only.split(",") if only else variants) if n]
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(variants)}")
    return names


def results_name(plan_path: Path) -> str:
    """``accuracy`` for bench-4task, ``accuracy-conflict`` for bench-conflict, ``accuracy-<stem>`` otherwise."""
    stem = plan_path.stem
    return "accuracy" if stem == "bench-4task" else "accuracy-" + stem.removeprefix("bench-")


def make_plan(base: Path, size: dict[str, int], rank: int, features: str | None, seed: int,
              clustering: dict[str, Any] | None = None) -> Any:
    from fltac_secure.plan import load_plan
    from fltac_secure.plan.schema import Plan

    raw = load_plan(base).model_dump()
    raw["rounds"] = size["rounds"]
    raw["model"]["lora"]["rank"] = rank
    raw["training"].update(local_steps=size["local_steps"], max_seq_length=size["max_seq_length"],
                           batch_size=size["batch_size"], seed=seed)
    raw["partition"].update(max_examples_per_task=size["max_examples"], seed=seed)
    if features:
        raw["clustering"]["features"] = features
    raw["clustering"].update(clustering or {})
    return Plan.model_validate(raw)


def cap_tests(data: Any, cap: int, seed: int) -> Any:
    """Stratified cap on each global test set (evaluation time), same for every variant of a seed."""
    from fltac_secure.data import stratified_sample

    data.test = {t: stratified_sample(ds, cap, seed) for t, ds in data.test.items()}
    return data


def run_variant(name: str, plan: Any, data: Any, out: Path, ctx: Any, clusters_to: Path | None) -> dict[str, Any]:
    from fltac_secure.simulation import simulate

    method, rank = VARIANTS[name]
    t0 = time.perf_counter()
    res = simulate(plan, data, method, out / name, progress=False, site_eval=False, export=False,
                   eval_every=plan.rounds if method == "local" else 1, context=ctx)
    final = res.final
    rec = {
        "variant": name, "method": method, "rank": rank, "wall_s": round(time.perf_counter() - t0, 1),
        "tasks": {t: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]} for t, m in final["tasks"].items()},
        "mean_accuracy": final["mean_accuracy"], "mean_macro_f1": final["mean_macro_f1"],
        "up_params_per_round": final["up_params"], "down_params_per_round": final["down_params"],
        "train_steps_per_round": final.get("train_steps"),
        "rounds": [{k: r.get(k) for k in ("round", "mean_accuracy", "ari", "nmi", "cluster_tasks", "train_loss", "tasks")}
                   for r in res.rounds],
    }
    clusters = out / name / "clusters.png"
    if clusters_to is not None and clusters.exists():
        shutil.copy(clusters, clusters_to)
    return rec


def merge_results(paths: list[Path], setup: str, rows: str = "variants") -> tuple[dict[str, Any], str]:
    """The union of the (variant, seed) runs in ``paths``, all of ``setup``; a run that differs between files is refused.

    ``rows``: the results key holding the variants (``accuracy`` in ``dp.py``'s files).
    """
    merged: dict[str, Any] = {}
    machine = ""
    for path in paths:
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"cannot read results file {path}: {exc}") from exc
        if saved.get("meta", {}).get("setup") != setup:
            raise SystemExit(f"{path} holds results of another setup ({saved.get('meta', {}).get('setup')!r}); "
                             f"merge only files of this plan and size: {setup!r}")
        machine = machine or saved["meta"].get("machine", "")
        for vname, row in saved.get(rows, {}).items():
            into = merged.setdefault(vname, {"per_seed": {}})["per_seed"]
            for seed, rec in row["per_seed"].items():
                if seed in into and into[seed]["mean_accuracy"] != rec["mean_accuracy"]:
                    raise SystemExit(f"{vname} seed {seed} differs between the merged files "
                                     f"({into[seed]['mean_accuracy']} vs {rec['mean_accuracy']}); keep one")
                into.setdefault(seed, rec)
    return merged, machine


def write_report(results: dict[str, Any], meta: dict[str, Any], where: Path, name: str) -> None:
    from fltac_secure.simulation.report import plot_accuracy

    where.mkdir(parents=True, exist_ok=True)
    for row in results.values():
        row["summary"] = summarise(row["per_seed"])
    (where / f"{name}.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=2) + "\n")
    (where / f"{name}.md").write_text(markdown(results, meta))
    plot_accuracy({n: r["summary"]["curve"] for n, r in results.items()}, where / f"{name}.png",
                  title=f"{meta['plan']} (mean over seeds)")


def parse() -> argparse.Namespace:
    from fltac_secure.plan.schema import CLUSTERING_FEATURES

    ap = argparse.ArgumentParser(description="FL-TAC accuracy benchmark (see module doc)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, minutes per row")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per row (0..N-1: partition and training seed)")
    ap.add_argument("--only", default="", help="comma-separated variants to (re)run; merged into saved results")
    ap.add_argument("--resume", action="store_true", help="keep saved (variant, seed) runs of the same setup")
    ap.add_argument("--plan", type=Path, default=ROOT / "plans" / "bench-4task.yaml")
    ap.add_argument("--features", choices=CLUSTERING_FEATURES, default=None, help="override clustering.features")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fltac-bench-accuracy")
    ap.add_argument("--results", type=Path, default=None,
                    help="where to write (default benchmarks/results; with --quick: WORK/results)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a clustering setting, e.g. --set distinct_per_site=false (repeatable)")
    ap.add_argument("--name", default=None, help="results file stem (default: from the plan, e.g. accuracy)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="run nothing: merge the (variant, seed) runs of these results files (same setup, e.g. "
                         "written by jobs run side by side with --results elsewhere) into the saved results")
    args = ap.parse_args()
    args.clustering = {}
    for item in args.set:
        key, _, value = item.partition("=")
        args.clustering[key] = setting_value(value)
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.results is None:
        args.results = args.work / "results" if args.quick else RESULTS
    return args


def main() -> None:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    from fltac_secure.data import build_federated_data
    from fltac_secure.simulation import SimContext

    size = QUICK if args.quick else FULL
    names = chosen_variants(args.only, VARIANTS)
    name = args.name or results_name(args.plan)
    base = make_plan(args.plan, size, 1, args.features, 0, args.clustering)
    meta = {
        "plan": base.federation,
        "tasks": [t.name for t in base.tasks],
        "setup": f"{len(base.roster)} sites, alpha {base.partition.alpha}, {size['rounds']} rounds, "
                 f"{size['local_steps']} local steps per slot per round, batch {size['batch_size']}, "
                 f"max {size['max_seq_length']} tokens, <= {size['max_examples']} examples per task, "
                 f"global test sets capped at {size['test_cap']} per task, lr {base.training.learning_rate}, "
                 f"clustering features {base.clustering.features}, center {base.clustering.center}, "
                 f"normalize {base.clustering.normalize}, distinct_per_site {base.clustering.distinct_per_site}, "
                 f"sketch dim {base.clustering.sketch_dim}, "
                 f"secure aggregation {'on' if base.secure_aggregation.enabled else 'off'}",
        "command": f"python benchmarks/accuracy.py --plan {args.plan.relative_to(ROOT) if args.plan.is_absolute() and args.plan.is_relative_to(ROOT) else args.plan}"
                   f" --seeds {args.seeds}" + (" --quick" if args.quick else "")
                   + (f" --features {args.features}" if args.features else "")
                   + "".join(f" --set {x}" for x in args.set) + (f" --name {args.name}" if args.name else ""),
        "machine": f"{os.cpu_count()} cores, torch threads {args.threads}",
    }
    args.results.mkdir(parents=True, exist_ok=True)
    saved = args.results / f"{name}.json"
    results: dict[str, Any] = {}
    if args.merge:
        results, meta["machine"] = merge_results([saved, *args.merge] if saved.exists() else args.merge, meta["setup"])
        write_report({n: results[n] for n in VARIANTS if n in results}, meta, args.results, name)
        print(f"merged {len(args.merge)} file(s); wrote {args.results}/{name}.{{json,md,png}}")
        return
    if (args.only or args.resume) and saved.exists():
        old = json.loads(saved.read_text())
        if old["meta"]["setup"] == meta["setup"]:
            results = old["variants"]
        elif args.resume:
            raise SystemExit(f"saved results in {saved} are from another setup; run without --resume")
    for seed in range(args.seeds):
        todo = [n for n in names if not (args.resume and str(seed) in results.get(n, {}).get("per_seed", {}))]
        if not todo:
            continue
        data = cap_tests(build_federated_data(make_plan(args.plan, size, 1, args.features, seed, args.clustering)),
                         size["test_cap"], seed)
        contexts: dict[int, Any] = {}
        for vname in todo:
            plan = make_plan(args.plan, size, VARIANTS[vname][1], args.features, seed, args.clustering)
            ctx = contexts.setdefault(plan.model.lora.rank, SimContext(plan, data))
            print(f"[{time.strftime('%H:%M:%S')}] {vname} seed {seed} ...", flush=True)
            shot = args.results / f"{name}_clusters_{vname}.png" if seed == 0 else None
            rec = run_variant(vname, plan, data, args.work / f"seed{seed}", ctx, shot)
            row = results.setdefault(vname, {"per_seed": {}})
            row["per_seed"][str(seed)] = rec
            print(f"[{time.strftime('%H:%M:%S')}] {vname} seed {seed}: mean acc {rec['mean_accuracy']:.3f} "
                  f"macro-F1 {rec['mean_macro_f1']:.3f} ARI {[x.get('ari') for x in rec['rounds']]} "
                  f"steps/round {rec['train_steps_per_round']} ({rec['wall_s']} s)", flush=True)
            ordered = {n: results[n] for n in VARIANTS if n in results}
            write_report(ordered, meta, args.results, name)
    print(f"wrote {args.results}/{name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
