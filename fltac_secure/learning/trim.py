"""Head-row trimming (``compression.trim_head``): a slot sends only the head rows its task uses.

The head is as wide as the plan's widest task, but a task with ``k`` labels
masks the logits beyond ``k``: rows ``k`` and up of ``head.weight`` and
``head.bias`` get no gradient and never change.  With trimming on, a slot's
vector is kept in *canonical form*: those rows hold the *initial* head
(``initial_vector(plan, plan.training.seed)``), which every site and the
aggregator regenerate from the plan, so they never travel.  The *wire part*
of a vector is its LoRA entries (all of them, in layout order) then head
rows ``0..k-1`` of the weight, then entries ``0..k-1`` of the bias:
``lora_size + k * (hidden + 1)`` numbers.

Clustering stays comparable across slots of different widths: sketches are
taken on the canonical *full-length* vector, the same length for every slot;
the unused rows sit at the common initial values, so after centering they
add nothing to the distances.

Every function checks shapes strictly and raises a ValueError naming the
expected size (a vector made for another task or plan is refused, never
padded or cut).
"""

from __future__ import annotations

import numpy as np

from fltac_secure.learning.adapters import Layout

__all__ = ["canonical", "head_hidden", "trim", "untrim", "wire_mask", "wire_size"]


def head_hidden(layout: Layout) -> tuple[int, int]:
    """The head's (width, hidden) from the layout."""
    shapes = dict(layout.entries)
    width, hidden = shapes["head.weight"]
    return int(width), int(hidden)


def _check_k(layout: Layout, k: int) -> int:
    width, _ = head_hidden(layout)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= int(k) <= width:
        raise ValueError(f"a task's label count must be an integer in 1..{width} (the head's width), got {k!r}")
    return int(k)


def wire_mask(layout: Layout, k: int) -> np.ndarray:
    """Boolean mask over the full vector: True on the entries a task with ``k`` labels sends."""
    k = _check_k(layout, k)
    _, hidden = head_hidden(layout)
    sl = layout.slices()
    mask = layout.lora_mask()
    w, b = sl["head.weight"], sl["head.bias"]
    mask[w.start: w.start + k * hidden] = True
    mask[b.start: b.start + k] = True
    return mask


def wire_size(layout: Layout, k: int) -> int:
    """Numbers a task with ``k`` labels sends: ``lora_size + k * (hidden + 1)``."""
    k = _check_k(layout, k)
    return layout.lora_size + k * (head_hidden(layout)[1] + 1)


def _full(layout: Layout, vec: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.shape[0] != layout.size:
        raise ValueError(f"{what} has shape {arr.shape}, expected ({layout.size},) (the full adapter vector)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} has dtype {arr.dtype}, expected a float array")
    return arr


def trim(layout: Layout, vec: np.ndarray, k: int) -> np.ndarray:
    """The wire part of a full vector for a task with ``k`` labels (a float32 copy)."""
    arr = _full(layout, vec, "vector to trim")
    return arr[wire_mask(layout, k)].astype(np.float32, copy=True)


def untrim(layout: Layout, part: np.ndarray, k: int, fill: np.ndarray) -> np.ndarray:
    """The full vector: ``part`` on a task's wire entries, ``fill`` (the initial vector) everywhere else."""
    mask = wire_mask(layout, k)
    n = int(mask.sum())
    arr = np.asarray(part)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"trimmed vector has shape {arr.shape}, expected ({n},) for a task with {k} labels "
                         f"(LoRA {layout.lora_size} + {k} head rows); was it made for another task or plan?")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"trimmed vector has dtype {arr.dtype}, expected a float array")
    out = _full(layout, fill, "fill vector").astype(np.float32, copy=True)
    out[mask] = arr
    return out


def canonical(layout: Layout, vec: np.ndarray, k: int, init: np.ndarray) -> np.ndarray:
    """``vec`` with the head rows ``>= k`` reset to ``init``'s (a float32 copy): what a trimmed slot holds."""
    arr = _full(layout, vec, "vector")
    return untrim(layout, arr[wire_mask(layout, k)], k, init)
