"""Benchmark: accuracy against bytes per round, FL-TAC at 32 / 8 / 4 bits with and without FFA-LoRA.

On a benchmark plan (default ``plans/bench-4task.yaml``) every variant runs on
the same data (``benchmarks/accuracy.py``'s sizes and seeds) and reports mean
accuracy over ``--seeds`` seeds and the tensor bytes up and down per round
(``RoundOutcome.up_bytes`` / ``down_bytes``: vectors or quantised updates,
sketches, counts; under secure aggregation the masked vectors, without the
protocol's keys and shares, which ``benchmarks/secagg.py`` measures):

    fltac-r1-b32  fltac-r1-b8  fltac-r1-b4          LoRA A and B trained and sent
    fltac-r1-trim-b32  ...-trim-b8  ...-trim-b4     A and B trained, only the head rows of each
                                                    slot's task (compression.trim_head)
    fltac-r1-ffa-b32  fltac-r1-ffa-b8  fltac-r1-ffa-b4   FFA-LoRA: B and the head only
    fltac-r1-ffa-trim-b32  ...-trim-b8  ...-trim-b4     FFA-LoRA, and only the head rows of each slot's
                                                    task (compression.trim_head; under secure
                                                    aggregation each cluster is K_c rows wide)
    fltac-r1-trim-b8-d8  fltac-r1-trim-b4-d4        ... and the ROUND_START vectors quantised too
    fltac-r1-ffa-trim-b8-d8  ...-ffa-trim-b4-d4     (compression.download_bits: 8 or 4 bits down)
    fltac-r1-ffa-lr2-trim-b8-d8                     ... FFA-LoRA at twice the plan's learning rate
    fedit-r8-b32                                    FedIT r8 in float32, the comparison the issue names

``--secure on|off`` overrides the plan's secure aggregation (bench-4task has it
on: the quantised updates are then summed in a ring exactly ``bits`` wide on
the common grid ``compression.secure_clip / (2^(bits-1) - 1 - sites)``;
``--secure-clip`` sets the clip). On a 10-site roster that grid leaves no
step at 4 bits, so the 4-bit variants run only with ``--secure off`` (they
are skipped, or refused when named in ``--only``). Error feedback stays off
(it does not compose with secure aggregation). Head trimming composes with
secure aggregation: a cluster's masked upload is its wire part at K_c, the
widest member slot's label count. ``--quick`` is a smoke run written under
``--work`` unless ``--results`` is given.

Results go to ``communication.{json,md,png}`` with secure aggregation on and
``communication-plain.*`` with it off (``--name`` overrides); the secure
report compares each masked upload with the plain upload of the same variant
when the plain file sits beside it. Jobs run side by side (each with its own
``--results`` and ``--work``) are joined with ``--merge``.

    .venv/bin/python benchmarks/communication.py                      # bench-4task, 3 seeds
    .venv/bin/python benchmarks/communication.py --secure off         # the same without secure aggregation
    .venv/bin/python benchmarks/communication.py --quick --seeds 1 --only fltac-r1-b8
    .venv/bin/python benchmarks/communication.py --resume          # only the (variant, seed) runs not saved yet
    .venv/bin/python benchmarks/communication.py --secure off --merge /tmp/a/communication-plain.json ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import (  # noqa: E402
    FULL,
    QUICK,
    RESULTS,
    ROOT,
    cap_tests,
    chosen_variants,
    make_plan,
    merge_results,
    results_name,
)
from accuracy_report import mean_sd  # noqa: E402

VARIANTS = {  # name -> (method, rank, bits up, train LoRA A, trim the head to the task's rows, bits down)
    "fltac-r1-b32": ("fltac", 1, 32, True, False, 32), "fltac-r1-b8": ("fltac", 1, 8, True, False, 32),
    "fltac-r1-b4": ("fltac", 1, 4, True, False, 32),
    "fltac-r1-trim-b32": ("fltac", 1, 32, True, True, 32), "fltac-r1-trim-b8": ("fltac", 1, 8, True, True, 32),
    "fltac-r1-trim-b4": ("fltac", 1, 4, True, True, 32),
    "fltac-r1-trim-b8-d8": ("fltac", 1, 8, True, True, 8), "fltac-r1-trim-b4-d4": ("fltac", 1, 4, True, True, 4),
    "fltac-r1-ffa-b32": ("fltac", 1, 32, False, False, 32), "fltac-r1-ffa-b8": ("fltac", 1, 8, False, False, 32),
    "fltac-r1-ffa-b4": ("fltac", 1, 4, False, False, 32),
    "fltac-r1-ffa-trim-b32": ("fltac", 1, 32, False, True, 32),
    "fltac-r1-ffa-trim-b8": ("fltac", 1, 8, False, True, 32), "fltac-r1-ffa-trim-b4": ("fltac", 1, 4, False, True, 32),
    "fltac-r1-ffa-trim-b8-d8": ("fltac", 1, 8, False, True, 8),
    "fltac-r1-ffa-trim-b4-d4": ("fltac", 1, 4, False, True, 4),
    "fltac-r1-ffa-lr2-trim-b8-d8": ("fltac", 1, 8, False, True, 8, 2.0),
    "fedit-r8-b32": ("fedit", 8, 32, True, False, 32),
}
"""name -> (method, rank, bits up, train LoRA A, trim the head, bits down[, learning-rate multiplier]); the
``-lr2`` variant gives FFA-LoRA twice the plan's learning rate: with A frozen only B moves, so an update of
the same size needs a larger step (with AdamW, twice the step on B moves B A as doubling alpha would; Sun et
al. 2024 report FFA-LoRA insensitive to alpha over a wide range). One setting, not a tuned one."""


def variant_plan(args: argparse.Namespace, size: dict[str, int], name: str, seed: int) -> Any:
    from fltac_secure.plan.schema import Plan

    _, rank, bits, train_a, trim, down, *lr = VARIANTS[name]
    raw = make_plan(args.plan, size, rank, None, seed).model_dump()
    raw["model"]["lora"]["train_a"] = train_a
    raw["training"]["learning_rate"] *= lr[0] if lr else 1.0
    if args.secure != "plan":
        raw["secure_aggregation"]["enabled"] = args.secure == "on"
    raw["compression"] = {"bits": bits, "block_size": args.block_size, "secure_clip": args.secure_clip,
                          "trim_head": trim, "download_bits": down}
    return Plan.model_validate(raw)


def run_one(name: str, plan: Any, data: Any, out: Path) -> dict[str, Any]:
    from fltac_secure.simulation import SimContext, simulate

    t0 = time.perf_counter()
    res = simulate(plan, data, VARIANTS[name][0], out / name, progress=False, site_eval=False, export=False,
                   plots=False, context=SimContext(plan, data))
    final = res.final
    return {"mean_accuracy": final["mean_accuracy"], "up_bytes_per_round": final["up_bytes"],
            "down_bytes_per_round": final["down_bytes"], "up_params_per_round": final["up_params"],
            "bits": final["bits"], "download_bits": plan.compression.download_bits,
            "wall_s": round(time.perf_counter() - t0, 1), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "curve": [r.get("mean_accuracy") for r in res.rounds]}


def summary(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy (and sd) over seeds; bytes per round averaged over seeds (a seed's partition decides how many
    task slots the sites hold, so the bytes differ between seeds)."""
    recs = [per_seed[s] for s in sorted(per_seed, key=int)]
    first = recs[0]
    return {"mean_accuracy": mean_sd([r["mean_accuracy"] for r in recs]), "seeds": len(recs),
            "download_bits": first.get("download_bits", 32), "bits": first["bits"],
            **{k: round(float(np.mean([r[k] for r in recs])))
               for k in ("up_bytes_per_round", "down_bytes_per_round", "up_params_per_round")}}


def common_seeds(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(set(a["per_seed"]) & set(b["per_seed"]), key=int)


def mean_bytes(row: dict[str, Any], seeds: list[str], keys: tuple[str, ...] = ("up_bytes_per_round",)) -> float:
    """``keys`` summed, averaged over ``seeds`` (all the row's seeds when empty)."""
    seeds = seeds or list(row["per_seed"])
    return sum(row["per_seed"][s][k] for s in seeds for k in keys) / len(seeds)


def fewer(ref: dict[str, Any], row: dict[str, Any], keys: tuple[str, ...] = ("up_bytes_per_round",)) -> float:
    """How many times fewer bytes ``row`` moves than ``ref`` (``keys`` summed) over the seeds both ran."""
    seeds = common_seeds(ref, row)
    return mean_bytes(ref, seeds, keys) / mean_bytes(row, seeds, keys)


def markdown(results: dict[str, Any], meta: dict[str, Any], plain: dict[str, Any] | None = None) -> str:
    rows = [f"# Communication: accuracy against bytes per round ({meta['plan']})", "", meta["setup"], "",
            f"Command: `{meta['command']}`", "",
            "Bytes are the tensors each round moves for all sites together: vectors or quantised updates (with "
            "their block scales), sketches and counts up; round-start vectors down. Under secure aggregation "
            "the masked vectors, without the protocol's keys and shares (`benchmarks/secagg.py` measures those). "
            "A seed's partition decides how many task slots the sites hold, so bytes are the mean over the seeds a "
            "row ran, and every ratio is taken over the seeds both rows ran. Quantisation draws come from the "
            "operating system, as in a deployment, so a rerun's accuracies differ from these by rounding noise "
            "(the paired sd over seeds shows its order); bytes are exact. Machine load changes only wall times "
            "(in the json): " + load_line(results),
            "",
            "| variant | bits up | bits down | mean accuracy | up bytes / round | down bytes / round "
            "| up vs fltac-r1-b32 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    ref = results.get("fltac-r1-b32")
    for name, row in results.items():
        s = row["summary"]
        acc = s["mean_accuracy"]
        x = fewer(ref, row) if ref else None
        ratio = "-" if x is None else f"{x:.2f}x fewer" if x >= 1 else f"{1 / x:.2f}x more"
        rows.append(f"| {name} | {s['bits']} | {s['download_bits']} | {acc['mean']:.3f} ± {acc['sd']:.3f} (n={acc['n']}) | "
                    f"{s['up_bytes_per_round']:,} | {s['down_bytes_per_round']:,} | {ratio} |")
    return "\n".join(rows + ["", *targets(results), *masked_vs_plain(results, plain)]) + "\n"


def load_line(results: dict[str, Any]) -> str:
    """The load average (1/5/15 min) at the end of each run, where the run recorded it."""
    loads = [r["load_avg"] for row in results.values() for r in row["per_seed"].values() if "load_avg" in r]
    runs = sum(len(row["per_seed"]) for row in results.values())
    if not loads:
        return f"load not recorded for these {runs} runs."
    five = [x[1] for x in loads]
    return (f"5-minute load average {min(five):.1f}-{max(five):.1f} at the end of {len(loads)} of {runs} runs "
            f"(the others did not record it).")


def paired_gap(ref: dict[str, Any], row: dict[str, Any]) -> dict[str, float]:
    """Accuracy of ``row`` minus the reference's, in points, over the seeds both ran (mean, sd, n)."""
    seeds = common_seeds(ref, row)
    if not seeds:
        return {"mean": float("nan"), "sd": 0.0, "n": 0}
    return mean_sd([100 * (row["per_seed"][s]["mean_accuracy"] - ref["per_seed"][s]["mean_accuracy"]) for s in seeds])


def targets(results: dict[str, Any]) -> list[str]:
    """Each compressed variant against the issue's targets: accuracy within 0.5 points of float32 FL-TAC r1
    (paired by seed), >= 6x fewer upload bytes than it, >= 16x fewer bytes up + down than FedIT r8 in float32."""
    ref_row = results.get("fltac-r1-b32")
    if ref_row is None:
        return ["## Targets", "", "- no fltac-r1-b32 row yet: nothing to compare against"]
    fedit = results.get("fedit-r8-b32", {}).get("summary")
    out = ["## Targets", "",
           "Against fltac-r1-b32 (float32 FL-TAC r1): at most 0.5 points less mean accuracy (paired by seed), at "
           "least 6x fewer upload bytes; against fedit-r8-b32 (FedIT r8, float32): at least 16x fewer bytes up + "
           "down per round.", ""]
    for name, row in results.items():
        if name in ("fltac-r1-b32", "fedit-r8-b32"):
            continue
        gap = paired_gap(ref_row, row)
        up = fewer(ref_row, row)
        text = (f"- {name}: {gap['mean']:+.1f} points ({'met' if gap['mean'] >= -0.5 else 'missed'}), upload "
                f"{up:.1f}x fewer ({'met' if up >= 6 else 'missed'})")
        if fedit:
            total = fewer(results["fedit-r8-b32"], row, ("up_bytes_per_round", "down_bytes_per_round"))
            text += f", up + down {total:.1f}x fewer than FedIT r8 ({'met' if total >= 16 else 'missed'})"
        spread = f", paired sd {gap['sd']:.1f}" if gap["n"] > 1 else ""
        out.append(f"{text}; {gap['n']} seed(s){spread}")
    return out


def masked_vs_plain(results: dict[str, Any], plain: dict[str, Any] | None) -> list[str]:
    """Each variant's masked upload against its plain upload (the issue's target: no larger, keys and shares
    aside) and the accuracy secure aggregation costs, where the plain run of the same variant exists."""
    both = [n for n in results if plain and n in plain]
    if not both:
        return []
    out = ["", "## Masked against plain uploads", "",
           "Target: with secure aggregation on, the masked upload no larger than the compressed plain upload "
           "(the protocol's keys and shares aside).", ""]
    for name in both:
        seeds = common_seeds(plain[name], results[name])
        if not seeds:
            continue
        gap = paired_gap(plain[name], results[name])
        m, p = (round(mean_bytes(r, seeds)) for r in (results[name], plain[name]))
        ok = "met" if m <= p else "missed"
        out.append(f"- {name}: masked {m:,} B vs plain {p:,} B per round ({m / p:.3f}x, {ok}); accuracy "
                   f"{gap['mean']:+.1f} points against plain; {len(seeds)} seed(s)")
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in results.items():
        s = row["summary"]
        ax.errorbar(s["up_bytes_per_round"], s["mean_accuracy"]["mean"], yerr=s["mean_accuracy"]["sd"], fmt="o")
        ax.annotate(name, (s["up_bytes_per_round"], s["mean_accuracy"]["mean"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("upload bytes per round (all sites)")
    ax.set_ylabel("mean accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="accuracy against bytes per round (see module doc)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--plan", type=Path, default=ROOT / "plans" / "bench-4task.yaml")
    ap.add_argument("--secure", choices=["plan", "on", "off"], default="plan")
    ap.add_argument("--secure-clip", type=float, default=0.1)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fltac-bench-communication")
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="keep the saved (variant, seed) runs of the same setup and run only what is missing")
    ap.add_argument("--name", default=None,
                    help="results file stem (default: communication[-conflict], + -plain with secure aggregation off)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                    help="run nothing: merge the (variant, seed) runs of these results files (same setup) into the "
                         "saved results and rewrite the report")
    args = ap.parse_args()
    if args.results is None:
        args.results = args.work / "results" if args.quick else RESULTS
    return args


def runnable(args: argparse.Namespace, size: dict[str, int], names: list[str]) -> list[str]:
    """The variants whose plan validates; one named in ``--only`` that does not is refused with the reason."""
    from fltac_secure.errors import ConfigError

    keep = []
    for name in names:
        try:
            variant_plan(args, size, name, 0)
        except (ConfigError, ValueError) as exc:
            if args.only:
                raise SystemExit(f"{name}: {exc}") from exc
            print(f"skipping {name}: {str(exc).splitlines()[-1]}", flush=True)
            continue
        keep.append(name)
    return keep


def write_report(results: dict[str, Any], meta: dict[str, Any], where: Path, name: str, stem: str) -> None:
    """``name``.json/.md; the secure report (``name == stem``) compares with ``stem``-plain.json beside it."""
    for row in results.values():
        row["summary"] = summary(row["per_seed"])
    order = {n: i for i, n in enumerate(VARIANTS)}
    results = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], len(order))))
    sibling = where / f"{stem}-plain.json"
    plain = json.loads(sibling.read_text())["variants"] if name == stem and sibling.exists() else None
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.json").write_text(json.dumps({"meta": meta, "variants": results}, indent=2) + "\n")
    (where / f"{name}.md").write_text(markdown(results, meta, plain))


def main() -> None:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    from fltac_secure.data import build_federated_data

    size = QUICK if args.quick else FULL
    names = chosen_variants(args.only, VARIANTS)
    base = variant_plan(args, size, "fltac-r1-b32", 0)
    secure = base.secure_aggregation.enabled
    stem = "communication" + results_name(args.plan).removeprefix("accuracy")  # communication-conflict, ...
    name = args.name or (stem if secure else stem + "-plain")
    meta = {"plan": base.federation,
            "setup": f"{len(base.roster)} sites, {size['rounds']} rounds, {size['local_steps']} local steps, "
                     f"<= {size['max_examples']} examples per task, test sets capped at {size['test_cap']}, "
                     f"block size {args.block_size}, secure aggregation "
                     f"{'on (secure_clip ' + str(args.secure_clip) + ')' if secure else 'off'}",
            "command": "python benchmarks/communication.py " + " ".join(sys.argv[1:])}
    saved = args.results / f"{name}.json"
    if args.merge:
        results, _ = merge_results([saved, *args.merge] if saved.exists() else args.merge, meta["setup"])
        seeds = max(len(row["per_seed"]) for row in results.values())
        meta["command"] = (f"python benchmarks/communication.py --seeds {seeds}" + ("" if secure else " --secure off")
                           + f" --only {','.join(n for n in VARIANTS if n in results)}")
        write_report(results, meta, args.results, name, stem)
        plot(results, args.results / f"{name}.png")
        print(f"merged {len(args.merge)} file(s); wrote {args.results}/{name}.{{json,md,png}}")
        return
    results: dict[str, Any] = {}
    if args.resume and saved.exists():
        old = json.loads(saved.read_text())
        if old["meta"]["setup"] != meta["setup"]:
            raise SystemExit(f"saved results in {saved} are from another setup; run without --resume")
        results = old["variants"]
    names = runnable(args, size, names)
    for seed in range(args.seeds):
        todo = [n for n in names if str(seed) not in results.get(n, {}).get("per_seed", {})]
        if not todo:
            continue
        data = cap_tests(build_federated_data(make_plan(args.plan, size, 1, None, seed)), size["test_cap"], seed)
        for vname in todo:
            print(f"[{time.strftime('%H:%M:%S')}] {vname} seed {seed} ...", flush=True)
            rec = run_one(vname, variant_plan(args, size, vname, seed), data, args.work / f"seed{seed}")
            results.setdefault(vname, {"per_seed": {}})["per_seed"][str(seed)] = rec
            print(f"  mean acc {rec['mean_accuracy']:.3f}, up {rec['up_bytes_per_round']:,} B/round "
                  f"({rec['wall_s']} s)", flush=True)
            write_report(results, meta, args.results, name, stem)
    plot(results, args.results / f"{name}.png")
    print(f"wrote {args.results}/{name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
