"""The UPDATE phase under secure aggregation, as plain functions shared by the aggregator and the simulator.

``plan_secure_round`` turns a round's assignment into one protocol instance
per cluster (members = the sites with slots in it, each site's weight = the
sum of its slots' weights; a cluster with fewer than ``min_cluster_size``
sites is not summed). ``member_input`` is what one site feeds its client
session for one cluster. ``secure_outcome`` turns the per-cluster results
into the next ``ServerState``: survivors' slots get their cluster's mean;
slots of a cluster that was not summed (too small, or fewer than t
survivors) start the next round from their own trained vector, which only
their site holds (``ServerState.own``); slots of members that dropped out of
a summed cluster keep their previous vector, as in the plain round.

With ``compression.trim_head`` (``head_rows``: slot -> label count) every
member of a cluster must submit the same length, so a cluster's masked vector
is the wire part at ``K_c``, the largest label count among its member slots.
A slot's rows ``k_i <= j < K_c`` are submitted as zero, and each entry of the
decoded sum is divided by the total weight of the survivors whose slots hold
it (per-entry weights, as the plain trimmed mean); an entry no survivor holds
stays at the initial head, and each slot receives the mean in its canonical
form.  The aggregator announces each cluster's length (its wire size at
``K_c``) in the setup; a member builds its input with ``widen`` and checks
the length against the plan and its own slots (``collaborator.secure``).
"""

from __future__ import annotations

import dataclasses

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fltac_secure.federation.rounds import Assignment, ServerState
from fltac_secure.federation.trimmed import Trimmer
from fltac_secure.learning.trim import wire_mask
from fltac_secure.learning.aggregate import redistribute, slot_weights
from fltac_secure.learning.cluster import ClusterResult
from fltac_secure.plan import Plan
from fltac_secure.secagg import ClusterResult as SumResult
from fltac_secure.secagg import Context, Setup, cluster_setup, ring_for


def _site_of(key: str) -> tuple[str, int]:
    site, _, index = key.rpartition("/")
    return site, int(index)


@dataclass(frozen=True)
class SecureRound:
    """One round's protocol instances: setups of the clusters to sum, reasons for the others, who is where."""

    round: int
    setups: dict[int, Setup]
    skipped: dict[int, str]
    slots: dict[int, dict[str, list[int]]]  # cluster -> site -> slot indices
    weights: dict[str, float] = field(default_factory=dict)  # slot key -> weight
    rows: dict[str, int] = field(default_factory=dict)  # trim_head: slot key -> its label count
    widths: dict[int, int] = field(default_factory=dict)  # trim_head: cluster -> K_c, its largest label count
    trimmer: Trimmer | None = None

    def held(self, cid: int, key: str) -> np.ndarray:
        """trim_head: which entries of cluster ``cid``'s masked vector slot ``key`` holds (bool, K_c wide)."""
        assert self.trimmer is not None
        layout = self.trimmer.layout
        return wire_mask(layout, self.rows[key])[wire_mask(layout, self.widths[cid])]

    def clusters_of(self, site: str) -> list[int]:
        """Clusters ``site`` takes part in (summed ones only), ascending."""
        return sorted(c for c in self.setups if site in self.slots[c])


def plan_secure_round(
    plan: Plan, plan_hash: str, round_index: int, attempt: int, labels: Mapping[str, int],
    counts: Mapping[str, int], length: int, head_rows: Mapping[str, int] | None = None,
) -> SecureRound:  # fmt: skip
    """The setups for every cluster of ``labels`` (slot key -> cluster) with the plan's rules; with ``head_rows``
    (trim_head) each cluster's ``length`` is its wire size at ``K_c`` instead of ``length``."""
    weights = slot_weights({k: counts[k] for k in labels}, plan.aggregation.weighting)
    trimmer = Trimmer.of(plan) if head_rows is not None else None
    rows = {k: int(head_rows[k]) for k in labels} if head_rows is not None else {}
    widths = {int(c): max(rows[k] for k, c2 in labels.items() if c2 == c) for c in set(labels.values())} if rows else {}
    slots: dict[int, dict[str, list[int]]] = {}
    for key, cid in labels.items():
        site, index = _site_of(key)
        slots.setdefault(int(cid), {}).setdefault(site, []).append(index)
    setups: dict[int, Setup] = {}
    skipped: dict[int, str] = {}
    ring = ring_for(plan)
    for cid, by_site in sorted(slots.items()):
        member_w = {s: sum(weights[f"{s}/{i}"] for i in idx) for s, idx in by_site.items()}
        ctx = Context(plan_hash, round_index, attempt, cid)
        width = length if trimmer is None else trimmer.size(widths[cid])
        setup = cluster_setup(plan.secure_aggregation, ctx, member_w, width, ring)
        if isinstance(setup, str):
            skipped[cid] = setup
        else:
            setups[cid] = setup
    return SecureRound(round_index, setups, skipped, slots, weights, rows, widths, trimmer)


def member_input(sr: SecureRound, cid: int, site: str,
                 vectors: Mapping[int, np.ndarray]) -> tuple[list[np.ndarray], list[float]]:  # fmt: skip
    """The vectors of ``site``'s slots in cluster ``cid`` and their weights, for its client session (trim_head:
    each full vector's part at the cluster's width, the rows its task does not use set to zero)."""
    idx = sorted(sr.slots[cid][site])
    weights = [sr.weights[f"{site}/{i}"] for i in idx]
    if sr.trimmer is None:
        return [vectors[i] for i in idx], weights
    return [widen(sr.trimmer, vectors[i], sr.rows[f"{site}/{i}"], sr.widths[cid]) for i in idx], weights


def widen(trimmer: Trimmer, vec: np.ndarray, k: int, k_c: int) -> np.ndarray:
    """A slot's input to a cluster of width ``k_c``: the full vector's part at ``k_c`` head rows, the rows
    ``k..k_c-1`` its task does not use set to zero (float32).  ``k > k_c`` is refused: the slot's own rows
    would not fit."""
    if k > k_c:
        raise ValueError(f"a slot with {k} head rows cannot take part in a cluster {k_c} rows wide")
    layout = trimmer.layout
    held = wire_mask(layout, k)[wire_mask(layout, k_c)]
    return np.where(held, np.asarray(vec)[wire_mask(layout, k_c)], 0.0).astype(np.float32)


def secure_outcome(state: ServerState, assignment: Assignment, sr: SecureRound, results: Mapping[int, SumResult],
                   *, updates: bool = False) -> tuple[ServerState, dict[int, dict]]:  # fmt: skip
    """The next state and a per-cluster report (status, survivors, dropped, reason).

    ``updates`` (compression): the members summed their slots' updates against ``state.vectors`` (the
    starts the aggregator sent), so each mean adds back the survivors' weighted starts.
    """
    means: dict[int, np.ndarray] = {}
    mean_labels: dict[str, int] = {}
    own: dict[str, int] = {}
    report: dict[int, dict] = {}
    for cid, by_site in sorted(sr.slots.items()):
        res = results.get(cid)
        keys = {s: [f"{s}/{i}" for i in idx] for s, idx in by_site.items()}
        if res is not None and not res.skipped and sr.trimmer is not None:
            means[cid] = _trimmed_mean(state, sr, cid, res, keys, updates)
            mean_labels.update({k: cid for s in res.survivors for k in keys[s]})
            report[cid] = {"status": "summed", "survivors": list(res.survivors), "dropped": list(res.dropped)}
        elif res is not None and not res.skipped:
            means[cid] = np.asarray(_with_starts(state, sr, cid, res, keys) if updates else res.mean, dtype=np.float32)
            mean_labels.update({k: cid for s in res.survivors for k in keys[s]})
            report[cid] = {"status": "summed", "survivors": list(res.survivors), "dropped": list(res.dropped)}
        else:
            reason = sr.skipped.get(cid) or (res.reason if res is not None else "no result")
            own.update({k: sr.round for ks in keys.values() for k in ks})
            report[cid] = {"status": "skipped", "reason": reason, "members": sorted(by_site),
                           "attempted": cid in sr.setups}
    vectors = dict(state.vectors)
    given = redistribute(means, mean_labels)
    if sr.trimmer is not None:  # each slot holds its cluster's mean in canonical form
        given = {k: sr.trimmer.canonical(v, sr.rows[k]) for k, v in given.items()}
    vectors.update(given)
    used = {**mean_labels, **{k: assignment.labels[k] for k in own}}
    carried = {k: r for k, r in state.own.items() if k not in used}
    new = ServerState(
        round=state.round + 1, k=state.k, vectors=vectors, cluster_vectors={**state.cluster_vectors, **means},
        clusters=ClusterResult(k=assignment.clusters.k, labels=used, centroids=assignment.clusters.centroids),
        own={**carried, **own}, sketch_sums={**state.sketch_sums, **assignment.sketch_sums},
        rounding_key=state.rounding_key,
    )  # fmt: skip
    return new, report


def _with_starts(state: ServerState, sr: SecureRound, cid: int, res: SumResult,
                 keys: Mapping[str, list[str]]) -> np.ndarray:  # fmt: skip
    """A cluster's mean vector from its summed updates: ``(sum (w_i / W) (start_i + u_i)) / weight`` over survivors."""
    total_w = sr.setups[cid].total_weight
    base = np.zeros_like(np.asarray(res.total, dtype=np.float64))
    for s in res.survivors:
        for k in keys[s]:
            base += (sr.weights[k] / total_w) * np.asarray(state.vectors[k], dtype=np.float64)
    assert res.total is not None
    return (base + res.total) / res.weight


def _trimmed_mean(state: ServerState, sr: SecureRound, cid: int, res: SumResult,
                  keys: Mapping[str, list[str]], updates: bool) -> np.ndarray:  # fmt: skip
    """trim_head: a cluster's full mean from its K_c-wide sum, each entry over the survivors' slots holding it."""
    assert sr.trimmer is not None and res.total is not None
    layout, k_c, total_w = sr.trimmer.layout, sr.widths[cid], sr.setups[cid].total_weight
    weight = np.zeros(res.total.shape, np.float64)
    base = np.zeros(res.total.shape, np.float64)
    for s in res.survivors:
        for k in keys[s]:
            held, w = sr.held(cid, k), sr.weights[k] / total_w
            weight += w * held
            if updates:  # the members summed updates: add back their starts on the entries they hold
                base += w * np.where(held, np.asarray(state.vectors[k], np.float64)[wire_mask(layout, k_c)], 0.0)
    init = sr.trimmer.init[wire_mask(layout, k_c)].astype(np.float64)
    part = np.where(weight > 0, (base + np.asarray(res.total, np.float64)) / np.where(weight > 0, weight, 1.0), init)
    return sr.trimmer.full(part.astype(np.float32), k_c)


def updated_sites(report: Mapping[int, dict], sr: SecureRound) -> list[str]:
    """Sites whose round counted: survivors of a summed cluster and members of one too small to sum.

    Members of a cluster whose protocol stopped below the threshold do not count: their
    part did not complete (they keep their own adapters all the same).
    """
    out: set[str] = set()
    for cid, row in report.items():
        if row["status"] == "summed":
            out |= set(row["survivors"])
        elif not row["attempted"]:
            out |= set(sr.slots[cid])
    return sorted(out)


def resolve_own(state: ServerState, trained: Mapping[str, np.ndarray]) -> ServerState:
    """Where every vector is at hand (the simulator): slots marked ``own`` take their trained vector now."""
    vectors = dict(state.vectors)
    for key in state.own:
        vectors[key] = np.asarray(trained[key], dtype=np.float32).copy()
    return dataclasses.replace(state, vectors=vectors, own={})
