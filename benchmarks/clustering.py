"""Benchmark: K-means on sketches vs K-means on the full adapter vectors.

For adapter sizes 10^4 .. 4x10^6 and sketch dimensions 16 .. 512 it plants
well-separated clusters (a shared base vector + one direction per task +
per-slot noise, the shape real adapters have), runs the same K-means
(scikit-learn, n_init from the plan's default, L2-normalised rows) on the
full vectors and on their sketches, and reports the time ratio and the ARI
between the two assignments (and against the planted truth).

Sketching runs at the sites, in parallel, in deployment; its time is
reported separately (for all slots together, on one core) and is not part
of the server's clustering time.

    .venv/bin/python benchmarks/clustering.py            # full grid (a few minutes)
    .venv/bin/python benchmarks/clustering.py --quick    # small grid

Writes benchmarks/results/clustering.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from fltac_secure.learning.cluster import normalize_rows
from fltac_secure.learning.sketch import make_sketcher, round_sketch_seed

RESULTS = Path(__file__).resolve().parent / "results"


def planted(n_slots: int, k: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_slots`` float32 vectors of length ``size`` in ``k`` planted clusters, and the truth."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n_slots) % k
    base = rng.standard_normal(size, dtype=np.float32)
    x = np.empty((n_slots, size), dtype=np.float32)
    dirs = rng.standard_normal((k, size), dtype=np.float32)
    for i in range(n_slots):
        x[i] = base + dirs[truth[i]] + 0.5 * rng.standard_normal(size, dtype=np.float32)
    return x, truth


def kmeans(x: np.ndarray, k: int, n_init: int, seed: int) -> tuple[np.ndarray, float]:
    """Labels and wall time of K-means on L2-normalised rows (normalisation timed too)."""
    t0 = time.perf_counter()
    labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(normalize_rows(x))
    return labels, time.perf_counter() - t0


def run(sizes: list[int], dims: list[int], n_slots: int, k: int, n_init: int) -> list[dict]:
    rows = []
    for size in sizes:
        x, truth = planted(n_slots, k, size, seed=size)
        full, t_full = kmeans(x, k, n_init, seed=0)
        for dim in dims:
            sk = make_sketcher(dim, round_sketch_seed(0, 1))
            t0 = time.perf_counter()
            s = sk.sketch(x)
            t_sketch = time.perf_counter() - t0
            lab, t_km = kmeans(s.astype(np.float32), k, n_init, seed=0)
            row = {
                "adapter_size": size,
                "sketch_dim": dim,
                "n_slots": n_slots,
                "k": k,
                "kmeans_full_s": round(t_full, 4),
                "kmeans_sketch_s": round(t_km, 4),
                "sketch_all_slots_s": round(t_sketch, 4),
                "speedup": round(t_full / t_km, 1),
                "ari_sketch_vs_full": float(adjusted_rand_score(full, lab)),
                "ari_full_vs_truth": float(adjusted_rand_score(truth, full)),
                "ari_sketch_vs_truth": float(adjusted_rand_score(truth, lab)),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del x
    return rows


def write_markdown(rows: list[dict], meta: dict, path: Path) -> None:
    lines = [
        "# K-means on sketches vs on full adapter vectors",
        "",
        f"{meta['n_slots']} slots, k = {meta['k']}, n_init = {meta['n_init']}, rows L2-normalised; "
        f"machine: {meta['machine']}. Command: `{meta['command']}`.",
        "Speed-up = server K-means time on full vectors / on sketches. "
        "Sketch time = all slots sketched on one core (done by the sites in deployment).",
        "",
        "| adapter size | sketch dim | K-means full (s) | K-means sketch (s) | speed-up | sketching (s) "
        "| speed-up incl. sketching | ARI sketch vs full | ARI vs truth (full / sketch) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['adapter_size']:,} | {r['sketch_dim']} | {r['kmeans_full_s']:.3f} | {r['kmeans_sketch_s']:.3f} "
            f"| {r['speedup']:.1f}x | {r['sketch_all_slots_s']:.3f} "
            f"| {r['kmeans_full_s'] / (r['kmeans_sketch_s'] + r['sketch_all_slots_s']):.1f}x | {r['ari_sketch_vs_full']:.3f} "
            f"| {r['ari_full_vs_truth']:.3f} / {r['ari_sketch_vs_truth']:.3f} |"
        )
    at_1e6 = [r for r in rows if r["adapter_size"] == 10**6]
    if at_1e6:
        ok = [r for r in at_1e6 if r["speedup"] >= 10 and r["ari_sketch_vs_full"] == 1.0]
        lines += [
            "",
            f"Target (>= 10x faster at 10^6 with identical assignments): met for sketch dims "
            f"{[r['sketch_dim'] for r in ok]} of {[r['sketch_dim'] for r in at_1e6]}.",
        ]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for dim in sorted({r["sketch_dim"] for r in rows}):
        rs = [r for r in rows if r["sketch_dim"] == dim]
        a1.plot([r["adapter_size"] for r in rs], [r["speedup"] for r in rs], marker="o", label=f"dim {dim}")
        a2.plot([r["adapter_size"] for r in rs], [r["ari_sketch_vs_full"] for r in rs], marker="o", label=f"dim {dim}")
    a1.axhline(10, color="grey", ls="--", lw=1)
    a1.set(xscale="log", yscale="log", xlabel="adapter size (parameters)", ylabel="K-means speed-up (full / sketch)")
    a2.set(xscale="log", xlabel="adapter size (parameters)", ylabel="ARI sketch vs full", ylim=(-0.05, 1.05))
    a1.legend(fontsize=8)
    a1.set_title("server clustering time")
    a2.set_title("agreement with full-vector K-means")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report-only", action="store_true", help="rewrite md and plot from the saved JSON")
    ap.add_argument("--quick", action="store_true", help="small grid (seconds)")
    ap.add_argument("--slots", type=int, default=40, help="task slots (10 sites x 4 tasks)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "clustering.json").read_text())
        write_markdown(saved["rows"], saved["meta"], args.out / "clustering.md")
        plot(saved["rows"], args.out / "clustering.png")
        return
    sizes = [10**4, 10**5] if args.quick else [10**4, 10**5, 10**6, 4 * 10**6]
    dims = [16, 64] if args.quick else [16, 32, 64, 128, 256, 512]
    rows = run(sizes, dims, args.slots, args.k, args.n_init)
    meta = {
        "n_slots": args.slots,
        "k": args.k,
        "n_init": args.n_init,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "command": "python benchmarks/clustering.py" + (" --quick" if args.quick else ""),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "clustering.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_markdown(rows, meta, args.out / "clustering.md")
    plot(rows, args.out / "clustering.png")
    print(f"wrote {args.out}/clustering.{{json,md,png}}")


if __name__ == "__main__":
    main()
