"""compression.trim_head under secure aggregation over the real roles: each cluster's masked vector is its wire
part at K_c (the widest member slot's label count), the run ends in the simulator's state (float32 and 8 bits,
the same seeded draws), and a member refuses a setup whose length is not the one the plan and its slots imply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from roles_harness import Fed, make_fed, start, tiny_plan
from test_federation import assert_same_state
from test_trim_federation import run, seeds, simulate

from fltac_secure.federation import messages as fm
from fltac_secure.federation import secure_messages as sm
from fltac_secure.federation.demo import build_federation
from fltac_secure.federation.ledger import read_ledger
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.learning.trim import wire_mask, wire_size
from fltac_secure.transport.envelope import Message

SECURE = {"enabled": True}


def secure_trim_plan(**compression: Any) -> Any:
    """One cluster (k = 1): every cluster mixes the 3-label and 2-label tasks, and a site with both tasks sums
    its two slots of different widths locally."""
    return tiny_plan(compression={"trim_head": True, **compression}, secure_aggregation=SECURE,
                     clustering={"sketch_dim": 16, "n_init": 4, "k": 1})


def rows_by_slot(fed: Fed) -> dict[str, int]:
    return {f"{s}/{i}": fed.plan.task(t).num_labels for s in fed.layout.sites
            for i, t in enumerate(t.name for t in fed.plan.tasks if t.name in fed.site(s).data)}


def check_run(fed: Fed, got: dict[str, Any], rngs: dict[str, int] | None) -> None:
    """Same clusters and vectors as the simulator; clusters mixed label counts; slots canonical; every masked
    upload as long as its cluster's K_c wire part (the ledger's parameter counts)."""
    method, labels = simulate(fed, rngs)
    history = got["history"]
    assert all(row["secure"] and all(c["status"] == "summed" for c in row["secure"].values()) for row in history)
    assert [row["clusters"] for row in history] == labels
    assert_same_state(got["state"], method.state)
    rows, layout = rows_by_slot(fed), adapter_layout(fed.plan)
    assert any(np.abs(v - method.init).max() > 1e-4 for v in got["state"].vectors.values())  # training moved them
    for row in history:
        widths = {}
        for key, c in row["clusters"].items():
            widths.setdefault(c, set()).add(rows[key])
        assert any(len(ks) > 1 for ks in widths.values())  # a cluster mixed label counts
    for key, vec in got["state"].vectors.items():  # each slot holds its mean in canonical form
        unused = ~wire_mask(layout, rows[key])
        np.testing.assert_array_equal(vec[unused], method.init[unused], err_msg=key)
    k_c = max(rows.values())
    masked = [e for e in read_ledger(fed.layout.aggregator / "ledger.jsonl").entries if e.kind == sm.SA_MASKED]
    members = sum(len(c["survivors"]) for row in history for c in row["secure"].values())
    assert masked and sum(e.elements for e in masked) == members * wire_size(layout, k_c)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = secure_trim_plan()
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("sectrim") / "fed"))
    return fed, run(fed)


def test_secure_trimmed_run_equals_the_simulator(float_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, got = float_run
    check_run(fed, got, None)


def test_secure_trimmed_quantised_run_equals_the_simulator(tmp_path_factory: pytest.TempPathFactory) -> None:
    plan = secure_trim_plan(bits=8, secure_clip=0.2)
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("sectrimq") / "fed"))
    check_run(fed, run(fed, seeds(plan)), seeds(plan))


def test_per_cluster_lengths_in_one_masked_message(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two clusters of different K_c in one round (clustering.by_labels pins the clusters to the two tasks,
    whose label counts differ, at both ends): every site has a slot in each and sends two masked vectors of
    different lengths in one SA_MASKED (8 bits: packed, counted per cluster), and the run equals the simulator."""
    plan = tiny_plan(compression={"trim_head": True, "bits": 8, "secure_clip": 0.2}, secure_aggregation=SECURE,
                     clustering={"sketch_dim": 16, "n_init": 4, "by_labels": True})
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("sectrim2") / "fed"))
    got = run(fed, seeds(plan))
    assert all(all(c["status"] == "summed" for c in row["secure"].values()) for row in got["history"])
    method, labels = simulate(fed, seeds(plan))
    assert [row["clusters"] for row in got["history"]] == labels
    assert_same_state(got["state"], method.state)
    rows, layout = rows_by_slot(fed), adapter_layout(fed.plan)
    k_of = {}
    for key, c in labels[-1].items():
        k_of[c] = max(k_of.get(c, 0), rows[key])
    assert len(set(k_of.values())) == 2  # the clusters differ in width
    sent = {}
    for name in fed.layout.sites:
        for e in read_ledger(fed.layout.sites[name] / "ledger.jsonl").entries:
            if e.kind == sm.SA_MASKED and e.direction == "sent":
                sent.setdefault(name, []).append(e.elements)
    want = {s: sum(wire_size(layout, k_of[c]) for key, c in labels[-1].items() if key.startswith(f"{s}/"))
            for s in fed.layout.sites}
    assert {s: v[-1] for s, v in sent.items()} == want


# -- refusals ----------------------------------------------------------------------


class LengthForgingAggregator:
    """Turns the real aggregator hostile: every secure ASSIGNMENT announces ``forge(length)`` for every cluster."""

    @staticmethod
    def install(agg: Any, forge: Any) -> None:
        original = agg._send

        def send(peer: str, msg: Any, phase: Any) -> None:
            if msg.kind == fm.ASSIGNMENT and "attempt" in msg.meta:
                meta = {k: forge(v) if k.startswith("length/") else v for k, v in msg.meta.items()}
                msg = type(msg)(**{**msg.__dict__, "meta": meta})
            original(peer, msg, phase)

        agg._send = send


@pytest.mark.parametrize("forge, why", [
    (lambda n: n + 1, "the wire size of no label count in the plan"),  # a length that matches no K_c
    ("narrow", "its rows would be cut"),  # the plan's narrowest K_c: the 3-label slots do not fit
])
def test_members_refuse_a_forged_setup_length_and_the_run_stops(tmp_path: Path, forge: Any, why: str) -> None:
    plan = tiny_plan(rounds=1, round_s=8.0, compression={"trim_head": True}, secure_aggregation=SECURE,
                     clustering={"sketch_dim": 16, "n_init": 4, "k": 1})
    fed = make_fed(tmp_path / "fed", plan)
    layout = adapter_layout(plan)
    if forge == "narrow":
        narrow = wire_size(layout, min(t.num_labels for t in plan.tasks))
        forge = lambda n: narrow  # noqa: E731
    agg_obj = fed.aggregator()
    LengthForgingAggregator.install(agg_obj, forge)
    agg = start(agg_obj)
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    rows = rows_by_slot(fed)
    wide = {key.split("/")[0] for key, k in rows.items() if k == max(rows.values())}
    refused = set()
    for name, r in cols.items():
        r.join(90)
        text = str(r.error[0]) if r.error else ""
        if "secure aggregation check failed" in text:
            assert "bad_length" in text and why in text, text
            refused.add(name)
    want = set(fed.layout.sites) if why.startswith("the wire") else wide
    assert refused == want and refused
    agg.join(120)
    assert agg.error and "failed" in str(agg.error[0])
    assert not agg.obj.history  # no round completed
    for name in refused:  # nothing masked went out from a member that refused
        sent = {e.kind for e in read_ledger(fed.layout.sites[name] / "ledger.jsonl").entries if e.direction == "sent"}
        assert sm.SA_KEYS not in sent and sm.SA_MASKED not in sent


def test_member_checks_the_length_against_its_own_slots(tmp_path: Path) -> None:
    """The member's check in isolation: the right K_c passes and widens with zeros; one too narrow for a slot, or
    a length of no K_c, is refused; without trimming only the plan's vector size passes."""
    from collaborator.secure import SecureSide
    from fltac_secure.errors import SecAggError

    fed = make_fed(tmp_path / "fed", tiny_plan(compression={"trim_head": True}, secure_aggregation=SECURE))
    name = next(s for s in fed.layout.sites if len(fed.site(s).data) == 2)
    col = fed.collaborator(name)
    side = SecureSide(col)
    wire, layout = col.ws.wire, adapter_layout(fed.plan)
    ks = list(wire.labels)
    wide, narrow = max(ks), min(ks)
    assert wide > narrow
    g = np.random.default_rng(0)
    vecs = {i: wire.trimmer.canonical((wire.trimmer.init + g.normal(size=layout.size)).astype(np.float32), k)
            for i, k in enumerate(ks)}
    got = side._inputs(0, wire_size(layout, wide), [0, 1], vecs)
    held = {i: wire_mask(layout, k)[wire_mask(layout, wide)] for i, k in enumerate(ks)}
    for i, part in enumerate(got):
        assert part.shape == (wire_size(layout, wide),) and part.dtype == np.float32
        np.testing.assert_array_equal(part[held[i]], wire.trimmer.wire(vecs[i], ks[i]))
        assert not part[~held[i]].any()
    for length, why in ((wire_size(layout, narrow), "rows would be cut"), (wire_size(layout, wide) + 1, "no label"),
                        (layout.size + 1, "no label")):
        with pytest.raises(SecAggError, match=why) as exc:
            side._inputs(0, length, [0, 1], vecs)
        assert exc.value.reason == "bad_length"
    assert side._inputs(0, wire_size(layout, narrow), [ks.index(narrow)], vecs)[0].shape == (wire_size(layout, narrow),)
    plain = make_fed(tmp_path / "plain", tiny_plan(secure_aggregation=SECURE))
    pcol = plain.collaborator(name)
    pside = SecureSide(pcol)
    full = {0: np.zeros(layout.size, np.float32)}
    assert pside._inputs(0, layout.size, [0], full)[0] is full[0]
    with pytest.raises(SecAggError, match="the plan's adapter"):
        pside._inputs(0, wire_size(layout, narrow), [0], full)


def test_assignment_setup_carries_a_checked_length() -> None:
    from fltac_secure.errors import ProtocolError

    def msg(meta: dict[str, Any]) -> Message:
        return Message(fm.ASSIGNMENT, "rolestest", "h" * 64, "aggregator", 0, "a",
                       {"clusters": [0], "attempt": 7, "skipped": [], **meta})

    ok = {"members/0": ["site1", "site2"], "weights/0": [1.0, 2.0], "length/0": 123}
    assert sm.parse_assignment_setup(msg(ok)) == (7, {0: (("site1", "site2"), (1.0, 2.0), 123)}, [])
    for bad in ({}, {"length/0": 0}, {"length/0": True}, {"length/0": 1.5}, {"length/0": 2**31 + 1}):
        meta = {k: v for k, v in ok.items() if k != "length/0"} | bad
        with pytest.raises(ProtocolError, match="length/0"):
            sm.parse_assignment_setup(msg(meta))
