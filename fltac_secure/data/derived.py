"""Tasks built from a shipped source by relabelling or pairing its texts (a plan task's ``derive``).

This is how ``plans/bench-conflict.yaml`` gets binary tasks that conflict the
way GLUE tasks do on a shared 2-way head: the same kind of input asked
different questions (one-vs-rest topics or languages), opposite label meanings
(sentiment and its negation), and sentence pairs (``"a [SEP] b"``).

Slices: a source's de-duplicated texts are dealt, label by label in a fixed
shuffled order (seeded by the source and label names only), into
``derive.parts`` slices, and a task uses slice ``derive.part``. The slicing
does not depend on any seed, so tasks sharing a source never share a text
whatever the seeds; the task's own draws (balancing, pairing, the cap) follow
the loader's seed, which ``build_federated_data`` derives from the plan's
partition seed.

Pairs use every item at most once, so no snippet is in two examples of a
task: news pairs join two article openings of the same topic (label 1) or of
different topics (label 0); conversation pairs join a prompt with its own
reply (1) or with the reply of another, unrelated item (0; a negative never
pairs an item with itself nor a prompt with any reply it has in the corpus).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import yaml

from fltac_secure.data.dataset import TaskDataset, stratified_sample
from fltac_secure.data.sources import (
    FIXED_SOURCES,
    Records,
    _clean,
    dedupe,
    langid_languages,
    package_dir,
    read_langid,
)
from fltac_secure.errors import DataError
from fltac_secure.plan.schema import Derive, Task

SEP = " [SEP] "
CONVERSATION_LANGUAGE = "english"


@dataclass(frozen=True)
class Pair:
    """Two item indices and whether they belong together (label 1) or were paired at random (label 0)."""

    first: int
    second: int
    together: bool


@lru_cache(maxsize=None)
def read_conversation(language: str = CONVERSATION_LANGUAGE) -> tuple[tuple[str, str], ...]:
    """Every (prompt, reply) of consecutive lines in the chatterbot corpus's conversations of ``language``."""
    root = package_dir("chatterbot_corpus") / "data" / language
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    for f in sorted(root.glob("*.yml")):
        doc = yaml.load(f.read_text(encoding="utf-8"), Loader=loader) or {}
        for conv in doc.get("conversations") or []:
            lines = [_clean(x) for x in conv if isinstance(x, str)]
            out.extend((a, b) for a, b in zip(lines, lines[1:]) if a and b and a != b)
    return tuple(out)


def conversation_items() -> tuple[tuple[str, str], ...]:
    """(prompt, reply) items with every prompt and every reply used once (first occurrence kept)."""
    seen_p: set[str] = set()
    seen_r: set[str] = set()
    out = []
    for p, r in read_conversation():
        if p not in seen_p and r not in seen_r:
            seen_p.add(p)
            seen_r.add(r)
            out.append((p, r))
    return tuple(out)


@lru_cache(maxsize=None)
def replies_of() -> dict[str, frozenset[str]]:
    """Every reply each prompt has anywhere in the corpus (a negative must avoid all of them)."""
    out: dict[str, set[str]] = {}
    for p, r in read_conversation():
        out.setdefault(p, set()).add(r)
    return {p: frozenset(rs) for p, rs in out.items()}


def source_records(source: str) -> tuple[Records, list[str]]:
    """A relabel-able source's de-duplicated (text, label) records and its label names."""
    if source == "langid":
        langs = langid_languages()
        return dedupe(read_langid(tuple(langs))), langs
    if source not in FIXED_SOURCES:
        raise DataError(f"demo source {source!r} has no labelled texts to relabel; use news, spam, sentiment or langid")
    reader, labels = FIXED_SOURCES[source]
    return dedupe(reader()), list(labels)


def slice_of(labels: list[str], source: str, part: int, parts: int) -> np.ndarray:
    """Positions (ascending) of slice ``part`` of ``parts``: per label, a fixed shuffle dealt round-robin."""
    arr = np.asarray(labels)
    keep = []
    for lab in sorted(set(labels)):
        idx = np.flatnonzero(arr == lab)
        order = np.random.default_rng(zlib.crc32(f"slice/{source}/{lab}".encode())).permutation(idx)
        keep.append(order[part::parts])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def _balanced(labels: np.ndarray, n_labels: int, rng: np.random.Generator, balance: bool) -> np.ndarray:
    """Positions to keep: all, or as many of each label as the rarest one has (a seeded choice)."""
    if not balance:
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=n_labels)
    n = int(counts.min())
    keep = [rng.choice(np.flatnonzero(labels == y), n, replace=False) for y in range(n_labels)]
    return np.sort(np.concatenate(keep))


def relabel(task: Task, seed: int) -> TaskDataset:
    """The task's slice of its source, each text labelled by the task label gathering its source label."""
    d = _derive(task)
    records, available = source_records(str(task.demo_source))
    unknown = sorted({x for xs in d.labels.values() for x in xs} - set(available))
    if unknown:
        raise DataError(f"task {task.name!r}: derive.labels names {unknown}, not labels of demo source "
                        f"{task.demo_source!r} ({sorted(available)})")
    part = [records[i] for i in slice_of([lab for _, lab in records], str(task.demo_source), d.part, d.parts)]
    to_id = {src: task.labels.index(name) for name, srcs in d.labels.items() for src in srcs}
    kept = [(text, to_id[lab]) for text, lab in part if lab in to_id]
    labels = np.asarray([y for _, y in kept], dtype=np.int64)
    idx = _balanced(labels, task.num_labels, np.random.default_rng(seed), d.balance)
    return TaskDataset(task.name, [kept[i][0] for i in idx], labels[idx])


def snippet(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def topic_pairs(topics: list[str], rng: np.random.Generator) -> list[Pair]:
    """Disjoint pairs over items with topics: about half same-topic, half different-topic, balanced."""
    arr = np.asarray(topics)
    same: list[Pair] = []
    rest: list[int] = []
    for t in sorted(set(topics)):
        items = rng.permutation(np.flatnonzero(arr == t)).tolist()
        half = len(items) // 2 // 2 * 2  # an even number for same-topic pairs
        same.extend(Pair(a, b, True) for a, b in zip(items[:half:2], items[1:half:2]))
        rest.extend(items[half:])
    rest.sort(key=lambda i: topics[i])  # grouped by topic: i and i + m differ while no topic holds half
    m = len(rest) // 2
    apart = [Pair(rest[i], rest[i + m], False) for i in range(m) if topics[rest[i]] != topics[rest[i + m]]]
    return _even(same, apart, rng)


def reply_pairs(items: list[tuple[str, str]], rng: np.random.Generator) -> list[Pair]:
    """Half the items as (prompt, own reply); the other half's prompts each with the next one's reply.

    ``Pair(i, j, False)`` means prompt of item i with reply of item j (j != i, and never a reply the prompt
    has anywhere in the corpus).
    """
    order = rng.permutation(len(items)).tolist()
    half = len(order) // 2
    together = [Pair(i, i, True) for i in order[:half]]
    neg = order[half:]
    known = replies_of()
    apart = []
    for k, i in enumerate(neg):
        j = neg[(k + 1) % len(neg)]
        if j != i and items[j][1] not in known.get(items[i][0], frozenset()):
            apart.append(Pair(i, j, False))
    return _even(together, apart, rng)


def _even(together: list[Pair], apart: list[Pair], rng: np.random.Generator) -> list[Pair]:
    n = min(len(together), len(apart))
    pick = [together[i] for i in sorted(rng.choice(len(together), n, replace=False))]
    pick += [apart[i] for i in sorted(rng.choice(len(apart), n, replace=False))]
    return [pick[i] for i in rng.permutation(len(pick))]


def pair_task(task: Task, seed: int) -> TaskDataset:
    """Label 1 (the task's second label): the two snippets belong together; label 0: a random pairing."""
    d = _derive(task)
    rng = np.random.default_rng(seed)
    w = d.snippet_words
    if task.demo_source == "news":
        records, _ = source_records("news")
        sl = slice_of([lab for _, lab in records], "news", d.part, d.parts)
        part = [records[i] for i in sl]
        pairs = topic_pairs([lab for _, lab in part], rng)
        texts = [snippet(part[p.first][0], w) + SEP + snippet(part[p.second][0], w) for p in pairs]
    else:
        items = conversation_items()
        sl = slice_of(["item"] * len(items), "conversation", d.part, d.parts)
        part2 = [items[i] for i in sl]
        pairs = reply_pairs(part2, rng)
        texts = [snippet(part2[p.first][0], w) + SEP + snippet(part2[p.second][1], w) for p in pairs]
    return TaskDataset(task.name, texts, np.asarray([int(p.together) for p in pairs], dtype=np.int64))


def load_derived_task(task: Task, *, max_examples: int | None = None, seed: int = 0) -> TaskDataset:
    """The task built as its ``derive`` says (de-duplicated, capped by a seeded stratified sample)."""
    d = _derive(task)
    ds = relabel(task, seed) if d.kind == "relabel" else pair_task(task, seed)
    seen: set[str] = set()
    keep = [i for i, t in enumerate(ds.texts) if not (t in seen or seen.add(t))]  # type: ignore[func-returns-value]
    ds = ds.subset(np.asarray(keep, dtype=np.int64))
    if len(ds) == 0 or len(set(ds.labels.tolist())) < task.num_labels:
        raise DataError(f"task {task.name!r}: derive gave {len(ds)} examples without every label; "
                        "check derive.labels, part/parts and the source")
    return ds if max_examples is None else stratified_sample(ds, max_examples, seed)


def _derive(task: Task) -> Derive:
    if task.derive is None:
        raise DataError(f"task {task.name!r} has no derive section")
    return task.derive
