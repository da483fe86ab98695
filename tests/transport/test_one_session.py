"""One live session per certificate, and a plan mismatch that names what differs."""

from __future__ import annotations

import pytest

from fltac_secure.errors import TransportError
from fltac_secure.transport.admission import differing_sections

from transport_helpers import PLAN, RawPeer, assert_serves_good_client, cctx, data_msg, make_client, wait_for


def test_second_process_with_the_same_certificate_is_refused_and_told_why(server, pki):
    first = make_client(server.endpoint, cctx(pki, "site1"), "site1")
    first.connect()
    second = make_client(server.endpoint, cctx(pki, "site1"), "site1", max_attempts=2)
    try:
        with pytest.raises(TransportError) as info:
            second.connect()
        assert info.value.reason == "duplicate_session"
        assert "another process holding the certificate of 'site1'" in str(info.value)
        first.send(data_msg("site1", value=3.0), timeout=10)  # the first one is not disturbed
        got = server.recv(timeout=10)
        assert got is not None and got[0] == "site1" and float(got[1].tensors["w"][0]) == 3.0
    finally:
        second.close()
        first.close()


def test_a_restarted_site_takes_over_its_dead_session(server, pki):
    dead = RawPeer(server.endpoint, cctx(pki, "site1"))
    dead.authenticate("site1")
    assert wait_for(lambda: "site1" in server.peers())
    dead.close()  # the process died: no BYE, its connection just ends
    with make_client(server.endpoint, cctx(pki, "site1"), "site1") as again:
        again.connect()  # not refused: the old connection is gone
        again.send(data_msg("site1"), timeout=10)
    assert server.recv(timeout=10) is not None
    assert_serves_good_client(server, pki)


def test_plan_mismatch_names_the_sections_that_differ(server, pki):
    server._plan_sections = {"rounds": "aa", "training": "bb", "tasks": "cc"}
    client = make_client(server.endpoint, cctx(pki, "site1"), "site1", plan="b" * 64,
                         hello_meta={"plan_sections": ["rounds=aa", "training=XX", "tasks=cc"]})  # fmt: skip
    with pytest.raises(TransportError) as info:
        client.connect()
    client.close()
    assert info.value.reason == "plan_mismatch" and "sections that differ: training" in str(info.value)
    assert PLAN[:12] in str(info.value)


def test_differing_sections_echoes_only_our_own_names():
    ours = {"rounds": "1", "training": "2"}
    assert differing_sections(["rounds=1", "training=3", "<script>=x", 7, "junk"], ours) == ["training"]
    assert differing_sections("not a list", ours) == []
    assert differing_sections([], ours) == ["rounds", "training"]
