"""Pure learning code: model + adapters, local training, sketch, cluster, aggregate.

Public names are exported lazily (PEP 562), so ``import fltac_secure.learning.sketch``
on the aggregator does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # seeding
    "derive_seed": "seeding",
    # model
    "SlotModel": "model", "load_base": "model", "load_tokenizer": "model", "base_config": "model",
    "KNOWN_BASES": "model", "NEG_LOGIT": "model",
    # adapters
    "Layout": "adapters", "adapter_layout": "adapters", "model_layout": "adapters",
    "get_slot_vector": "adapters", "set_slot_vector": "adapters", "vector_to_tensors": "adapters",
    "tensors_to_vector": "adapters", "initial_vector": "adapters",
    # train
    "EncodedDataset": "train", "encode": "train", "train_slot": "train", "evaluate_slot": "train",
    "predict_slot": "train",
    # export
    "export_peft": "export", "load_exported": "export", "read_metadata": "export",
    # vision
    "tiny_vit_config": "vision", "encode_images": "vision", "digits_split": "vision",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fltac_secure.learning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fltac_secure.learning.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
