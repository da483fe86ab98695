"""Model sizes for the audit: from recorded facts equal to the live layout, and a bad record is ignored."""

from __future__ import annotations

import json
from pathlib import Path

from fltac_secure.federation.sizes import (
    MODEL_FACTS_FILE, model_facts, model_sizes, record_model_facts, with_rank, workspace_model_facts,
)  # fmt: skip
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.plan import DEMO_PLAN, load_plan

PLAN = load_plan(DEMO_PLAN)
PLAN = PLAN.model_copy(update={"model": PLAN.model.model_copy(update={"base": "tiny-bert"})})


def test_sizes_from_facts_equal_the_layouts() -> None:
    labels = sum(t.num_labels for t in PLAN.tasks)
    for rank in (1, 4, 8):
        sizes = model_sizes(PLAN, rank, model_facts(PLAN))
        assert sizes.fltac_adapter == adapter_layout(PLAN).size
        assert sizes.fedit_adapter == adapter_layout(with_rank(PLAN, rank), head_width=labels).size


def test_recorded_facts_are_read_back_and_checked_against_the_plan(tmp_path: Path) -> None:
    path = record_model_facts(tmp_path, PLAN)
    assert path == tmp_path / MODEL_FACTS_FILE
    assert workspace_model_facts(tmp_path, PLAN) == model_facts(PLAN)
    raw = json.loads(path.read_text())
    raw["base_parameters"] = 7  # what the audit would print if it trusted this record
    path.write_text(json.dumps(raw))
    assert workspace_model_facts(tmp_path, PLAN).base_parameters == 7
    other = PLAN.model_copy(update={"model": PLAN.model.model_copy(update={"base": "minilm"})})
    assert workspace_model_facts(tmp_path, other) == model_facts(other)  # recorded for another base: recomputed
    path.write_text("{not json")
    assert workspace_model_facts(tmp_path, PLAN) == model_facts(PLAN)


def test_slot_wire_sizes_equal_the_trimmed_parts() -> None:
    """With trim_head each task's slot sends LoRA + its own rows; without, the whole adapter; FFA drops A."""
    from fltac_secure.federation.sizes import slot_wire_sizes
    from fltac_secure.federation.trimmed import Trimmer
    from fltac_secure.plan.schema import Compression

    for train_a in (True, False):
        lora = PLAN.model.lora.model_copy(update={"train_a": train_a})
        plan = PLAN.model_copy(update={"model": PLAN.model.model_copy(update={"lora": lora})})
        assert slot_wire_sizes(plan) == {t.name: adapter_layout(plan).size for t in plan.tasks}
        trimmed = plan.model_copy(update={"compression": Compression(trim_head=True)})
        t = Trimmer.of(trimmed)
        sizes = slot_wire_sizes(trimmed, model_facts(trimmed))
        assert sizes == {task.name: t.size(task.num_labels) for task in trimmed.tasks}
        assert len(set(sizes.values())) > 1 and max(sizes.values()) == adapter_layout(plan).size
        facts = model_facts(trimmed)  # the audit's FL-TAC size: the untrimmed adapter and each task's wire part
        assert model_sizes(trimmed, None, facts).fltac_slots == sizes
        assert model_sizes(trimmed, None, facts).fltac_adapter == adapter_layout(plan).size
        assert model_sizes(plan, None, model_facts(plan)).fltac_slots == {}
