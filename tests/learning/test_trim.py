"""Head-row trimming helpers (learning.trim): exact round trips, strict sizes, canonical form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fltac_secure.learning.adapters import Layout, adapter_layout, initial_vector
from fltac_secure.learning.trim import canonical, head_hidden, trim, untrim, wire_mask, wire_size
from fltac_secure.plan import Plan

# a small hand-made layout (no model config needed): LoRA 2x3 + 4x2, head 5 rows x 3 hidden
LAYOUT = Layout((("m.lora_A.weight", (2, 3)), ("m.lora_B.weight", (4, 2)), ("head.weight", (5, 3)), ("head.bias", (5,))))


def test_wire_mask_selects_lora_and_the_first_k_rows() -> None:
    assert head_hidden(LAYOUT) == (5, 3) and LAYOUT.lora_size == 14 and LAYOUT.size == 14 + 15 + 5
    vec = np.arange(LAYOUT.size, dtype=np.float32)
    part = trim(LAYOUT, vec, 2)
    expected = np.concatenate([vec[:14], vec[14:14 + 6], vec[29:31]])
    np.testing.assert_array_equal(part, expected)
    assert wire_size(LAYOUT, 2) == part.size == 14 + 2 * 4 == int(wire_mask(LAYOUT, 2).sum())
    assert wire_size(LAYOUT, 5) == LAYOUT.size


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_round_trip_is_exact_and_fills_the_rest(k: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    vec = g.normal(size=LAYOUT.size).astype(np.float32)
    fill = g.normal(size=LAYOUT.size).astype(np.float32)
    full = untrim(LAYOUT, trim(LAYOUT, vec, k), k, fill)
    mask = wire_mask(LAYOUT, k)
    np.testing.assert_array_equal(full[mask], vec[mask])
    np.testing.assert_array_equal(full[~mask], fill[~mask])
    np.testing.assert_array_equal(full, canonical(LAYOUT, vec, k, fill))
    np.testing.assert_array_equal(trim(LAYOUT, full, k), trim(LAYOUT, vec, k))
    assert full.dtype == np.float32


def test_wrong_lengths_and_widths_are_refused() -> None:
    vec = np.zeros(LAYOUT.size, np.float32)
    with pytest.raises(ValueError, match=r"expected \(34,\)"):
        trim(LAYOUT, vec[:-1], 2)
    part = trim(LAYOUT, vec, 2)
    with pytest.raises(ValueError, match=r"expected \(22,\) for a task with 2 labels"):
        untrim(LAYOUT, part[:-1], 2, vec)
    with pytest.raises(ValueError, match=r"expected \(22,\)"):
        untrim(LAYOUT, np.concatenate([part, [0.0]]).astype(np.float32), 2, vec)
    with pytest.raises(ValueError, match=r"expected \(26,\)"):  # made for 2 labels, read as 3
        untrim(LAYOUT, part, 3, vec)
    with pytest.raises(ValueError, match="fill vector"):
        untrim(LAYOUT, part, 2, vec[:-1])
    for bad in (0, 6, True, 2.0):
        with pytest.raises(ValueError, match=r"1\.\.5"):
            wire_size(LAYOUT, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        untrim(LAYOUT, part.astype(np.int64), 2, vec)


def test_real_layout_sizes() -> None:
    plan = Plan(federation="t", rounds=1, roster=["a"],
                tasks=[{"name": "x", "labels": ["n", "p"]}, {"name": "y", "labels": ["a", "b", "c", "d"]}],
                model={"base": "tiny-bert", "lora": {"rank": 2, "alpha": 8}})
    lay = adapter_layout(plan)
    width, hidden = head_hidden(lay)
    assert width == 4
    assert wire_size(lay, 2) == lay.lora_size + 2 * (hidden + 1) == lay.size - 2 * (hidden + 1)
    init = initial_vector(plan, 0)
    np.testing.assert_array_equal(canonical(lay, init, 2, init), init)
