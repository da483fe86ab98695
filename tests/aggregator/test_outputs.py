"""What the aggregator's cluster folders say about their members."""

from __future__ import annotations

import numpy as np

from aggregator.outputs import HOW_TO_MAP, cluster_record
from fltac_secure.federation.rounds import ServerState
from fltac_secure.learning.cluster import ClusterResult


def _state() -> ServerState:
    labels = {"s1/0": 0, "s1/1": 1, "s2/0": 1, "s10/0": 0}
    return ServerState(round=3, k=2, vectors={k: np.zeros(2, np.float32) for k in labels},
                       clusters=ClusterResult(k=2, labels=labels))


def test_with_shared_task_names_members_and_their_tasks() -> None:
    rec = cluster_record(_state(), 1, {"s1": ["news", "spam"], "s2": ["spam"], "s10": ["news"]})
    assert rec == {"cluster": 1, "members": ["s1/1", "s2/0"], "member_tasks": {"spam": 2}}
    mixed = cluster_record(_state(), 0, {"s1": ["spam", "news"], "s10": ["news"]})
    assert mixed["member_tasks"] == {"spam": 1, "news": 1} and "several tasks" in mixed["note"]


def test_without_names_it_says_how_to_map() -> None:
    rec = cluster_record(_state(), 0, {})
    assert rec["members"] == ["s1/0", "s10/0"] and rec["how_to_map"] == HOW_TO_MAP
    assert "member_tasks" not in rec
