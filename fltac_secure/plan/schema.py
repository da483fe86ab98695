"""The federation plan: the contract every site and the aggregator share.

Everything here is identical at every site and goes into the plan hash.
Site-local values (paths, addresses) live in the site file (``site.py``).
Every model forbids unknown keys; every field carries its help text. The
privacy-related sections (DP, secure aggregation, compression) live in
``protection.py`` and are re-exported here.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_serializer, model_validator

from fltac_secure.plan.base import Strict
from fltac_secure.plan.protection import (
    DP_LOCAL_STEPS,
    DP_MAX_BATCH,
    DP_SAMPLE_RATE,
    DP_SGD_LEARNING_RATE,
    DP_SGD_REFERENCE_BATCH,
    Compression,
    Privacy,
    SecureAggregation,
)

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_NAME = re.compile(NAME_RE)

# What clustering sketches (clustering.features; fltac_secure/federation/rounds.py::clustering_features).
ClusteringFeatures = Literal["full", "lora", "delta", "head", "head-delta"]
CLUSTERING_FEATURES: tuple[str, ...] = get_args(ClusteringFeatures)


PAIR_SOURCES = ("news", "conversation")


class Derive(Strict):
    """How ``fltac data prepare-demo`` builds a task out of a shipped source (``fltac_secure.data.derived``)."""

    kind: Literal["relabel", "pair"] = Field(
        description="relabel: each source text keeps its text, its label becomes the task label whose list "
        "holds its source label (texts of unlisted labels are dropped); pair: two snippets joined by "
        "' [SEP] ', the task's second label when they belong together (same news topic; a reply and its "
        "prompt), its first for a random pairing.",
    )
    labels: dict[str, list[str]] = Field(
        default_factory=dict,
        description="relabel only: task label -> the source labels it gathers (disjoint lists).",
    )
    part: int = Field(default=0, ge=0, description="Use this slice (0-based) of the source's texts.")
    parts: int = Field(
        default=1, ge=1, le=16,
        description="Slices the source is dealt into (per source label, a fixed shuffle): tasks that share "
        "a source take different slices, so no text is in two tasks.",
    )
    balance: bool = Field(default=True, description="Downsample to equally many examples per label.")
    snippet_words: int = Field(default=12, ge=2, le=64, description="pair only: words kept of each snippet.")

    @model_validator(mode="after")
    def _consistent(self) -> "Derive":
        if self.part >= self.parts:
            raise ValueError(f"derive.part = {self.part} must be below derive.parts = {self.parts}")
        if self.kind == "pair" and self.labels:
            raise ValueError("derive.labels is for kind relabel; a pair task's labels are [apart, together]")
        if self.kind == "relabel":
            given = [x for xs in self.labels.values() for x in xs]
            if not self.labels or any(not xs for xs in self.labels.values()):
                raise ValueError("derive.labels must map every task label to at least one source label")
            dup = sorted({x for x in given if given.count(x) > 1})
            if dup:
                raise ValueError(f"derive.labels: source label(s) {dup} under two task labels; keep the lists disjoint")
        return self


class Task(Strict):
    name: str = Field(pattern=NAME_RE, description="Task name, unique in the plan (letters, digits, _.-).")
    labels: list[str] = Field(
        min_length=2,
        description="Label names in a fixed order; a label's index is its class id. At least two.",
    )
    demo_source: Literal["news", "spam", "sentiment", "langid", "conversation", "synthetic"] | None = Field(
        default=None,
        description="Shipped data set used by `fltac data prepare-demo` for this task (None: bring your own).",
    )
    derive: Derive | None = Field(
        default=None,
        description="Build the task from demo_source by relabelling or pairing its texts (None: as shipped).",
    )

    @model_validator(mode="after")
    def _derive_fits(self) -> "Task":
        d, src = self.derive, self.demo_source
        if d is None:
            if src == "conversation":
                raise ValueError(f"task {self.name!r}: demo_source conversation needs derive: {{kind: pair}}")
            return self
        if src is None or src == "synthetic":
            raise ValueError(f"task {self.name!r}: derive needs a shipped demo_source, got {src!r}")
        if d.kind == "relabel" and set(d.labels) != set(self.labels):
            raise ValueError(f"task {self.name!r}: derive.labels keys {sorted(d.labels)} must be the task's labels "
                             f"{sorted(self.labels)}")
        if d.kind == "pair" and (src not in PAIR_SOURCES or self.num_labels != 2):
            raise ValueError(f"task {self.name!r}: a pair task needs demo_source in {list(PAIR_SOURCES)} and "
                             f"two labels [apart, together]")
        if d.kind == "relabel" and src == "conversation":
            raise ValueError(f"task {self.name!r}: demo_source conversation only makes pair tasks")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("derive") is None:  # plans without derived tasks keep the hash they had
            out.pop("derive", None)
        return out

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"duplicate label(s) {dup}; every label must appear once")
        if any(not x.strip() for x in v):
            raise ValueError("empty label name; give every label a non-empty name")
        return v


class LoRA(Strict):
    rank: int = Field(default=1, ge=1, le=1024, description="LoRA rank r (the paper uses 1 for FL-TAC).")
    alpha: float = Field(default=8.0, gt=0, description="LoRA scaling alpha (scale = alpha / r).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input, in [0, 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        min_length=1,
        description="Module names that get LoRA (the paper: attention query and value).",
    )
    train_a: bool | None = Field(
        default=None,
        description="Train LoRA A (true) or freeze it (false: FFA-LoRA, Sun et al. 2024): A stays at the shared "
        "seeded initialisation every site regenerates from training.seed, only B and the head train and travel. "
        "Default (null): false under privacy.dp (no noise-times-noise term, half the LoRA bytes), true otherwise.",
    )


class Model(Strict):
    base: str = Field(
        default="minilm",
        min_length=1,
        description="Base model: a known short name (minilm, tiny-bert, tiny-vit) or a local folder "
        "loadable with transformers' from_pretrained. Never fetched from a hub.",
    )
    lora: LoRA = Field(default_factory=LoRA, description="LoRA settings, the same for every adapter.")


class Clustering(Strict):
    k: int | None = Field(default=None, ge=1, description="Number of clusters; default: the number of tasks.")
    sketch_dim: int = Field(
        default=64, ge=2, le=65536,
        description="Dimension of the random-projection sketch. 64 suffices for full features; delta features "
        "need about 1024 (same-task updates agree only weakly, centred cosine ~0.1 vs ~-0.08 across tasks).",
    )  # fmt: skip
    seed: int = Field(default=0, ge=0, description="Seed from which each round's projection seed is derived.")
    n_init: int = Field(default=10, ge=1, le=1000, description="K-means restarts per round.")
    normalize: bool = Field(default=True, description="L2-normalise sketches before K-means.")
    center: bool = Field(
        default=True,
        description="Subtract the round's mean sketch before normalising, so what every adapter shares "
        "(the common start, drift common to all tasks) cancels and only task differences are clustered.",
    )
    features: ClusteringFeatures = Field(
        default="full",
        description="What is sketched (the adapter vector is LoRA part, then head.weight, then head.bias): "
        "full: the whole vector (the paper's choice; stable, but members share their cluster's start, so a "
        "slot put in a wrong cluster in round 0 stays there); lora: its LoRA part only; delta: its change "
        "during this round's local training (where the slot's own data pulls it, so a wrong cluster is left "
        "in a later round; needs sketch_dim ~1024; near convergence a round can mix tasks: measured once on "
        "bench-4task, then recovered); head: the head part only, head.weight then head.bias (for tasks "
        "sharing one head, where the head is what tells them apart: on bench-conflict, 8 binary tasks on "
        "one 2-way head, round-0 ARI 0.77 at full length, 0.78-0.84 at sketch 1024, vs 0.63-0.70 for "
        "full; a whole run at sketch 1024 kept ARI 0.87 in all 5 rounds, mean accuracy 0.848; sticky like "
        "full); head-delta: the head part of the change during the round (bench-4task round 1: ARI 1.0 at "
        "full length, vs 0.91 delta, 0.67-0.75 full; like delta a misplaced slot can leave its cluster, "
        "but on bench-conflict at sketch 1024 ARI fell from 0.87 to 0.40-0.76 in later rounds, accuracy "
        "0.790). Runs: README, 'How clustering is done'. Every choice is computed from the vector the slot "
        "sends (after DP noise, when on), so the sketch is post-processing: no extra privacy cost.",
    )
    accumulate: bool = Field(
        default=False,
        description="Cluster each slot's sketches summed over the rounds so far instead of this round's alone. "
        "With delta features the evidence of every round adds up and independent DP noise averages out, so a "
        "noisy round cannot scatter settled clusters; still post-processing of what the sites sent (no privacy "
        "cost). Each round's own projection makes the sums estimate the sum of the rounds' inner products.",
    )
    settle: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="null: cluster afresh every round. A number s: keep the previous round's clusters unless "
        "this round's K-means partition has a separation (silhouette score of the sketches, in [-1, 1], "
        "reported per round) of at least s and higher than the previous partition's on this round's sketches. "
        "Clusters then move only on evidence: a noisy round (DP) cannot scatter settled clusters, and a wrong "
        "early partition is left once a round separates clearly. K-means on pure noise scores near 0 (about "
        "0.04 on 24 random 32-d points), so s around 0.1-0.2 tells structure from noise; not yet tuned on "
        "benchmark runs. Post-processing of what the sites sent (no privacy cost).",
    )
    by_labels: bool = Field(
        default=False,
        description="Never put slots of tasks with different label counts in one cluster (averaging a 2-label "
        "head with a 5-label one is meaningless). Each label count gets its tasks' share of the K clusters and "
        "the sketches decide only among tasks with the same label count; a label count held by one task is "
        "clustered without the sketches. Uses the label counts sites declare in JOIN, so it needs "
        "compression.trim_head: true. Under DP it keeps tasks apart when the sketches are mostly noise "
        "(benchmarks/results/dp.md). Off by default.",
    )
    distinct_per_site: bool = Field(
        default=True,
        description="Put a site's task slots in distinct clusters (they are different tasks by construction): "
        "after K-means, each site's slots are matched to distinct centroids (Hungarian assignment), "
        "alternating with centroid updates. Uses only what the aggregator already knows (which site sent "
        "which slots). A site with more slots than clusters is reported and some of its slots share one.",
    )


class Aggregation(Strict):
    weighting: Literal["samples", "uniform"] = Field(
        default="samples",
        description="Cluster mean weighted by each slot's sample count, or the paper's plain mean.",
    )


class Training(Strict):
    local_steps: int = Field(default=20, ge=1, description="Optimizer steps per task slot per round.")
    batch_size: int = Field(default=16, ge=1, le=4096, description="Examples per step (DP uses privacy.sample_rate).")
    learning_rate: float = Field(default=5e-3, gt=0, lt=10, description="AdamW learning rate (DP: privacy.learning_rate).")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_seq_length: int = Field(default=64, ge=4, le=4096, description="Tokens per example (truncated/padded).")
    eval_batch_size: int = Field(default=64, ge=1, description="Batch size for evaluation.")
    seed: int = Field(default=0, ge=0, description="Training seed; each slot's randomness is seeded by (seed, site, task, round).")


class Quorum(Strict):
    min_collaborators: int = Field(default=1, ge=1, description="Answers needed for a round to proceed.")


class Timeouts(Strict):
    handshake_s: float = Field(default=10.0, gt=0, description="Seconds allowed for a TLS handshake.")
    round_s: float = Field(default=600.0, gt=0, description="Seconds the aggregator waits for a round phase.")
    idle_s: float = Field(default=120.0, gt=0, description="Seconds of silence after which a peer is dropped.")
    rehandshake_s: float = Field(default=3600.0, gt=0, description="Sessions re-handshake this often (certificate re-check).")
    join_s: float | None = Field(
        default=None, gt=0,
        description="Seconds the aggregator waits for every expected site to join (at start, after a restart, and "
        "for the final adapters) before going on with whoever is there. Default (null): the larger of 60 s and "
        "3 x handshake_s, room for a site to notice a restart, back off and handshake again. Separate from round_s: "
        "a site that misses the window catches up from the round in progress when it joins.",
    )  # fmt: skip

    connect_s: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600,
        description="Seconds a collaborator keeps trying to reach the aggregator (at start, or after losing it) "
        "before it stops with a message; every retry is logged with the endpoint and the backoff. Default (null): "
        "2 x round_s + 60, room for the aggregator to be restarted in the middle of a round. At least handshake_s.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _default_join(self) -> "Timeouts":
        if self.join_s is None:  # resolved here, so the plan hash sees the value in force
            object.__setattr__(self, "join_s", max(60.0, 3 * self.handshake_s))
        if self.connect_s is None:
            object.__setattr__(self, "connect_s", 2 * self.round_s + 60)
        if self.connect_s < self.handshake_s:  # type: ignore[operator]
            raise ValueError(f"connect_s = {self.connect_s:g} is shorter than handshake_s = {self.handshake_s:g}: "
                             "a site could not finish one handshake; make connect_s at least handshake_s")
        return self

    @property
    def join(self) -> float:
        """``join_s`` as a number (always set after validation)."""
        assert self.join_s is not None
        return self.join_s

    @property
    def connect(self) -> float:
        """``connect_s`` as a number (always set after validation)."""
        assert self.connect_s is not None
        return self.connect_s


class Limits(Strict):
    max_message_mb: float | None = Field(
        default=None, gt=0, le=65536,
        description="Largest accepted message, MiB. Default (null): derived from the plan's adapter shapes, "
        "the largest legitimate message (every slot's vector) plus 25% and 1 MiB of headroom.",
    )  # fmt: skip


class Partition(Strict):
    """How `prepare-demo` and `simulate` split each task's data over the roster."""

    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration per task (paper: 0.5).")
    min_share: float = Field(default=0.01, ge=0, lt=1, description="A site with a smaller share of a task gets none.")
    seed: int = Field(default=0, ge=0, description="Partition seed.")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="Held-out test split per task.")
    max_examples_per_task: int | None = Field(default=None, ge=10, description="Cap on examples per task (demo speed).")


class Plan(Strict):
    federation: str = Field(pattern=NAME_RE, description="Federation name.")
    rounds: int = Field(ge=1, le=100000, description="Number of federated rounds.")
    roster: list[str] = Field(min_length=1, description="Authorised collaborator names (certificate CNs).")
    tasks: list[Task] = Field(min_length=1, description="Task catalogue.")
    model: Model = Field(default_factory=Model)
    clustering: Clustering = Field(default_factory=Clustering)
    aggregation: Aggregation = Field(default_factory=Aggregation)
    training: Training = Field(default_factory=Training)
    privacy: Privacy = Field(default_factory=Privacy)
    secure_aggregation: SecureAggregation = Field(default_factory=SecureAggregation)
    compression: Compression = Field(
        default_factory=Compression, description="Quantised updates (off by default: bits 32)."
    )
    quorum: Quorum = Field(default_factory=Quorum)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: Limits = Field(default_factory=Limits)
    partition: Partition = Field(default_factory=Partition)

    @field_validator("roster")
    @classmethod
    def _roster_names(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not _NAME.match(n)]
        if bad:
            raise ValueError(f"invalid site name(s) {bad}; use letters, digits and _.- (max 63)")
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate site name(s) {dup}; every site appears once")
        return v

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v: list[Task]) -> list[Task]:
        names = [t.name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate task name(s) {dup}; every task appears once")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "Plan":
        if self.clustering.by_labels:
            if not self.compression.trim_head:
                raise ValueError("clustering.by_labels needs the slots' label counts, which sites declare only with "
                                 "compression.trim_head: true; set it, or set clustering.by_labels: false")
            counts = sorted({t.num_labels for t in self.tasks})
            if self.clustering.k is not None and self.clustering.k < len(counts):
                raise ValueError(f"clustering.by_labels keeps the tasks' {len(counts)} label counts {counts} in "
                                 f"different clusters, but clustering.k = {self.clustering.k}; raise k to at least "
                                 f"{len(counts)} or set clustering.by_labels: false")
        slots = len(self.tasks) * len(self.roster)
        if self.clustering.k is not None and self.clustering.k > slots:
            raise ValueError(
                f"clustering.k = {self.clustering.k} exceeds tasks x roster = {slots}; "
                "use at most that many clusters (default: the number of tasks)"
            )
        self._ring_fits()
        self._slices_disjoint()
        if self.compression.enabled and self.secure_aggregation.enabled:
            from fltac_secure.secagg.qring import grid_levels, min_secure_bits  # numpy only

            if self.compression.error_feedback:
                raise ValueError(
                    "compression.error_feedback with secure_aggregation.enabled: a member sends one quantised sum of "
                    "its slots' weighted updates, never a slot's own update, so there is no per-slot residual to "
                    "keep; set compression.error_feedback: false or secure_aggregation.enabled: false"
                )
            n, bits = len(self.roster), self.compression.bits
            if grid_levels(bits, n) < 1:
                fewest = min_secure_bits(n)
                raise ValueError(
                    f"compression.bits = {bits} with secure_aggregation.enabled and {n} sites: the masked sum of "
                    f"{n} members must fit {bits}-bit ring elements, which leaves no grid step (2^{bits - 1} - 1 - {n} "
                    "< 1); " + (f"use compression.bits: {fewest} ({grid_levels(fewest, n)} steps per secure_clip)"
                                if fewest else "no supported width holds that many sites; use compression.bits: 32")
                )
        if self.quorum.min_collaborators > len(self.roster):
            raise ValueError(
                f"quorum.min_collaborators = {self.quorum.min_collaborators} exceeds the roster size "
                f"{len(self.roster)}; lower it or add sites"
            )
        return self

    def _slices_disjoint(self) -> None:
        """Tasks derived from one source must take different slices of it (else a text could be in two tasks)."""
        by_source: dict[str, list[Task]] = {}
        for t in self.tasks:
            if t.demo_source is not None and t.demo_source != "synthetic":
                by_source.setdefault(t.demo_source, []).append(t)
        for src, ts in by_source.items():
            if len(ts) < 2 or all(t.derive is None for t in ts):
                continue
            cuts = [(t.derive.part, t.derive.parts) if t.derive else None for t in ts]
            if None in cuts or len({p for _, p in cuts}) != 1 or len({p for p, _ in cuts}) != len(cuts):  # type: ignore[misc]
                raise ValueError(
                    f"tasks {[t.name for t in ts]} share demo_source {src!r}: give each a derive with the same "
                    "parts and its own part, so no text is in two tasks"
                )

    def _ring_fits(self) -> None:
        from fltac_secure.secagg.ring import capacity, max_fractional_bits  # numpy only; no cycle at import time

        sa, members = self.secure_aggregation, len(self.roster)
        fits = max_fractional_bits(sa.ring_bits, sa.clip, members)
        if sa.fractional_bits is None:
            if fits < 1:
                raise ValueError(
                    f"secure_aggregation: {members} sites with clip {sa.clip} do not fit a {sa.ring_bits}-bit ring; "
                    "lower clip or set ring_bits: 64"
                )
            object.__setattr__(sa, "fractional_bits", fits)  # resolved here, so the plan hash sees it
        elif sa.fractional_bits > fits:
            raise ValueError(
                f"secure_aggregation: {sa.fractional_bits} fractional bits with clip {sa.clip} let at most "
                f"{capacity(sa.ring_bits, sa.clip, sa.fractional_bits)} sites sum in a {sa.ring_bits}-bit ring, the roster has {members}; use "
                f"fractional_bits <= {fits}, a smaller clip or ring_bits: 64"
            )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        comp = out.get("compression")
        if isinstance(comp, dict) and comp.get("trim_head") is False:
            comp.pop("trim_head")  # plans without head trimming keep the hash they had
        if isinstance(comp, dict) and comp.get("download_bits") == 32:
            comp.pop("download_bits")  # likewise plans without quantised downloads
        defaults = {k: v for k, v in Compression().model_dump(mode="json").items()
                    if k not in ("trim_head", "download_bits")}
        if comp == defaults:
            out.pop("compression", None)  # plans without compression keep the hash they had
        if isinstance(out.get("clustering"), dict) and "settle" in out["clustering"] and out["clustering"]["settle"] is None:
            out["clustering"].pop("settle")  # likewise plans without settle
        if isinstance(out.get("clustering"), dict) and out["clustering"].get("by_labels") is False:
            out["clustering"].pop("by_labels")  # likewise plans without by_labels
        return out

    # derived values -------------------------------------------------------
    @property
    def k(self) -> int:
        return self.clustering.k if self.clustering.k is not None else len(self.tasks)

    @property
    def trains_lora_a(self) -> bool:
        """Whether LoRA A trains and travels (model.lora.train_a; default: not under DP, FFA-LoRA)."""
        train_a = self.model.lora.train_a
        return (not self.privacy.dp) if train_a is None else train_a

    def dp_learning_rate(self, expected_batch: int) -> float:
        """The learning rate of a DP slot whose expected Poisson batch is ``expected_batch``.

        privacy.learning_rate if set; else for sgd DP_SGD_LEARNING_RATE scaled linearly with the batch
        (DP_SGD_REFERENCE_BATCH gives the base rate), for adamw training.learning_rate.
        """
        p = self.privacy
        if p.learning_rate is not None:
            return p.learning_rate
        if p.optimizer == "sgd":
            return DP_SGD_LEARNING_RATE * max(1, expected_batch) / DP_SGD_REFERENCE_BATCH
        return self.training.learning_rate

    @property
    def max_labels(self) -> int:
        return max(t.num_labels for t in self.tasks)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


__all__ = ["CLUSTERING_FEATURES", "DP_LOCAL_STEPS", "DP_MAX_BATCH", "DP_SAMPLE_RATE", "DP_SGD_LEARNING_RATE", "DP_SGD_REFERENCE_BATCH", "NAME_RE",
           "Aggregation", "Clustering", "Compression", "Derive", "Limits", "LoRA", "Model", "Partition", "Plan",
           "Privacy", "Quorum", "SecureAggregation", "Strict", "Task", "Timeouts", "Training"]
