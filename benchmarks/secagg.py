"""Secure aggregation benchmark: the cost of a masked cluster sum against a plain one, and against Flower's SecAgg+.

For each cluster size N, vector length D and dropout rate, one cluster runs
the whole protocol in one process (``fltac_secure.secagg.run_cluster``:
the real client and server state machines, every member with its own
certificate checks, as in a federation). Dropped members are split over
three moments: during key sharing (they advertised keys, then vanished),
before their masked input (their pairwise masks must be rebuilt from shares)
and after it (their self-mask is removed from shares). Measured per row:

- compute per member (median over members, every stage including key
  generation and encoding) and the server's compute, single-threaded;
- bytes each member uploads (keys, sealed shares, masked vector, signature,
  unmasking shares) against the plain float32 upload of the same vector;
- the plain sum of the same vectors (float64 weighted mean) in the same run;
- the error of the unmasked mean against the exact mean, and its bound.

Flower's SecAgg+ (flwr 1.42, full graph k = N, its default quantisation) is
measured with the same N, D and drops by ``benchmarks/secagg_flower.py``
in an interpreter that has ``flwr`` (``--flower-python``, default: this one
if it imports flwr, else the FLTAC_FLOWER_PYTHON variable); without one the
comparison is skipped with a message. Flower aborts a round when a member
drops during key sharing, so for dropout rows it is also run with all the
drops before the masked input (its cheapest surviving case to compare with).

    .venv/bin/python benchmarks/secagg.py --flower-python /path/to/flwr-venv/bin/python
    .venv/bin/python benchmarks/secagg.py --quick --out /tmp/s      # N 3, 10; D 13066 (trial)
    .venv/bin/python benchmarks/secagg.py --report-only             # redo secagg.md/.png from secagg.json

Writes benchmarks/results/secagg.json, secagg.md and secagg.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FLOWER_SCRIPT = ROOT / "benchmarks" / "secagg_flower.py"

from fltac_secure.learning.aggregate import weighted_mean  # noqa: E402
from fltac_secure.pki.testing import enroll_federation  # noqa: E402
from fltac_secure.secagg import (  # noqa: E402
    ClientSession, Context, PeerVerifier, Ring, ServerSession, Setup, Signer, Stage, max_fractional_bits, run_cluster,
    threshold_for,
)  # fmt: skip

SIZES, LENGTHS, DROPOUTS = (3, 10, 50, 100), (13066, 1_000_000), (0.0, 0.1, 0.3)
CLIP, FRACTION = 8.0, 2 / 3


def drop_plan(members: list[str], rate: float) -> dict[str, Stage]:
    """round(rate x N) members drop: a third during key sharing, a third before, the rest after the masked input."""
    k = round(rate * len(members))
    share, mask = math.ceil(k / 3), math.ceil((k - math.ceil(k / 3)) / 2)
    victims = members[1 : k + 1]  # never the first member (kept as the reference party)
    return {m: Stage.SHARE if i < share else Stage.MASK if i < share + mask else Stage.UNMASK for i, m in enumerate(victims)}


def run_ours(fed: Any, names: list[str], d: int, rate: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ring = Ring(32, max_fractional_bits(32, CLIP, len(names)), CLIP)
    vectors = {m: rng.normal(0, 0.05, d) for m in names}
    counts = {m: int(rng.integers(50, 500)) for m in names}
    setup = Setup(Context("benchmark", 0, 0, 0), tuple(names), tuple(float(counts[m]) for m in names),
                  threshold_for(len(names), FRACTION), ring, d)  # fmt: skip
    build: dict[str, float] = {}
    clients = {}
    for m in names:
        signer = Signer.from_files(m, fed.paths(m).cert, fed.paths(m).key)
        verifier = PeerVerifier.from_files(fed.ca_cert, names, fed.crl)  # each member checks every certificate itself
        t0 = time.perf_counter()
        clients[m] = ClientSession(setup, signer, verifier, [vectors[m]], [float(counts[m])], width=1,
                                   min_cluster_size=2)
        build[m] = time.perf_counter() - t0
    server = ServerSession(setup, PeerVerifier.from_files(fed.ca_cert, names, fed.crl))
    drops = drop_plan(names, rate)
    run = run_cluster(server, clients, drops)
    res = run.result
    per_member = [build[m] + run.seconds.get(m, 0.0) for m in names if m not in drops]
    survivors = list(res.survivors) or names
    t0 = time.perf_counter()
    weighted_mean([vectors[m] for m in survivors], [counts[m] for m in survivors])  # the plain round's server sum
    plain_s = time.perf_counter() - t0
    exact = sum(counts[m] * vectors[m] for m in survivors) / sum(counts[m] for m in survivors)  # float64
    row: dict[str, Any] = {
        "n": len(names), "d": d, "dropout": rate, "threshold": setup.threshold, "fractional_bits": ring.fractional_bits,
        "drops": {st.value: sum(1 for v in drops.values() if v is st) for st in (Stage.SHARE, Stage.MASK, Stage.UNMASK)},
        "skipped": res.skipped, "reason": res.reason, "survivors": len(res.survivors),
        "member_seconds": statistics.median(per_member), "server_seconds": run.seconds["server"],
        "plain_server_seconds": plain_s,
        "upload_bytes": statistics.median(run.upload[m] for m in names if m not in drops),
        "plain_upload_bytes": 4 * d, "errors": {m: str(e) for m, e in run.errors.items()},
    }  # fmt: skip
    row["keys_and_shares_bytes"] = row["upload_bytes"] - 4 * d
    if not res.skipped:
        row["max_abs_error"] = float(np.max(np.abs(res.mean - exact)))
        row["error_bound"] = ring.error_bound(len(names)) / res.weight
    return row


def flower_python(arg: str | None) -> str | None:
    if arg:
        return arg
    try:
        import flwr  # noqa: F401

        return sys.executable
    except ImportError:
        return os.environ.get("FLTAC_FLOWER_PYTHON")


def run_flower(python: str, n: int, d: int, share: float, mask: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "flower.json"
        cmd = [python, str(FLOWER_SCRIPT), "--n", str(n), "--d", str(d), "--drop-share", str(share),
               "--drop-mask", str(mask), "--json", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        return json.loads(out.read_text())


def flower_rows(python: str, row: dict[str, Any]) -> dict[str, Any]:
    n, d = row["n"], row["d"]
    share = row["drops"]["share"] / n
    before = (row["drops"]["mask"]) / n
    same = run_flower(python, n, d, share, before)
    out = {"same_drops": same}
    if same.get("aborted") and share > 0:
        out["drops_before_mask"] = run_flower(python, n, d, 0.0, share + before)
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sizes = (3, 10) if args.quick else SIZES
    lengths = (13066,) if args.quick else LENGTHS
    python = flower_python(args.flower_python)
    if python is None:
        print("flwr is not importable here and --flower-python / FLTAC_FLOWER_PYTHON is not set: "
              "skipping the Flower comparison", file=sys.stderr)  # fmt: skip
    skip = {c.strip() for c in args.flower_skip.split(",") if c.strip()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"m{i:03d}" for i in range(max(sizes))]
        fed = enroll_federation(Path(tmp), names)
        for n in sizes:
            for d in lengths:
                for rate in DROPOUTS:
                    t0 = time.perf_counter()
                    row = run_ours(fed, names[:n], d, rate, seed=n + d)
                    if python is not None and f"{n}:{d}" not in skip:
                        row["flower"] = flower_rows(python, row)
                    rows.append(row)
                    print(f"N={n} D={d} dropout={rate}: member {row['member_seconds']:.3f}s server "
                          f"{row['server_seconds']:.3f}s ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)  # fmt: skip
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
        "clip": CLIP, "threshold_fraction": FRACTION, "rows": rows,
        "flower_python": python is not None,
    }  # fmt: skip


def _fl(row: dict[str, Any]) -> dict[str, Any] | None:
    fl = row.get("flower") or {}
    best = fl.get("drops_before_mask") or fl.get("same_drops")
    return best if best and "error" not in best and not best.get("aborted") else None


def report(data: dict[str, Any], out: Path) -> None:
    lines = [
        "# Secure aggregation: cost against a plain sum and against Flower's SecAgg+",
        "",
        f"Machine: {data['machine']['cpus']} cores, load {', '.join(f'{x:.1f}' for x in data['machine']['load'])} "
        f"at the start. Ring 32 bits, clip {data['clip']}, threshold > {data['threshold_fraction']:.2f} of members. "
        "Compute is single-threaded seconds; member = median over surviving members, all stages. "
        "Flower: SecAgg+ with a full graph (k = N), its own stage functions (`benchmarks/secagg_flower.py`), its "
        "default quantisation (clip 8, 2^22 levels, modulus 2^32, int64 upload) and reconstruction threshold "
        "round(2/3 N) (ours: floor(2/3 N) + 1). Flower aborts a round when a member drops during key sharing; "
        "such rows compare with Flower's run where the same number of members drop before the masked input.",
        "",
        "| N | D | dropped (keys/before/after) | result | member s | server s | plain sum s | upload / plain | "
        "Flower member s | Flower server s | Flower upload / plain | member vs Flower | server vs Flower | "
        "upload vs Flower | max error (bound) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in data["rows"]:
        fl = _fl(r)
        dr = r["drops"]
        result = f"skipped: {r['reason']}" if r["skipped"] else f"{r['survivors']} summed"
        aborted = (r.get("flower") or {}).get("same_drops", {}).get("aborted")
        cells = [str(r["n"]), str(r["d"]), f"{dr['share']}/{dr['mask']}/{dr['unmask']}", result,
                 f"{r['member_seconds']:.3f}", f"{r['server_seconds']:.3f}", f"{r['plain_server_seconds']:.4f}",
                 f"{r['upload_bytes'] / r['plain_upload_bytes']:.3f}"]  # fmt: skip
        if fl:
            ours_fl = [r["member_seconds"] / fl["client_seconds"]["total"], r["server_seconds"] / fl["server_seconds"],
                       r["upload_bytes"] / fl["upload_bytes_median"]]  # fmt: skip
            tag = " (aborts; drops moved before mask)" if aborted else ""
            cells += [f"{fl['client_seconds']['total']:.3f}{tag}", f"{fl['server_seconds']:.3f}",
                      f"{fl['upload_bytes_median'] / fl['plain_upload_bytes']:.3f}"] + [f"{x:.2f}x" for x in ours_fl]  # fmt: skip
        else:
            cells += ["-"] * 6
        err = f"{r['max_abs_error']:.1e} ({r['error_bound']:.1e})" if "max_abs_error" in r else "-"
        lines.append("| " + " | ".join(cells + [err]) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(data, out.with_suffix(".png"))


def _plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, fkey, title in ((axes[0], "member_seconds", "client", "per member"),
                                 (axes[1], "server_seconds", "server", "server")):  # fmt: skip
        for d in sorted({r["d"] for r in data["rows"]}):
            rows = [r for r in data["rows"] if r["d"] == d and r["dropout"] == 0.0]
            ax.plot([r["n"] for r in rows], [r[key] for r in rows], "o-", label=f"fltac D={d}")
            fl = [(r["n"], f) for r in rows if (f := _fl(r))]
            if fl:
                vals = [f["client_seconds"]["total"] if fkey == "client" else f["server_seconds"] for _, f in fl]
                ax.plot([n for n, _ in fl], vals, "s--", label=f"Flower SecAgg+ D={d}")
        ax.set(xscale="log", yscale="log", xlabel="members N", ylabel="seconds (1 thread)", title=f"compute {title}, no dropout")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N 3 and 10, D 13066 only (a trial)")
    ap.add_argument("--flower-python", help="an interpreter that imports flwr (e.g. a separate venv's python)")
    ap.add_argument("--flower-skip", default="100:1000000",
                    help="N:D cells (comma-separated) without a Flower run: its N=100 cells take minutes each "
                         "(server reconstruction), D=10^6 there is longer still (default: 100:1000000)")
    ap.add_argument("--out", type=Path, default=RESULTS / "secagg.json", help="where the JSON goes (md/png beside it)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the md/png from the existing JSON")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads(args.out.read_text()), args.out)
        return
    data = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    report(data, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
