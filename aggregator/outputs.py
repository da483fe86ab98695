"""What the aggregator leaves in ``out/``: global adapters (peft), cluster records, plots.

- ``out/cluster_<c>/``: the global adapter of cluster ``c`` in peft format
  (plus head and ``fltac.json``), written by ``learning.export.export_peft``;
  ``fltac.json`` lists the member slots and, when the plan shares task names,
  their tasks (the majority task names the folder: task and labels); without
  names it says how to map a cluster to a task (``how_to_map``);
- ``out/clusters.json``: the final slot -> cluster assignment, and per roster
  site the rounds it took part in (its UPDATE was aggregated) and whether its
  adapters are stale (see ``STALE_AFTER``);
- ``out/clusters.jsonl``: per round, a 2-D PCA of the slot sketches and their
  clusters (what the plot shows: the clusters forming round by round);
- ``out/clusters.png``: that plot; ``out/metrics.jsonl`` is appended per round
  by the service.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fltac_secure.federation.rounds import ServerState
from fltac_secure.federation.storage import append_jsonl, write_json
from fltac_secure.plan import Plan

OUT = "out"

STALE_AFTER = 1
"""A site's adapters are stale when it took part in none of the last ``STALE_AFTER`` rounds.

1 means "missed the last round": its final adapters are then the cluster
means of the last round it took part in (``server_aggregate`` keeps the
previous vector of a slot that did not take part), not the final ones, and
its slots are absent from the final assignment.  A site that never took part
holds the common initial adapter and is stale too.
"""


def participation(roster: list[str], history: list[Mapping[str, Any]], rounds: int) -> dict[str, dict[str, Any]]:
    """Per roster site: the rounds it took part in, the last one, and whether its adapters are stale."""
    out: dict[str, dict[str, Any]] = {}
    for site in roster:
        took = sorted({int(row["round"]) for row in history if site in row.get("updated", [])})
        last = took[-1] if took else None
        out[site] = {"rounds": took, "last_round": last, "stale": last is None or last < rounds - STALE_AFTER}
    return out


def _pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components (zero-padded when there are fewer)."""
    x = x - x.mean(axis=0, keepdims=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    return np.pad(pcs, ((0, 0), (0, 2 - pcs.shape[1])))


def record_round(workspace: Path, r: int, sketches: Mapping[str, np.ndarray], clusters: Mapping[str, int]) -> None:
    """Append the round's 2-D sketch map to ``out/clusters.jsonl``."""
    keys = list(sketches)
    if not keys:
        return
    x = np.stack([np.asarray(sketches[k], dtype=np.float64) for k in keys])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    xy = _pca2(x)
    append_jsonl(Path(workspace) / OUT / "clusters.jsonl", {
        "round": r, "slots": keys, "xy": np.round(xy, 5).tolist(), "clusters": [int(clusters.get(k, -1)) for k in keys],
    })  # fmt: skip


def _cluster_tasks(state: ServerState, tasks: Mapping[str, list[str] | None]) -> dict[int, str]:
    """Each cluster's majority task, when sites shared their task names."""
    votes: dict[int, Counter[str]] = {}
    for key, cid in (state.clusters.labels if state.clusters else {}).items():
        site, _, idx = key.rpartition("/")
        names = tasks.get(site)
        if names and int(idx) < len(names):
            votes.setdefault(cid, Counter())[names[int(idx)]] += 1
    return {cid: c.most_common(1)[0][0] for cid, c in votes.items()}


HOW_TO_MAP = (
    "The aggregator never learned task names (the plan's privacy.share_task_names is false). A member "
    "'SITE/I' is the I-th task of SITE: the tasks its site file lists, in the plan's task order. Each site's "
    "out/<task>/ holds the adapter of its task's cluster under the task's name (with labels); here labels are "
    "null and predictions are head positions (a task with n labels uses positions 0..n-1)."
)


def cluster_record(state: ServerState, cid: int, tasks: Mapping[str, list[str] | None]) -> dict[str, Any]:
    """What ``fltac.json`` of ``cluster_<cid>/`` says about its members (and their tasks when known)."""
    labels = state.clusters.labels if state.clusters else {}
    members = sorted((k for k, c in labels.items() if c == cid), key=lambda k: (k.rpartition("/")[0], k))
    known: Counter[str] = Counter()
    for key in members:
        site, _, idx = key.rpartition("/")
        names = tasks.get(site)
        if names and int(idx) < len(names):
            known[names[int(idx)]] += 1
    rec: dict[str, Any] = {"cluster": cid, "members": members}
    if known:
        rec["member_tasks"] = dict(known.most_common())
        if len(known) > 1:
            rec["note"] = "members of several tasks: the majority task names this folder; check the clustering"
    else:
        rec["how_to_map"] = HOW_TO_MAP
    return rec


def export_clusters(workspace: Path, plan: Plan, state: ServerState, tasks: Mapping[str, list[str] | None]) -> list[Path]:
    """One peft adapter folder per cluster that has a global adapter, with its members in ``fltac.json``."""
    if not state.cluster_vectors:
        return []
    from fltac_secure.learning.adapters import set_slot_vector
    from fltac_secure.learning.export import export_peft
    from fltac_secure.learning.model import SlotModel

    names = {cid: f"cluster_{cid}" for cid in sorted(state.cluster_vectors)}
    named = _cluster_tasks(state, tasks)
    ranges = {names[c]: (0, plan.task(t).num_labels) for c, t in named.items()}
    model = SlotModel(plan, list(names.values()), label_ranges=ranges)
    out = []
    for cid, slot in names.items():
        set_slot_vector(model, slot, state.cluster_vectors[cid])
        task = plan.task(named[cid]) if cid in named else None
        out.append(export_peft(model, slot, Path(workspace) / OUT / slot, task=task,
                               extra=cluster_record(state, cid, tasks)))
    return out


def plot_clusters(workspace: Path) -> Path | None:
    """``out/clusters.png``: the sketch map of every round, coloured by cluster."""
    import json

    src = Path(workspace) / OUT / "clusters.jsonl"
    if not src.is_file():
        return None
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    last = {row["round"]: row for row in rows}  # a retried round keeps its last record
    if not last:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(last)
    fig, axes = plt.subplots(1, len(rounds), figsize=(3.2 * len(rounds), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rounds, strict=True):
        xy = np.asarray(last[r]["xy"])
        ax.scatter(xy[:, 0], xy[:, 1], c=last[r]["clusters"], cmap="tab10", vmin=0, vmax=9, s=40)
        ax.set_title(f"round {r}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Adapter sketches (PCA), coloured by cluster (the aggregator never sees task names)")
    fig.tight_layout()
    path = Path(workspace) / OUT / "clusters.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_outputs(workspace: Path, plan: Plan, state: ServerState, tasks: Mapping[str, list[str] | None],
                  history: list[Mapping[str, Any]]) -> Path:
    """Everything of ``out/`` that is written once, at the end (again, identically, after a restart)."""
    out = Path(workspace) / OUT
    labels = state.clusters.labels if state.clusters else {}
    write_json(out / "clusters.json", {
        "round": state.round, "clusters": labels,
        "cluster_tasks": {str(c): t for c, t in _cluster_tasks(state, tasks).items()},
        "sites": participation(plan.roster, history, plan.rounds), "stale_after": STALE_AFTER,
    })  # fmt: skip
    export_clusters(workspace, plan, state, tasks)
    plot_clusters(workspace)
    return out
