"""Analytic parameter counts per message, from the model config (no weights loaded).

Used by the audit to say what FedIT and full fine-tuning would have sent, and
by tests that check the ledger's counts against the adapters' shapes.

Every count is linear in a few facts about the base model (``ModelFacts``):
LoRA parameters per unit of rank over the plan's target modules, the head's
input width and the base model's parameter count.  Working them out needs
torch and transformers (a meta-device model: no weights, but seconds of
imports), so the roles record them in their workspace when they start
(``record_model_facts``) and ``fltac audit`` reads them back
(``workspace_model_facts``) without importing either.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fltac_secure.federation.audit import ModelSizes
from fltac_secure.plan import Plan

MODEL_FACTS_FILE = "model_facts.json"
"""Written next to ``plan.yaml`` in each role's workspace."""


@dataclass(frozen=True)
class ModelFacts:
    """What the parameter counts of ``base`` with LoRA on ``target_modules`` depend on."""

    base: str
    target_modules: tuple[str, ...]
    lora_per_rank: int  # LoRA parameters at rank 1: the sum of (in + out) over the targeted linears
    lora_b_per_rank: int  # LoRA B at rank 1 (FFA-LoRA sends B only): the sum of out over the targeted linears
    hidden: int  # the head's input width
    base_parameters: int  # every parameter of the base model

    def matches(self, plan: Plan) -> bool:
        return (self.base, self.target_modules) == (plan.model.base, tuple(plan.model.lora.target_modules))


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


def model_facts(plan: Plan) -> ModelFacts:
    """The plan's model facts, worked out from the base model's config (imports torch and transformers)."""
    from fltac_secure.learning.adapters import adapter_layout

    layout = adapter_layout(with_rank(plan, 1), head_width=1, train_a=True)
    b_only = adapter_layout(with_rank(plan, 1), head_width=1, train_a=False)
    return ModelFacts(
        base=plan.model.base,
        target_modules=tuple(plan.model.lora.target_modules),
        lora_per_rank=layout.lora_size,
        lora_b_per_rank=b_only.lora_size,
        hidden=layout.size - layout.lora_size - 1,  # head: 1 x hidden weights + 1 bias
        base_parameters=base_parameter_count(plan.model.base),
    )


def record_model_facts(workspace: Path, plan: Plan) -> Path:
    """Write the plan's model facts into ``workspace`` (atomically) for a later ``fltac audit``."""
    from fltac_secure.federation.storage import write_json

    path = Path(workspace) / MODEL_FACTS_FILE
    write_json(path, asdict(model_facts(plan)))
    return path


def workspace_model_facts(workspace: Path, plan: Plan) -> ModelFacts:
    """The facts a role recorded in ``workspace`` if they fit ``plan``; otherwise worked out (slow)."""
    try:
        raw = json.loads((Path(workspace) / MODEL_FACTS_FILE).read_text(encoding="utf-8"))
        facts = ModelFacts(base=str(raw["base"]), target_modules=tuple(str(t) for t in raw["target_modules"]),
                           lora_per_rank=int(raw["lora_per_rank"]), lora_b_per_rank=int(raw["lora_b_per_rank"]),
                           hidden=int(raw["hidden"]),
                           base_parameters=int(raw["base_parameters"]))
    except (OSError, ValueError, KeyError, TypeError):  # missing (older workspace) or damaged: recompute
        return model_facts(plan)
    return facts if facts.matches(plan) else model_facts(plan)


def model_sizes(plan: Plan, fedit_rank: int | None = None, facts: ModelFacts | None = None) -> ModelSizes:
    """FL-TAC adapter size, FedIT adapter size at ``fedit_rank`` and full-model size for ``plan``.

    FL-TAC: LoRA A and B, or B only with A frozen (FFA-LoRA), plus the head; with ``compression.trim_head``
    also what one slot of each task sends (``slot_wire_sizes``).
    FedIT: one LoRA adapter (A and B, as the paper trains it) at ``fedit_rank`` (default: the plan's rank) and one
    head over the union of all tasks' labels. Full fine-tuning: every base
    parameter plus that same head.  ``facts`` defaults to working them out.
    """
    facts = facts if facts is not None else model_facts(plan)
    rank = plan.model.lora.rank if fedit_rank is None else fedit_rank
    total_labels = sum(t.num_labels for t in plan.tasks)
    head = total_labels * (facts.hidden + 1)
    return ModelSizes(
        fltac_adapter=plan.model.lora.rank * (facts.lora_per_rank if plan.trains_lora_a else facts.lora_b_per_rank)
        + plan.max_labels * (facts.hidden + 1),
        fedit_adapter=rank * facts.lora_per_rank + head,
        full_model=facts.base_parameters + head,
        fedit_rank=rank,
        fltac_slots=slot_wire_sizes(plan, facts) if plan.compression.trim_head else {},
    )


def slot_wire_sizes(plan: Plan, facts: ModelFacts | None = None) -> dict[str, int]:
    """Numbers one slot of each task sends per round (and receives): the FL-TAC adapter, or with
    ``compression.trim_head`` its LoRA part and only its task's head rows, ``k * (hidden + 1)``."""
    facts = facts if facts is not None else model_facts(plan)
    lora = plan.model.lora.rank * (facts.lora_per_rank if plan.trains_lora_a else facts.lora_b_per_rank)
    rows = {t.name: t.num_labels if plan.compression.trim_head else plan.max_labels for t in plan.tasks}
    return {name: lora + k * (facts.hidden + 1) for name, k in rows.items()}
