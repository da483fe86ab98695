"""The federated split of one task's examples over the roster (as in the FL-TAC paper).

Per task, the sites' shares are drawn from Dirichlet(alpha); a site whose share
is under ``min_share`` gets none of the task (its examples go to the others in
proportion to their shares), so with a small alpha sites hold different numbers
of tasks. Every example goes to exactly one site; the split is fixed by a seed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from fltac_secure.errors import DataError


def task_seed(seed: int, name: str, *extra: int) -> int:
    """A seed derived from the partition seed and a name (task, site/task), so draws are independent."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode()), *extra]).generate_state(1)[0])


def _round_counts(n: int, shares: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n``, proportional to ``shares`` (largest remainder)."""
    exact = shares * n
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _apply_min_share(n: int, shares: np.ndarray, min_share: float) -> np.ndarray:
    """Counts where no site holds a positive fraction below ``min_share`` of the ``n`` examples.

    Shares under the threshold are zeroed and the rest renormalised; rounding can
    push a share just over the threshold below it, so this repeats until stable.
    If every share would go, the largest one takes everything.
    """
    largest = int(np.argmax(shares))
    shares = shares.copy()
    while True:
        keep = shares >= min_share
        if not keep.any():
            keep[largest] = True
        shares = np.where(keep, shares, 0.0)
        shares = shares / shares.sum()
        counts = _round_counts(n, shares)
        small = (counts > 0) & (counts < min_share * n)
        zero_share = (counts == 0) & (shares > 0)
        if not small.any() and not zero_share.any():
            return counts
        shares = np.where(small | zero_share, 0.0, shares)
        if shares.sum() == 0:  # nothing left: the originally largest share takes all
            counts = np.zeros_like(counts)
            counts[largest] = n
            return counts


def dirichlet_shares(num_sites: int, alpha: float, seed: int) -> np.ndarray:
    """Raw Dirichlet(alpha, ..., alpha) shares over ``num_sites`` sites."""
    return np.random.default_rng(seed).dirichlet(np.full(num_sites, float(alpha)))


def dirichlet_partition(
    n: int, sites: Sequence[str], alpha: float, min_share: float, seed: int
) -> dict[str, np.ndarray]:
    """Split example positions 0..n-1 over ``sites``: Dirichlet(alpha) shares, the min-share rule.

    Returns site -> sorted int64 positions; every position appears exactly once;
    a site may get an empty array. The same arguments always give the same split.
    """
    if not sites:
        raise DataError("cannot partition over an empty roster; add sites to the plan")
    if len(set(sites)) != len(sites):
        raise DataError(f"duplicate site names in {list(sites)}; every site appears once")
    if alpha <= 0:
        raise DataError(f"partition alpha must be > 0, got {alpha}")
    if not 0 <= min_share < 1:
        raise DataError(f"partition min_share must be in [0, 1), got {min_share}")
    if n < 0:
        raise DataError(f"number of examples must be >= 0, got {n}")
    shares = dirichlet_shares(len(sites), alpha, seed)
    counts = _apply_min_share(n, shares, min_share) if n else np.zeros(len(sites), dtype=np.int64)
    perm = np.random.default_rng([seed, 1]).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {s: np.sort(perm[bounds[i] : bounds[i + 1]]).astype(np.int64) for i, s in enumerate(sites)}
