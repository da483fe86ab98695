"""Tiny learnable federations for the simulation tests (tiny random BERT, generated keyword tasks)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from fltac_secure.data import TaskDataset, build_federated_data
from fltac_secure.plan.schema import Plan, Task

torch.set_num_threads(1)


def keyword_loader(task: Task, *, max_examples: int | None = None, seed: int = 0) -> TaskDataset:
    """Each task: its own whole-word vocabulary (4 keywords per label + fillers); an example has 2 keywords.

    Whole words from the tokenizer's vocabulary keep every keyword one token, so a
    2-layer random BERT learns the tasks in a few dozen steps.
    """
    from fltac_secure.learning.model import load_tokenizer

    pool = sorted(w for w in load_tokenizer("tiny-bert").get_vocab() if w.isascii() and w.isalpha() and len(w) >= 5)
    vocab = np.random.default_rng(zlib.crc32(task.name.encode())).choice(pool, 4 * task.num_labels + 10, replace=False)
    keywords = vocab[: 4 * task.num_labels].reshape(task.num_labels, 4)
    filler = vocab[4 * task.num_labels :]
    rng = np.random.default_rng(seed)
    n = max_examples or 240
    labels = np.arange(n) % task.num_labels
    texts = [" ".join(rng.permutation([*rng.choice(filler, 4), *rng.choice(keywords[y], 2)])) for y in labels]
    return TaskDataset(task.name, texts, labels.astype(np.int64))


def tiny_plan(rounds: int = 3, **clustering: object) -> Plan:
    return Plan.model_validate({
        "federation": "tiny", "rounds": rounds, "roster": ["s1", "s2", "s3", "s4"],
        "tasks": [{"name": "a", "labels": ["x", "y"]}, {"name": "b", "labels": ["x", "y", "z"]},
                  {"name": "c", "labels": ["x", "y", "z", "w"]}],
        "model": {"base": "tiny-bert", "lora": {"rank": 1}},
        "training": {"local_steps": 20, "max_seq_length": 16, "learning_rate": 0.02},
        "partition": {"alpha": 10.0, "max_examples_per_task": 400},
        "clustering": {"features": "delta", **clustering},
    })


@pytest.fixture(scope="session")
def plan_factory():
    return tiny_plan


@pytest.fixture(scope="module")
def plan() -> Plan:
    return tiny_plan()


@pytest.fixture(scope="module")
def data(plan: Plan):
    return build_federated_data(plan, loader=keyword_loader)
