"""FedIT, the paper's one-adapter baseline, in three named variants.

All three keep one LoRA adapter and one head for the whole federation: every
site trains it from the round's global vector, the simulator averages the
sites' vectors (FedAvg, weighted as ``aggregation.weighting`` says). They
differ only in how the one head serves several tasks and in how a site's
tasks are visited:

- ``fedit`` (faithful to the paper and its reference code, siqi2000/FL-TAC):
  one head as wide as the widest task; every task's label id ``y`` is head
  position ``y`` (label 1 of every task is the same logit); inputs carry no
  task marker; a site trains its tasks in turn (plan order), each turn with a
  fresh AdamW, the adapter carried from one turn to the next; prediction is
  the argmax over the whole head.
- ``fedit-tagged``: the same with a task tag (``"[task] "``) prepended to every
  input, train and test: the instruction-tuning reading of FedIT.
- ``fedit-taskheads``: a head of width sum(labels), each task its own
  positions; a site's tasks mixed into one data set and one AdamW; at test
  only the task's own positions are read, so the model is told the task: an
  upper bound for FedIT, not the paper's baseline.

Compute (steps are optimizer steps on one batch of ``training.batch_size``):
at a site holding n tasks every variant spends ``training.local_steps x n``
steps per round, exactly what FL-TAC spends there (``local_steps`` per task
slot). ``fedit`` and ``fedit-tagged`` split that budget among the tasks in
turn (``local_steps`` each); ``fedit-taskheads`` spends it on the mixed data.
The reference code gives FedIT ``local_steps // n`` per task, a total of
``local_steps`` per client (1/n of FL-TAC's compute); here FedIT gets the same
compute as FL-TAC, which can only help it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fltac_secure.errors import PrivacyError
from fltac_secure.federation.rounds import slot_seed
from fltac_secure.learning.adapters import adapter_layout, get_slot_vector, initial_vector, set_slot_vector
from fltac_secure.learning.aggregate import weighted_mean
from fltac_secure.learning.train import train_slot
from fltac_secure.simulation.context import FEDIT_SLOT, SimContext
from fltac_secure.simulation.methods import Method, RoundOutcome, advance

if TYPE_CHECKING:
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.learning.train import EncodedDataset
    from fltac_secure.plan import Plan


def task_tag(task: str) -> str:
    """The marker ``fedit-tagged`` prepends to every input of ``task``."""
    return f"[{task}] "


@dataclass(frozen=True)
class SharedHead:
    """How one head serves every task: where label ids land and which positions a test reads.

    ``offsets[task] + y`` is the head position of ``task``'s label id ``y``;
    ``reads[task]`` is the ``(lo, hi)`` range argmax'd over at test time.
    """

    width: int
    offsets: Mapping[str, int]
    reads: Mapping[str, tuple[int, int]]
    tagged: bool = False

    def position(self, task: str, label: int) -> int:
        return self.offsets[task] + int(label)

    def tag(self, task: str) -> str:
        return task_tag(task) if self.tagged else ""


def overlapping_head(plan: Plan, *, tagged: bool = False) -> SharedHead:
    """The reference code's head: width = widest task, label ids from 0 for every task, all read."""
    w = plan.max_labels
    return SharedHead(w, {t.name: 0 for t in plan.tasks}, {t.name: (0, w) for t in plan.tasks}, tagged)


def side_by_side_head(plan: Plan) -> SharedHead:
    """Tasks side by side in plan order (width = sum of labels); each task reads only its own positions."""
    offsets, reads, lo = {}, {}, 0
    for t in plan.tasks:
        offsets[t.name], reads[t.name] = lo, (lo, lo + t.num_labels)
        lo += t.num_labels
    return SharedHead(lo, offsets, reads)


class SharedAdapterMethod(Method):
    """One adapter + one ``SharedHead`` for all tasks, FedAvg over sites; subclasses train a site."""

    shared_adapter = True

    def __init__(self, ctx: SimContext) -> None:
        if ctx.plan.privacy.dp:
            raise PrivacyError("the FedIT baselines train without DP-SGD, but the plan has privacy.dp: true; "
                               "set privacy.dp: false to compare with FedIT, or simulate FL-TAC (--method fltac)")
        self.ctx = ctx
        self.head = self.make_head(ctx.plan)
        self.init = initial_vector(ctx.plan, ctx.plan.training.seed, head_width=self.head.width)
        self.vector = self.init.copy()
        self.dp_trainers = {}  # no DP here: refused above

    @staticmethod
    @abstractmethod
    def make_head(plan: Plan) -> SharedHead:
        """This variant's head."""

    @abstractmethod
    def train_site(self, site: str, r: int) -> tuple[np.ndarray, list[dict[str, float | int]]]:
        """Train the global vector on ``site``'s tasks; its new vector and each training call's stats."""

    @property
    def model(self) -> SlotModel:
        return self.ctx.shared_model(self.head.width)

    @property
    def vector_size(self) -> int:
        return adapter_layout(self.ctx.plan, head_width=self.head.width).size

    def eval_slot(self, task: str) -> tuple[str, tuple[int, int] | None]:
        return FEDIT_SLOT, self.head.reads[task]

    def test_data(self, task: str) -> EncodedDataset:
        return self.ctx.encoded_test(task, offset=self.head.offsets[task], tag=self.head.tag(task))

    def site_test_data(self, site: str, task: str) -> EncodedDataset | None:
        return self.ctx.encoded_site_test(site, task, offset=self.head.offsets[task], tag=self.head.tag(task))

    def run_round(self, r: int, progress: object = None) -> RoundOutcome:
        vecs, counts, losses, steps = [], [], [], 0
        for site in self.ctx.sites:
            vec, stats = self.train_site(site, r)
            vecs.append(vec)
            counts.append(self.ctx.n_train(site))
            losses.extend(float(s["loss"]) for s in stats)
            steps += sum(int(s["steps"]) for s in stats)
            advance(progress)
        self.vector = weighted_mean(vecs, counts, self.ctx.plan.aggregation.weighting)
        n, d = len(vecs), self.vector_size
        return RoundOutcome(up_params=n * (d + 1), down_params=n * d, up_bytes=n * (4 * d + 8), down_bytes=n * 4 * d,
                            train_loss=float(np.mean(losses)),
                            train_steps=steps)

    def global_adapters(self) -> dict[str, list[tuple[np.ndarray, int]]]:
        return {t: [(self.vector, 1)] for t in self.ctx.task_names}

    def site_adapters(self) -> dict[str, dict[str, np.ndarray]]:
        return {s: {t: self.vector for t in ts} for s, ts in self.ctx.site_tasks.items()}


class FedIT(SharedAdapterMethod):
    """Faithful FedIT: overlapping label ids on one head, no task marker, tasks in turn."""

    name = "fedit"

    @staticmethod
    def make_head(plan: Plan) -> SharedHead:
        return overlapping_head(plan)

    def train_site(self, site: str, r: int) -> tuple[np.ndarray, list[dict[str, float | int]]]:
        ctx, plan, head = self.ctx, self.ctx.plan, self.head
        vec, stats = self.vector, []
        for task in ctx.site_tasks[site]:  # in turn; each turn a fresh AdamW (as train_slot always builds)
            set_slot_vector(self.model, FEDIT_SLOT, vec)
            data = ctx.encoded_train(site, task, offset=head.offsets[task], tag=head.tag(task))
            stats.append(train_slot(self.model, FEDIT_SLOT, data, plan.training, slot_seed(plan, site, task, r),
                                    label_range=(0, head.width), steps=plan.training.local_steps))
            vec = get_slot_vector(self.model, FEDIT_SLOT)
        return vec, stats


class FedITTagged(FedIT):
    """Faithful FedIT plus a task tag in front of every input."""

    name = "fedit-tagged"

    @staticmethod
    def make_head(plan: Plan) -> SharedHead:
        return overlapping_head(plan, tagged=True)


class FedITTaskHeads(SharedAdapterMethod):
    """FedIT with each task's own head positions, read alone at test: an upper bound for FedIT."""

    name = "fedit-taskheads"

    @staticmethod
    def make_head(plan: Plan) -> SharedHead:
        return side_by_side_head(plan)

    def train_site(self, site: str, r: int) -> tuple[np.ndarray, list[dict[str, float | int]]]:
        ctx, plan = self.ctx, self.ctx.plan
        set_slot_vector(self.model, FEDIT_SLOT, self.vector)
        steps = plan.training.local_steps * len(ctx.site_tasks[site])
        st = train_slot(self.model, FEDIT_SLOT, ctx.encoded_mixed_train(site, self.head.offsets), plan.training,
                        slot_seed(plan, site, FEDIT_SLOT, r), label_range=(0, self.head.width), steps=steps)
        return get_slot_vector(self.model, FEDIT_SLOT), [st]


FEDIT_VARIANTS: tuple[type[SharedAdapterMethod], ...] = (FedIT, FedITTagged, FedITTaskHeads)
