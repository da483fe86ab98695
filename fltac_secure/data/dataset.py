"""The in-memory task data set and the fixed, stratified train/test split.

A ``TaskDataset`` is one task's texts with integer label ids; an id indexes
the plan task's ``labels`` list, so every site and the aggregator agree on
what class 3 means without ever exchanging data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from fltac_secure.errors import DataError


@dataclass(frozen=True)
class TaskDataset:
    """Texts and int64 label ids (indices into the plan task's ``labels``) of one task."""

    task: str
    texts: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.texts):
            raise DataError(
                f"task {self.task!r}: {len(self.texts)} texts but labels of shape {labels.shape}; "
                "give exactly one label per text"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"task {self.task!r}: label ids must be integers, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise DataError(f"task {self.task!r}: label ids must be >= 0, got {int(labels.min())}")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> "TaskDataset":
        """The examples at positions ``idx`` (in that order), as a new data set."""
        idx = np.asarray(idx, dtype=np.int64)
        return TaskDataset(self.task, [self.texts[i] for i in idx], self.labels[idx].copy())

    def label_counts(self, num_labels: int) -> np.ndarray:
        """Examples per label id, length ``num_labels``."""
        return np.bincount(self.labels, minlength=num_labels)[:num_labels]


def _test_counts(labels: np.ndarray, test_fraction: float) -> dict[int, int]:
    """Test examples per class: proportional, largest-remainder rounded to a fixed total.

    The total is round(n * test_fraction), but at least 1 and at most n - 1 when
    n >= 2, so both parts of a small slot stay usable.
    """
    n = len(labels)
    total = int(round(n * test_fraction))
    if n >= 2:
        total = min(max(total, 1), n - 1)
    else:
        total = 0
    counts = Counter(labels.tolist())
    classes = sorted(counts)
    exact = {c: counts[c] * total / n for c in classes} if n else {}
    out = {c: int(np.floor(exact[c])) for c in classes}
    left = total - sum(out.values())
    # ties broken by class id: deterministic
    by_remainder = sorted(classes, key=lambda c: (-(exact[c] - out[c]), c))
    for c in by_remainder[:left]:
        out[c] += 1
    return out


def train_test_split(ds: TaskDataset, test_fraction: float, seed: int) -> tuple[TaskDataset, TaskDataset]:
    """Split into (train, test), stratified by label, fixed by ``seed``.

    Each class contributes its proportional share of the test set (rounded so the
    total is round(n * test_fraction)); which examples go to the test set is a
    seeded random choice. Both parts keep the original order of the examples.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(ds), dtype=bool)
    for c, k in _test_counts(ds.labels, test_fraction).items():
        members = np.flatnonzero(ds.labels == c)
        test_mask[rng.permutation(members)[:k]] = True
    return ds.subset(np.flatnonzero(~test_mask)), ds.subset(np.flatnonzero(test_mask))


def stratified_sample(ds: TaskDataset, n: int, seed: int) -> TaskDataset:
    """At most ``n`` examples, drawn per class in proportion to the class sizes (seeded)."""
    if n >= len(ds):
        return ds
    _, keep = train_test_split(ds, n / len(ds), seed)
    return keep
