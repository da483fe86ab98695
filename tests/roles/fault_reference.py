"""What a federation that went through faults must have produced, and the exact comparison with it.

The reference is the in-process simulator's arithmetic (``federation.rounds``,
the functions the aggregator and the sites call) replayed over the
participation the aggregator recorded: for each round, who was sent
ROUND_START, whose SKETCHES were clustered and whose UPDATEs were averaged
(its checkpoint's ``history``); with ``compression.download_bits`` each round
runs on the rounded starts drawn from the aggregator's ``rounding_key`` (read
from its final checkpoint) and keeps the exact means, as the aggregator does;
with ``compression.trim_head`` the updates are rebuilt from their wire parts
and clustered with the plan's label counts (what the sites declare in JOIN).
With full participation this is
``simulate_fltac``, which an uninterrupted process run matches bit for bit
(``test_fault_matrix.py::test_uninterrupted_run_equals_reference``); where a
fault cost a site a round, it is the simulation of that participation.

Comparisons are exact (``np.array_equal``, no tolerance): the aggregator's
final state (every slot vector, every cluster adapter, the labels), the peft
files it exported under ``out/`` and each site's final global adapters.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fltac_secure.federation.rounds import Assignment, ServerState, slot_key
from fltac_secure.federation.storage import decode_tensors, read_tensors
from fltac_secure.learning.cluster import ClusterResult
from fltac_secure.plan import Plan, plan_hash

Participation = tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]
"""Per round: (participants, sketched, updated), each in roster order."""

_CACHE: dict[tuple[str, str, Participation, bytes | None], ServerState] = {}


def participation(history: list[dict[str, Any]]) -> Participation:
    rows = sorted(history, key=lambda row: row["round"])
    assert [row["round"] for row in rows] == list(range(len(rows))), f"rounds missing from the history: {rows}"
    return tuple((tuple(r["participants"]), tuple(r["sketched"]), tuple(r["updated"])) for r in rows)


def full_participation(plan: Plan) -> Participation:
    everyone = tuple(plan.roster)
    return tuple((everyone, everyone, everyone) for _ in range(plan.rounds))


def _training_data_digest(plan: Plan, root: Path) -> str:
    """SHA-256 over every site's training files: federations laid out from one plan share a simulation."""
    h = hashlib.sha256()
    for site in plan.roster:
        for path in sorted((root / site / "data").glob("*.train.csv")):
            h.update(f"{site}/{path.name}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()


def simulate(plan: Plan, data_root: Path, parts: Participation, rounding_key: bytes | None = None) -> ServerState:
    """The aggregator's final state for this participation, computed in this process (cached per plan,
    training data, participation and rounding key: the run's own, with ``compression.download_bits``)."""
    if plan.compression.download and rounding_key is None:
        raise ValueError("compression.download_bits: pass the run's rounding key (its final state's rounding_key)")
    key = (plan_hash(plan), _training_data_digest(plan, data_root), parts, rounding_key)
    if key not in _CACHE:
        _CACHE[key] = _simulate(plan, data_root, parts, rounding_key)
    return _CACHE[key]


def _simulate(plan: Plan, data_root: Path, parts: Participation, rounding_key: bytes | None) -> ServerState:
    """``FLTAC.run_round`` of the simulator, generalised as the aggregator's ``_round`` is: sketches of the
    sites that answered in time are clustered, vectors of those that updated are averaged."""
    from fltac_secure.data.layout import load_federated_dir
    from fltac_secure.federation.compressed import Downlink, keep_exact
    from fltac_secure.federation.rounds import (
        client_round,
        server_aggregate,
        server_assign,
    )
    from fltac_secure.federation.trimmed import Trimmer, slot_head_rows
    from fltac_secure.learning.adapters import initial_vector
    from fltac_secure.simulation.context import SimContext

    ctx = SimContext(plan, load_federated_dir(plan, data_root))
    init = initial_vector(plan, plan.training.seed)
    state = ServerState(round=0, k=plan.k, vectors={}, rounding_key=rounding_key)
    trimmer = Trimmer.of(plan) if plan.compression.trim_head else None
    head_rows = slot_head_rows(plan, ctx.key_task) if trimmer is not None else None  # as the sites declare in JOIN
    down = Downlink.of(plan, trimmer) if plan.compression.download else None
    for r, (present, sketched, updated) in enumerate(parts):
        for site in present:  # a slot seen for the first time starts from the common initial adapter
            for slot in ctx.slots_of(site):
                state.vectors.setdefault(slot.key, init.copy())
        exact = state
        if down is not None:  # the round runs on the rounded starts its ROUND_START carried
            state, _ = down.started(state, head_rows)
        results = {s: client_round(ctx.model, s, ctx.slots_of(s), state.vectors, r, plan) for s in sketched}
        sketches = {x.key: np.asarray(x.sketch, dtype=np.float64) for s in sketched for x in results[s]}
        counts = {x.key: x.n_samples for s in sketched for x in results[s]}
        assignment = server_assign(state, sketches, plan, label_counts=head_rows)
        vectors = {x.key: x.vector for s in updated for x in results[s]}
        if trimmer is not None:  # the float32 wire parts, rebuilt with the initial head rows
            vectors = trimmer.through_wire(vectors, head_rows)
        sub = Assignment(r, ClusterResult(k=assignment.clusters.k,
                                          labels={k: assignment.labels[k] for k in vectors},
                                          centroids=assignment.clusters.centroids))
        new = server_aggregate(state, sub, vectors, {k: counts[k] for k in vectors}, plan, head_rows=head_rows)
        state = keep_exact(new, state, exact) if down is not None else new
    return state


@dataclass
class RunOutputs:
    """What a finished run left: the aggregator's final state and history, its out/ folder, the sites' globals."""

    state: ServerState
    history: list[dict[str, Any]]
    tasks: dict[str, list[str]]
    out: Path
    site_globals: dict[str, dict[int, np.ndarray]]


def read_outputs(aggregator: Path, sites: dict[str, Path]) -> RunOutputs:
    state_dir = aggregator / "state"
    meta = json.loads((state_dir / "checkpoint.json").read_text())
    state = ServerState.from_tensors(decode_tensors((state_dir / meta["tensors"]).read_bytes()))
    globals_ = {}
    for name, folder in sites.items():
        path = folder / "state" / "globals.safetensors"
        if path.is_file():
            t = read_tensors(path, "site globals")
            globals_[name] = {int(k.split("/")[1]): v for k, v in t.items() if k.startswith("slot/")}
    return RunOutputs(state, meta["history"], meta.get("tasks", {}), aggregator / "out", globals_)


def _same_arrays(got: dict[Any, np.ndarray], want: dict[Any, np.ndarray], what: str) -> list[str]:
    if sorted(got) != sorted(want):
        return [f"{what}: keys {sorted(got)} != {sorted(want)}"]
    bad = []
    for k in sorted(want):
        a, b = np.asarray(got[k]), np.asarray(want[k])
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.shape == b.shape else None
            bad.append(f"{what}[{k}]: differs (shape {a.shape} vs {b.shape}, max |diff| {diff})")
    return bad


def _exported(folder: Path) -> dict[str, Any]:
    """Every cluster folder under ``folder``: its safetensors tensors and its JSON files."""
    from safetensors.numpy import load_file

    out: dict[str, Any] = {}
    for cdir in sorted(p for p in folder.glob("cluster_*") if p.is_dir()):
        for f in sorted(cdir.iterdir()):
            if f.suffix == ".safetensors":
                out[f"{cdir.name}/{f.name}"] = load_file(str(f))
            elif f.suffix == ".json":
                out[f"{cdir.name}/{f.name}"] = json.loads(f.read_text())
    return out


def _reference_export(plan: Plan, state: ServerState, tasks: dict[str, list[str]]) -> dict[str, Any]:
    from aggregator.outputs import export_clusters

    with tempfile.TemporaryDirectory() as tmp:
        export_clusters(Path(tmp), plan, state, tasks)
        return _exported(Path(tmp) / "out")


def differences(plan: Plan, got: RunOutputs, want: ServerState) -> list[str]:
    """Every way ``got`` differs from the reference state ``want`` (empty: identical, bit for bit)."""
    bad = _state_differences(got.state, want)
    want_labels = want.clusters.labels if want.clusters else {}
    clusters = got.out / "clusters.json"
    if not clusters.is_file() or json.loads(clusters.read_text())["clusters"] != want_labels:
        bad.append("out/clusters.json is missing or holds other labels")
    bad += _file_differences(_exported(got.out), _reference_export(plan, want, got.tasks))
    for site, vecs in sorted(got.site_globals.items()):
        bad += _same_arrays(vecs, {i: want.vectors[slot_key(site, i)] for i in vecs}, f"{site} final adapter")
    return bad


def _state_differences(got: ServerState, want: ServerState) -> list[str]:
    bad = [] if got.round == want.round else [f"round {got.round} != {want.round}"]
    bad += _same_arrays(got.vectors, want.vectors, "slot vector")
    bad += _same_arrays(got.cluster_vectors, want.cluster_vectors, "cluster adapter")
    got_labels = got.clusters.labels if got.clusters else {}
    want_labels = want.clusters.labels if want.clusters else {}
    return bad + ([] if got_labels == want_labels else [f"labels {got_labels} != {want_labels}"])


def _file_differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    if sorted(got) != sorted(want):
        return [f"out/ files {sorted(got)} != {sorted(want)}"]
    bad = []
    for name in sorted(want):
        if name.endswith(".json"):
            bad += [] if got[name] == want[name] else [f"out/{name} differs"]
        else:
            bad += _same_arrays(got[name], want[name], f"out/{name}")
    return bad


def run_differences(got: RunOutputs, ref: RunOutputs) -> list[str]:
    """Every way one run's results differ from another's: state, out/ files, site adapters (exact)."""
    bad = _state_differences(got.state, ref.state)
    bad += _file_differences(_exported(got.out), _exported(ref.out))
    a, b = got.out / "clusters.json", ref.out / "clusters.json"
    if not (a.is_file() and b.is_file() and json.loads(a.read_text()) == json.loads(b.read_text())):
        bad.append("out/clusters.json is missing or differs")
    if sorted(got.site_globals) != sorted(ref.site_globals):
        bad.append(f"sites with final adapters {sorted(got.site_globals)} != {sorted(ref.site_globals)}")
    for site in sorted(set(got.site_globals) & set(ref.site_globals)):
        bad += _same_arrays(got.site_globals[site], ref.site_globals[site], f"{site} final adapter")
    return bad
