"""The shipped data sets load with the right labels and sane sizes; synthetic tasks behave."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fltac_secure.data import load_demo_task, synthetic_task
from fltac_secure.data.sources import (
    langid_languages,
    read_langid,
    read_news,
    read_sentiment,
    read_spam,
)
from fltac_secure.errors import DataError
from fltac_secure.plan import Task


def test_raw_sources_have_documented_sizes_and_labels() -> None:
    news, spam, sent = read_news(), read_spam(), read_sentiment()
    assert len(news) == 2225
    assert Counter(lab for _, lab in news) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401,
    }
    assert Counter(lab for _, lab in spam) == {"ham": 4220, "spam": 642}
    assert Counter(lab for _, lab in sent) == {"negative": 16186, "neutral": 15018, "positive": 6954}
    assert all("\n" not in t and t == t.strip() for t, _ in news[:50])


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("news", 2000, 2225), ("spam", 4400, 4862), ("sentiment", 35000, 38158), ("langid", 5500, 6500)],
)
def test_demo_tasks_load_deduplicated_with_plan_label_ids(demo_plan, name: str, low: int, high: int) -> None:
    task = demo_plan.task(name)
    ds = load_demo_task(task)
    assert low <= len(ds) <= high
    assert ds.task == name and ds.labels.dtype == np.int64
    # every label of the plan occurs, and no id outside the plan's list
    assert set(ds.labels.tolist()) == set(range(task.num_labels))
    assert len(set(ds.texts)) == len(ds.texts)
    assert all(t.strip() for t in ds.texts)


def test_label_ids_follow_plan_order_not_source_order() -> None:
    fwd = load_demo_task(Task(name="spam", labels=["ham", "spam"], demo_source="spam"))
    rev = load_demo_task(Task(name="spam", labels=["spam", "ham"], demo_source="spam"))
    assert fwd.texts == rev.texts
    assert np.array_equal(fwd.labels, 1 - rev.labels)
    assert np.bincount(fwd.labels)[0] > 5 * np.bincount(fwd.labels)[1]  # ham dominates


def test_langid_lines_are_deduplicated_and_unambiguous(demo_plan) -> None:
    task = demo_plan.task("langid")
    raw = read_langid(tuple(task.labels))
    assert len({t for t, _ in raw}) < len(raw)  # the corpus repeats lines
    ds = load_demo_task(task)
    assert len(set(ds.texts)) == len(ds.texts)
    langs_of: dict[str, set[str]] = {}
    for t, lab in raw:
        langs_of.setdefault(t, set()).add(lab)
    assert all(len(langs_of[t]) == 1 for t in ds.texts)
    assert any(len(v) > 1 for v in langs_of.values())  # ambiguous lines existed and were dropped


def test_langid_allows_a_subset_of_languages() -> None:
    assert {"english", "french", "swedish"} <= set(langid_languages())
    ds = load_demo_task(Task(name="lid", labels=["french", "english"], demo_source="langid"))
    assert set(ds.labels.tolist()) == {0, 1}
    assert np.bincount(ds.labels)[1] > np.bincount(ds.labels)[0]  # far more English than French


@pytest.mark.parametrize(
    ("labels", "source", "fragment"),
    [
        (["business", "sport"], "news", "unknown ['sport']"),
        (["business", "entertainment", "politics", "sports"], "news", "missing ['tech']"),
        (["ham", "junk"], "spam", "unknown ['junk']"),
        (["english", "klingon"], "langid", "unknown ['klingon']"),
    ],
)
def test_labels_that_do_not_fit_the_source_are_refused(labels, source, fragment) -> None:
    with pytest.raises(DataError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as e:
        load_demo_task(Task(name="x", labels=labels, demo_source=source))
    assert e.value.exit_code == 2


def test_task_without_demo_source_is_refused() -> None:
    with pytest.raises(DataError, match="no demo_source"):
        load_demo_task(Task(name="mine", labels=["a", "b"]))


def test_cap_is_a_seeded_stratified_sample(demo_plan) -> None:
    task = demo_plan.task("sentiment")
    full = load_demo_task(task)
    a = load_demo_task(task, max_examples=1000, seed=1)
    b = load_demo_task(task, max_examples=1000, seed=1)
    c = load_demo_task(task, max_examples=1000, seed=2)
    assert len(a) == 1000 and a.texts == b.texts and a.texts != c.texts
    want = np.bincount(full.labels) / len(full) * 1000
    assert np.all(np.abs(np.bincount(a.labels) - want) <= 1)


def test_synthetic_tasks_are_seeded_learnable_and_distinct() -> None:
    t1 = Task(name="first", labels=["a", "b", "c"], demo_source="synthetic")
    t2 = Task(name="second", labels=["a", "b"], demo_source="synthetic")
    a, b = synthetic_task(t1, 120, seed=3), synthetic_task(t1, 120, seed=3)
    assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert synthetic_task(t1, 120, seed=4).texts != a.texts
    assert np.all(np.bincount(a.labels) == 40)  # balanced
    # a word that occurs only with one label is a keyword; every example has one of its own
    words_by_label = [set(w for t, y in zip(a.texts, a.labels) if y == k for w in t.split()) for k in range(3)]
    keywords = [words_by_label[k] - set().union(*(words_by_label[j] for j in range(3) if j != k)) for k in range(3)]
    assert all(set(t.split()) & keywords[y] for t, y in zip(a.texts, a.labels))
    other = synthetic_task(t2, 120, seed=3)
    va, vb = set(" ".join(a.texts).split()), set(" ".join(other.texts).split())
    assert len(va & vb) <= 3 < len(va)
    assert len(load_demo_task(t1, max_examples=50)) == 50
