"""Secure aggregation over loopback: the roles equal the simulator, and the aggregator never holds an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from roles_harness import SAME_WIDTH, Fed, start, tiny_plan
from test_federation import assert_same_state, run_federation, simulate_fltac

from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.demo import build_federation
from fltac_secure.federation.ledger import read_ledger
from fltac_secure.plan import Plan
from fltac_secure.secagg import Ring

SECURE = {"enabled": True}


class RecordingAggregator:
    """Wraps the aggregator's transport: keeps every message it receives (what it could decode)."""

    @staticmethod
    def install(agg: Any, seen: list[Any]) -> None:
        original = agg._handle

        def handle(peer: str, msg: Any) -> None:
            seen.append(msg)
            original(peer, msg)

        agg._handle = handle


def _trained(fed: Fed, cols: dict[str, Any]) -> list[np.ndarray]:
    return [v for run in cols.values() for v in run.obj.trained]


def _recording_collaborator(fed: Fed, name: str) -> Any:
    col = fed.collaborator(name)
    col.trained = []
    save = col.ws.save_cache

    def keep(cache: Any) -> None:
        col.trained.extend(np.asarray(r.vector, dtype=np.float64) for r in cache.results)
        save(cache)

    col.ws.save_cache = keep
    return col


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = tiny_plan(secure_aggregation=SECURE, tasks=SAME_WIDTH)
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("secure") / "fed"))
    agg_obj = fed.aggregator()
    seen: list[Any] = []
    RecordingAggregator.install(agg_obj, seen)
    agg = start(agg_obj)
    cols = {s: start(_recording_collaborator(fed, s)) for s in fed.layout.sites}
    state = agg.join(180)
    assert not agg.error, agg.error
    for name, run in cols.items():
        run.join(60)
        assert not run.error, (name, run.error)
    return fed, {"state": state, "history": agg.obj.history, "cols": cols, "seen": seen}


def test_networked_secure_run_equals_the_secure_and_the_plain_simulation(secure_run) -> None:
    fed, run = secure_run
    assert all(row["secure"] and all(c["status"] == "summed" for c in row["secure"].values()) for row in run["history"])
    want_state, want_labels = simulate_fltac(fed.plan, fed.layout.root)
    assert [row["clusters"] for row in run["history"]] == want_labels
    assert_same_state(run["state"], want_state)
    plain = Plan.model_validate({**fed.plan.model_dump(), "secure_aggregation": {"enabled": False}})
    plain_state, plain_labels = simulate_fltac(plain, fed.layout.root)
    assert plain_labels == want_labels
    for key, vec in plain_state.vectors.items():
        np.testing.assert_allclose(run["state"].vectors[key], vec, atol=1e-4, err_msg=key)


def test_mixed_widths_leave_lonely_rows_unsummed_as_in_the_simulator(tmp_path: Path) -> None:
    """Tasks of 3 and 2 labels, which K-means mixes here: a member whose third head row no other member of its
    cluster uses leaves that cluster (lonely_rows) without stopping, its other cluster goes on, and the
    networked run still equals the secure simulation."""
    plan = tiny_plan(secure_aggregation=SECURE)
    fed = Fed(plan, build_federation(plan, tmp_path / "fed"))
    run = run_federation(fed)  # no role stops: a lonely_rows refusal leaves one cluster, not the site
    state, history = run["state"], run["history"]
    rows = [c for row in history for c in row["secure"].values()]
    assert any(c["status"] == "skipped" or c.get("dropped") for c in rows)  # someone left a cluster
    assert any(c["status"] == "summed" for c in rows)
    with pytest.warns(UserWarning, match="lonely_rows"):
        want_state, want_labels = simulate_fltac(fed.plan, fed.layout.root)
    assert [row["clusters"] for row in history] == want_labels
    # slots of a cluster skipped in the last round are marked own: only their sites hold those vectors
    assert state.own
    for key, vec in want_state.vectors.items():
        if key not in state.own:
            np.testing.assert_allclose(state.vectors[key], vec, atol=1e-5, err_msg=key)
    assert sorted(state.cluster_vectors) == sorted(want_state.cluster_vectors)
    for cid, vec in want_state.cluster_vectors.items():
        np.testing.assert_allclose(state.cluster_vectors[cid], vec, atol=1e-5, err_msg=f"cluster {cid}")


def test_the_aggregator_never_holds_a_sites_adapter(secure_run) -> None:
    fed, run = secure_run
    sa = fed.plan.secure_aggregation
    ring = Ring(sa.ring_bits, sa.fractional_bits, sa.clip)
    trained = _trained(fed, run["cols"])
    assert trained
    floats = []
    kinds = set()
    for msg in run["seen"]:
        kinds.add(msg.kind)
        for arr in msg.tensors.values():
            if arr.dtype.kind == "f":
                floats.append(np.asarray(arr, dtype=np.float64))
            elif arr.dtype == ring.dtype:  # a masked vector, read as the ring would decode it
                floats.append(ring.decode(arr))
    assert "UPDATE" not in kinds and sm.SA_MASKED in kinds
    d = trained[0].size
    for got in (f for f in floats if f.size == d):
        for vec in trained:
            assert np.max(np.abs(got - vec)) > 1e-3
            # nor a scaled copy (an encoding of w x with any weight w): correlation stays small
            assert abs(np.corrcoef(got, vec)[0, 1]) < 0.2
    for name in fed.layout.sites:
        sent = {e.kind for e in read_ledger(fed.layout.sites[name] / "ledger.jsonl").entries if e.direction == "sent"}
        assert "UPDATE" not in sent and sm.SA_MASKED in sent


class KeySwappingAggregator:
    """Turns the real aggregator service hostile: every key book it relays carries another key for site2."""

    @staticmethod
    def install(agg: Any) -> None:
        original = agg._send

        def send(peer: str, msg: Any, phase: Any) -> None:
            if msg.kind == sm.SA_KEYBOOK:
                tensors = dict(msg.tensors)
                for name in [n for n in tensors if n.endswith("/s_pk/site2")]:
                    tensors[name] = np.frombuffer(bytes(range(32)), dtype=np.uint8).copy()
                msg = type(msg)(**{**msg.__dict__, "tensors": tensors})
            original(peer, msg, phase)

        agg._send = send


def test_a_hostile_aggregator_swapping_a_key_is_refused_and_the_run_stops(tmp_path: Path) -> None:
    plan = tiny_plan(rounds=1, round_s=8.0, secure_aggregation=SECURE)
    fed = Fed(plan, build_federation(plan, tmp_path / "fed"))
    agg_obj = fed.aggregator()
    KeySwappingAggregator.install(agg_obj)
    agg = start(agg_obj)
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    for name, run in cols.items():
        run.join(60)
        assert run.error, name
        text = str(run.error[0])
        assert "secure aggregation check failed" in text
        assert ("signature does not verify" in text) if name != "site2" else ("keys substituted" in text)
    agg.join(120)
    assert agg.error and "failed" in str(agg.error[0])
    assert not agg.obj.history  # no round completed


def test_audit_counts_masked_adapters_as_parameters_and_the_protocol_as_overhead(secure_run) -> None:
    import json

    from typer.testing import CliRunner

    from fltac_secure.cli import app
    from fltac_secure.learning.adapters import adapter_layout

    fed, run = secure_run
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    d, dim = adapter_layout(fed.plan).size, fed.plan.clustering.sketch_dim
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    masked = sum(len(row["secure"]) and sum(len(c["survivors"]) for c in row["secure"].values())
                 for row in run["history"])  # one masked vector per (site, cluster) per round
    assert data["comparison"]["fltac"]["up"] == fed.plan.rounds * slots * dim + masked * d
    sa = data["comparison"]["secure_aggregation"]
    assert sa["overhead_payload_bytes"] > 0 and set(sa["per_site"]) == set(fed.layout.sites)
    assert sa["masked_payload_bytes"] >= masked * d * 4
    table = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--by", "kind"])
    assert "Secure aggregation" in table.output and "SA_KEYS" in table.output
