"""Benchmark: FL-TAC accuracy and clustering under DP with the DP recipe, and the cost of a DP step.

1. Accuracy: FL-TAC (rank 1) on ``plans/bench-4task.yaml`` at epsilon in
   ``--epsilons`` (default 1, 4, 8, inf; delta 1e-5, noise derived per slot
   from the target over all planned rounds, RDP accountant) with the plan's
   DP recipe (privacy section defaults: SGD, large Poisson batches, 10 steps
   per round, LoRA A frozen, no noise on unused head rows), over ``--seeds``
   seeds (partition and training seed), reported as mean and sd with the ARI
   of the clusters per round. One extra row, ``eps=8 old``, runs the settings
   before the recipe (AdamW at training.learning_rate, batch training.batch_size,
   training.local_steps steps per round, LoRA A trained) so the change is visible.
   Every other row clusters with ``clustering.by_labels`` (``CLUSTERING``; slots
   of different label counts never share a cluster), which on bench-4task finds
   the tasks by itself; ``--cluster by_labels=false`` clusters on sketches alone.
   Default size: a reduction (``SIZE``: 3 sites, 3 rounds) that keeps one row
   to minutes on a shared 2-core machine; ``--full`` runs the accuracy
   benchmark's size (10 sites, 5 rounds: ``accuracy.FULL``).
2. Step time: median over 30 training steps of one LoRA slot on MiniLM, the
   same fixed batch with and without DP (Opacus hooks, per-example clipping,
   secure-mode noise); each side as it trains (plain: AdamW, A trained; DP:
   the recipe).

    .venv/bin/python benchmarks/dp.py                    # reduced, 3 seeds
    .venv/bin/python benchmarks/dp.py --full --name dp-full
    .venv/bin/python benchmarks/dp.py --timing           # step time only (about a minute)
    .venv/bin/python benchmarks/dp.py --quick            # smoke run (tiny sizes, under --work)
    .venv/bin/python benchmarks/dp.py --epsilons 8 --seeds 1 --recipe learning_rate=1 --name dp-tune-lr1

``--recipe KEY=VALUE`` overrides a privacy setting (optimizer, learning_rate,
sample_rate, max_batch_size, local_steps, max_grad_norm) or ``train_a``.
After each row and seed the partial results are written; ``--resume`` runs
only what is missing. Writes RESULTS/<name>.{json,md,png} (default name dp).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EPSILONS = "1,4,8,inf"
CLUSTERING = {"by_labels": True}
"""Clustering for every row (--cluster overrides): slots of different label counts never share a cluster
(with head trimming, which declares the counts). On bench-4task the four tasks' label counts differ, so this
alone finds the tasks; --cluster by_labels=false measures the sketches alone."""
SIZE = {"sites": 3, "rounds": 3, "local_steps": 8, "batch_size": 64, "max_seq_length": 48, "max_examples": 3000,
        "min_share": 0.06, "test_cap": 300}
QUICK = {"sites": 2, "rounds": 2, "local_steps": 2, "batch_size": 8, "max_seq_length": 24, "max_examples": 200,
         "min_share": 0.2, "test_cap": 40}
OLD = {"optimizer": "adamw", "train_a": True}
"""The settings before the recipe; batch and steps come from the training section (see make_plan)."""
MIN_SLOTS = 2
"""Slots every task needs in a partition used here: a task's DP noise is averaged over its cluster's slots, and
with one slot it is not (reduced bench, partition seed 1, true clusters, epsilon 8: news and langid had one slot
each and ended at 0.14 and 0.11, chance level; benchmarks/results/dp_clusters.md)."""
RECIPE_KEYS = ("optimizer", "learning_rate", "sample_rate", "max_batch_size", "local_steps", "max_grad_norm",
               "train_a")


def full_size() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import FULL

    return {"sites": 10, "min_share": 0.01, **FULL}


def make_plan(base: Path, size: dict[str, Any], epsilon: float, seed: int = 0,
              recipe: dict[str, Any] | None = None, old: bool = False,
              clustering: dict[str, Any] | None = None) -> Any:
    from fltac_secure.plan import load_plan
    from fltac_secure.plan.schema import Plan

    raw = load_plan(base).model_dump()
    raw.update(rounds=size["rounds"], roster=raw["roster"][: size["sites"]])
    raw["quorum"]["min_collaborators"] = min(raw["quorum"]["min_collaborators"], size["sites"])
    raw["training"].update(local_steps=size["local_steps"], batch_size=size["batch_size"],
                           max_seq_length=size["max_seq_length"], seed=seed)
    raw["partition"].update(max_examples_per_task=size["max_examples"], min_share=size["min_share"], seed=seed)
    dp = math.isfinite(epsilon)
    raw["privacy"].update(dp=dp, target_epsilon=epsilon if dp else None, noise_multiplier=None, delta=1e-5,
                          accountant="rdp")
    over = dict(recipe or {})
    if old:  # as before the recipe: q = batch / n, the plain steps, AdamW at the plain learning rate, A trained
        over = {**OLD, "learning_rate": raw["training"]["learning_rate"], "sample_rate": 1.0,
                "max_batch_size": size["batch_size"], "local_steps": size["local_steps"]}
    if "train_a" in over:
        raw["model"]["lora"]["train_a"] = over.pop("train_a")
    raw["privacy"].update(over)
    # the old row clusters as before too (sketches alone), so it shows the whole change
    raw["clustering"].update({**CLUSTERING, **(clustering or {}), **({"by_labels": False} if old else {})})
    if raw["clustering"]["by_labels"]:  # the label counts come from JOIN, which trimming turns on
        raw.setdefault("compression", {})["trim_head"] = True
    return Plan.model_validate(raw)


def run_epsilon(epsilon: float, plan: Any, data: Any, work: Path, method: str = "fltac") -> dict[str, Any]:
    from fltac_secure.simulation import SimContext, simulate

    ctx = SimContext(plan, data)
    t0 = time.perf_counter()
    res = simulate(plan, data, method, work, progress=False, site_eval=False, export=False, plots=False,
                   context=ctx)
    final = res.final
    eps = res.epsilons  # this run's accounting only (empty without DP)
    spent = [e for per_site in eps.values() for e in per_site.values()]
    return {
        "epsilon_target": None if math.isinf(epsilon) else epsilon, "wall_s": round(time.perf_counter() - t0, 1),
        "tasks": {t: m["accuracy"] for t, m in final["tasks"].items()}, "mean_accuracy": final["mean_accuracy"],
        "mean_macro_f1": final.get("mean_macro_f1"),
        "rounds": [{"round": r["round"], "mean_accuracy": r.get("mean_accuracy"), "ari": r.get("ari"),
                    "separation": r.get("separation"), "kept_clusters": r.get("kept_clusters"),
                    "train_loss": r.get("train_loss")} for r in res.rounds],
        "epsilon_spent": eps, "max_epsilon_spent": max(spent) if spent else None,
    }


def summarise(per_seed: dict[str, Any]) -> dict[str, Any]:
    """Mean and sd over seeds of accuracy, per task, ARI per round and the largest epsilon spent."""
    runs = list(per_seed.values())

    def ms(xs: list[float]) -> list[float]:
        return [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]

    tasks = list(runs[0]["tasks"])
    def per_round(key: str) -> list[list[float] | None]:
        """Mean and sd over seeds of a per-round value (None where a seed did not record it)."""
        cols = [[r["rounds"][i].get(key) for r in runs] for i in range(len(runs[0]["rounds"]))]
        return [None if any(a is None for a in col) else ms(col) for col in cols]

    spent = [r["max_epsilon_spent"] for r in runs if r["max_epsilon_spent"] is not None]
    return {"seeds": len(runs), "seed_ids": list(per_seed), "mean_accuracy": ms([r["mean_accuracy"] for r in runs]),
            "tasks": {t: ms([r["tasks"][t] for r in runs]) for t in tasks},
            "ari": per_round("ari"), "separation": per_round("separation"),
            "max_epsilon_spent": max(spent) if spent else None,
            "wall_s": statistics.fmean(r["wall_s"] for r in runs)}


def step_times(size: dict[str, Any], steps: int = 30, warmup: int = 3) -> dict[str, Any]:
    """Median seconds per step on the same fixed batch: plain AdamW on an unwrapped model vs DP-SGD.

    Steps alternate (plain, DP, plain, DP...) so the load of a shared machine
    hits both alike; the plain model is a copy never wrapped by Opacus.
    """
    import torch
    import torch.nn.functional as F

    from fltac_secure.data.sources import load_demo_task
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.learning.train import encode
    from fltac_secure.privacy.dp import dp_step, make_dp_optimizer, make_inner_optimizer, wrap_model

    plan = make_plan(ROOT / "plans" / "bench-4task.yaml", size, 8.0)
    model = SlotModel(plan, [t.name for t in plan.tasks])
    task = plan.tasks[0].name
    model.set_slot(task)
    plain_plan = make_plan(ROOT / "plans" / "bench-4task.yaml", size, math.inf)
    plain_model = SlotModel(plain_plan, [t.name for t in plan.tasks]).train()  # trains A, as plain training does
    plain_model.set_slot(task)
    data = encode(model, load_demo_task(plan.tasks[0], max_examples=200), size["max_seq_length"])
    idx = torch.arange(size["batch_size"])
    feats, labels = data.batch(idx), data.labels[idx]
    gsm = wrap_model(model)
    params = list(model.slot_parameters(task).values())
    plain_params = list(plain_model.slot_parameters(task).values())
    opt = torch.optim.AdamW(plain_params, lr=plan.training.learning_rate)
    dp_opt = make_dp_optimizer(make_inner_optimizer(plan, params, plan.dp_learning_rate(len(idx))), noise_multiplier=1.0,
                               max_grad_norm=plan.privacy.max_grad_norm, expected_batch_size=len(idx), generator=None)

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(**feats), labels).backward()
        opt.step()

    def private() -> None:
        dp_step(gsm, dp_opt, feats, labels, model.label_range(task), params)

    times: dict[str, list[float]] = {"plain": [], "dp": []}
    gsm.enable_hooks()
    try:
        for i in range(warmup + steps):
            for name, fn in (("plain", plain), ("dp", private)):
                t0 = time.perf_counter()
                fn()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    finally:
        gsm.disable_hooks()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"plain_s": med["plain"], "dp_s": med["dp"], "ratio": med["dp"] / med["plain"], "steps": steps,
            "batch": [len(idx), int(feats["input_ids"].shape[1])], "model": plan.model.base,
            "ratio_per_pair_median": statistics.median(d / p for d, p in zip(times["dp"], times["plain"], strict=True))}


def fmt(ms: list[float] | None, digits: int = 3) -> str:
    return "-" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def jobs_text(jobs: dict[str, dict[str, list[str]]]) -> str:
    """The jobs a merged file was joined from: each command with the rows and seeds it ran."""
    each = []
    for cmd, rows in jobs.items():
        held = ", ".join(f"{name} seed {','.join(seeds)}" for name, seeds in rows.items()) or "the step time"
        each.append(f"`{cmd}` ({held})")
    return "Jobs, run side by side and joined with `python benchmarks/dp.py --merge FILE...`: " + "; ".join(each)


def markdown(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = ["# DP benchmark: FL-TAC under DP with the DP recipe, and the cost of a DP step", "",
             f"Setup: {meta['setup']}", f"Recipe: {meta['recipe']}",
             (jobs_text(meta["jobs"]) if "jobs" in meta else f"Command: `{meta['command']}`")
             + f"; machine: {meta['machine']}.", ""]
    acc = res.get("accuracy") or {}
    if acc:
        first = next(iter(acc.values()))["summary"]
        tasks = list(first["tasks"])
        rounds = len(first["ari"])
        lines += ["Mean ± sd over seeds; ARI of the clusters against the true tasks per round, and the separation "
                  "of the round's partition (silhouette of the sketches; about 0 for noise, '-' where not recorded).",
                  "",
                  "| row | seeds | " + " | ".join(tasks) + " | mean acc | ARI per round | separation per round "
                  "| max epsilon spent | wall s |",
                  "|---|---:|" + "---:|" * len(tasks) + "---:|---|---|---:|---:|"]
        for name, row in acc.items():
            m = row["summary"]
            ari = " ".join("-" if a is None else f"{a[0]:.2f}" for a in m["ari"][:rounds])
            sep = " ".join("-" if a is None else f"{a[0]:.2f}" for a in m.get("separation", [None] * rounds)[:rounds])
            spent = "-" if m["max_epsilon_spent"] is None else f"{m['max_epsilon_spent']:.3f}"
            ids = f" ({', '.join(m['seed_ids'])})" if m.get("seed_ids") else ""
            lines.append(f"| {name} | {m['seeds']}{ids} | " + " | ".join(fmt(m["tasks"][t]) for t in tasks)
                         + f" | {fmt(m['mean_accuracy'])} | {ari} | {sep} | {spent} | {m['wall_s']:.0f} |")
        lines.append("")
    t = res.get("timing")
    if t:
        lines += [f"Step time (median of {t['steps']}, batch {t['batch'][0]} x {t['batch'][1]} tokens, {t['model']}): "
                  f"plain {1000 * t['plain_s']:.0f} ms, DP {1000 * t['dp_s']:.0f} ms, ratio {t['ratio']:.2f}x "
                  f"(median of per-pair ratios {t['ratio_per_pair_median']:.2f}x; steps alternate plain/DP; plain: "
                  "AdamW with A trained, DP: the recipe).", ""]
    lines += ["## Targets", *targets(res)]
    return "\n".join(lines) + "\n"


def targets(res: dict[str, Any]) -> list[str]:
    out = []
    acc = {n: r["summary"] for n, r in (res.get("accuracy") or {}).items()}
    rows = res.get("accuracy") or {}
    if "eps=inf" in rows:
        base = rows["eps=inf"]["per_seed"]
        for name, goal in (("eps=8", 3), ("eps=4", 6), ("eps=1", None), ("eps=8 old", None)):
            if name not in rows:
                continue
            runs = rows[name]["per_seed"]
            both = [seed for seed in runs if seed in base]  # paired by seed: the partition decides much
            if not both:
                out.append(f"- {name} vs no DP: no seed run in both rows")
                continue
            diffs = [100 * (runs[seed]["mean_accuracy"] - base[seed]["mean_accuracy"]) for seed in both]
            d = statistics.mean(diffs)
            sd = statistics.stdev(diffs) if len(diffs) > 1 else None
            tie = sd is not None and abs(d) < 2 * sd
            verdict = "" if goal is None else (": met" if d >= -goal else ": missed")
            spread = f", sd {sd:.1f}" if sd is not None else ""
            out.append(f"- {name} vs no DP: {d:+.1f} points (paired over seed(s) {','.join(both)}{spread})"
                       + (f" (target >= -{goal})" if goal else "") + verdict
                       + (" (a tie: within 2 sd)" if tie else ""))
    for name, m in acc.items():
        if m["ari"] and len(m["ari"]) > 2 and name != "eps=inf":
            later = [a[0] for a in m["ari"][2:] if a is not None]
            if later:
                out.append(f"- {name}: ARI from round 2 (mean over seeds) {' '.join(f'{a:.2f}' for a in later)} "
                           f"(target >= 0.95): {'met' if min(later) >= 0.95 else 'missed'}")
    for name, row in (res.get("accuracy") or {}).items():
        for seed, r in row["per_seed"].items():
            if r["epsilon_target"] is not None and r["max_epsilon_spent"] is not None \
                    and r["max_epsilon_spent"] > r["epsilon_target"]:
                out.append(f"- {name} seed {seed}: a slot spent {r['max_epsilon_spent']:.3f} > its target: NO")
    if acc:
        out.append("- every slot's epsilon spent <= its target in every run: "
                   + ("no" if any("NO" in x for x in out) else "yes"))
    t = res.get("timing")
    if t:
        out.append(f"- DP step / plain step: {t['ratio']:.2f}x (target <= 1.3x): {'met' if t['ratio'] <= 1.3 else 'missed'}")
    return out


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="DP benchmark (see module doc)")
    ap.add_argument("--quick", action="store_true", help="smoke run with tiny sizes (writes under --work)")
    ap.add_argument("--full", action="store_true", help="the accuracy benchmark's size: 10 sites, 5 rounds")
    ap.add_argument("--timing", action="store_true", help="only the step-time part")
    ap.add_argument("--no-timing", action="store_true", help="skip the step-time part")
    ap.add_argument("--epsilons", default=EPSILONS, help=f"comma-separated budgets, inf = no DP (default {EPSILONS})")
    ap.add_argument("--no-old", action="store_true", help="skip the 'eps=8 old' row (settings before the recipe)")
    ap.add_argument("--seeds", type=int, default=3,
                    help=f"seeds per row: the first N partition seeds (0, 1, ...) that give every task at least "
                         f"{MIN_SLOTS} slots; each is also the run's training seed")
    ap.add_argument("--only-seeds", default=None, metavar="LIST",
                    help="comma-separated seeds to run, of the SEEDS chosen (see --seeds), e.g. for jobs run side by side")
    ap.add_argument("--resume", action="store_true", help="keep saved (row, seed) runs of the same setup")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="run nothing: merge the (row, seed) runs of these results files (same setup and recipe) "
                         "into RESULTS/NAME.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the saved json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a size setting (repeatable), keys: {', '.join(SIZE)}")
    ap.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a DP setting (repeatable), keys: {', '.join(RECIPE_KEYS)}")
    ap.add_argument("--cluster", action="append", default=[], metavar="KEY=VALUE",
                    help="override a clustering setting (repeatable), e.g. --cluster features=delta")
    ap.add_argument("--method", choices=("fltac", "oracle"), default="fltac",
                    help="oracle: the true tasks as clusters, to separate the clustering's cost from the noise's")
    ap.add_argument("--name", default=None, help="results file stem (default dp; dp_quick with --quick)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fltac-bench-dp")
    ap.add_argument("--results", type=Path, default=None, help="where to write (default benchmarks/results)")
    args = ap.parse_args()
    args.size = dict(QUICK if args.quick else full_size() if args.full else SIZE)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in args.size or not value:
            ap.error(f"--set {item!r}: use KEY=VALUE with KEY one of {', '.join(args.size)}")
        args.size[key] = type(args.size[key])(value)
    args.recipe_over = {}
    for item in args.recipe:
        key, _, value = item.partition("=")
        if key not in RECIPE_KEYS or not value:
            ap.error(f"--recipe {item!r}: use KEY=VALUE with KEY one of {', '.join(RECIPE_KEYS)}")
        low = value.lower()
        args.recipe_over[key] = {"true": True, "false": False}.get(low, value if key == "optimizer" else
                                                                    (int(value) if value.isdigit() else float(value)))
    args.cluster_over = {}
    for item in args.cluster:
        key, _, value = item.partition("=")
        if not key or not value:
            ap.error(f"--cluster {item!r}: use KEY=VALUE")
        args.cluster_over[key] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
    try:
        args.eps = [float(e) for e in args.epsilons.split(",") if e]
    except ValueError:
        ap.error(f"--epsilons {args.epsilons!r}: give numbers or inf, comma-separated")
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    try:
        args.seed_list = None if args.only_seeds is None else sorted({int(x) for x in args.only_seeds.split(",") if x})
    except ValueError:
        ap.error(f"--only-seeds {args.only_seeds!r}: give seeds as integers, comma-separated")
    args.name = args.name or ("dp_quick" if args.quick else "dp")
    args.results = args.results or (args.work / "results" if args.quick else RESULTS)
    return args


def main() -> None:
    args = parse()
    if args.plot_only:
        plot(json.loads((args.results / f"{args.name}.json").read_text()), args.results / f"{args.name}.png")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    size, bench = args.size, ROOT / "plans" / "bench-4task.yaml"
    from fltac_secure.privacy.settings import learning_rate_text

    probe = make_plan(bench, size, 8.0, recipe=args.recipe_over, clustering=args.cluster_over)
    p = probe.privacy
    meta = {
        "setup": f"{'bench-4task' if args.full else 'reduced bench-4task'}: {size}; FL-TAC rank 1; delta 1e-5, RDP, "
                 "noise from the target over all planned rounds per slot; accuracy = global test sets (capped) after "
                 f"the last round; partition seeds: the first ones giving every task >= {MIN_SLOTS} slots"
                 + ("" if args.method == "fltac" else f"; method {args.method} (true tasks as clusters)"),
        "recipe": f"{p.optimizer} {learning_rate_text(probe)}, Poisson rate min({p.sample_rate:g}, "
                  f"{p.max_batch_size} / n), {p.local_steps} steps per round, clip {p.max_grad_norm:g}, LoRA A "
                  f"{'trained' if probe.trains_lora_a else 'frozen (FFA-LoRA)'}, unused head rows without noise; "
                  f"'eps=8 old': AdamW lr {probe.training.learning_rate:g}, batch {size['batch_size']}, "
                  f"{size['local_steps']} steps per round, A trained, sketches alone; clustering features {probe.clustering.features}, "
                  f"sketch dim {probe.clustering.sketch_dim}, accumulate {probe.clustering.accumulate}, by label count "
                  f"{probe.clustering.by_labels}",
        "command": "python benchmarks/dp.py" + (" --quick" if args.quick else "") + (" --full" if args.full else "")
                   + (" --timing" if args.timing else "")
                   + (f" --epsilons {args.epsilons}" if args.epsilons != EPSILONS else "")
                   + (" --no-old" if args.no_old else "") + f" --seeds {args.seeds}"
                   + (f" --only-seeds {args.only_seeds}" if args.only_seeds else "")
                   + "".join(f" --set {x}" for x in args.set) + "".join(f" --recipe {x}" for x in args.recipe)
                   + "".join(f" --cluster {x}" for x in args.cluster)
                   + (f" --method {args.method}" if args.method != "fltac" else "")
                   + (f" --name {args.name}" if args.name not in ("dp", "dp_quick") else ""),
        "machine": f"{os.cpu_count()} CPUs, torch threads {args.threads}, shared with other jobs"}
    saved = args.results / f"{args.name}.json"
    res: dict[str, Any] = {"meta": meta, "accuracy": {}}
    if args.merge:
        merge_into(res, [saved, *args.merge] if saved.exists() else args.merge)
        write(res, args.results, args.name)
        print(f"merged {len(args.merge)} file(s); wrote {args.results}/{args.name}.{{json,md,png}}")
        return
    if args.resume and saved.exists():
        old = json.loads(saved.read_text())
        if {k: old["meta"].get(k) for k in ("setup", "recipe")} != {k: meta[k] for k in ("setup", "recipe")}:
            raise SystemExit(f"saved results in {saved} are from another setup or recipe; run without --resume")
        res["accuracy"] = old.get("accuracy") or {}
        if old.get("timing"):
            res["timing"] = old["timing"]
    if not args.no_timing and (args.timing or "timing" not in res):
        res["timing"] = step_times(size)
        print(f"timing: {res['timing']}", flush=True)
    if not args.timing:
        from fltac_secure.data import stratified_sample

        usable, skipped = usable_seeds(bench, size, args.seeds)
        seeds = list(usable)
        if skipped:
            print(f"partition seeds skipped (a task with fewer than {MIN_SLOTS} slots): {sorted(skipped)}", flush=True)
        if args.seed_list is not None:
            wrong = sorted(set(args.seed_list) - set(seeds))
            if wrong:
                raise SystemExit(f"--only-seeds {wrong}: not among this run's seeds {seeds} (see --seeds)")
            seeds = args.seed_list
        rows = [(f"eps={e:g}", e, False) for e in args.eps]
        if not args.no_old:
            rows.append(("eps=8 old", 8.0, True))
        for seed in seeds:
            data = usable[seed]
            data.test = {t: stratified_sample(ds, size["test_cap"], seed) for t, ds in data.test.items()}
            for name, eps, old in rows:
                row = res["accuracy"].setdefault(name, {"per_seed": {}})
                if str(seed) in row["per_seed"]:
                    continue
                plan = make_plan(bench, size, eps, seed, args.recipe_over, old=old, clustering=args.cluster_over)
                rec = run_epsilon(eps, plan, data, args.work / f"seed{seed}" / name.replace(" ", "-"), args.method)
                row["per_seed"][str(seed)] = rec
                row["summary"] = summarise(row["per_seed"])
                print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: mean acc {rec['mean_accuracy']:.3f} ARI "
                      f"{[r['ari'] for r in rec['rounds']]} max eps {rec['max_epsilon_spent']} ({rec['wall_s']} s)",
                      flush=True)
                write(res, args.results, args.name)
    write(res, args.results, args.name)
    print(markdown(res))


def usable_seeds(bench: Path, size: dict[str, Any], n: int, limit: int = 100) -> tuple[dict[int, Any], dict[int, dict]]:
    """The first ``n`` partition seeds whose partition gives every task at least MIN_SLOTS slots, each with its
    federated data (built to count the slots, then used for the runs), and the seeds skipped on the way
    (seed -> {task: slots} of the thin tasks)."""
    from collections import Counter

    from fltac_secure.data import build_federated_data
    from fltac_secure.simulation import SimContext

    chosen: dict[int, Any] = {}
    skipped: dict[int, dict] = {}
    for seed in range(limit):
        if len(chosen) == n:
            break
        plan = make_plan(bench, size, math.inf, seed)
        data = build_federated_data(plan)
        counts = Counter(SimContext(plan, data).key_task.values())
        thin = {t.name: counts.get(t.name, 0) for t in plan.tasks if counts.get(t.name, 0) < MIN_SLOTS}
        if thin:
            skipped[seed] = thin
        else:
            chosen[seed] = data
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} of the first {limit} partition seeds give every task {MIN_SLOTS} slots")
    return chosen, skipped


def merge_into(res: dict[str, Any], paths: list[Path]) -> None:
    """Fill ``res`` with the union of the (row, seed) runs of ``paths`` (same setup and recipe as ``res``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy import merge_results

    meta = res["meta"]
    jobs: dict[str, dict[str, set[str]]] = {}  # command -> row -> seeds it ran (what each job contributed)
    for path in paths:
        try:
            saved = json.loads(path.read_text())
            other = saved["meta"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise SystemExit(f"cannot read results file {path}: {exc}") from exc
        if other.get("recipe") != meta["recipe"]:
            raise SystemExit(f"{path} holds results of another recipe ({other.get('recipe')!r}); merge only files "
                             f"of this recipe: {meta['recipe']!r} (give the same --recipe/--cluster options)")
        if "timing" not in res and saved.get("timing"):
            res["timing"] = saved["timing"]
        held = other.get("jobs") or {other.get("command", "?"): {
            name: list(row.get("per_seed", {})) for name, row in saved.get("accuracy", {}).items()}}
        for cmd, rows in held.items():
            jobs.setdefault(cmd, {})
            for name, seeds in rows.items():
                jobs[cmd].setdefault(name, set()).update(seeds)
    merged, machine = merge_results(paths, meta["setup"], rows="accuracy")
    meta["jobs"] = {cmd: {name: sorted(seeds, key=int) for name, seeds in rows.items()} for cmd, rows in jobs.items()}
    meta["machine"] = machine
    order = sorted(merged, key=lambda n: (n.endswith("old"), float(n.split("=")[1].split()[0])))
    res["accuracy"] = {}
    for name in order:
        per_seed = dict(sorted(merged[name]["per_seed"].items()))
        res["accuracy"][name] = {"per_seed": per_seed, "summary": summarise(per_seed)}


def write(res: dict[str, Any], where: Path, name: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (where / f"{name}.md").write_text(markdown(res))
    if res.get("accuracy"):
        plot(res, where / f"{name}.png")


def plot(res: dict[str, Any], path: Path) -> None:
    """Mean accuracy (± sd over seeds) per task and overall against the budget; no DP at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {n: r["summary"] for n, r in res["accuracy"].items() if r.get("summary")}
    names = sorted((n for n in acc if not n.endswith("old")), key=lambda n: float(n.split("=")[1]))
    xs = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for task in next(iter(acc.values()))["tasks"]:
        ax.plot(xs, [acc[n]["tasks"][task][0] for n in names], marker="o", alpha=0.5, label=task)
    ax.errorbar(xs, [acc[n]["mean_accuracy"][0] for n in names], yerr=[acc[n]["mean_accuracy"][1] for n in names],
                marker="s", color="black", linewidth=2, capsize=3, label="mean (recipe)")
    if "eps=8 old" in acc and "eps=8" in names:
        m = acc["eps=8 old"]["mean_accuracy"]
        ax.errorbar([names.index("eps=8")], [m[0]], yerr=[m[1]], marker="x", color="red", markersize=9, capsize=3,
                    linestyle="none", label="mean, eps 8 before the recipe")
    ax.set_xticks(xs, [n.replace("eps=inf", "no DP") for n in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy (FL-TAC, rank 1)")
    ax.set_title("Accuracy against the per-slot privacy budget (delta 1e-5)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
