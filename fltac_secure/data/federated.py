"""A whole federation's data in memory: per-site task slots, local and global test sets.

Per task (in this order): the shipped data set (capped), a fixed stratified
global held-out test split, a Dirichlet split of the rest over the roster (the
min-share rule), and per (site, task) slot a local stratified held-out part.
Everything is derived from one partition seed, so every run and every process
builds exactly the same federation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fltac_secure.data.dataset import TaskDataset, train_test_split
from fltac_secure.data.partition import dirichlet_partition, task_seed
from fltac_secure.data.sources import load_demo_task
from fltac_secure.errors import DataError
from fltac_secure.plan.schema import Plan, Task

Loader = Callable[..., TaskDataset]  # (task, *, max_examples, seed) -> TaskDataset
MAX_PARTITION_ATTEMPTS = 100


@dataclass
class FederatedData:
    """``train[site][task]`` (non-empty slots only), ``site_test[site][task]`` (non-empty local
    held-out parts of those slots) and ``test[task]`` (the global held-out test set)."""

    train: dict[str, dict[str, TaskDataset]]
    site_test: dict[str, dict[str, TaskDataset]]
    test: dict[str, TaskDataset]
    sites: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sites:
            self.sites = list(self.train)

    def tasks_of(self, site: str) -> list[str]:
        """The tasks a site holds training data for."""
        return list(self.train.get(site, {}))

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """site -> task -> {"train": n, "test": m} for every slot a site holds."""
        return {
            s: {
                t: {"train": len(ds), "test": len(self.site_test.get(s, {}).get(t, ()))}
                for t, ds in self.train.get(s, {}).items()
            }
            for s in self.sites
        }


def _partition_task(
    pool: TaskDataset, plan: Plan, seed: int, attempt: int
) -> dict[str, TaskDataset]:
    p = plan.partition
    extra = (attempt,) if attempt else ()
    parts = dirichlet_partition(len(pool), plan.roster, p.alpha, p.min_share, task_seed(seed, pool.task, *extra))
    return {s: pool.subset(idx) for s, idx in parts.items() if len(idx)}


def _split_all(
    plan: Plan, pools: dict[str, TaskDataset], seed: int, require_every_site: bool
) -> dict[str, dict[str, TaskDataset]]:
    """site -> task -> slot; retried with derived seeds until every site holds a task (if required)."""
    for attempt in range(MAX_PARTITION_ATTEMPTS):
        slots: dict[str, dict[str, TaskDataset]] = {s: {} for s in plan.roster}
        for name, pool in pools.items():
            for s, part in _partition_task(pool, plan, seed, attempt).items():
                slots[s][name] = part
        empty = [s for s, tasks in slots.items() if not tasks]
        if not require_every_site or not empty:
            return slots
    raise DataError(
        f"no partition in {MAX_PARTITION_ATTEMPTS} tries gave every site data (e.g. {empty[:3]} got none); "
        "raise partition.alpha, lower partition.min_share, add tasks or shrink the roster"
    )


def build_federated_data(
    plan: Plan, *, seed: int | None = None, loader: Loader = load_demo_task, require_every_site: bool = True
) -> FederatedData:
    """The plan's federation in memory, from each task's demo source (or ``loader``).

    Settings come from ``plan.partition`` (alpha, min_share, seed, test_fraction,
    max_examples_per_task); ``seed`` overrides its seed. With ``require_every_site``
    a split that leaves some site with no task at all is redrawn from a derived
    seed (deterministically): a site without data could not take part.
    """
    p = plan.partition
    seed = p.seed if seed is None else seed
    pools, test = {}, {}
    for task in plan.tasks:
        ds = loader(task, max_examples=p.max_examples_per_task, seed=task_seed(seed, task.name))
        _check_loaded(ds, task)
        pools[task.name], test[task.name] = train_test_split(ds, p.test_fraction, task_seed(seed, task.name, 1))
    slots = _split_all(plan, pools, seed, require_every_site)
    train: dict[str, dict[str, TaskDataset]] = {}
    site_test: dict[str, dict[str, TaskDataset]] = {}
    for s in plan.roster:
        for name, part in slots[s].items():
            tr, te = train_test_split(part, p.test_fraction, task_seed(seed, f"{s}/{name}"))
            if len(tr):
                train.setdefault(s, {})[name] = tr
            if len(te):
                site_test.setdefault(s, {})[name] = te
    return FederatedData(train, site_test, test, sites=list(plan.roster))


def _check_loaded(ds: TaskDataset, task: Task) -> None:
    if ds.task != task.name:
        raise DataError(f"loader returned data of task {ds.task!r} for task {task.name!r}")
    if len(ds) < 2:
        raise DataError(f"task {task.name!r} has {len(ds)} example(s); it needs at least 2 to hold out a test set")
    if int(np.max(ds.labels)) >= task.num_labels:
        raise DataError(f"task {task.name!r}: label id {int(np.max(ds.labels))} has no name in {task.labels}")
