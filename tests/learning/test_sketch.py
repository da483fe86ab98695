"""Sketches: seeded, identical across processes, chunking-invariant, distance-preserving (JL)."""

from __future__ import annotations

import subprocess
import sys
from itertools import pairwise

import numpy as np
import pytest

from fltac_secure.learning.sketch import (
    BLOCK_ROWS,
    RademacherSketcher,
    available_sketchers,
    make_sketcher,
    register_sketcher,
    round_sketch_seed,
)

KINDS = ["rademacher", "gaussian"]


def _vec(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_seed_depends_on_base_and_round() -> None:
    seeds = {round_sketch_seed(b, r) for b in range(3) for r in range(5)}
    assert len(seeds) == 15
    assert round_sketch_seed(4, 2) == round_sketch_seed(4, 2)
    with pytest.raises(ValueError):
        round_sketch_seed(-1, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_sketch_other_seed_differs(kind: str) -> None:
    x = _vec(2, 3000)
    a = make_sketcher(32, 7, kind).sketch(x)
    b = make_sketcher(32, 7, kind).sketch(x)
    c = make_sketcher(32, 8, kind).sketch(x)
    assert a.shape == (2, 32)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_identical_in_another_process() -> None:
    x = _vec(1, 2 * BLOCK_ROWS + 123, seed=3)[0]
    here = make_sketcher(48, round_sketch_seed(5, 2)).sketch(x)
    code = (
        "import sys, numpy as np\n"
        "from fltac_secure.learning.sketch import make_sketcher, round_sketch_seed\n"
        f"x = np.random.default_rng(3).standard_normal((1, {2 * BLOCK_ROWS + 123})).astype(np.float32)[0]\n"
        "sys.stdout.write(make_sketcher(48, round_sketch_seed(5, 2)).sketch(x).tobytes().hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert bytes.fromhex(out) == here.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_explicit_matrix(kind: str) -> None:
    d = 2 * BLOCK_ROWS + 777
    x = _vec(3, d, seed=1)
    sk = make_sketcher(16, 11, kind)
    whole = sk.sketch(x)
    explicit = x.astype(np.float64) @ sk.matrix(d).astype(np.float64)
    np.testing.assert_allclose(whole, explicit, rtol=1e-4, atol=1e-3)
    cuts = [0, 5, BLOCK_ROWS - 1, BLOCK_ROWS + 10, 2 * BLOCK_ROWS, d]
    parts = [x[:, a:b] for a, b in pairwise(cuts)]
    np.testing.assert_allclose(sk.sketch_parts(parts), whole, rtol=1e-5, atol=1e-4)
    # a prefix's projection does not depend on the total length
    np.testing.assert_allclose(sk.sketch(x[:, :100]), x[:, :100].astype(np.float64) @ sk.matrix(100), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_preserves_pairwise_distances_within_jl_error(kind: str) -> None:
    dim, n, d = 256, 20, 20000
    x = _vec(n, d, seed=2)
    y = make_sketcher(dim, 3, kind).sketch(x)
    ratios = []
    for i in range(n):
        for j in range(i + 1, n):
            ratios.append(np.linalg.norm(y[i] - y[j]) ** 2 / np.linalg.norm(x[i] - x[j]) ** 2)
    r = np.array(ratios)
    # squared-distance ratio has mean 1 and std sqrt(2/dim) ~ 0.088
    assert abs(r.mean() - 1) < 0.05
    assert np.all(np.abs(r - 1) < 5 * np.sqrt(2 / dim))
    assert 0.5 * np.sqrt(2 / dim) < r.std() < 2 * np.sqrt(2 / dim)


def test_bad_inputs_and_registry() -> None:
    sk = make_sketcher(8, 0)
    with pytest.raises(ValueError, match="NaN"):
        sk.sketch(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="shape"):
        sk.sketch(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="unknown sketcher"):
        make_sketcher(8, 0, "nope")
    with pytest.raises(ValueError, match="already registered"):
        register_sketcher(RademacherSketcher)
    assert set(KINDS) <= set(available_sketchers())
    assert sk.sketch(np.zeros(10)).shape == (8,)
