"""compression.trim_head over the real roles: sites declare their label counts in JOIN, every slot's vector
travels as its wire part, and the run ends in the simulator's state; hostile JOINs and UPDATEs are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from roles_harness import Fed, make_fed, restart_after_round_0, run_roles, tiny_plan

from fltac_secure.data.layout import load_federated_dir
from fltac_secure.federation import messages as fm
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.demo import build_federation
from fltac_secure.federation.ledger import read_ledger
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.learning.compress import wire_nbytes
from fltac_secure.learning.trim import wire_size
from fltac_secure.transport.envelope import Message

BITS, BLOCK = 8, 32


def seeds(plan: Any) -> dict[str, int]:
    return {s: 2000 + i for i, s in enumerate(plan.roster)}


class Captured(EventLog):
    """An event log that keeps its lines (quiet) for the test to read."""

    def __init__(self, site: str) -> None:
        super().__init__(site, quiet=True)
        self.lines: list[str] = []

    def _line(self, text: str, style: str | None) -> None:
        self.lines.append(text)


def run(fed: Fed, rngs: dict[str, int] | None = None) -> dict[str, Any]:
    return run_roles(fed, rngs)


def simulate(fed: Fed, rngs: dict[str, int] | None = None) -> tuple[Any, list[dict[str, int]]]:
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    method = FLTAC(SimContext(fed.plan, load_federated_dir(fed.plan, fed.layout.root)))
    if rngs is not None:
        method.compression_rngs = {s: np.random.default_rng(n) for s, n in rngs.items()}
    labels = [dict(method.run_round(r).labels or {}) for r in range(fed.plan.rounds)]
    return method, labels


def wire_sizes(fed: Fed) -> dict[str, list[int]]:
    """Per site, each slot's wire size from the plan (slot i: the site's i-th task in plan order)."""
    layout = adapter_layout(fed.plan)
    return {s: [wire_size(layout, fed.plan.task(t.name).num_labels) for t in fed.plan.tasks
                if t.name in fed.site(s).data] for s in fed.layout.sites}


@pytest.fixture(scope="module")
def trimmed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = tiny_plan(compression={"trim_head": True})
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("trim") / "fed"))
    return fed, run(fed)


@pytest.fixture(scope="module")
def quantised_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = tiny_plan(compression={"trim_head": True, "bits": BITS, "block_size": BLOCK, "error_feedback": True})
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("trimq") / "fed"))
    return fed, run(fed, seeds(plan))


def test_trimmed_run_equals_the_simulator_bit_for_bit(trimmed_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, got = trimmed_run
    method, labels = simulate(fed)
    assert [row["clusters"] for row in got["history"]] == labels
    state, want = got["state"], method.state
    assert sorted(state.vectors) == sorted(want.vectors)
    for key, vec in want.vectors.items():
        np.testing.assert_array_equal(state.vectors[key], vec, err_msg=key)
    assert sorted(state.cluster_vectors) == sorted(want.cluster_vectors)
    for cid, vec in want.cluster_vectors.items():
        np.testing.assert_array_equal(state.cluster_vectors[cid], vec, err_msg=f"cluster {cid}")
    assert any(np.abs(v - method.init).max() > 1e-4 for v in state.vectors.values())  # training moved them
    rows = {s: [fed.plan.task(t.name).num_labels for t in fed.plan.tasks if t.name in fed.site(s).data]
            for s in fed.layout.sites}
    assert len({k for ks in rows.values() for k in ks}) == 2  # slots of both widths took part


def test_checkpoint_keeps_the_declared_label_counts(trimmed_run: tuple[Fed, dict[str, Any]]) -> None:
    """A restarted aggregator knows every member's label counts from its checkpoint."""
    fed, _ = trimmed_run
    agg = fed.aggregator()
    agg._load_or_init()
    want = {s: [fed.plan.task(t.name).num_labels for t in fed.plan.tasks if t.name in fed.site(s).data]
            for s in fed.layout.sites}
    assert {s: m.labels for s, m in agg.members.items()} == want


def test_final_adapters_and_exports_are_full_length(trimmed_run: tuple[Fed, dict[str, Any]]) -> None:
    from fltac_secure.federation.storage import read_tensors

    fed, got = trimmed_run
    d = adapter_layout(fed.plan).size
    for name, folder in fed.layout.sites.items():
        kept = read_tensors(folder / "state" / "globals.safetensors", "globals")
        assert kept and all(v.shape == (d,) for v in kept.values())
        for i, vec in kept.items():
            np.testing.assert_array_equal(vec, got["state"].vectors[f"{name}/{i.split('/')[1]}"])
        for task in fed.site(name).data:
            assert (folder / "out" / task / "adapter_model.safetensors").is_file()


def test_trimmed_ledger_counts_the_wire_parts(trimmed_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, _ = trimmed_run
    plan, dim, sizes = fed.plan, fed.plan.clustering.sketch_dim, wire_sizes(fed)
    per_round = sum(sum(v) for v in sizes.values())
    assert per_round < adapter_layout(plan).size * sum(len(v) for v in sizes.values())  # it did trim
    by_kind: dict[tuple[str, str], int] = {}
    for e in read_ledger(fed.layout.aggregator / "ledger.jsonl").entries:
        by_kind[(e.kind, e.direction)] = by_kind.get((e.kind, e.direction), 0) + e.elements
    assert by_kind[("ROUND_START", "sent")] == per_round * plan.rounds
    assert by_kind[("UPDATE", "received")] == per_round * plan.rounds
    assert by_kind[("FINAL", "sent")] == per_round
    for name in fed.layout.sites:
        mine = read_ledger(fed.layout.sites[name] / "ledger.jsonl").entries
        ups = [e for e in mine if e.kind == "UPDATE"]
        assert sum(e.elements for e in ups) == plan.rounds * sum(sizes[name])
        assert sum(e.tensor_bytes for e in ups) == plan.rounds * 4 * sum(sizes[name])
        assert sum(e.elements for e in mine if e.direction == "sent") == plan.rounds * (
            sum(sizes[name]) + dim * len(sizes[name]))


def test_trimmed_quantised_run_equals_the_simulator(quantised_run: tuple[Fed, dict[str, Any]]) -> None:
    from fltac_secure.federation.storage import read_tensors

    fed, got = quantised_run
    method, labels = simulate(fed, seeds(fed.plan))
    assert [row["clusters"] for row in got["history"]] == labels
    for key, vec in method.state.vectors.items():
        np.testing.assert_allclose(got["state"].vectors[key], vec, atol=1e-5, err_msg=key)
    sizes = wire_sizes(fed)
    for site, folder in fed.layout.sites.items():  # residuals: wire-length, as the simulator's
        kept = read_tensors(folder / "state" / "residuals.safetensors", "residuals")
        for name, arr in kept.items():
            i = int(name.split("/")[1])
            assert arr.shape == (sizes[site][i],)
            np.testing.assert_allclose(arr, method.residuals[f"{site}/{i}"], atol=1e-5)


def test_trimmed_quantised_ledger_counts_bits(quantised_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, _ = quantised_run
    sizes = wire_sizes(fed)
    ups = [e for e in read_ledger(fed.layout.aggregator / "ledger.jsonl").entries if e.kind == "UPDATE"]
    flat = [n for v in sizes.values() for n in v]
    assert sum(e.elements for e in ups) == fed.plan.rounds * sum(flat)
    assert sum(e.tensor_bytes for e in ups) == fed.plan.rounds * sum(wire_nbytes(n, BITS, BLOCK) for n in flat)


# -- refusals ----------------------------------------------------------------------


def join(labels: list[int] | None, sender: str = "site1", slots: int = 2) -> Message:
    return Message(fm.JOIN, "rolestest", "h" * 64, sender, 0, "id-1",
                   fm.join_meta([10] * slots, -1, "", None, labels), {})


def test_join_label_counts_are_checked(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, tiny_plan(compression={"trim_head": True}))
    log = Captured("aggregator")
    agg = fed.aggregator(log=log)
    for bad, why in (([3, 4], "no task of the plan has"), ([1, 2], "no task of the plan has"), (None, "declares no label counts"),
                     ([3], "list of 2 integers")):
        agg._on_join("site1", join(bad))
        assert "site1" not in agg.members
        assert "refused JOIN from site1" in log.lines[-1] and why in log.lines[-1], log.lines[-1]
    agg._on_join("site1", join([3, 2]))
    assert agg.members["site1"].labels == [3, 2]
    agg._on_join("site1", join([2, 2]))  # a site keeps its tasks: a changed declaration is ignored
    assert agg.members["site1"].labels == [3, 2] and "label counts [2, 2] instead of [3, 2]" in log.lines[-1]


def test_join_labels_refused_when_trimming_is_off(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, tiny_plan())
    log = Captured("aggregator")
    agg = fed.aggregator(log=log)
    agg._on_join("site1", join([3, 2]))
    assert "site1" not in agg.members
    assert "refused JOIN from site1" in log.lines[-1] and "trim_head off" in log.lines[-1]


@pytest.mark.parametrize("bits", [32, 8])
def test_update_one_entry_too_long_is_refused(tmp_path: Path, bits: int) -> None:
    from aggregator.phases import Phase
    from fltac_secure.learning.compress import quantise

    fed = make_fed(tmp_path, tiny_plan(compression={"trim_head": True, "bits": bits, "block_size": BLOCK}))
    log = Captured("aggregator")
    agg = fed.aggregator(log=log)
    agg._on_join("site1", join([3, 2]))
    sizes = [agg.wires.of(agg.members["site1"]).size(i) for i in range(2)]
    assert sizes[0] > sizes[1]
    phase = Phase(0, fm.ASSIGNMENT, fm.UPDATE)
    phase.messages["site1"] = Message(fm.ASSIGNMENT, "rolestest", "h" * 64, "aggregator", 0, "a", {"clusters": [0, 1]})
    agg.phase = phase

    def update(lengths: list[int]) -> Message:
        vecs = {i: np.zeros(n, np.float32) for i, n in enumerate(lengths)}
        if bits == 32:
            return Message(fm.UPDATE, "rolestest", "h" * 64, "site1", 0, "u", {}, fm.vector_tensors(vecs))
        qs = {i: quantise(v, bits, BLOCK, rng=np.random.default_rng(0)) for i, v in vecs.items()}
        meta, tensors = fm.quantised_message_parts(qs, agg.shapes, dict(enumerate(lengths)))
        return Message(fm.UPDATE, "rolestest", "h" * 64, "site1", 0, "u", meta, tensors)

    for lengths in ([sizes[0], sizes[1] + 1], [sizes[0] - 1, sizes[1]], [sizes[1], sizes[0]]):
        agg._handle("site1", update(lengths))
        assert "site1" not in phase.answers and "refused UPDATE from site1" in log.lines[-1], log.lines[-1]
    agg._handle("site1", update(sizes))
    assert sorted(phase.answers["site1"]) == [0, 1]
    if bits == 32:  # rebuilt into full canonical vectors
        assert all(v.shape == (agg.shapes.vector_size,) for v in phase.answers["site1"].values())


def test_audit_counts_the_trimmed_slots(trimmed_run: tuple[Fed, dict[str, Any]],
                                        quantised_run: tuple[Fed, dict[str, Any]]) -> None:
    """`fltac audit`: parameters and tensor bytes of the wire parts (float32 and 8 bits), the FL-TAC slot size
    per task, and what trimming saved against the untrimmed adapter."""
    import json

    from typer.testing import CliRunner

    from fltac_secure.cli import app

    for fed, bits in ((trimmed_run[0], 32), (quantised_run[0], BITS)):
        plan, d, dim = fed.plan, adapter_layout(fed.plan).size, fed.plan.clustering.sketch_dim
        sizes = wire_sizes(fed)
        flat = [n for v in sizes.values() for n in v]
        res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--json"])
        assert res.exit_code == 0, res.output
        cmp = json.loads(res.output)["comparison"]
        assert cmp["fltac"]["up"] == plan.rounds * (sum(flat) + dim * len(flat))
        assert cmp["fltac"]["down"] == plan.rounds * sum(flat) + sum(flat)  # ROUND_START each round, FINAL once
        row = cmp["bytes"]["UPDATE"]
        nbytes = 4 * sum(flat) if bits == 32 else sum(wire_nbytes(n, bits, BLOCK) for n in flat)
        assert (row["parameters"], row["tensor_bytes"]) == (plan.rounds * sum(flat), plan.rounds * nbytes)
        layout = adapter_layout(plan)
        want = {t.name: wire_size(layout, t.num_labels) for t in plan.tasks}
        assert cmp["sizes"]["fltac_adapter"] == d and cmp["sizes"]["fltac_slot_wire"] == want
        trim = cmp["compression"]["trim_head"]
        assert trim["untrimmed_slot"] == d
        assert {t: r["saved"] for t, r in trim["per_task"].items()} == {t: d - n for t, n in want.items()}
        assert trim["per_task"]["alpha"]["saved"] == 0 and trim["per_task"]["beta"]["saved"] > 0
    res = CliRunner().invoke(app, ["audit", "--workspace", str(trimmed_run[0].layout.aggregator), "--by", "kind"])
    assert res.exit_code == 0 and "Head trimming" in res.output and "untrimmed" in res.output


def test_aggregator_restart_keeps_trimming(tmp_path: Path) -> None:
    """Killed after round 0's checkpoint, a new aggregator knows the sites' label counts from it and the run
    still ends in the simulator's state, bit for bit."""
    fed = make_fed(tmp_path / "fed", tiny_plan(rounds=2, compression={"trim_head": True}))
    second_obj, state = restart_after_round_0(fed)
    method, labels = simulate(fed)
    assert [row["clusters"] for row in second_obj.history] == labels
    for key, vec in method.state.vectors.items():
        np.testing.assert_array_equal(state.vectors[key], vec, err_msg=key)


def test_site_refuses_a_round_start_of_the_wrong_width(tmp_path: Path) -> None:
    """A (forged) aggregator's ROUND_START must carry each slot's wire part: a whole vector for a trimmed slot,
    or a part one entry short, is refused; the right parts come back as full canonical vectors."""
    from fltac_secure.errors import ProtocolError

    fed = make_fed(tmp_path, tiny_plan(compression={"trim_head": True}))
    name = next(s for s in fed.layout.sites if len(fed.site(s).data) == 2)
    col = fed.collaborator(name)
    wire, d = col.ws.wire, adapter_layout(fed.plan).size
    sizes = [wire.size(i) for i in range(2)]

    def start_msg(lengths: list[int]) -> Message:
        vecs = {i: np.zeros(n, np.float32) for i, n in enumerate(lengths)}
        return Message(fm.ROUND_START, "rolestest", "h" * 64, "aggregator", 0, "s", {}, fm.vector_tensors(vecs))

    for lengths in ([d, d], [sizes[0], sizes[1] - 1]):
        with pytest.raises(ProtocolError, match="expected"):
            col._vectors(start_msg(lengths))
    got = col._vectors(start_msg(sizes))
    assert all(v.shape == (d,) for v in got.values())
    np.testing.assert_array_equal(got[1], wire.trimmer.full(np.zeros(sizes[1], np.float32), wire.labels[1]))


def test_clusters_by_label_count_over_the_roles(tmp_path: Path) -> None:
    """clustering.by_labels over the real roles: the aggregator clusters with the label counts the sites declared
    in JOIN, every cluster holds one label count in every round, and the run ends in the simulator's state."""
    plan = tiny_plan(compression={"trim_head": True}, clustering={"sketch_dim": 16, "n_init": 4, "by_labels": True})
    fed = Fed(plan, build_federation(plan, tmp_path / "fed"))
    got = run(fed)
    method, labels = simulate(fed)
    history = [row["clusters"] for row in got["history"]]
    assert history == labels and len(history) == plan.rounds
    counts = {f"{s}/{i}": plan.task(t.name).num_labels for s in fed.layout.sites
              for i, t in enumerate(t for t in plan.tasks if t.name in fed.site(s).data)}
    for row in history:
        widths: dict[int, set[int]] = {}
        for key, cid in row.items():
            widths.setdefault(cid, set()).add(counts[key])
        assert all(len(w) == 1 for w in widths.values()), row
    for key, vec in got["state"].vectors.items():
        np.testing.assert_array_equal(vec, method.state.vectors[key], err_msg=key)
