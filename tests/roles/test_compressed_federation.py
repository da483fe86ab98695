"""Compressed UPDATEs over the real roles: the simulator's result with the same rounding draws, the ledger's
bytes exactly what shapes and bits imply, error-feedback residuals kept in the site's workspace."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from roles_harness import SAME_WIDTH, Fed, run_roles, start, tiny_plan

from fltac_secure.data.layout import load_federated_dir
from fltac_secure.federation.demo import build_federation
from fltac_secure.federation.ledger import read_ledger
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.learning.compress import wire_nbytes

BITS, BLOCK = 8, 32


def seeds(plan: Any) -> dict[str, int]:
    return {s: 1000 + i for i, s in enumerate(plan.roster)}


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = tiny_plan(compression={"bits": BITS, "block_size": BLOCK, "error_feedback": True})
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("roles") / "fed"))
    return fed, run_seeded(fed)


def run_seeded(fed: Fed) -> dict[str, Any]:
    """The federation with every site's quantisation drawn from its seeded generator (as the simulator's)."""
    return run_roles(fed, seeds(fed.plan))


def test_equals_the_simulator_with_the_same_draws(compressed_run: tuple[Fed, dict[str, Any]]) -> None:
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    fed, run = compressed_run
    method = FLTAC(SimContext(fed.plan, load_federated_dir(fed.plan, fed.layout.root)))
    method.compression_rngs = {s: np.random.default_rng(n) for s, n in seeds(fed.plan).items()}
    labels = [dict(method.run_round(r).labels or {}) for r in range(fed.plan.rounds)]
    assert [row["clusters"] for row in run["history"]] == labels
    got, want = run["state"], method.state
    assert sorted(got.vectors) == sorted(want.vectors)
    for key, vec in want.vectors.items():
        np.testing.assert_allclose(got.vectors[key], vec, atol=1e-5, err_msg=key)
    for i, site in enumerate(fed.layout.sites):  # each site's residuals: in its workspace, as in the simulator
        path = fed.layout.sites[site] / "state" / "residuals.safetensors"
        from fltac_secure.federation.storage import read_tensors

        kept = read_tensors(path, "residuals")
        for name, arr in kept.items():
            np.testing.assert_allclose(arr, method.residuals[f"{site}/{name.split('/')[1]}"], atol=1e-5)
        assert len(kept) == len(fed.site(site).data)


def test_ledger_counts_parameters_and_exact_bytes(compressed_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, _ = compressed_run
    plan, d = fed.plan, adapter_layout(fed.plan).size
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    entries = read_ledger(fed.layout.aggregator / "ledger.jsonl").entries
    updates = [e for e in entries if e.kind == "UPDATE"]
    assert sum(e.elements for e in updates) == d * slots * plan.rounds  # parameters as before
    assert sum(e.tensor_bytes for e in updates) == slots * plan.rounds * wire_nbytes(d, BITS, BLOCK)
    starts = [e for e in entries if e.kind == "ROUND_START"]
    assert sum(e.tensor_bytes for e in starts) == 4 * d * slots * plan.rounds  # downloads stay float32
    for name in fed.layout.sites:  # the site's own ledger: the same bytes, sent
        mine = [e for e in read_ledger(fed.layout.sites[name] / "ledger.jsonl").entries if e.kind == "UPDATE"]
        n = len(fed.site(name).data)
        assert sum(e.tensor_bytes for e in mine) == plan.rounds * n * wire_nbytes(d, BITS, BLOCK)


def test_audit_shows_bits_per_parameter_and_bytes_saved(compressed_run: tuple[Fed, dict[str, Any]]) -> None:
    from typer.testing import CliRunner

    from fltac_secure.cli import app

    fed, _ = compressed_run
    d = adapter_layout(fed.plan).size
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)["comparison"]
    row = data["bytes"]["UPDATE"]
    params, nbytes = fed.plan.rounds * slots * d, fed.plan.rounds * slots * wire_nbytes(d, BITS, BLOCK)
    assert (row["parameters"], row["tensor_bytes"]) == (params, nbytes)
    assert row["bits_per_parameter"] == pytest.approx(8 * nbytes / params)
    assert row["bytes_saved"] == 4 * params - nbytes
    assert data["bytes"]["ROUND_START"]["bits_per_parameter"] == 32.0
    assert data["compression"]["bits"] == BITS
    fedit = data["compression"]["fedit_bytes"]
    assert fedit["float32_up"] == 4 * data[next(k for k in data if k.startswith("fedit_r"))]["up"]
    assert fedit["compressed_up"] < fedit["float32_up"] / 3
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--by", "kind"])
    assert res.exit_code == 0 and "Tensor bytes per parameter" in res.output and "saved" in res.output
    assert f"{8 * nbytes / params:.2f}" in res.output and "at 8 bits" in res.output


def test_hostile_compressed_updates_are_refused() -> None:
    from fltac_secure.errors import ProtocolError
    from fltac_secure.federation import messages as fm
    from fltac_secure.learning.compress import quantise
    from fltac_secure.transport.envelope import Message

    shapes = fm.Shapes(vector_size=100, sketch_dim=8, k=2, bits=4, block_size=16)
    q = quantise(np.linspace(-1, 1, 100, dtype=np.float32), 4, 16, rng=np.random.default_rng(0))
    meta, tensors = fm.quantised_message_parts({0: q, 1: q}, shapes)

    def msg(meta: dict, tensors: dict) -> Message:
        return Message(fm.UPDATE, "f", "h" * 64, "site1", round=1, meta=meta, tensors=tensors)

    good = fm.parse_quantised(msg(meta, tensors), [0, 1], shapes)
    assert sorted(good) == [0, 1] and np.array_equal(good[0].packed, q.packed)
    assert msg(meta, tensors).elements == 200  # parameters, not bytes
    bad_cases = [
        ({**meta, "bits": 8}, tensors, "header"),
        ({**meta, "values": 99}, tensors, "header"),
        (meta, {**tensors, "qslot/0": tensors["qslot/0"][:-1]}, "packed values"),
        (meta, {**tensors, "qscale/1": np.full(7, np.nan, np.float32)}, "NaN"),
        (meta, {**tensors, "qslot/0": np.full(50, 0xFF, np.uint8)}, "outside"),
        (meta, {k: v for k, v in tensors.items() if k != "qscale/1"}, "slots"),
        (meta, {**tensors, "slot/0": np.zeros(100, np.float32)}, "unexpected"),
    ]
    for m, t, match in bad_cases:
        with pytest.raises(ProtocolError, match=match):
            fm.parse_quantised(msg(m, t), [0, 1], shapes)
    plain = fm.Shapes(vector_size=100, sketch_dim=8, k=2)
    with pytest.raises(ProtocolError, match="unexpected tensor"):  # a plan without compression takes no qslot
        fm.parse_vectors(msg(meta, tensors), [0, 1], plain)


def test_site_restart_before_update_resumes_its_cache_and_residuals(tmp_path_factory: pytest.TempPathFactory) -> None:
    """site3 dies before sending its round-1 UPDATE and comes back: it answers from the quantised updates it
    cached and the residuals it stored, so the run still equals the simulator with the same draws."""
    import time

    from collaborator.service import Faults, SimulatedCrash
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    plan = tiny_plan(rounds=3, compression={"bits": 4, "block_size": 16, "error_feedback": True})
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("roles") / "fed"))
    rngs = {s: np.random.default_rng(n) for s, n in seeds(plan).items()}
    agg = start(fed.aggregator())
    cols = {s: start(fed.collaborator(s, faults=Faults(quantise_rng=rngs[s]))) for s in ("site1", "site2")}
    dying = start(fed.collaborator("site3", faults=Faults(crash_before=("UPDATE", 1), quantise_rng=rngs["site3"])))
    deadline = time.monotonic() + 120
    while dying.thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dying.error and isinstance(dying.error[0], SimulatedCrash), dying.error
    back = start(fed.collaborator("site3", faults=Faults(quantise_rng=rngs["site3"])))  # the same draws go on
    state = agg.join(180)
    assert not agg.error, agg.error
    for run in [*cols.values(), back]:
        run.join(60)
        assert not run.error, run.error
    assert all(row["updated"] == ["site1", "site2", "site3"] for row in agg.obj.history)
    method = FLTAC(SimContext(plan, load_federated_dir(plan, fed.layout.root)))
    method.compression_rngs = {s: np.random.default_rng(n) for s, n in seeds(plan).items()}
    for r in range(plan.rounds):
        method.run_round(r)
    for key, vec in method.state.vectors.items():
        np.testing.assert_allclose(state.vectors[key], vec, atol=1e-5, err_msg=key)


def test_secure_aggregation_of_quantised_updates_equals_the_simulator(
        tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    """The masked upload is the quantised ring's width per number (8 bits, as the plain upload), and the cluster
    means equal the simulator's with the same draws (the aggregator adds back the starts it sent)."""
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    plan = tiny_plan(compression={"bits": 8, "secure_clip": 0.2}, secure_aggregation={"enabled": True},
                     tasks=SAME_WIDTH)
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("secure") / "fed"))
    run = run_seeded(fed)
    state, history = run["state"], run["history"]
    assert all(all(c["status"] == "summed" for c in row["secure"].values()) for row in history)
    method = FLTAC(SimContext(plan, load_federated_dir(plan, fed.layout.root)))
    method.compression_rngs = {s: np.random.default_rng(n) for s, n in seeds(plan).items()}
    labels = [dict(method.run_round(r).labels or {}) for r in range(plan.rounds)]
    assert [row["clusters"] for row in history] == labels
    for key, vec in method.state.vectors.items():
        np.testing.assert_allclose(state.vectors[key], vec, atol=1e-5, err_msg=key)
    d, width = adapter_layout(plan).size, 8  # the ring is exactly bits wide
    masked = [e for e in read_ledger(fed.layout.aggregator / "ledger.jsonl").entries if e.kind == "SA_MASKED"]
    assert masked and all(e.tensor_bytes % -(-d * width // 8) == 0 for e in masked)
    per_cluster = sum(e.tensor_bytes for e in masked) // -(-d * width // 8)
    assert sum(e.elements for e in masked) == per_cluster * d  # parameters, not bytes
