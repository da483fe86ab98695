"""The three FedIT variants: what their shared head means, the task tag, and equal compute with FL-TAC."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.learning.adapters import adapter_layout, set_slot_vector
from fltac_secure.learning.train import predict_slot
from fltac_secure.simulation import METHODS, SimContext, simulate
from fltac_secure.simulation.context import FEDIT_SLOT
from fltac_secure.simulation.fedit import task_tag


@pytest.fixture(scope="module")
def ctx(plan, data) -> SimContext:
    return SimContext(plan, data)


def _bias_on(method, position: int) -> np.ndarray:
    """The method's start vector with a zero head and a large bias on one head position."""
    layout = adapter_layout(method.ctx.plan, head_width=method.head.width)
    vec, at = method.init.copy(), 0
    for name, shape in layout.entries:
        n = int(np.prod(shape))
        if name == "head.weight":
            vec[at:at + n] = 0.0
        if name == "head.bias":
            vec[at:at + n] = 0.0
            vec[at + position] = 10.0
        at += n
    return vec


def _predictions(method, task: str, vec: np.ndarray) -> np.ndarray:
    slot, reads = method.eval_slot(task)
    set_slot_vector(method.model, slot, vec)
    preds, _ = predict_slot(method.model, slot, method.test_data(task), label_range=reads)
    return preds


def test_faithful_fedit_shares_one_head_and_overlapping_label_ids(ctx, plan) -> None:
    m = METHODS["fedit"](ctx)
    assert m.head.width == plan.max_labels == 4
    assert m.head.position("a", 1) == m.head.position("b", 1) == m.head.position("c", 1) == 1
    assert m.eval_slot("a") == m.eval_slot("b") == (FEDIT_SLOT, (0, 4))  # the whole head is read for every task
    for t in ("a", "b"):  # label ids land unshifted: a label 1 example targets logit 1 in every task
        assert np.array_equal(m.test_data(t).labels.numpy(), ctx.data.test[t].labels)
    vec = _bias_on(m, 1)
    for t in ("a", "b", "c"):  # one logit pushed up: every task predicts its label 1
        assert set(_predictions(m, t, vec).tolist()) == {1}


def test_taskheads_give_each_task_its_own_positions(ctx) -> None:
    m = METHODS["fedit-taskheads"](ctx)
    assert m.head.width == 2 + 3 + 4
    assert m.head.position("a", 1) == 1 and m.head.position("b", 1) == 3 and m.head.position("c", 1) == 6
    assert np.array_equal(m.test_data("b").labels.numpy(), ctx.data.test["b"].labels + 2)
    vec = _bias_on(m, 1)  # position 1 is task a's label 1 only; task b cannot even predict it
    assert set(_predictions(m, "a", vec).tolist()) == {1}
    assert 1 not in set(_predictions(m, "b", vec).tolist())


def test_tagged_variant_prepends_the_task_tag_to_every_input(ctx, plan) -> None:
    tagged, plain = METHODS["fedit-tagged"](ctx), METHODS["fedit"](ctx)
    assert tagged.head.width == plain.head.width and tagged.head.offsets == plain.head.offsets
    text = ctx.data.test["b"].texts[0]
    want = ctx.tokenizer(task_tag("b") + text, truncation=True, max_length=plan.training.max_seq_length)["input_ids"]
    got = tagged.test_data("b").input_ids[0][: len(want)].tolist()
    assert got == want
    assert plain.test_data("b").input_ids[0][: len(want)].tolist() != want
    site = ctx.sites[0]
    task = ctx.site_tasks[site][0]
    assert ctx.encoded_train(site, task, tag=task_tag(task)).input_ids.shape[1] > ctx.encoded_train(site, task).input_ids.shape[1]


def test_every_fedit_variant_spends_fltac_s_steps(plan, data, ctx, tmp_path) -> None:
    one = plan.model_copy(update={"rounds": 1, "training": plan.training.model_copy(update={"local_steps": 2})})
    small = SimContext(one, data)
    slots = sum(len(ts) for ts in small.site_tasks.values())
    steps = {}
    for m in ("fltac", "fedit", "fedit-tagged", "fedit-taskheads"):
        res = simulate(one, data, m, tmp_path / m, progress=False, export=False, plots=False, site_eval=False,
                       context=small)
        steps[m] = res.rounds[0]["train_steps"]
        assert 0.0 <= res.final["mean_accuracy"] <= 1.0
    assert set(steps.values()) == {2 * slots}, steps


def test_faithful_fedit_trains_each_task_in_turn(ctx, monkeypatch) -> None:
    import fltac_secure.simulation.fedit as fedit_mod

    calls = []
    real = fedit_mod.train_slot

    def spy(model, slot, data, training, seed, **kw):
        calls.append((data.task, kw["steps"], kw["label_range"]))
        return real(model, slot, data, training, seed, **kw)

    monkeypatch.setattr(fedit_mod, "train_slot", spy)
    m = METHODS["fedit"](ctx)
    site = ctx.sites[0]
    m.train_site(site, 0)
    local = ctx.plan.training.local_steps
    assert calls == [(t, local, (0, 4)) for t in ctx.site_tasks[site]]
