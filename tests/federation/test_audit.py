"""Ledger and audit: totals by group, torn lines, FedIT/full comparison by hand."""

from __future__ import annotations

import json

import pytest

from fltac_secure.errors import StateError
from fltac_secure.federation.audit import ModelSizes, compare, group_totals, participations, total
from fltac_secure.federation.ledger import Ledger, read_ledger
from fltac_secure.transport.events import WireEvent

ROSTER = ["site1", "site2"]


def ev(peer, direction, kind, rnd, elements, payload=100, wire=150, msg_id=0):
    return WireEvent(time=1.0, peer=peer, direction=direction, kind=kind, round=rnd, msg_id=msg_id,
                     elements=elements, payload_bytes=payload, wire_bytes=wire)


def aggregator_ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.jsonl", site="aggregator")
    for rnd in (0, 1):
        for site in ROSTER:
            led.record(ev(site, "received", "HELLO", rnd, 0))
            led.record(ev(site, "sent", "ROUND_START", rnd, 2 * 1000))  # two slots down
            led.record(ev(site, "received", "SKETCHES", rnd, 2 * 64))
            led.record(ev(site, "sent", "ASSIGNMENT", rnd, 2))
            led.record(ev(site, "received", "UPDATE", rnd, 2 * 1000))
    return tmp_path / "ledger.jsonl"


def test_ledger_round_trip_and_torn_line(tmp_path):
    path = aggregator_ledger(tmp_path)
    with open(path, "a") as fh:
        fh.write('{"time": 1, "site": "aggr')  # a crash mid-line
    res = read_ledger(path)
    assert len(res.entries) == 20 and res.skipped == 1
    assert res.entries[0].site == "aggregator" and res.entries[0].peer == "site1"
    assert json.loads(path.read_text().splitlines()[0])["kind"] == "HELLO"


def test_missing_ledger_is_clear(tmp_path):
    with pytest.raises(StateError, match="no ledger"):
        read_ledger(tmp_path)


def test_group_totals_by_each_dimension(tmp_path):
    entries = read_ledger(aggregator_ledger(tmp_path)).entries
    by_kind = group_totals(entries, "kind", ROSTER)
    assert by_kind["UPDATE"].elements == 2 * 2 * 2000
    assert by_kind["SKETCHES"].elements == 2 * 2 * 128
    assert by_kind["HELLO"].messages == 4
    by_site = group_totals(entries, "site", ROSTER)
    assert set(by_site) == set(ROSTER)
    assert by_site["site1"].elements == 2 * (2000 + 128 + 2 + 2000)
    by_dir = group_totals(entries, "direction", ROSTER)
    assert by_dir["sent"].elements == 4 * (2000 + 2)
    by_round = group_totals(entries, "round", ROSTER)
    assert list(by_round) == ["0", "1", "session"]  # HELLO is connection upkeep, not round 0
    t = total(entries)
    assert t.elements == sum(g.elements for g in by_kind.values())
    assert t.wire_bytes == 20 * 150
    with pytest.raises(ValueError, match="--by"):
        group_totals(entries, "planet", ROSTER)


def test_comparison_matches_hand_computation(tmp_path):
    entries = read_ledger(aggregator_ledger(tmp_path)).entries
    sizes = ModelSizes(fltac_adapter=1000, fedit_adapter=8000, full_model=1_000_000, fedit_rank=8)
    cmp = compare(entries, ROSTER, sizes)
    assert participations(entries, ROSTER) == {(0, "site1"), (0, "site2"), (1, "site1"), (1, "site2")}
    assert cmp.participations == 4
    assert cmp.actual_up == 4 * (128 + 2000)  # received by the aggregator
    assert cmp.actual_down == 4 * (2000 + 2)
    assert cmp.fedit_up == cmp.fedit_down == 4 * 8000
    assert cmp.full_up == cmp.full_down == 4 * 1_000_000
    d = cmp.as_dict()
    assert d["ratio_fltac_to_fedit"] == pytest.approx((4 * 2128 + 4 * 2002) / (8 * 8000))


def test_final_handout_counts_one_more_download_only(tmp_path):
    path = aggregator_ledger(tmp_path)
    led = Ledger(path, site="aggregator")
    for site in ROSTER:
        led.record(ev(site, "sent", "FINAL", 2, 2 * 1000))
        led.record(ev(site, "received", "PING", 2, 0))
    entries = read_ledger(path).entries
    cmp = compare(entries, ROSTER, ModelSizes(fltac_adapter=1000, fedit_adapter=8000, full_model=10**6, fedit_rank=8))
    assert cmp.fedit_up == 4 * 8000  # rounds 0 and 1, two sites
    assert cmp.fedit_down == 6 * 8000  # plus the final hand-out to both sites
    assert cmp.full_down == 6 * 10**6
    assert cmp.actual_down == 4 * 2002 + 2 * 2000


def test_collaborator_side_ledger_counts_up_as_sent(tmp_path):
    led = Ledger(tmp_path / "ledger.jsonl", site="site1")
    led.record(ev("aggregator", "received", "ROUND_START", 0, 500))
    led.record(ev("aggregator", "sent", "UPDATE", 0, 700))
    entries = read_ledger(tmp_path).entries
    cmp = compare(entries, ROSTER, ModelSizes(1, 2, 3, 1))
    assert (cmp.actual_up, cmp.actual_down, cmp.participations) == (700, 500, 1)


def test_round_numbers_match_the_plan(tmp_path):
    """Two planned rounds show as 0 and 1: pings (header round 0) are not round 0, and the
    final hand-out (header round 2, one past the last) is 'final', not a third round."""
    path = aggregator_ledger(tmp_path)
    led = Ledger(path, site="aggregator")
    for site in ROSTER:
        led.record(ev(site, "received", "JOIN", 0, 0))
        led.record(ev(site, "received", "PING", 0, 0))
        led.record(ev(site, "sent", "PONG", 0, 0))
        led.record(ev(site, "sent", "FINAL", 2, 2 * 1000))
        led.record(ev(site, "received", "DONE", 2, 0))
    entries = read_ledger(path).entries
    by_round = group_totals(entries, "round", ROSTER)
    assert list(by_round) == ["0", "1", "final", "session"]
    assert by_round["0"].messages == 2 * 4 and by_round["1"].messages == 2 * 4  # ROUND_START..UPDATE per site
    assert by_round["final"].elements == 2 * 2000 and by_round["final"].messages == 4
    assert by_round["session"].messages == 2 * 2 + 2 * 3  # the HELLOs, then JOIN, PING, PONG per site
    assert participations(entries, ROSTER) == {(r, s) for r in (0, 1) for s in ROSTER}


def test_rounds_sort_numerically():
    entries = [read_entry(kind="UPDATE", rnd=r) for r in (10, 2, 0)]
    assert list(group_totals(entries, "round", ROSTER)) == ["0", "2", "10"]


def read_entry(kind, rnd):
    from fltac_secure.federation.ledger import LedgerEntry

    return LedgerEntry(1.0, "aggregator", "site1", "received", kind, rnd, "1", 1, 1, 1)


def test_bytes_per_parameter_and_ledgers_without_tensor_bytes(tmp_path):
    from fltac_secure.federation.audit import bytes_per_parameter

    led = Ledger(tmp_path / "ledger.jsonl", site="aggregator")
    led.record(WireEvent(time=1.0, peer="site1", direction="received", kind="UPDATE", round=0, msg_id=1,
                         elements=1000, payload_bytes=1400, wire_bytes=1500, tensor_bytes=1000 + 4 * 4))
    led.record(WireEvent(time=1.0, peer="site1", direction="sent", kind="ROUND_START", round=0, msg_id=2,
                         elements=1000, payload_bytes=4200, wire_bytes=4300, tensor_bytes=4000))
    with open(tmp_path / "ledger.jsonl", "a") as fh:  # a line from before tensor bytes were recorded
        fh.write(json.dumps({"time": 1, "site": "aggregator", "peer": "site2", "direction": "received",
                             "kind": "UPDATE", "round": 0, "msg_id": "3", "elements": 1000,
                             "payload_bytes": 4200, "wire_bytes": 4300}) + "\n")
    entries = read_ledger(tmp_path).entries
    assert [e.tensor_bytes for e in entries] == [1016, 4000, -1]
    per = bytes_per_parameter(entries, ROSTER)
    assert per["UPDATE"] == {"parameters": 1000, "tensor_bytes": 1016, "bits_per_parameter": 8.128,
                             "float32_bytes": 4000, "bytes_saved": 2984}
    assert per["ROUND_START"]["bits_per_parameter"] == 32.0
