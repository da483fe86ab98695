"""Error-feedback residuals and quantised updates survive a restart of the site (workspace state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collaborator.workspace import RoundCache, SiteWorkspace
from fltac_secure.errors import StateError
from fltac_secure.federation.compressed import compress_results
from fltac_secure.federation.rounds import SlotResult
from fltac_secure.federation.storage import write_tensors
from fltac_secure.plan import Plan, Site, plan_hash

D = 50


def workspace(tmp_path: Path) -> SiteWorkspace:
    plan = Plan.model_validate({
        "federation": "wstest", "rounds": 3, "roster": ["site1"],
        "tasks": [{"name": "alpha", "labels": ["a0", "a1"]}, {"name": "beta", "labels": ["b0", "b1"]}],
        "model": {"base": "tiny-bert"}, "compression": {"bits": 4, "block_size": 8, "error_feedback": True},
    })  # fmt: skip
    site = Site.model_validate({
        "name": "site1", "role": "collaborator", "workspace": str(tmp_path), "aggregator": "tcp://127.0.0.1:1",
        "certs": {"cert": "c.crt", "key": "c.key", "ca": "ca.crt"},
        "data": {"alpha": {"train": "a.csv"}, "beta": {"train": "b.csv"}},
    })  # fmt: skip
    return SiteWorkspace(plan, site, plan_hash(plan))


def test_residuals_and_quantised_cache_round_trip(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert ws.read_residuals(D) == {}
    rng = np.random.default_rng(0)
    starts = {f"site1/{i}": rng.normal(size=D).astype(np.float32) for i in range(2)}
    results = [SlotResult(k, v + 0.1, np.zeros(4), 10) for k, v in starts.items()]
    sent = compress_results(ws.plan, {x.key: x.vector for x in results}, starts, {}, rng=rng)
    cache = RoundCache(0, results, {int(k[-1]): u.q for k, u in sent.items()},
                       {int(k[-1]): u.residual for k, u in sent.items()})
    ws.save_cache(cache)
    back = ws.load_cache()  # a restarted site answers from these, byte for byte
    assert back is not None and sorted(back.updates) == [0, 1]
    for i in (0, 1):
        assert np.array_equal(back.updates[i].packed, cache.updates[i].packed)
        assert np.array_equal(back.updates[i].scales, cache.updates[i].scales)
        assert np.array_equal(back.residuals[i], cache.residuals[i])
    ws.commit_residuals(0, {1: cache.residuals[1]}, D)  # only slot 1 was sent
    assert list(ws.read_residuals(D)) == [1]
    ws.commit_residuals(0, {1: cache.residuals[1]}, D)  # a repeated ASSIGNMENT: the same values
    ws.commit_residuals(1, {0: cache.residuals[0]}, D)
    kept = ws.read_residuals(D)
    assert sorted(kept) == [0, 1] and all(np.array_equal(kept[i], cache.residuals[i]) for i in (0, 1))


@pytest.mark.parametrize("tensors", [
    {"residual/0": np.zeros(D + 1, np.float32)},
    {"residual/0": np.full(D, np.nan, np.float32)},
    {"residual/0": np.zeros(D, np.float64)},
    {"residual/7": np.zeros(D, np.float32)},
    {"other/0": np.zeros(D, np.float32)},
])
def test_damaged_residuals_are_refused(tmp_path: Path, tensors: dict) -> None:
    ws = workspace(tmp_path)
    write_tensors(tmp_path / "state" / "residuals.safetensors", tensors)
    with pytest.raises(StateError, match="residual"):
        ws.read_residuals(D)
