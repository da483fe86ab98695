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
    fedit-r8-b32                                    FedIT r8 in float32, the comparison the issue names

``--secure on|off`` overrides the plan's secure aggregation (bench-4task has it
on: the quantised updates are then summed in the narrow ring with
``compression.secure_clip``; ``--secure-clip`` sets it). Error feedback stays
off (it does not compose with secure aggregation). Head trimming composes
with secure aggregation: a cluster's masked upload is its wire part at K_c,
the widest member slot's label count. ``--quick`` is a smoke run
written under ``--work`` unless ``--results`` is given.

    .venv/bin/python benchmarks/communication.py                      # bench-4task, 3 seeds
    .venv/bin/python benchmarks/communication.py --quick --seeds 1 --only fltac-r1-b8
    .venv/bin/python benchmarks/communication.py --resume          # only the (variant, seed) runs not saved yet

Writes RESULTS/communication.{json,md,png} (accuracy against upload bytes per round).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import FULL, QUICK, RESULTS, ROOT, cap_tests, chosen_variants, make_plan  # noqa: E402
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
    "fedit-r8-b32": ("fedit", 8, 32, True, False, 32),
}


def variant_plan(args: argparse.Namespace, size: dict[str, int], name: str, seed: int) -> Any:
    from fltac_secure.plan.schema import Plan

    _, rank, bits, train_a, trim, down = VARIANTS[name]
    raw = make_plan(args.plan, size, rank, None, seed).model_dump()
    raw["model"]["lora"]["train_a"] = train_a
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
            "wall_s": round(time.perf_counter() - t0, 1),
            "curve": [r.get("mean_accuracy") for r in res.rounds]}


def summary(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    recs = [per_seed[s] for s in sorted(per_seed, key=int)]
    first = recs[0]
    return {"mean_accuracy": mean_sd([r["mean_accuracy"] for r in recs]), "seeds": len(recs),
            "download_bits": first.get("download_bits", 32),
            **{k: first[k] for k in ("up_bytes_per_round", "down_bytes_per_round", "up_params_per_round", "bits")}}


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = [f"# Communication: accuracy against bytes per round ({meta['plan']})", "", meta["setup"], "",
            f"Command: `{meta['command']}`", "",
            "| variant | bits up | bits down | mean accuracy | up bytes / round | down bytes / round "
            "| up vs fltac-r1-b32 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    ref = results.get("fltac-r1-b32", {}).get("summary", {}).get("up_bytes_per_round")
    for name, row in results.items():
        s = row["summary"]
        acc = s["mean_accuracy"]
        ratio = f"{ref / s['up_bytes_per_round']:.2f}x fewer" if ref else "-"
        rows.append(f"| {name} | {s['bits']} | {s['download_bits']} | {acc['mean']:.3f} ± {acc['sd']:.3f} (n={acc['n']}) | "
                    f"{s['up_bytes_per_round']:,} | {s['down_bytes_per_round']:,} | {ratio} |")
    return "\n".join(rows + ["", *targets(results)]) + "\n"


def targets(results: dict[str, Any]) -> list[str]:
    """Each compressed variant against the issue's targets: accuracy within 0.5 points of float32 FL-TAC r1,
    >= 6x fewer upload bytes than it, >= 16x fewer bytes up + down than FedIT r8 in float32."""
    ref = results.get("fltac-r1-b32", {}).get("summary")
    if ref is None:
        return ["## Targets", "", "- no fltac-r1-b32 row yet: nothing to compare against"]
    fedit = results.get("fedit-r8-b32", {}).get("summary")
    out = ["## Targets", "",
           "Against fltac-r1-b32 (float32 FL-TAC r1): at most 0.5 points less mean accuracy, at least 6x fewer upload "
           "bytes; against fedit-r8-b32 (FedIT r8, float32): at least 16x fewer bytes up + down per round.", ""]
    for name, row in results.items():
        s = row["summary"]
        if name in ("fltac-r1-b32", "fedit-r8-b32"):
            continue
        drop = 100 * (ref["mean_accuracy"]["mean"] - s["mean_accuracy"]["mean"])
        up = ref["up_bytes_per_round"] / s["up_bytes_per_round"]
        text = (f"- {name}: {-drop:+.1f} points ({'met' if drop <= 0.5 else 'missed'}), upload {up:.1f}x fewer "
                f"({'met' if up >= 6 else 'missed'})")
        if fedit:
            total = (fedit["up_bytes_per_round"] + fedit["down_bytes_per_round"]) / (
                s["up_bytes_per_round"] + s["down_bytes_per_round"])
            text += f", up + down {total:.1f}x fewer than FedIT r8 ({'met' if total >= 16 else 'missed'})"
        seeds = min(ref["mean_accuracy"]["n"], s["mean_accuracy"]["n"])
        out.append(f"{text}; {seeds} seed(s)")
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
    args = ap.parse_args()
    if args.results is None:
        args.results = args.work / "results" if args.quick else RESULTS
    return args


def main() -> None:
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    from fltac_secure.data import build_federated_data

    size = QUICK if args.quick else FULL
    names = chosen_variants(args.only, VARIANTS)
    base = variant_plan(args, size, names[0], 0)
    meta = {"plan": base.federation,
            "setup": f"{len(base.roster)} sites, {size['rounds']} rounds, {size['local_steps']} local steps, "
                     f"<= {size['max_examples']} examples per task, test sets capped at {size['test_cap']}, "
                     f"block size {args.block_size}, secure aggregation "
                     f"{'on (secure_clip ' + str(args.secure_clip) + ')' if base.secure_aggregation.enabled else 'off'}",
            "command": "python benchmarks/communication.py " + " ".join(sys.argv[1:])}
    results: dict[str, Any] = {}
    saved = args.results / "communication.json"
    if args.resume and saved.exists():
        old = json.loads(saved.read_text())
        if old["meta"]["setup"] != meta["setup"]:
            raise SystemExit(f"saved results in {saved} are from another setup; run without --resume")
        results = old["variants"]
    for seed in range(args.seeds):
        todo = [n for n in names if str(seed) not in results.get(n, {}).get("per_seed", {})]
        if not todo:
            continue
        data = cap_tests(build_federated_data(make_plan(args.plan, size, 1, None, seed)), size["test_cap"], seed)
        for name in todo:
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed} ...", flush=True)
            rec = run_one(name, variant_plan(args, size, name, seed), data, args.work / f"seed{seed}")
            results.setdefault(name, {"per_seed": {}})["per_seed"][str(seed)] = rec
            print(f"  mean acc {rec['mean_accuracy']:.3f}, up {rec['up_bytes_per_round']:,} B/round "
                  f"({rec['wall_s']} s)", flush=True)
            for row in results.values():
                row["summary"] = summary(row["per_seed"])
            args.results.mkdir(parents=True, exist_ok=True)
            (args.results / "communication.json").write_text(json.dumps({"meta": meta, "variants": results},
                                                                       indent=2) + "\n")
            (args.results / "communication.md").write_text(markdown(results, meta))
    plot(results, args.results / "communication.png")
    print(f"wrote {args.results}/communication.{{json,md,png}}")


if __name__ == "__main__":
    main()
