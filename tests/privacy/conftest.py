"""Shared fixtures for the privacy tests: a tiny plan factory and random encoded data."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest
import torch

from fltac_secure.learning.train import EncodedDataset
from fltac_secure.plan import Plan
from fltac_secure.privacy.ledger import PrivacyLedger

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def dp_plan(**privacy: Any) -> Plan:
    """A two-task tiny-bert plan with DP on; keyword overrides go to the privacy section (``training``: to training)."""
    training = privacy.pop("training", {})
    rounds = privacy.pop("rounds", 3)
    # sample rate min(1, 8 / n) and 4 steps per round: the expected batch is 8 on any slot of >= 8 examples
    section = {"dp": True, "noise_multiplier": 1.0, "delta": 1e-3, "sample_rate": 1.0, "max_batch_size": 8,
               "local_steps": 4, **privacy}
    return Plan(federation="t", rounds=rounds, roster=["a", "b"],
                tasks=[{"name": "x", "labels": ["n", "p"]}, {"name": "y", "labels": ["a", "b", "c"]}],
                model={"base": "tiny-bert", "lora": {"rank": 2, "alpha": 8}},
                training={"local_steps": 4, "batch_size": 8, "learning_rate": 0.01, "max_seq_length": 12,
                          **training},
                privacy=section)


def memory_ledger(plan: Plan) -> PrivacyLedger:
    """An in-memory ledger matching ``plan``'s delta and accountant."""
    return PrivacyLedger.in_memory(delta=plan.privacy.delta, accountant=plan.privacy.accountant)


def random_data(n: int, labels: int, seed: int = 0, width: int = 10, task: str = "y") -> EncodedDataset:
    """Random token ids (variable lengths) with random labels in [0, labels)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (n, width), generator=g)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return EncodedDataset(features={"input_ids": ids * mask, "attention_mask": mask},
                          labels=torch.randint(0, labels, (n,), generator=g), task=task)


@pytest.fixture
def plan() -> Plan:
    return dp_plan()
