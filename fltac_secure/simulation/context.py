"""Everything a simulated federation needs, prepared once: encoded data, slots, models.

The simulator keeps each slot's state as a vector (exactly what crosses the
wire), so one ``SlotModel`` with one adapter per *task* serves every site:
before training a slot it is loaded with that slot's start vector, after
training the vector is read back, and ``train_slot`` builds a fresh
optimizer each call. That is the same computation as one model per site
(the networked roles' layout) at a tenth of the memory and loading time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from fltac_secure.errors import ConfigError
from fltac_secure.federation.rounds import ClientSlot, slot_key

if TYPE_CHECKING:
    from fltac_secure.data import FederatedData, TaskDataset
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.learning.train import EncodedDataset
    from fltac_secure.plan import Plan

FEDIT_SLOT = "shared"


@dataclass
class SimContext:
    """Plan, data and lazily built models/encodings shared by all methods of one run."""

    plan: Plan
    data: FederatedData
    _cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted({t for s in self.data.train.values() for t in s} - set(self.task_names))
        if unknown:
            raise ConfigError(f"data holds task(s) {unknown} that the plan does not list; use the plan the data was made for")
        if not any(self.data.train.values()):
            raise ConfigError("the federated data has no training slots; check the data directory or partition")
        missing = [t for t in self.task_names if t not in self.data.test or len(self.data.test[t]) == 0]
        if missing:
            raise ConfigError(f"no global test set for task(s) {missing}; every plan task needs one")

    # structure --------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.plan.tasks]

    @property
    def sites(self) -> list[str]:
        return [s for s in self.plan.roster if self.data.train.get(s)]

    @cached_property
    def site_tasks(self) -> dict[str, list[str]]:
        """Each site's tasks in plan order; slot index = position in this list."""
        return {s: [t for t in self.task_names if t in self.data.train[s]] for s in self.sites}

    @cached_property
    def key_task(self) -> dict[str, str]:
        """Slot key -> true task (known to the simulator for metrics, never to the server)."""
        return {slot_key(s, i): t for s, ts in self.site_tasks.items() for i, t in enumerate(ts)}

    def slots_of(self, site: str) -> list[ClientSlot]:
        return [
            ClientSlot(slot_key(site, i), t, self.encoded_train(site, t), len(self.data.train[site][t]))
            for i, t in enumerate(self.site_tasks[site])
        ]

    # models -----------------------------------------------------------------
    @property
    def model(self) -> SlotModel:
        """One adapter + max-width head per task (FL-TAC, oracle, local, central)."""
        if "model" not in self._cache:
            from fltac_secure.learning.model import SlotModel

            self._cache["model"] = SlotModel(self.plan, self.task_names)
        return self._cache["model"]

    def shared_model(self, head_width: int) -> SlotModel:
        """One shared adapter + one head of ``head_width`` positions, all trainable (the FedIT variants)."""
        key = f"shared/{head_width}"
        if key not in self._cache:
            from fltac_secure.learning.model import SlotModel

            self._cache[key] = SlotModel(self.plan, [FEDIT_SLOT], head_width=head_width,
                                         label_ranges={FEDIT_SLOT: (0, head_width)})
        return self._cache[key]

    # encoded data (tokenised once) -------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if "tokenizer" not in self._cache:
            from fltac_secure.learning.model import load_tokenizer

            self._cache["tokenizer"] = load_tokenizer(self.plan.model.base)
        return self._cache["tokenizer"]

    def _encode(self, name: str, ds: TaskDataset, offset: int = 0, tag: str = "") -> EncodedDataset:
        """Tokenise once per (name, offset, tag); ``tag`` is prepended to every text, ``offset`` added to labels."""
        key = f"{name}/{offset}/{tag}"
        if key not in self._cache:
            from fltac_secure.data import TaskDataset
            from fltac_secure.learning.train import encode

            if tag:
                ds = TaskDataset(ds.task, [tag + x for x in ds.texts], ds.labels)
            self._cache[key] = encode(self.tokenizer, ds, self.plan.training.max_seq_length, label_offset=offset)
        return self._cache[key]

    def encoded_train(self, site: str, task: str, *, offset: int = 0, tag: str = "") -> EncodedDataset:
        return self._encode(f"train/{site}/{task}", self.data.train[site][task], offset, tag)

    def encoded_site_test(self, site: str, task: str, *, offset: int = 0, tag: str = "") -> EncodedDataset | None:
        ds = self.data.site_test.get(site, {}).get(task)
        if ds is None or len(ds) == 0:
            return None
        return self._encode(f"site_test/{site}/{task}", ds, offset, tag)

    def encoded_test(self, task: str, *, offset: int = 0, tag: str = "") -> EncodedDataset:
        return self._encode(f"test/{task}", self.data.test[task], offset, tag)

    def encoded_pooled(self, task: str) -> EncodedDataset:
        """All sites' training data of one task (centralised baseline)."""
        from fltac_secure.data import TaskDataset

        parts = [self.data.train[s][task] for s in self.sites if task in self.data.train[s]]
        pooled = TaskDataset(task, [x for p in parts for x in p.texts], np.concatenate([p.labels for p in parts]))
        return self._encode(f"pooled/{task}", pooled)

    def encoded_mixed_train(self, site: str, offsets: Mapping[str, int]) -> EncodedDataset:
        """A site's tasks mixed into one data set, each task's labels shifted by ``offsets[task]``."""
        from fltac_secure.data import TaskDataset

        tasks = self.site_tasks[site]
        texts = [x for t in tasks for x in self.data.train[site][t].texts]
        labels = np.concatenate([self.data.train[site][t].labels + offsets[t] for t in tasks])
        shift = ",".join(str(offsets[t]) for t in tasks)
        return self._encode(f"mixed_train/{site}/{shift}", TaskDataset("+".join(tasks), texts, labels))

    def n_train(self, site: str, task: str | None = None) -> int:
        tasks = [task] if task else self.site_tasks[site]
        return sum(len(self.data.train[site][t]) for t in tasks)
