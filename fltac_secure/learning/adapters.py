"""The adapter vector: what is sketched, clustered, averaged and sent.

A slot's adapter (its LoRA tensors and its head) is flattened into one
float32 vector in a fixed, documented order, the ``Layout``:

1. LoRA tensors, sorted by module path in *natural* order (``layer.2`` before
   ``layer.10``); per module ``lora_A.weight`` (shape ``(r, in)``) then
   ``lora_B.weight`` (shape ``(out, r)``);
2. ``head.weight`` (shape ``(head_width, hidden)``), then ``head.bias``.

Names are canonical: relative to the base model, without peft's prefix or
adapter name, e.g. ``encoder.layer.0.attention.self.query.lora_A.weight`` -
the same names peft writes in a saved adapter (after ``base_model.model.``).
Because LoRA comes first, ``vec[:layout.lora_size]`` is the LoRA part.

The layout depends on the model *config* only (``adapter_layout``), so the
aggregator can check and unflatten vectors without loading any weights.
Conversions are exact (a bit-for-bit round trip) and strict: a vector of the
wrong size, with NaN/Inf, or a tensor dict with other names or shapes is
refused with a ValueError naming what was expected.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fltac_secure.learning.model import _from_config, base_config, natural_key, resolve_targets
from fltac_secure.learning.seeding import derive_seed

if TYPE_CHECKING:
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.plan import Plan

HEAD_NAMES = ("head.weight", "head.bias")


def _entry_key(name: str) -> tuple[int, tuple[object, ...], str]:
    """Layout order: LoRA by natural module path, A before B; then head weight, head bias."""
    if name in HEAD_NAMES:
        return (1, (), str(HEAD_NAMES.index(name)))
    path, kind, _ = name.rsplit(".", 2)
    return (0, natural_key(path), kind)


@dataclass(frozen=True)
class Layout:
    """Names and shapes of an adapter vector's pieces, in vector order."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.entries]

    @property
    def size(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.entries)

    @property
    def lora_size(self) -> int:
        return sum(int(np.prod(s)) for n, s in self.entries if n not in HEAD_NAMES)

    def lora_mask(self) -> np.ndarray:
        """Boolean mask over the vector: True on LoRA entries (a prefix), False on the head."""
        mask = np.zeros(self.size, dtype=bool)
        mask[: self.lora_size] = True
        return mask

    def slices(self) -> dict[str, slice]:
        out: dict[str, slice] = {}
        start = 0
        for name, shape in self.entries:
            n = int(np.prod(shape))
            out[name] = slice(start, start + n)
            start += n
        return out


def layout_of(entries: Mapping[str, tuple[int, ...]]) -> Layout:
    """A Layout from unordered names and shapes, put in the canonical order."""
    return Layout(tuple((n, tuple(int(d) for d in entries[n])) for n in sorted(entries, key=_entry_key)))


def adapter_layout(plan: Plan, *, head_width: int | None = None, train_a: bool | None = None) -> Layout:
    """The plan's adapter layout, from the base model's config alone (no weights are loaded).

    Without LoRA A when A is frozen (``plan.trains_lora_a`` false, FFA-LoRA; ``train_a`` overrides).
    """
    width = head_width if head_width is not None else plan.max_labels
    lora = plan.model.lora
    with_a = plan.trains_lora_a if train_a is None else train_a
    return _layout(plan.model.base, tuple(lora.target_modules), lora.rank, int(width), bool(with_a))


@functools.lru_cache(maxsize=32)
def _layout(ref: str, targets: tuple[str, ...], rank: int, width: int, with_a: bool = True) -> Layout:
    config = base_config(ref)
    with torch.device("meta"):
        skeleton = _from_config(config)
    entries: dict[str, tuple[int, ...]] = {}
    for path, linear in resolve_targets(skeleton, targets):
        if with_a:
            entries[f"{path}.lora_A.weight"] = (rank, linear.in_features)
        entries[f"{path}.lora_B.weight"] = (linear.out_features, rank)
    hidden = int(config.hidden_size)
    entries["head.weight"] = (width, hidden)
    entries["head.bias"] = (width,)
    return layout_of(entries)


def model_layout(model: SlotModel, slot: str | None = None) -> Layout:
    """The layout of a live model's slot (all slots share it)."""
    params = model.slot_parameters(slot or model.slots[0])
    return layout_of({n: tuple(p.shape) for n, p in params.items()})


def get_slot_vector(model: SlotModel, slot: str) -> np.ndarray:
    """That slot's adapter + head as one float32 vector in layout order (a copy)."""
    params = model.slot_parameters(slot)
    layout = model_layout(model, slot)
    with torch.no_grad():
        flat = torch.cat([params[n].detach().reshape(-1).to(torch.float32) for n in layout.names])
    return flat.numpy().copy()


def _checked_vector(layout: Layout, vec: np.ndarray) -> np.ndarray:
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.shape[0] != layout.size:
        raise ValueError(f"adapter vector has shape {arr.shape}, expected ({layout.size},) for this layout; "
                         "was it made for another plan (rank, targets, base or head width)?")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"adapter vector has dtype {arr.dtype}, expected a float array")
    out = arr.astype(np.float32, copy=True)
    if not np.isfinite(out).all():
        raise ValueError(f"adapter vector has {int((~np.isfinite(out)).sum())} NaN/Inf entries; refusing it")
    return out


def set_slot_vector(model: SlotModel, slot: str, vec: np.ndarray) -> None:
    """Load ``vec`` into that slot (exact inverse of get_slot_vector); checks everything before writing."""
    params = model.slot_parameters(slot)
    layout = model_layout(model, slot)
    pieces = vector_to_tensors(layout, _checked_vector(layout, vec))
    staged = {n: torch.from_numpy(a).to(dtype=params[n].dtype) for n, a in pieces.items()}
    with torch.no_grad():
        for name, tensor in staged.items():
            params[name].copy_(tensor)


def vector_to_tensors(layout: Layout, vec: np.ndarray) -> dict[str, np.ndarray]:
    """Split a vector into named float32 arrays (copies) shaped as in the layout."""
    flat = _checked_vector(layout, vec)
    return {name: flat[sl].reshape(shape).copy() for (name, shape), sl in
            zip(layout.entries, layout.slices().values(), strict=True)}


def tensors_to_vector(layout: Layout, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """Join named arrays into a vector; names and shapes must match the layout exactly."""
    missing = sorted(set(layout.names) - set(tensors))
    extra = sorted(set(tensors) - set(layout.names))
    if missing or extra:
        raise ValueError(f"adapter tensors do not match the layout: missing {missing[:3]}, unexpected {extra[:3]}")
    parts = []
    for name, shape in layout.entries:
        arr = np.asarray(tensors[name])
        if tuple(arr.shape) != shape:
            raise ValueError(f"adapter tensor {name!r} has shape {tuple(arr.shape)}, expected {shape}")
        parts.append(arr.reshape(-1))
    return _checked_vector(layout, np.concatenate(parts) if parts else np.zeros(0, np.float32))


def _uniform(bitgen: np.random.PCG64, n: int, bound: float) -> np.ndarray:
    """U(-bound, bound) from raw 64-bit draws: the stream is fixed across numpy versions."""
    raw = bitgen.random_raw(n) if n else np.zeros(0, dtype=np.uint64)
    unit = (np.asarray(raw, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * (2.0**-53)
    return (unit * 2.0 - 1.0) * bound


def _initial_pieces(plan: Plan, seed: int, head_width: int | None) -> dict[str, np.ndarray]:
    """Every piece of round 0's adapter, LoRA A included, drawn in the full layout's order."""
    layout = adapter_layout(plan, head_width=head_width, train_a=True)
    bitgen = np.random.PCG64(derive_seed("initial_vector", seed, bits=63))
    pieces: dict[str, np.ndarray] = {}
    for name, shape in layout.entries:
        n = int(np.prod(shape))
        if name.endswith("lora_B.weight"):
            flat = np.zeros(n)
        else:  # lora_A (r, in), head.weight (width, hidden), head.bias (width,) with fan-in = hidden
            fan_in = shape[1] if len(shape) == 2 else layout.entries[-2][1][1]
            flat = _uniform(bitgen, n, 1.0 / float(np.sqrt(fan_in)))
        pieces[name] = flat.astype(np.float32).reshape(shape)
    return pieces


def initial_vector(plan: Plan, seed: int, *, head_width: int | None = None) -> np.ndarray:
    """Round 0's common adapter: LoRA A ~ U(+-1/sqrt(in)) as peft initialises it, B = 0, head ~ U(+-1/sqrt(hidden)).

    Computed from the layout and ``seed`` alone, so every process gets the same bits.  With LoRA A
    frozen (FFA-LoRA) the vector leaves A out; B and the head get the same values as with A.
    """
    pieces = _initial_pieces(plan, seed, head_width)
    layout = adapter_layout(plan, head_width=head_width)
    return np.concatenate([pieces[n].reshape(-1) for n in layout.names]).astype(np.float32)


def frozen_lora_a(plan: Plan) -> dict[str, np.ndarray]:
    """LoRA A of FFA-LoRA: the A part of ``initial_vector(plan, plan.training.seed)``'s full draw, by canonical name.

    Every site and the aggregator regenerate it from the plan alone, so A never travels.
    """
    pieces = _initial_pieces(plan, plan.training.seed, None)
    return {n: a for n, a in pieces.items() if n.endswith("lora_A.weight")}
