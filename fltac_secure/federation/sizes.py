"""Analytic parameter counts per message, from the model config (no weights loaded).

Used by the audit to say what FedIT and full fine-tuning would have sent, and
by tests that check the ledger's counts against the adapters' shapes.
"""

from __future__ import annotations

import functools

from fltac_secure.federation.audit import ModelSizes
from fltac_secure.plan import Plan


@functools.lru_cache(maxsize=8)
def base_parameter_count(ref: str) -> int:
    """Every parameter of the base model (instantiated on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoModel

    from fltac_secure.learning.model import base_config

    with torch.device("meta"):
        model = AutoModel.from_config(base_config(ref))
    return int(sum(p.numel() for p in model.parameters()))


def with_rank(plan: Plan, rank: int) -> Plan:
    lora = plan.model.lora.model_copy(update={"rank": rank})
    return plan.model_copy(update={"model": plan.model.model_copy(update={"lora": lora})})


def model_sizes(plan: Plan, fedit_rank: int | None = None) -> ModelSizes:
    """FL-TAC adapter size, FedIT adapter size at ``fedit_rank`` and full-model size for ``plan``.

    FedIT: one LoRA adapter at ``fedit_rank`` (default: the plan's rank) and one
    head over the union of all tasks' labels. Full fine-tuning: every base
    parameter plus that same head.
    """
    from fltac_secure.learning.adapters import adapter_layout

    rank = plan.model.lora.rank if fedit_rank is None else fedit_rank
    total_labels = sum(t.num_labels for t in plan.tasks)
    fedit_layout = adapter_layout(with_rank(plan, rank), head_width=total_labels)
    head = fedit_layout.size - fedit_layout.lora_size
    return ModelSizes(
        fltac_adapter=adapter_layout(plan).size,
        fedit_adapter=fedit_layout.size,
        full_model=base_parameter_count(plan.model.base) + head,
        fedit_rank=rank,
    )
