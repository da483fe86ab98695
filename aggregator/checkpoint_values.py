"""Value checks of an aggregator checkpoint against the plan: what a digest cannot vouch for.

The digest (``aggregator/checkpoint.py``) proves the files are the bytes the
aggregator wrote; these checks prove that what was written is a state this
plan can produce.  They run on load (a checkpoint forged with a recomputed
digest, or written by a buggy version, is refused) and before every save (a
bug stops the run while the previous checkpoint is still intact, instead of
surfacing at the next restart).

Invariants, all from how ``aggregator/service.py`` builds its state:

- ``k`` is the plan's; the round is in ``0..rounds``;
- members are sites of the plan's roster, each with 1..(number of tasks)
  slots whose sample counts are integers in ``1..2**31-1`` (what JOIN allows);
  shared task names, if any, are one string per slot of a member;
- declared label counts (``labels``) exist exactly under ``compression.trim_head``:
  then every member has one per slot, each the label count of a task of the plan;
- every slot vector belongs to a member's slot and each member has either
  all of its slots or none (a site that joined but never took part yet);
- vectors and cluster vectors have the plan's adapter size, centroids the
  sketch dimension, accumulated sketch sums too (and only for slots with a
  vector), and all of them are finite;
- cluster ids (labels, cluster vectors, centroids) are in ``0..k-1`` and
  labels name slots that have vectors;
- a rounding key (for quantised downloads) exists exactly under
  ``compression.download_bits`` < 32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fltac_secure.federation.rounds import ServerState, slot_key
from fltac_secure.plan import Plan

MAX_COUNT = 2**31 - 1
"""The largest sample count a JOIN may announce (``fltac_secure.federation.messages.parse_join``)."""


@dataclass(frozen=True)
class PlanFacts:
    """The plan's numbers a checkpoint is checked against."""

    k: int
    rounds: int
    roster: frozenset[str]
    n_tasks: int
    vector_size: int
    sketch_dim: int
    label_counts: frozenset[int] | None = None  # compression.trim_head: the tasks' label counts
    download: bool = False  # compression.download_bits < 32: the state holds a rounding key

    @classmethod
    def of(cls, plan: Plan, vector_size: int) -> PlanFacts:
        """Facts of ``plan``; ``vector_size`` is its adapter size (``adapter_layout(plan).size``)."""
        labels = frozenset(t.num_labels for t in plan.tasks) if plan.compression.trim_head else None
        return cls(k=plan.k, rounds=plan.rounds, roster=frozenset(plan.roster), n_tasks=len(plan.tasks),
                   vector_size=int(vector_size), sketch_dim=plan.clustering.sketch_dim, label_counts=labels,
                   download=plan.compression.download)


def checkpoint_problems(state: ServerState, members: Mapping[str, Any], tasks: Mapping[str, Any],
                        facts: PlanFacts, labels: Mapping[str, Any] | None = None) -> list[str]:
    """Every way the checkpoint's values break the invariants above (empty: it is sound)."""
    out = _label_problems(members, labels or {}, facts)
    if state.k != facts.k:
        out.append(f"cluster count k = {state.k}, the plan has k = {facts.k}")
    if not 0 <= state.round <= facts.rounds:
        out.append(f"round {state.round} is outside 0..{facts.rounds}")
    out += _member_problems(members, tasks, facts)
    out += _vector_problems(state, members, facts)
    out += _cluster_problems(state, facts)
    out += _sketch_sum_problems(state, facts)
    if facts.download != (state.rounding_key is not None):
        out.append("the state has a rounding key but compression.download_bits is 32" if state.rounding_key
                   else "compression.download_bits is below 32 but the state has no rounding key")
    return out


def _few(items: Iterable[Any]) -> str:
    """At most five items of a list, for a message."""
    items = list(items)
    text = ", ".join(str(x) for x in items[:5])
    return text + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _member_problems(members: Mapping[str, Any], tasks: Mapping[str, Any], facts: PlanFacts) -> list[str]:
    out: list[str] = []
    strangers = sorted(set(members) - facts.roster)
    if strangers:
        out.append(f"member site(s) {_few(strangers)} are not in the plan's roster")
    for site, counts in members.items():
        if not isinstance(counts, list) or not 1 <= len(counts) <= facts.n_tasks:
            out.append(f"site {site} must have a list of 1..{facts.n_tasks} slot sample counts, got {counts!r:.80}")
            continue
        bad = [c for c in counts if type(c) is not int or not 1 <= c <= MAX_COUNT]
        if bad:
            out.append(f"sample counts of site {site} must be integers in 1..{MAX_COUNT}, got {_few(bad)}")
    for site, names in tasks.items():
        n = len(members[site]) if isinstance(members.get(site), list) else None
        if n is None:
            out.append(f"task names are recorded for {site}, which is not a member")
        elif not (isinstance(names, list) and len(names) == n and all(isinstance(t, str) for t in names)):
            out.append(f"task names of site {site} must be {n} strings, got {names!r:.80}")
    return out


def _label_problems(members: Mapping[str, Any], labels: Mapping[str, Any], facts: PlanFacts) -> list[str]:
    if facts.label_counts is None:
        return [f"label counts are recorded for {_few(sorted(labels))} but compression.trim_head is off"] if labels else []
    out: list[str] = []
    for site, counts in members.items():
        got = labels.get(site)
        n = len(counts) if isinstance(counts, list) else None
        if not (isinstance(got, list) and len(got) == n and all(type(k) is int for k in got)
                and set(got) <= facts.label_counts):
            out.append(f"site {site} must have {n} label counts, each one of {sorted(facts.label_counts)} "
                       f"(compression.trim_head), got {got!r:.80}")
    strangers = sorted(set(labels) - set(members))
    if strangers:
        out.append(f"label counts are recorded for {_few(strangers)}, which are not members")
    return out


def _vector_problems(state: ServerState, members: Mapping[str, Any], facts: PlanFacts) -> list[str]:
    out: list[str] = []
    slots = {s: [slot_key(s, i) for i in range(len(c))] for s, c in members.items() if isinstance(c, list)}
    known = {key for keys in slots.values() for key in keys}
    orphans = sorted(set(state.vectors) - known)
    if orphans:
        out.append(f"vectors of slot(s) {_few(orphans)} belong to no member's slot")
    for site, keys in slots.items():
        missing = [key for key in keys if key not in state.vectors]
        if missing and len(missing) < len(keys):
            out.append(f"site {site} lacks the vector(s) of slot(s) {_few(missing)}")
    out += _array_problems("vector of slot", state.vectors, (facts.vector_size,))
    out += _id_problems("cluster vector", state.cluster_vectors, facts.k)
    out += _array_problems("cluster vector", state.cluster_vectors, (facts.vector_size,))
    return out


def _cluster_problems(state: ServerState, facts: PlanFacts) -> list[str]:
    clusters = state.clusters
    if clusters is None:
        return []
    out: list[str] = []
    if clusters.k != facts.k:
        out.append(f"the clustering's k = {clusters.k}, the plan has k = {facts.k}")
    unknown = sorted(set(clusters.labels) - set(state.vectors))
    if unknown:
        out.append(f"cluster labels name slot(s) {_few(unknown)} that have no vector")
    bad = sorted({c for c in clusters.labels.values() if not 0 <= c < facts.k})
    if bad:
        out.append(f"cluster label(s) {_few(bad)} are outside 0..{facts.k - 1}")
    out += _id_problems("centroid", clusters.centroids, facts.k)
    out += _array_problems("centroid", clusters.centroids, (facts.sketch_dim,))
    return out


def _sketch_sum_problems(state: ServerState, facts: PlanFacts) -> list[str]:
    """Accumulated sketches (clustering.accumulate) belong to slots with a vector and have the sketch shape."""
    unknown = sorted(set(state.sketch_sums) - set(state.vectors))
    out = [f"sketch sums name slot(s) {_few(unknown)} that have no vector"] if unknown else []
    return out + _array_problems("sketch sum of slot", state.sketch_sums, (facts.sketch_dim,))


def _id_problems(what: str, arrays: Mapping[int, np.ndarray], k: int) -> list[str]:
    bad = sorted(c for c in arrays if not 0 <= c < k)
    return [f"{what} id(s) {_few(bad)} are outside 0..{k - 1}"] if bad else []


def _array_problems(what: str, arrays: Mapping[Any, np.ndarray], shape: tuple[int, ...]) -> list[str]:
    out: list[str] = []
    shapes = sorted(str(key) for key, a in arrays.items() if np.shape(a) != shape)
    if shapes:
        out.append(f"{what} {_few(shapes)} must have shape {shape}")
    nonfinite = sorted(str(key) for key, a in arrays.items() if not np.isfinite(np.asarray(a, np.float64)).all())
    if nonfinite:
        out.append(f"{what} {_few(nonfinite)} hold NaN or infinite values")
    return out
