"""Save a slot as a standard peft adapter (plus its head) and load it back.

A folder written by ``export_peft`` holds:

- ``adapter_config.json`` + ``adapter_model.safetensors``: the LoRA adapter in
  peft's own format, so ``PeftModel.from_pretrained(base, folder)`` loads it
  into any copy of the base model, with or without fltac_secure.
  ``base_model_name_or_path`` names a base that ``from_pretrained`` can load:
  the public hub id for ``minilm`` (``sentence-transformers/all-MiniLM-L6-v2``;
  ``fltac.json`` notes the local copy in ``base_path``), the absolute folder
  for a base given as a folder; the random test bases (``tiny-bert``,
  ``tiny-vit``) exist nowhere else and only ``fltac_secure.load_adapter``
  rebuilds them;
- ``head.safetensors``: the classification head, tensors ``head.weight``
  ``(head_width, hidden)`` and ``head.bias`` ``(head_width,)`` (the names of
  ``fltac.json``'s ``layout`` and ``head``), applied to the encoder output
  mean-pooled over the attention mask;
- ``fltac.json``: what the numbers mean: task and labels, ``label_range``
  (the head positions the task uses: logits ``[lo:hi]``, label ``i`` is
  ``labels[i]``), ``pooling``, ``max_seq_length``, base, LoRA settings, the
  adapter layout, and for the aggregator's cluster folders the member slots.

Using it: ``fltac_secure.load_adapter(folder).predict(texts)``
(``learning/classifier.py``), or by hand as that module's docstring shows.
Only safetensors and JSON: loading an exported adapter can never run code.
Every file is written atomically (temp file, fsync, rename) and
``fltac.json`` last, so a folder with ``fltac.json`` is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import save as save_torch_bytes

from fltac_secure.atomic import atomic_write_bytes
from fltac_secure.errors import ConfigError, StateError
from fltac_secure.learning.adapters import HEAD_NAMES, model_layout, set_slot_vector, tensors_to_vector
from fltac_secure.learning.model import PUBLIC_IDS, SlotModel, base_path

if TYPE_CHECKING:
    from fltac_secure.plan import Plan, Task

FORMAT = "fltac-adapter/1"
PEFT_PREFIX = "base_model.model."
HEAD_FILE = "head.safetensors"


def base_reference(ref: str) -> tuple[str, str | None]:
    """(what ``adapter_config.json`` names, the local folder or None) for a plan's base reference."""
    local = base_path(ref)
    public = PUBLIC_IDS.get(ref)
    if public is not None:
        return public, str(local) if local else None
    return (str(local) if local else ref), (str(local) if local else None)


def _adapter_config(model: SlotModel) -> dict[str, Any]:
    """peft's adapter_config.json content for this model's LoRA settings."""
    cfg = model.lora.to_dict()
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["peft_type"] = str(getattr(cfg["peft_type"], "value", cfg["peft_type"]))
    cfg["inference_mode"] = True
    cfg["base_model_name_or_path"] = base_reference(model.base_ref)[0]
    return cfg


def export_peft(model: SlotModel, slot: str, out_dir: Path, *, task: Task | None = None,
                extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``slot``'s adapter (peft format), head and metadata into ``out_dir``; returns ``out_dir``.

    ``extra``: more keys for ``fltac.json`` (e.g. a cluster's members); they cannot replace the standard ones.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = model.slot_parameters(slot)
    layout = model_layout(model, slot)
    lora = {PEFT_PREFIX + n: params[n].detach().contiguous().clone() for n in layout.names if n not in HEAD_NAMES}
    if not model.train_a:  # FFA-LoRA: the frozen shared A is not in the vector, but peft needs it
        lora.update({PEFT_PREFIX + n: a.detach().contiguous().clone() for n, a in model.lora_a(slot).items()})
    head = {n: params[n].detach().clone() for n in HEAD_NAMES}
    public, local = base_reference(model.base_ref)
    meta = {
        "format": FORMAT, "slot": slot, "task": task.name if task else None,
        "labels": list(task.labels) if task else None, "label_range": list(model.label_range(slot)),
        "head_width": model.head_width, "hidden_size": model.hidden_size, "base": model.base_ref,
        "base_seed": model.base_seed, "rank": int(model.lora.r), "alpha": float(model.lora.lora_alpha),
        "target_modules": sorted(model.lora.target_modules), "pooling": "mean",
        "max_seq_length": int(model.max_seq_length), "base_model_name_or_path": public, "base_path": local,
        "head": {"file": HEAD_FILE, "weight": "head.weight", "bias": "head.bias"},
        "layout": [[n, list(s)] for n, s in layout.entries], "adapter_size": layout.size,
    }
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ValueError(f"extra fltac.json keys {clash} would replace standard ones")
    meta.update(extra or {})
    atomic_write_bytes(out_dir / "adapter_config.json", json.dumps(_adapter_config(model), indent=2).encode())
    atomic_write_bytes(out_dir / "adapter_model.safetensors", save_torch_bytes(lora, metadata={"format": "pt"}))
    atomic_write_bytes(out_dir / HEAD_FILE, save_torch_bytes(head, metadata={"format": "pt"}))
    atomic_write_bytes(out_dir / "fltac.json", json.dumps(meta, indent=2).encode())
    return out_dir


def read_metadata(out_dir: Path) -> dict[str, Any]:
    """``fltac.json`` of an exported folder, checked for format and presence of the weight files."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "fltac.json"
    if not meta_path.is_file():
        raise StateError(f"{out_dir} has no fltac.json: not an exported fltac adapter (or an interrupted export)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise StateError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    for name in ("adapter_model.safetensors", "head.safetensors", "adapter_config.json"):
        if not (out_dir / name).is_file():
            raise StateError(f"{out_dir} lacks {name}; re-export the adapter")
    return meta


def load_exported(out_dir: Path, plan: Plan) -> SlotModel:
    """A one-slot SlotModel with the exported adapter and head loaded; refuses another plan's export."""
    out_dir = Path(out_dir)
    meta = read_metadata(out_dir)
    lora = plan.model.lora
    if meta["base"] != plan.model.base or meta["rank"] != lora.rank or float(meta["alpha"]) != float(lora.alpha):
        raise ConfigError(f"{out_dir} was exported for base {meta['base']!r}, rank {meta['rank']}, alpha "
                          f"{meta['alpha']}, but the plan has {plan.model.base!r}, {lora.rank}, {lora.alpha}; "
                          "load it with the plan it was trained under")
    slot = str(meta["slot"])
    model = SlotModel(plan, [slot], head_width=int(meta["head_width"]), base_seed=int(meta["base_seed"]),
                      label_ranges={slot: tuple(meta["label_range"])})
    tensors: dict[str, np.ndarray] = {}
    for key, arr in load_np(str(out_dir / "adapter_model.safetensors")).items():
        if not key.startswith(PEFT_PREFIX):
            raise StateError(f"{out_dir}/adapter_model.safetensors: unexpected tensor {key!r}")
        tensors[key[len(PEFT_PREFIX):]] = arr
    tensors.update(read_head(out_dir))
    layout = model_layout(model, slot)
    frozen = model.lora_a(slot) if not model.train_a else {}
    for name, param in frozen.items():  # FFA-LoRA: load the exported A into the frozen one
        arr = tensors.pop(name, None)
        if arr is None or tuple(arr.shape) != tuple(param.shape):
            raise StateError(f"{out_dir}/adapter_model.safetensors lacks {name!r} (shape {tuple(param.shape)}); "
                             "re-export the adapter")
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(arr)).to(param.dtype))
    set_slot_vector(model, slot, tensors_to_vector(layout, tensors))
    return model


def read_head(out_dir: Path) -> dict[str, np.ndarray]:
    """``head.weight`` and ``head.bias`` of an exported folder (exports before issue 15 named them weight, bias)."""
    path = Path(out_dir) / HEAD_FILE
    raw = load_np(str(path))
    head = {(k if k.startswith("head.") else f"head.{k}"): v for k, v in raw.items()}
    if sorted(head) != sorted(HEAD_NAMES):
        raise StateError(f"{path} holds {sorted(raw)}, expected {list(HEAD_NAMES)}; re-export the adapter")
    return head
