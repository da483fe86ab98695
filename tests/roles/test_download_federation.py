"""Quantised downloads (compression.download_bits) over the real roles: the simulator's result with the same
rounding key, the ledger's ROUND_START bytes exactly what shapes and bits imply, the key surviving an
aggregator restart in the checkpoint, and forged ROUND_STARTs refused by the site."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from roles_harness import SAME_WIDTH, Fed, make_fed, restart_after_round_0, run_roles, tiny_plan

from fltac_secure.data.layout import load_federated_dir
from fltac_secure.errors import ProtocolError
from fltac_secure.federation import messages as fm
from fltac_secure.federation.compressed import Downlink
from fltac_secure.federation.demo import build_federation
from fltac_secure.federation.ledger import read_ledger
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.learning.compress import wire_nbytes
from fltac_secure.transport.envelope import Message

BITS, BLOCK = 8, 32
KEY = bytes(range(100, 132))


def run(fed: Fed, rngs: dict[str, int] | None = None) -> dict[str, Any]:
    return run_roles(fed, rngs, rounding_key=KEY)


def simulate(fed: Fed, rngs: dict[str, int] | None = None) -> tuple[Any, list[dict[str, int]]]:
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    method = FLTAC(SimContext(fed.plan, load_federated_dir(fed.plan, fed.layout.root)))
    method.state.rounding_key = KEY
    if rngs is not None:
        method.compression_rngs = {s: np.random.default_rng(n) for s, n in rngs.items()}
    labels = [dict(method.run_round(r).labels or {}) for r in range(fed.plan.rounds)]
    return method, labels


@pytest.fixture(scope="module")
def download_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = tiny_plan(compression={"download_bits": BITS, "block_size": BLOCK})
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("down") / "fed"))
    return fed, run(fed)


def test_equals_the_simulator_bit_for_bit(download_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, got = download_run
    method, labels = simulate(fed)
    assert [row["clusters"] for row in got["history"]] == labels
    assert got["state"].rounding_key == KEY
    for key, vec in method.state.vectors.items():
        np.testing.assert_array_equal(got["state"].vectors[key], vec, err_msg=key)


def test_ledger_counts_the_packed_round_starts(download_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, _ = download_run
    d = adapter_layout(fed.plan).size
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    entries = read_ledger(fed.layout.aggregator / "ledger.jsonl").entries
    starts = [e for e in entries if e.kind == "ROUND_START" and e.direction == "sent"]
    assert sum(e.elements for e in starts) == d * slots * fed.plan.rounds  # parameters as before
    assert sum(e.tensor_bytes for e in starts) == slots * fed.plan.rounds * wire_nbytes(d, BITS, BLOCK)
    finals = [e for e in entries if e.kind == "FINAL" and e.direction == "sent"]
    assert sum(e.tensor_bytes for e in finals) == 4 * d * slots  # the final adapters: exact float32
    updates = [e for e in entries if e.kind == "UPDATE"]
    assert sum(e.tensor_bytes for e in updates) == 4 * d * slots * fed.plan.rounds  # uploads stay float32


def test_audit_counts_download_bits_and_fedit_at_the_same_setting(download_run: tuple[Fed, dict[str, Any]]) -> None:
    import json

    from typer.testing import CliRunner

    from fltac_secure.cli import app
    from fltac_secure.federation.sizes import model_sizes, workspace_model_facts

    fed, _ = download_run
    d = adapter_layout(fed.plan).size
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)["comparison"]
    row = data["bytes"]["ROUND_START"]
    params, nbytes = fed.plan.rounds * slots * d, fed.plan.rounds * slots * wire_nbytes(d, BITS, BLOCK)
    assert (row["parameters"], row["tensor_bytes"]) == (params, nbytes)
    assert data["bytes"]["FINAL"]["bits_per_parameter"] == 32.0
    assert data["compression"]["download_bits"] == BITS
    adapter = model_sizes(fed.plan, 8, workspace_model_facts(fed.layout.aggregator, fed.plan)).fedit_adapter
    fedit = data["compression"]["fedit_bytes"]
    sites = len(fed.layout.sites)  # every site took part in every round and got FINAL
    assert fedit["float32_down"] == 4 * adapter * sites * (fed.plan.rounds + 1)
    assert fedit["compressed_down"] == (sites * fed.plan.rounds * wire_nbytes(adapter, BITS, BLOCK)
                                        + 4 * adapter * sites)
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--by", "kind"])
    assert res.exit_code == 0 and "round starts at 8 bits" in " ".join(res.output.split())


def test_the_rounding_key_survives_an_aggregator_restart(tmp_path: Path) -> None:
    """Killed after round 0's checkpoint, a new aggregator (no key given) reads the key from the checkpoint,
    so round 1's ROUND_STARTs are what the simulator with that key sends, and the run ends in its state."""
    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=2, compression={"download_bits": 4, "block_size": BLOCK}))
    second, state = restart_after_round_0(fed, rounding_key=KEY)
    method, labels = simulate(fed)
    assert [row["clusters"] for row in second.history] == labels
    for key, vec in method.state.vectors.items():
        np.testing.assert_array_equal(state.vectors[key], vec, err_msg=key)


def test_with_quantised_uploads_and_secure_aggregation(tmp_path: Path) -> None:
    """Downloads at 4 bits, uploads at 8 inside secure aggregation: the members' updates are against the
    rounded starts both ends hold, and the run equals the simulator with the same draws and key."""
    plan = tiny_plan(compression={"download_bits": 4, "bits": 8, "block_size": BLOCK, "secure_clip": 0.2},
                     secure_aggregation={"enabled": True}, tasks=SAME_WIDTH)
    fed = make_fed(tmp_path / "fed", plan)
    rngs = {s: 3000 + i for i, s in enumerate(plan.roster)}
    got = run(fed, rngs)
    assert all(all(c["status"] == "summed" for c in row["secure"].values()) for row in got["history"])
    method, labels = simulate(fed, rngs)
    assert [row["clusters"] for row in got["history"]] == labels
    for key, vec in method.state.vectors.items():
        np.testing.assert_allclose(got["state"].vectors[key], vec, atol=1e-5, err_msg=key)


def test_site_refuses_forged_round_starts(tmp_path: Path) -> None:
    """Under download_bits a float32 ROUND_START, a header with other bits, a slot too long or a value off
    the grid is refused; the genuine one comes back as the initial adapter plus the dequantised difference."""
    fed = make_fed(tmp_path, tiny_plan(compression={"download_bits": BITS, "block_size": BLOCK}))
    name = next(s for s in fed.layout.sites if len(fed.site(s).data) == 2)
    col = fed.collaborator(name)
    d = adapter_layout(fed.plan).size
    down = Downlink.of(fed.plan)
    vec = down.trimmer.init + 0.01
    qs = {i: down.send(KEY, 1, f"{name}/{i}", vec, None) for i in range(2)}

    def msg(meta: dict, tensors: dict) -> Message:
        return Message(fm.ROUND_START, "rolestest", "h" * 64, "aggregator", 1, "s", meta, tensors)

    meta, tensors = fm.quantised_message_parts(qs, col.shapes, kind=fm.ROUND_START)
    got = col._starts(msg(meta, tensors))
    for i in range(2):
        np.testing.assert_array_equal(got[i], down.receive(qs[i], None))
    with pytest.raises(ProtocolError, match="quantisation header"):
        col._starts(msg({}, fm.vector_tensors({i: vec for i in range(2)})))
    with pytest.raises(ProtocolError, match="unexpected tensor"):
        col._starts(msg(meta, fm.vector_tensors({i: vec for i in range(2)})))
    with pytest.raises(ProtocolError, match="quantisation header"):
        col._starts(msg({**meta, "bits": 4}, tensors))
    with pytest.raises(ProtocolError, match="quantisation header"):
        col._starts(msg({**meta, "values": d + 1}, tensors))
    off_grid = dict(tensors)
    off_grid["qslot/0"] = np.full_like(tensors["qslot/0"], 255)  # 2^8 - 1 is never a value
    with pytest.raises(ProtocolError):
        col._starts(msg(meta, off_grid))
