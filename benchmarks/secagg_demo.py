"""Secure aggregation in the networked demo: the same federation with and without it, in one run.

The demo plan (``plans/demo.yaml``: 4 sites, MiniLM, 4 tasks, 3 rounds) is laid
out once (CA, enrollment, data) and run twice as `fltac demo` runs it (every
role its own process, mutual TLS on loopback): with secure aggregation and
with the plain round, alternating ``--repeats`` times. Measured per run: wall
time of the federation (processes start to exit), seconds per round (the
aggregator's metrics), bytes on the wire per site (the aggregator's ledger;
up and down) and the bytes secure aggregation's own messages added, and the
final adapters' accuracy on the held-out test sets (as the demo reports it).
Both runs share data, seeds and start vectors, so the accuracy tables must
agree within the encoding bound's effect.

    .venv/bin/python benchmarks/secagg_demo.py               # 1 pair (about 10 min on 2 loaded cores)
    .venv/bin/python benchmarks/secagg_demo.py --repeats 2
    .venv/bin/python benchmarks/secagg_demo.py --report-only

Writes benchmarks/results/secagg_demo.json and secagg_demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
os.environ.setdefault("OMP_NUM_THREADS", "1")


def one_run(template: Path, secagg: bool, work: Path) -> dict[str, Any]:
    from rich.console import Console

    from fltac_secure.federation.audit import secure_overhead
    from fltac_secure.federation.demo import FederationLayout
    from fltac_secure.federation.demo_run import evaluate_final, run_processes
    from fltac_secure.federation.ledger import read_ledger
    from fltac_secure.plan import Plan, load_plan
    from fltac_secure.federation.demo import write_plan

    shutil.copytree(template, work)
    layout_json = json.loads((work / "layout.json").read_text())
    plan = load_plan(work / "plan.yaml")
    data = plan.model_dump(mode="json")
    data["secure_aggregation"]["enabled"] = secagg
    plan = Plan.model_validate(data)
    write_plan(plan, work / "plan.yaml")
    layout = FederationLayout(work, work / "plan.yaml", work / "ca", work / "aggregator",
                              {s: work / s for s in layout_json["sites"]}, layout_json["endpoint"])  # fmt: skip
    t0 = time.perf_counter()
    run_processes(layout, Console(quiet=True), timeout=1800)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (layout.aggregator / "out" / "metrics.jsonl").read_text().splitlines() if x]
    entries = read_ledger(layout.aggregator / "ledger.jsonl").entries
    per_site: dict[str, dict[str, int]] = {}
    for e in entries:
        if e.peer in layout.sites:
            d = per_site.setdefault(e.peer, {"up": 0, "down": 0})
            d["up" if e.direction == "received" else "down"] += e.wire_bytes
    accuracy = {r["task"]: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for r in evaluate_final(layout, plan)}
    overhead = secure_overhead(entries, plan.roster) or {}
    return {"secagg": secagg, "wall_s": wall, "round_s": [r["seconds"] for r in rows],
            "bytes_per_site": per_site, "overhead_wire_bytes": overhead.get("overhead_wire_bytes", 0),
            "accuracy": accuracy,
            "clusters": [{c: v["status"] for c, v in (r.get("secure") or {}).items()} for r in rows]}  # fmt: skip


def template(root: Path) -> Path:
    from fltac_secure.federation.demo import build_federation
    from fltac_secure.plan import DEMO_PLAN, load_plan

    layout = build_federation(load_plan(DEMO_PLAN), root)
    (root / "layout.json").write_text(json.dumps({"sites": sorted(layout.sites), "endpoint": layout.endpoint}))
    return root


def report(data: dict[str, Any], out: Path) -> None:
    runs = data["runs"]
    on = [r for r in runs if r["secagg"]]
    off = [r for r in runs if not r["secagg"]]

    def med(rs: list[dict[str, Any]], f: Any) -> float:
        return statistics.median(f(r) for r in rs)

    lines = ["# Secure aggregation in the networked demo (plans/demo.yaml, 4 sites, every role a process)", "",
             f"{len(on)} run(s) with and {len(off)} without secure aggregation, alternating, same layout and seeds; "
             f"load {', '.join(f'{x:.1f}' for x in data['load'])} at the start (2 cores).", "",
             "| | with secure aggregation | plain round |", "|---|---|---|"]  # fmt: skip
    lines.append(f"| federation wall time, s (median) | {med(on, lambda r: r['wall_s']):.1f} | {med(off, lambda r: r['wall_s']):.1f} |")
    lines.append(f"| seconds per round (median over rounds) | {med(on, lambda r: statistics.median(r['round_s'])):.2f} | "
                 f"{med(off, lambda r: statistics.median(r['round_s'])):.2f} |")  # fmt: skip
    up = lambda r: statistics.mean(v["up"] for v in r["bytes_per_site"].values())  # noqa: E731
    down = lambda r: statistics.mean(v["down"] for v in r["bytes_per_site"].values())  # noqa: E731
    lines.append(f"| wire bytes per site, up (whole run) | {med(on, up):,.0f} | {med(off, up):,.0f} |")
    lines.append(f"| wire bytes per site, down (whole run) | {med(on, down):,.0f} | {med(off, down):,.0f} |")
    lines.append(f"| secure aggregation's own messages, bytes per round | "
                 f"{med(on, lambda r: r['overhead_wire_bytes'] / len(r['round_s'])):,.0f} | - |")  # fmt: skip
    lines += ["", "Final accuracy per task (first run of each):", "", "| task | with | plain | difference |",
              "|---|---|---|---|"]  # fmt: skip
    for task, a in on[0]["accuracy"].items():
        b = off[0]["accuracy"][task]["accuracy"]
        lines.append(f"| {task} | {a['accuracy']:.4f} | {b:.4f} | {a['accuracy'] - b:+.4f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs (with, without)")
    ap.add_argument("--out", type=Path, default=RESULTS / "secagg_demo.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        report(json.loads(args.out.read_text()), args.out)
        return
    load = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="fltac-secagg-demo-") as tmp:
        base = template(Path(tmp) / "template")
        for i in range(args.repeats):
            for secagg in (True, False):
                run = one_run(base, secagg, Path(tmp) / f"run{i}-{'secure' if secagg else 'plain'}")
                runs.append(run)
                print(f"run {i} secagg={secagg}: {run['wall_s']:.0f} s", file=sys.stderr)
    data = {"load": load, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    report(data, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
