"""Running a laid-out federation as separate processes, and reading its results (for `fltac demo`).

Each role is started as its own process (``python -c 'fltac_secure.cli.main()'
aggregator|collaborator start ...``) with one torch thread, and their event
lines are relayed, prefixed, to this console while they run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from fltac_secure.data.layout import AGGREGATOR
from fltac_secure.errors import StateError
from fltac_secure.federation.demo import FederationLayout, site_counts
from fltac_secure.plan import Plan

_LAUNCH = "import sys; from fltac_secure.cli import main; main(sys.argv[1:])"


def role_command(layout: FederationLayout, name: str) -> list[str]:
    role = "aggregator" if name == AGGREGATOR else "collaborator"
    return [sys.executable, "-c", _LAUNCH, role, "start", "--plan", str(layout.plan_path),
            "--site", str(layout.site_file(name)), "--threads", "1"]


def _relay(proc: subprocess.Popen[str], console: Console, tail: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        del tail[:-20]
        console.print(line, markup=False, highlight=False)


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[str]
    relay: threading.Thread
    tail: list[str]


def spawn(layout: FederationLayout, name: str, console: Console) -> Proc:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(role_command(layout, name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=layout.root)
    tail: list[str] = []
    relay = threading.Thread(target=_relay, args=(proc, console, tail), daemon=True)
    relay.start()
    return Proc(name, proc, relay, tail)


def run_processes(layout: FederationLayout, console: Console, timeout: float) -> None:
    """Start the aggregator and every site; wait for all; StateError naming the first that failed."""
    procs = [spawn(layout, AGGREGATOR, console)] + [spawn(layout, s, console) for s in layout.sites]
    try:
        for p in procs:
            p.proc.wait(timeout=timeout)
            p.relay.join(5)
    except subprocess.TimeoutExpired:
        raise StateError(f"the demo federation did not finish within {timeout:g} s") from None
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
    failed = [p for p in procs if p.proc.returncode != 0]
    if failed:
        last = next((x for x in reversed(failed[0].tail) if x.strip()), "")
        raise StateError(f"{failed[0].name} exited with code {failed[0].proc.returncode}: {last}")


def task_holder(layout: FederationLayout, plan: Plan) -> dict[str, str]:
    """For each task, the site with the most training examples of it (whose final adapter is evaluated)."""
    counts = site_counts(layout)
    out = {}
    for t in plan.tasks:
        have = [(n.get(t.name, 0), s) for s, n in counts.items() if n.get(t.name, 0) > 0]
        if have:
            out[t.name] = max(have)[1]
    return out


def cluster_check(layout: FederationLayout, plan: Plan) -> dict[str, Any]:
    """Do the final clusters match the tasks? (The demo knows which task each slot is; the aggregator does not.)"""
    data = json.loads((layout.aggregator / "out" / "clusters.json").read_text())
    counts = site_counts(layout)
    by_cluster: dict[int, Counter[str]] = {}
    for key, cid in data["clusters"].items():
        site, _, idx = key.rpartition("/")
        tasks = [t.name for t in plan.tasks if counts.get(site, {}).get(t.name, 0) > 0]
        by_cluster.setdefault(int(cid), Counter())[tasks[int(idx)]] += 1
    pure = all(len(c) == 1 for c in by_cluster.values())
    one_each = len({next(iter(c)) for c in by_cluster.values() if len(c) == 1}) == len(by_cluster)
    return {"clusters": {c: dict(v) for c, v in sorted(by_cluster.items())}, "match": pure and one_each}


def participation(layout: FederationLayout) -> dict[str, Any]:
    """The aggregator's per-site record: rounds taken part in, stale adapters (``out/clusters.json``)."""
    data = json.loads((layout.aggregator / "out" / "clusters.json").read_text())
    return {"sites": data.get("sites", {}), "stale_after": data.get("stale_after")}


def evaluate_final(layout: FederationLayout, plan: Plan) -> list[dict[str, Any]]:
    """Each task's final global adapter (from the site holding most of it) on the global held-out test set."""
    import numpy as np

    from fltac_secure.data import load_task_file
    from fltac_secure.learning.export import load_exported
    from fltac_secure.learning.train import encode, evaluate_slot

    rows = []
    for task_name, site in task_holder(layout, plan).items():
        task = plan.task(task_name)
        model = load_exported(layout.sites[site] / "out" / task_name, plan)
        test = load_task_file(layout.test_dir / f"{task_name}.csv", task)
        enc = encode(model, test, plan.training.max_seq_length)
        m = evaluate_slot(model, model.slots[0], enc, batch_size=plan.training.eval_batch_size)
        majority = float(np.bincount(test.labels, minlength=task.num_labels).max() / max(len(test), 1))
        rows.append({"task": task_name, "site": site, "n": len(test), "majority": majority, **m})
    return rows


def secure_summary(layout: FederationLayout) -> dict[str, Any]:
    """Clusters securely summed and skipped (from the aggregator's metrics) and the bytes the protocol added."""
    from fltac_secure.federation.audit import secure_overhead
    from fltac_secure.federation.ledger import read_ledger
    from fltac_secure.plan import load_plan

    rows = [json.loads(line) for line in (layout.aggregator / "out" / "metrics.jsonl").read_text().splitlines() if line]
    summed, skipped = 0, []
    for row in rows:
        for cid, c in (row.get("secure") or {}).items():
            if c["status"] == "summed":
                summed += 1
            else:
                skipped.append({"round": row["round"], "cluster": int(cid), "reason": c["reason"]})
    plan = load_plan(layout.plan_path)
    overhead = secure_overhead(read_ledger(layout.aggregator / "ledger.jsonl").entries, plan.roster) or {}
    wire = int(overhead.get("overhead_wire_bytes", 0))
    return {"summed": summed, "skipped": skipped, "overhead_bytes": wire,
            "overhead_bytes_per_round": wire / max(len(rows), 1)}
