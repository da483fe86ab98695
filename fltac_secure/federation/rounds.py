"""One FL-TAC round as plain functions: the client's part and the server's part.

The in-process simulator calls these directly; the networked collaborator
and aggregator call the very same functions around their messages, so a
loopback federation reproduces the simulation exactly.

Client (``client_round``): for each local task slot, load the round's start
vector, train (seeded by ``(training seed, site, task, round)``, never by
process order), read the new vector back and sketch the clustering features
with the round's projection. With ``privacy.dp`` it trains through the
site's ``DPTrainer`` (``dp=``), which the caller keeps for the whole run.
Server: ``server_assign`` clusters the sketches (K-means, ids matched to the
previous round), ``server_aggregate`` averages within clusters and gives
every slot its cluster's mean. The server only sees opaque slot keys
(``"site/index"``), never task names.

``ServerState`` is what the aggregator checkpoints: it converts to and from a
flat dict of named arrays (``to_tensors``/``from_tensors``) for safetensors;
nothing is pickled.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fltac_secure.errors import PrivacyError, StateError
from fltac_secure.federation.compressed import ROUNDING_KEY_BYTES
from fltac_secure.federation.trimmed import Trimmer
from fltac_secure.learning.aggregate import cluster_means, redistribute
from fltac_secure.learning.cluster import ClusterResult, cluster_sketches, site_of
from fltac_secure.learning.seeding import derive_seed
from fltac_secure.learning.sketch import make_sketcher, round_sketch_seed
from fltac_secure.plan.schema import CLUSTERING_FEATURES

if TYPE_CHECKING:
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.plan import Plan
    from fltac_secure.privacy.dp import DPTrainer

__all__ = [
    "Assignment",
    "ClientSlot",
    "ServerState",
    "SlotResult",
    "client_round",
    "clustering_features",
    "crowded_warning",
    "oracle_assign",
    "server_aggregate",
    "server_assign",
    "sketch_features",
    "slot_key",
    "slot_seed",
]


def slot_key(site: str, index: int) -> str:
    """The opaque key of a site's ``index``-th task slot (what the server sees)."""
    return f"{site}/{index}"


def slot_seed(plan: Plan, site: str, task: str, round_index: int) -> int:
    """The training seed of one slot in one round: independent of process and slot order."""
    return derive_seed(plan.training.seed, site, task, round_index)


@dataclass(frozen=True)
class ClientSlot:
    """One local task slot at a site: ``key`` goes to the server, ``task`` never does.

    ``data`` is the slot's training data (a TaskDataset or an already encoded
    data set, whatever ``train_slot`` accepts); ``n_samples`` is reported for
    sample-weighted aggregation.
    """

    key: str
    task: str
    data: Any
    n_samples: int


@dataclass(frozen=True)
class SlotResult:
    """What one slot produced in a round: the new vector, its sketch, its weight, train stats."""

    key: str
    vector: np.ndarray
    sketch: np.ndarray
    n_samples: int
    stats: dict[str, float] = field(default_factory=dict)


def clustering_features(vector: np.ndarray, start: np.ndarray, lora_size: int, features: str) -> np.ndarray:
    """What is sketched (``clustering.features``), from the slot's new ``vector`` and its round ``start``.

    The vector is the LoRA part (``lora_size`` entries) then head.weight then
    head.bias: ``full`` is the whole vector, ``lora`` its LoRA prefix,
    ``delta`` ``vector - start``, ``head`` the head part ``vector[lora_size:]``
    and ``head-delta`` the head part of ``vector - start``.
    """
    if features == "full":
        return vector
    if features == "lora":
        return vector[:lora_size]
    if features == "delta":
        return vector - start
    if features == "head":
        return vector[lora_size:]
    if features == "head-delta":
        return vector[lora_size:] - start[lora_size:]
    raise ValueError(f"unknown clustering.features {features!r}; choose one of {', '.join(CLUSTERING_FEATURES)}")


def sketch_features(plan: Plan, round_index: int, feats: np.ndarray) -> np.ndarray:
    """Sketch a batch ``(n, D)`` of features with the round's shared projection."""
    c = plan.clustering
    return make_sketcher(c.sketch_dim, round_sketch_seed(c.seed, round_index)).sketch(feats)


def client_round(
    model: SlotModel,
    site: str,
    slots: Sequence[ClientSlot],
    start_vectors: Mapping[str, np.ndarray],
    round_index: int,
    plan: Plan,
    *,
    steps: int | None = None,
    dp: DPTrainer | None = None,
) -> list[SlotResult]:
    """Train every slot from its start vector; return new vectors, sketches and counts.

    The model's slot names are the task names (a site holds each task once).
    With ``privacy.dp`` on, ``dp`` is required: the site's ``DPTrainer`` (its
    ledger holds one accountant per slot), the same one every round, and each
    slot trains with DP-SGD through it; a slot whose next round would exceed
    its budget is left out of the results: it sends nothing more.  With DP off
    a given ``dp`` is refused too, so a mis-wired caller fails instead of
    training without the noise it expected.  With ``compression.trim_head``
    each new vector is put in canonical form (head rows beyond its task's
    labels reset to the initial head) before it is sketched and returned.
    """
    _check_dp(model, site, plan, dp)
    missing = [s.key for s in slots if s.key not in start_vectors]
    if missing:
        raise ValueError(f"no start vector for slot(s) {missing}; the server must send one per slot")
    from fltac_secure.learning.adapters import get_slot_vector, set_slot_vector

    kept, vectors, feats, stats = [], [], [], []
    lora_size = _lora_size(model)
    trimmer = Trimmer.of(plan) if plan.compression.trim_head else None
    for s in slots:
        start = np.asarray(start_vectors[s.key], dtype=np.float32)
        set_slot_vector(model, s.task, start)
        st = _train_one(model, site, s, round_index, plan, steps, dp)
        if st.get("stopped_on_budget"):
            continue
        vec = get_slot_vector(model, s.task)
        if trimmer is not None:  # canonical form: unused head rows at the initial head (sketched full-length)
            vec = trimmer.canonical(vec, plan.task(s.task).num_labels)
        kept.append(s)
        vectors.append(vec)
        feats.append(clustering_features(vec, start, lora_size, plan.clustering.features))
        stats.append({k: float(v) for k, v in st.items() if isinstance(v, (int, float))})
    sketches = sketch_features(plan, round_index, np.stack(feats)) if kept else np.zeros((0, 0))
    return [SlotResult(s.key, v, sk, int(s.n_samples), st)
            for s, v, sk, st in zip(kept, vectors, sketches, stats, strict=True)]


def _check_dp(model: SlotModel, site: str, plan: Plan, dp: DPTrainer | None) -> None:
    """Refuse a round whose DP trainer does not match the plan (missing, unexpected, another model or plan)."""
    if plan.privacy.dp and dp is None:
        raise PrivacyError(
            f"privacy.dp is on but the round of site {site!r} was given no DP trainer (client_round(dp=...)); "
            "build one DPTrainer per site on the site's privacy ledger (PrivacyLedger.open in the roles, "
            "PrivacyLedger.in_memory in the simulator) and pass it to every round")
    if not plan.privacy.dp and dp is not None:
        raise PrivacyError(f"privacy.dp is off but the round of site {site!r} was given a DP trainer; "
                           "set privacy.dp: true in the plan, or pass no trainer")
    if dp is not None and dp.model is not model:
        raise PrivacyError(f"the DP trainer of site {site!r} wraps another model than the one this round trains")
    if dp is not None and dp.plan != plan:
        raise PrivacyError(f"the DP trainer of site {site!r} was built under another plan; build it from "
                           "the plan of this run")


def _train_one(model: SlotModel, site: str, s: ClientSlot, round_index: int, plan: Plan,
               steps: int | None, dp: DPTrainer | None) -> dict[str, Any]:
    """One slot's local training: plain AdamW, or DP-SGD through the site's trainer."""
    seed = slot_seed(plan, site, s.task, round_index)
    if dp is not None:
        return dp.train_slot(s.task, s.data, seed, round=round_index, steps=steps)
    from fltac_secure.learning.train import train_slot

    return train_slot(model, s.task, s.data, plan.training, seed, steps=steps)


def _lora_size(model: SlotModel) -> int:
    from fltac_secure.learning.adapters import model_layout

    return model_layout(model).lora_size


@dataclass(frozen=True)
class Assignment:
    """The server's answer after clustering: slot key -> stable cluster id, for one round."""

    round: int
    clusters: ClusterResult
    sketch_sums: dict[str, np.ndarray] = field(default_factory=dict)
    """With ``clustering.accumulate``: each slot's sketches summed over the rounds so far (what was clustered)."""

    @property
    def labels(self) -> dict[str, int]:
        return self.clusters.labels


@dataclass
class ServerState:
    """The aggregator's whole algorithmic state between rounds (what it checkpoints).

    ``round``: the next round to run. ``vectors``: slot key -> the vector that
    slot starts the next round from. ``cluster_vectors``: cluster id -> the
    latest global adapter of that cluster. ``clusters``: the last clustering
    (for stable ids).
    """

    round: int
    k: int
    vectors: dict[str, np.ndarray]
    cluster_vectors: dict[int, np.ndarray] = field(default_factory=dict)
    clusters: ClusterResult | None = None
    own: dict[str, int] = field(default_factory=dict)
    """Secure aggregation: slot -> round whose own trained vector the slot starts from (its cluster was not
    summed); the aggregator never holds that vector, so ROUND_START and FINAL tell the site to use its own."""
    sketch_sums: dict[str, np.ndarray] = field(default_factory=dict)
    """With ``clustering.accumulate``: slot -> the sum of its sketches over the rounds so far."""
    rounding_key: bytes | None = None
    """With ``compression.download_bits`` < 32: the random key the ROUND_START rounding draws from
    (``federation.compressed.Downlink``), made at round 0 and kept for the whole run."""

    @classmethod
    def initial(cls, plan: Plan, keys: Sequence[str], start: np.ndarray) -> ServerState:
        """Round 0: every slot starts from the one common initial adapter."""
        from fltac_secure.federation.compressed import new_rounding_key

        vec = np.asarray(start, dtype=np.float32)
        return cls(round=0, k=plan.k, vectors={k: vec.copy() for k in keys}, rounding_key=new_rounding_key(plan))

    def to_tensors(self) -> dict[str, np.ndarray]:
        """Flat named arrays (for safetensors): no pickle, keys readable, order irrelevant."""
        out: dict[str, np.ndarray] = {"round": np.array([self.round], np.int64), "k": np.array([self.k], np.int64)}
        out.update({f"vector/{key}": np.asarray(v, np.float32) for key, v in self.vectors.items()})
        out.update({f"cluster_vector/{c}": np.asarray(v, np.float32) for c, v in self.cluster_vectors.items()})
        if self.clusters is not None:
            out.update({f"label/{key}": np.array([c], np.int64) for key, c in self.clusters.labels.items()})
            out.update({f"centroid/{c}": np.asarray(v, np.float64) for c, v in self.clusters.centroids.items()})
        out.update({f"own/{key}": np.array([r], np.int64) for key, r in self.own.items()})
        out.update({f"sketch_sum/{key}": np.asarray(v, np.float64) for key, v in self.sketch_sums.items()})
        if self.rounding_key is not None:
            out["rounding_key"] = np.frombuffer(self.rounding_key, dtype=np.uint8).copy()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray]) -> ServerState:
        """Inverse of ``to_tensors``; unknown names or malformed entries raise StateError."""
        try:
            rnd, k = int(np.asarray(tensors["round"]).item()), int(np.asarray(tensors["k"]).item())
        except (KeyError, ValueError) as exc:
            raise StateError("server checkpoint lacks a scalar 'round' or 'k'; it is not a ServerState") from exc
        groups: dict[str, dict[str, np.ndarray]] = {"vector": {}, "cluster_vector": {}, "label": {}, "centroid": {},
                                                    "own": {}, "sketch_sum": {}}  # fmt: skip
        rounding_key = None
        if "rounding_key" in tensors:
            raw = np.asarray(tensors["rounding_key"])
            if raw.dtype != np.uint8 or raw.shape != (ROUNDING_KEY_BYTES,):
                raise StateError(f"server checkpoint's rounding_key is {raw.dtype} {raw.shape}, expected "
                                 f"{ROUNDING_KEY_BYTES} bytes; it is corrupt")
            rounding_key = raw.tobytes()
        for name, arr in tensors.items():
            if name in ("round", "k", "rounding_key"):
                continue
            kind, _, key = name.partition("/")
            if kind not in groups or not key:
                raise StateError(f"unexpected tensor {name!r} in server checkpoint; it is corrupt or from another version")
            groups[kind][key] = np.asarray(arr)
        labels = {key: int(a.item()) for key, a in groups["label"].items()}
        clusters = None
        if labels or groups["centroid"]:
            clusters = ClusterResult(k=k, labels=labels, centroids={_cid(c): a.copy() for c, a in groups["centroid"].items()})
        return cls(
            round=rnd,
            k=k,
            vectors={key: a.astype(np.float32) for key, a in groups["vector"].items()},
            cluster_vectors={_cid(c): a.astype(np.float32) for c, a in sorted(groups["cluster_vector"].items())},
            clusters=clusters,
            own={key: int(a.item()) for key, a in groups["own"].items()},
            sketch_sums={key: a.astype(np.float64) for key, a in groups["sketch_sum"].items()},
            rounding_key=rounding_key,
        )


def _cid(text: str) -> int:
    if not re.fullmatch(r"\d{1,6}", text):
        raise StateError(f"bad cluster id {text!r} in server checkpoint")
    return int(text)


def server_assign(state: ServerState, sketches: Mapping[str, np.ndarray], plan: Plan, *,
                  label_counts: Mapping[str, int] | None = None) -> Assignment:
    """Cluster this round's sketches; ids matched to the previous round's clusters.

    With ``clustering.distinct_per_site`` a site's slots go to distinct
    clusters (the site is the part of the slot key before ``/``, known to the
    aggregator from the connection that sent the sketch). With
    ``clustering.accumulate`` each slot's sketch is added to the sum of its
    earlier ones and the sums are clustered: each round projects with its own
    seed, so the inner product of two sums estimates the sum of the rounds'
    inner products (cross-round terms have mean zero), and the evidence of
    every round adds up while independent DP noise averages out. With
    ``clustering.settle`` the previous partition stays unless this round's
    separates the sketches better (``learning.cluster``). With
    ``clustering.by_labels``, ``label_counts`` (slot key -> its declared label
    count) is required and slots of different label counts never share a
    cluster.
    """
    c = plan.clustering
    kinds = quota = None
    if c.by_labels:
        if label_counts is None:
            raise ValueError("clustering.by_labels needs each slot's label count (label_counts)")
        kinds = {key: int(label_counts[key]) for key in sketches if key in label_counts}
        quota = dict(Counter(t.num_labels for t in plan.tasks))
    sums: dict[str, np.ndarray] = {}
    if c.accumulate:
        sums = {key: state.sketch_sums.get(key, 0.0) + np.asarray(sk, dtype=np.float64)
                for key, sk in sketches.items()}
        sketches = sums
    result = cluster_sketches(
        sketches,
        plan.k,
        normalize=c.normalize,
        center=c.center,
        n_init=c.n_init,
        seed=derive_seed("kmeans", c.seed, state.round),
        previous=state.clusters,
        groups={key: site_of(key) for key in sketches} if c.distinct_per_site else None,
        settle=c.settle,
        kinds=kinds,
        quota=quota,
    )
    return Assignment(round=state.round, clusters=result, sketch_sums=sums)


def crowded_warning(round_index: int, crowded: Sequence[str], keys: Sequence[str], k: int) -> str:
    """One line for sites whose slots outnumber the clusters (two of their tasks must share one)."""
    counts = {s: sum(1 for key in keys if site_of(key) == s) for s in crowded}
    most = max(counts.values(), default=k + 1)
    listed = ", ".join(f"{s} ({n} slots)" for s, n in counts.items())
    return (f"round {round_index}: {listed} hold(s) more tasks than the {k} cluster(s), so some of "
            f"their task adapters share a cluster (and are averaged together); raise clustering.k to at "
            f"least {most}")


def oracle_assign(state: ServerState, true_clusters: Mapping[str, int], plan: Plan) -> Assignment:
    """The oracle baseline: the true task index of every slot instead of K-means."""
    labels = {key: int(c) for key, c in true_clusters.items()}
    bad = sorted({c for c in labels.values() if not 0 <= c < plan.k})
    if bad:
        raise ValueError(f"oracle cluster ids {bad} outside 0..{plan.k - 1}")
    return Assignment(round=state.round, clusters=ClusterResult(k=plan.k, labels=labels))


def server_aggregate(
    state: ServerState,
    assignment: Assignment,
    vectors: Mapping[str, np.ndarray],
    counts: Mapping[str, int],
    plan: Plan,
    *,
    head_rows: Mapping[str, int] | None = None,
) -> ServerState:
    """Average within clusters, give every participating slot its cluster's mean; next round's state.

    Slots that did not take part this round keep their previous vector. The
    input state is not modified.  With ``compression.trim_head``,
    ``head_rows`` (slot -> its task's label count, from the plan) is required:
    a head row is averaged over the members whose task uses it (a row no
    member uses stays at the initial head) and each slot gets the mean in its
    own canonical form.
    """
    if assignment.round != state.round:
        raise StateError(f"assignment is for round {assignment.round} but the server is in round {state.round}")
    if not plan.compression.trim_head:
        means = cluster_means(vectors, assignment.labels, counts, plan.aggregation.weighting)
        given = redistribute(means, assignment.labels)
    else:
        means, given = _trimmed_means(vectors, assignment.labels, counts, plan, head_rows)
    new_vectors = dict(state.vectors)
    new_vectors.update(given)
    return ServerState(
        round=state.round + 1,
        k=state.k,
        vectors=new_vectors,
        cluster_vectors={**state.cluster_vectors, **means},
        clusters=assignment.clusters,
        own={key: r for key, r in state.own.items() if key not in assignment.labels},
        sketch_sums={**state.sketch_sums, **assignment.sketch_sums},
        rounding_key=state.rounding_key,
    )


def _trimmed_means(vectors: Mapping[str, np.ndarray], labels: Mapping[str, int], counts: Mapping[str, int],
                   plan: Plan, head_rows: Mapping[str, int] | None,
                   ) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
    """Per-row cluster means and each slot's canonical copy (``compression.trim_head``)."""
    missing = sorted(set(labels) - set(head_rows or {}))
    if missing:
        raise ValueError(f"compression.trim_head is on but no label count is known for slot(s) {missing[:4]}; "
                         "pass head_rows (slot -> its task's number of labels, from the plan)")
    rows = {key: int(head_rows[key]) for key in labels}  # type: ignore[index]
    trimmer = Trimmer.of(plan)
    masks = trimmer.masks({key: rows[key] for key in vectors})
    means = cluster_means(vectors, labels, counts, plan.aggregation.weighting, masks=masks, fill=trimmer.init)
    given = {key: trimmer.canonical(v, rows[key]) for key, v in redistribute(means, labels).items()}
    return means, given
