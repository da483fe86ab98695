"""bench-conflict's derived tasks: both labels everywhere, no text in train and test, honest pairs, seeded."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fltac_secure.data import build_federated_data, load_demo_task, load_federated_dir, prepare_demo
from fltac_secure.data.derived import (
    SEP,
    conversation_items,
    read_conversation,
    replies_of,
    reply_pairs,
    snippet,
    source_records,
    topic_pairs,
)
from fltac_secure.errors import DataError
from fltac_secure.plan import Plan, load_plan

ROOT = Path(__file__).resolve().parents[2]
CONFLICT = ROOT / "plans" / "bench-conflict.yaml"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan(CONFLICT)


@pytest.fixture(scope="module")
def fed(plan):
    return build_federated_data(plan)


def test_plan_has_six_to_eight_binary_tasks_on_a_shared_two_way_head(plan) -> None:
    assert 6 <= len(plan.tasks) <= 8
    assert all(t.num_labels == 2 for t in plan.tasks) and plan.max_labels == 2
    assert {t.labels[1] for t in plan.tasks} >= {"positive", "negative"}  # label 1 means opposite things
    pos = {t.name: t.labels for t in plan.tasks}
    assert pos["sent-pos"] == pos["sent-neg"][::-1]


def test_every_task_has_both_labels_in_its_data_and_its_global_test_set(plan, fed) -> None:
    for task in plan.tasks:
        ds = load_demo_task(task, seed=3)
        counts = np.bincount(ds.labels, minlength=2)
        assert counts.min() > 0 and counts[0] == pytest.approx(counts[1], rel=0.05), (task.name, counts)
        assert set(fed.test[task.name].labels.tolist()) == {0, 1}, task.name


@pytest.mark.parametrize("seed", [0, 1])
def test_no_text_is_in_both_train_and_test(plan, seed) -> None:
    fed = build_federated_data(plan, seed=seed)
    train = {x for tasks in fed.train.values() for ds in tasks.values() for x in ds.texts}
    test = {x for ds in fed.test.values() for x in ds.texts}
    test |= {x for tasks in fed.site_test.values() for ds in tasks.values() for x in ds.texts}
    assert train and test and not (train & test)
    per_task = {t: set(fed.test[t].texts) for t in fed.test}
    for part in (fed.train, fed.site_test):
        for tasks in part.values():
            for t, ds in tasks.items():
                per_task[t] |= set(ds.texts)
    names = list(per_task)
    for i, a in enumerate(names):  # tasks sharing a source take disjoint slices: no text in two tasks
        for b in names[i + 1:]:
            assert not (per_task[a] & per_task[b]), (a, b)


def test_reply_negatives_never_pair_an_item_with_itself_or_with_a_true_reply() -> None:
    items = list(conversation_items())
    pairs = reply_pairs(items, np.random.default_rng(0))
    known = replies_of()
    apart = [p for p in pairs if not p.together]
    assert len(apart) == len(pairs) - len(apart) > 400
    for p in apart:
        assert p.first != p.second
        assert items[p.second][1] not in known[items[p.first][0]]
    used = [p.first for p in pairs] + [p.second for p in apart]
    assert len(set(p.first for p in pairs)) == len(pairs)  # every prompt once
    assert len(set(used)) <= len(items)


def test_reply_task_texts_pair_prompts_with_replies_as_labelled(plan) -> None:
    task = plan.task("reply")
    w = task.derive.snippet_words
    true_pairs = {(snippet(p, w), snippet(r, w)) for p, r in read_conversation()}
    ds = load_demo_task(task, seed=0)
    for text, y in zip(ds.texts, ds.labels.tolist(), strict=True):
        prompt, reply = text.split(SEP)
        assert ((prompt, reply) in true_pairs) == bool(y), text


def test_news_pairs_use_each_article_once_and_negatives_cross_topics() -> None:
    records, _ = source_records("news")
    topics = [lab for _, lab in records]
    pairs = topic_pairs(topics, np.random.default_rng(1))
    used = [i for p in pairs for i in (p.first, p.second)]
    assert len(used) == len(set(used))  # never an article with itself, never one article twice
    for p in pairs:
        assert (topics[p.first] == topics[p.second]) == p.together
    assert sum(p.together for p in pairs) * 2 == len(pairs)


def test_derived_tasks_are_deterministic_in_the_seed(plan) -> None:
    task = plan.task("news-pair")
    a, b, c = (load_demo_task(task, seed=s) for s in (5, 5, 6))
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert a.texts != c.texts
    sport = plan.task("news-sport")  # the slice never moves with the seed: all its sport articles, every time
    s1, s2 = load_demo_task(sport, seed=1), load_demo_task(sport, seed=2)
    assert {x for x, y in zip(s1.texts, s1.labels) if y == 1} == {x for x, y in zip(s2.texts, s2.labels) if y == 1}
    assert set(s1.texts) != set(s2.texts)  # the balancing draw of other topics does move


def test_prepare_demo_writes_the_conflict_data_and_reads_it_back(plan, fed, tmp_path) -> None:
    prepare_demo(plan, tmp_path / "out")
    back = load_federated_dir(plan, tmp_path / "out")
    for t in ("news-pair", "reply", "sent-neg"):
        assert back.test[t].texts == fed.test[t].texts and np.array_equal(back.test[t].labels, fed.test[t].labels)


def _raw(plan: Plan) -> dict:
    return copy.deepcopy(plan.model_dump(mode="json"))


def test_tasks_sharing_a_source_must_take_different_slices(plan) -> None:
    raw = _raw(plan)
    raw["tasks"][1]["derive"]["part"] = 0  # news-pair on news-sport's slice
    with pytest.raises(ValidationError, match="share demo_source 'news'"):
        Plan.model_validate(raw)


@pytest.mark.parametrize("edit,fragment", [
    (lambda t: t.update(demo_source="synthetic"), "derive needs a shipped demo_source"),
    (lambda t: t["derive"]["labels"].pop("sport"), "must be the task's labels"),
    (lambda t: t["derive"].update(part=2), "must be below derive.parts"),
    (lambda t: t["derive"]["labels"]["sport"].append("tech"), "under two task labels"),
])
def test_bad_derive_sections_are_refused(plan, edit, fragment) -> None:
    raw = _raw(plan)
    edit(raw["tasks"][0])
    with pytest.raises(ValidationError, match=fragment):
        Plan.model_validate(raw)


def test_unknown_source_label_is_a_clear_data_error(plan) -> None:
    raw = _raw(plan)
    raw["tasks"][0]["derive"]["labels"]["sport"] = ["football"]
    with pytest.raises(DataError, match="football"):
        load_demo_task(Plan.model_validate(raw).tasks[0])
