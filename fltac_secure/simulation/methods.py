"""The compared methods, each a small class behind one interface (registry: ``simulation.registry``).

All methods train with the same ``train_slot`` and the same per-slot budget:
``training.local_steps`` optimizer steps per task slot per round.

- ``fltac``: one adapter per (site, task); sketches clustered by K-means,
  averaged within clusters, redistributed (``federation.rounds``).  With
  ``compression.trim_head`` each slot sends and receives only its task's
  head rows (``federation.trimmed``); with ``compression.download_bits``
  each round runs on the quantised starts the sites get and the exact
  means are kept (``federation.compressed.Downlink``).  The FedIT baselines
  ignore both (one shared adapter, sent whole, as they ignore ``compression``).
- ``oracle``: the same with the true task ids instead of K-means (isolates
  the clustering error).
- ``fedit``, ``fedit-tagged``, ``fedit-taskheads``: one shared adapter for
  all tasks, FedAvg over sites (``simulation.fedit``; same steps per site as
  FL-TAC: local_steps x the site's number of tasks).
- ``local``: every slot trains alone, no federation.
- ``central``: all training data of a task pooled, one adapter per task,
  local_steps x (number of slots holding the task) steps per round, so it
  spends the same compute per task as the federation.

With ``privacy.dp`` on, a method object (one per simulated run) keeps one
``DPTrainer`` per site on an in-memory ledger (``dp``), so every run starts
from epsilon 0 and runs never share accounting; ``epsilons`` reports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fltac_secure.federation.compressed import (
    Downlink,
    compress_results,
    download_nbytes,
    keep_exact,
    rebuild_vectors,
    update_nbytes,
)
from fltac_secure.federation.rounds import (
    Assignment,
    ServerState,
    client_round,
    oracle_assign,
    server_aggregate,
    server_assign,
)
from fltac_secure.federation.trimmed import Trimmer, slot_head_rows
from fltac_secure.learning.adapters import adapter_layout, initial_vector
from fltac_secure.simulation.context import SimContext

if TYPE_CHECKING:
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.learning.train import EncodedDataset
    from fltac_secure.privacy.dp import DPTrainer
    from fltac_secure.simulation.secure import LocalSecureAggregation


@dataclass
class RoundOutcome:
    """What a method reports about one round besides accuracy."""

    up_params: int = 0
    down_params: int = 0
    up_bytes: int = 0  # data bytes up (vectors float32 or quantised, sketches float64, counts 8 bytes each)
    down_bytes: int = 0  # data bytes down (vectors float32 or quantised, cluster ids 8 bytes each)
    bits: int = 32  # bits per number of the uploaded vectors (compression.bits)
    train_loss: float = float("nan")
    sketches: dict[str, np.ndarray] | None = None
    labels: dict[str, int] | None = None
    train_steps: int = 0  # optimizer steps taken in the round, all sites together
    extra: dict[str, object] = field(default_factory=dict)


class Method(ABC):
    """One way of training the federation; state lives in vectors between rounds."""

    name: ClassVar[str] = ""
    federated: ClassVar[bool] = True

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self.init = initial_vector(ctx.plan, ctx.plan.training.seed)
        self.dp_trainers: dict[str, DPTrainer] = {}  # this run's accounting, per site

    def dp(self, site: str) -> DPTrainer | None:
        """``site``'s DP trainer for this run (None with ``privacy.dp`` off); an in-memory ledger, made once."""
        if not self.ctx.plan.privacy.dp:
            return None
        if site not in self.dp_trainers:
            from fltac_secure.privacy.dp import DPTrainer
            from fltac_secure.privacy.ledger import PrivacyLedger

            p = self.ctx.plan.privacy
            self.dp_trainers[site] = DPTrainer(self.ctx.model, self.ctx.plan,
                                               ledger=PrivacyLedger.in_memory(delta=p.delta, accountant=p.accountant))
        return self.dp_trainers[site]

    def epsilons(self) -> dict[str, dict[str, float]]:
        """Epsilon spent so far in this run per site and slot (task); empty with DP off."""
        return {site: tr.ledger.epsilons() for site, tr in sorted(self.dp_trainers.items())}

    @abstractmethod
    def run_round(self, r: int, progress: object = None) -> RoundOutcome:
        """Train and (where federated) aggregate one round."""

    @abstractmethod
    def global_adapters(self) -> dict[str, list[tuple[np.ndarray, int]]]:
        """Per task: the adapter(s) to evaluate on its global test set, with weights."""

    @abstractmethod
    def site_adapters(self) -> dict[str, dict[str, np.ndarray]]:
        """Per site and task: the adapter that site uses after the round."""

    # evaluation plumbing (the shared-adapter FedIT variants override) ---------
    shared_adapter: ClassVar[bool] = False  # one adapter for every task (exported once)

    @property
    def model(self) -> SlotModel:
        return self.ctx.model

    def eval_slot(self, task: str) -> tuple[str, tuple[int, int] | None]:
        return task, None

    def test_data(self, task: str) -> EncodedDataset:
        """The task's global test set as this method's model reads it."""
        return self.ctx.encoded_test(task)

    def site_test_data(self, site: str, task: str) -> EncodedDataset | None:
        """A site's local held-out part of ``task`` (None if it has none)."""
        return self.ctx.encoded_site_test(site, task)

    @property
    def vector_size(self) -> int:
        return adapter_layout(self.ctx.plan).size


def advance(progress: object) -> None:
    """Tick the runner's progress bar (a no-op without one)."""
    if progress is not None:
        progress()  # type: ignore[operator]


class FLTAC(Method):
    """FL-TAC: cluster the sketches, average within clusters."""

    name = "fltac"

    def __init__(self, ctx: SimContext) -> None:
        super().__init__(ctx)
        self.state = ServerState.initial(ctx.plan, list(ctx.key_task), self.init)
        self._secagg: LocalSecureAggregation | None = None
        self.secure_report: dict[int, dict] = {}
        self.residuals: dict[str, np.ndarray] = {}  # compression.error_feedback: each slot's residual (its site's)
        self.compression_rngs: dict[str, np.random.Generator] | None = None
        """Test hook: per site, the generator its quantisation draws from (None: OS randomness, as in the roles)."""
        trim = ctx.plan.compression.trim_head
        self.trimmer = Trimmer.of(ctx.plan) if trim else None
        self.label_counts = slot_head_rows(ctx.plan, ctx.key_task)
        """Each slot's label count, from the plan (its width under secure aggregation)."""
        self.head_rows = self.label_counts if trim else None
        """compression.trim_head: each slot's label count (its head rows on the wire), from the plan."""

    def assign(self, sketches: dict[str, np.ndarray]) -> Assignment:
        return server_assign(self.state, sketches, self.ctx.plan, label_counts=self.head_rows)

    def run_round(self, r: int, progress: object = None) -> RoundOutcome:
        ctx, plan = self.ctx, self.ctx.plan
        exact = self.state
        if plan.compression.download:  # the round runs on the starts the sites get (quantised downloads)
            self.state, _ = Downlink.of(plan, self.trimmer).started(self.state, self.head_rows)
        started = self.state
        vectors, sketches, counts, losses, steps = {}, {}, {}, [], 0
        for site in ctx.sites:
            for res in client_round(ctx.model, site, ctx.slots_of(site), self.state.vectors, r, plan,
                                    dp=self.dp(site)):
                vectors[res.key], sketches[res.key], counts[res.key] = res.vector, res.sketch, res.n_samples
                losses.append(res.stats.get("loss", np.nan))
                steps += int(res.stats.get("steps", 0))
            advance(progress)
        if plan.compression.enabled and not plan.secure_aggregation.enabled:
            vectors = self._through_compression(vectors)
        elif self.trimmer is not None:  # float32 wire parts, untrimmed by the server with the initial head
            vectors = self.trimmer.through_wire(vectors, self.head_rows)
        assignment = self.assign(sketches)
        if plan.secure_aggregation.enabled:
            self.state, self.secure_report = self._secure().aggregate(self.state, assignment, vectors, counts,
                                                                      self.compression_rngs, self.head_rows,
                                                                      self.label_counts)
        else:
            self.state = server_aggregate(self.state, assignment, vectors, counts, plan, head_rows=self.head_rows)
        if plan.compression.download:
            self.state = keep_exact(self.state, started, exact)
        sizes = [self.wire_size(key) for key in vectors]
        ups = sizes
        if plan.secure_aggregation.enabled and self.trimmer is not None:
            ups = self._secure().masked_lengths  # one K_c-wide masked vector per member per summed cluster
        n = len(vectors)
        return RoundOutcome(
            up_params=sum(ups) + n * (self.sketch_params + 1),
            down_params=sum(sizes) + n,
            up_bytes=sum(update_nbytes(plan, d) for d in ups) + n * (8 * self.sketch_params + 8),
            down_bytes=sum(download_nbytes(plan, d) for d in sizes) + 8 * n,
            bits=plan.compression.bits,
            train_loss=float(np.nanmean(losses)),
            train_steps=steps,
            sketches=sketches,
            labels=dict(assignment.labels),
            extra={"constraint_moved": assignment.clusters.moved, "crowded_sites": list(assignment.clusters.crowded),
                   "separation": assignment.clusters.separation, "kept_clusters": assignment.clusters.kept},
        )

    @property
    def sketch_params(self) -> int:
        return self.ctx.plan.clustering.sketch_dim

    def wire_size(self, key: str) -> int:
        """Numbers of ``key``'s vector on the wire: the whole adapter, or with trim_head its task's part."""
        return self.vector_size if self.trimmer is None else self.trimmer.size(self.head_rows[key])

    def _through_compression(self, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the server rebuilds from each site's quantised update (the residuals stay with the sites).

        With trim_head the update is of the wire part (trained minus start, both trimmed) and the server
        untrims the rebuilt part with the initial head.
        """
        t, rows = self.trimmer, self.head_rows
        starts = self.state.vectors if t is None else {k: t.wire(self.state.vectors[k], rows[k]) for k in vectors}
        out: dict[str, np.ndarray] = {}
        for site in self.ctx.sites:
            mine = {k: v if t is None else t.wire(v, rows[k]) for k, v in vectors.items()
                    if k.rsplit("/", 1)[0] == site}
            rng = self.compression_rngs[site] if self.compression_rngs is not None else None
            sent = compress_results(self.ctx.plan, mine, starts, self.residuals, rng=rng)
            self.residuals.update({k: u.residual for k, u in sent.items() if u.residual is not None})
            rebuilt = rebuild_vectors(starts, {k: u.q for k, u in sent.items()})
            out.update(rebuilt if t is None else {k: t.full(v, rows[k]) for k, v in rebuilt.items()})
        return out

    def _secure(self) -> LocalSecureAggregation:
        if self._secagg is None:
            from fltac_secure.simulation.secure import LocalSecureAggregation

            self._secagg = LocalSecureAggregation(self.ctx.plan, self.ctx.sites)
        return self._secagg

    def cluster_for_task(self) -> dict[str, int]:
        """Each task's cluster: the one holding most of the task's slots (ties: more samples)."""
        labels = self.state.clusters.labels if self.state.clusters else {}
        out = {}
        for task in self.ctx.task_names:
            tally: dict[int, tuple[int, int]] = {}
            for key, cid in labels.items():
                if self.ctx.key_task[key] == task:
                    site = key.rsplit("/", 1)[0]
                    c, w = tally.get(cid, (0, 0))
                    tally[cid] = (c + 1, w + self.ctx.n_train(site, task))
            if tally:
                out[task] = max(tally, key=lambda c: (tally[c], -c))
        return out

    def global_adapters(self) -> dict[str, list[tuple[np.ndarray, int]]]:
        cmap = self.cluster_for_task()
        return {t: [(self.state.cluster_vectors[c], 1)] if c in self.state.cluster_vectors else [(self.init, 1)]
                for t, c in ((t, cmap.get(t, -1)) for t in self.ctx.task_names)}

    def site_adapters(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: {t: self.state.vectors[f"{s}/{i}"] for i, t in enumerate(ts)}
                for s, ts in self.ctx.site_tasks.items()}


class Oracle(FLTAC):
    """FL-TAC with the true task ids as clusters."""

    name = "oracle"

    def assign(self, sketches: dict[str, np.ndarray]) -> Assignment:
        index = {t: i for i, t in enumerate(self.ctx.task_names)}
        return oracle_assign(self.state, {k: index[self.ctx.key_task[k]] for k in sketches}, self.ctx.plan)

    @property
    def sketch_params(self) -> int:
        return 1  # the task id instead of a sketch


class Local(Method):
    """Every slot trains on its own data only."""

    name = "local"
    federated = False

    def __init__(self, ctx: SimContext) -> None:
        super().__init__(ctx)
        self.vectors = {k: self.init.copy() for k in ctx.key_task}

    def run_round(self, r: int, progress: object = None) -> RoundOutcome:
        losses, steps = [], 0
        for site in self.ctx.sites:
            for res in client_round(self.ctx.model, site, self.ctx.slots_of(site), self.vectors, r, self.ctx.plan,
                                    dp=self.dp(site)):
                self.vectors[res.key] = res.vector
                losses.append(res.stats.get("loss", np.nan))
                steps += int(res.stats.get("steps", 0))
            advance(progress)
        return RoundOutcome(train_loss=float(np.nanmean(losses)), train_steps=steps)

    def global_adapters(self) -> dict[str, list[tuple[np.ndarray, int]]]:
        out: dict[str, list[tuple[np.ndarray, int]]] = {t: [] for t in self.ctx.task_names}
        for key, task in self.ctx.key_task.items():
            out[task].append((self.vectors[key], self.ctx.n_train(key.rsplit("/", 1)[0], task)))
        return out

    def site_adapters(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: {t: self.vectors[f"{s}/{i}"] for i, t in enumerate(ts)} for s, ts in self.ctx.site_tasks.items()}


class Central(Method):
    """All data of a task pooled in one place, one adapter per task."""

    name = "central"
    federated = False

    def __init__(self, ctx: SimContext) -> None:
        super().__init__(ctx)
        self.vectors = {t: self.init.copy() for t in ctx.task_names}

    def run_round(self, r: int, progress: object = None) -> RoundOutcome:
        from fltac_secure.federation.rounds import ClientSlot

        ctx, losses, n_steps = self.ctx, [], 0
        for task in ctx.task_names:
            holders = sum(task in ts for ts in ctx.site_tasks.values())
            if holders == 0:
                continue
            data = ctx.encoded_pooled(task)
            slot = ClientSlot(f"central/{task}", task, data, len(data))
            steps = ctx.plan.training.local_steps * holders
            (res,) = client_round(ctx.model, "central", [slot], {slot.key: self.vectors[task]}, r, ctx.plan, steps=steps,
                                  dp=self.dp("central"))
            self.vectors[task] = res.vector
            losses.append(res.stats.get("loss", np.nan))
            n_steps += int(res.stats.get("steps", 0))
        advance(progress)
        return RoundOutcome(train_loss=float(np.nanmean(losses)), train_steps=n_steps)

    def global_adapters(self) -> dict[str, list[tuple[np.ndarray, int]]]:
        return {t: [(v, 1)] for t, v in self.vectors.items()}

    def site_adapters(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: {t: self.vectors[t] for t in ts} for s, ts in self.ctx.site_tasks.items()}
