"""Fuzz the running server: random and structure-aware garbage at every stage, from many
identities that connect and vanish (see ``fuzz_helpers`` for the scenarios), plus a corpus of
minimal inputs that each crashed the server's I/O thread once (``test_fuzz_corpus``).

Afterwards the server must still be whole: its I/O thread alive (no crash during the
campaign), ``peers()``/``recv(timeout=0)`` working, every unauthenticated connection
dropped after the handshake timeout, a good site authenticated and served, and this
process's resident memory grown by less than ``RSS_GROWTH_LIMIT`` (100 MiB: the server
may legitimately hold a few preallocated 8 MiB message buffers and ZeroMQ queues, but
not grow with the amount of garbage).

Knobs (environment): ``FLTAC_FUZZ_SEED`` (default 9006), ``FLTAC_FUZZ_SECONDS`` (default
campaign, 10 s), ``FLTAC_FUZZ_SLOW_SECONDS`` (the ``slow`` campaign, 240 s),
``FLTAC_FUZZ_REPLAY=label:seed`` (replay one step alone, as printed in a finding).
"""

from __future__ import annotations

import gc
import os

import pytest
import zmq
from fuzz_helpers import (
    CORPUS, SCENARIOS, SERVER_OPTS, Campaign, flood_without_reading, fuzz_server, replay_once, rss_bytes,
    run_corpus_case,
)  # fmt: skip

from transport_helpers import assert_serves_good_client, wait_for

SEED = int(os.environ.get("FLTAC_FUZZ_SEED", "9006"))
QUICK_SECONDS = float(os.environ.get("FLTAC_FUZZ_SECONDS", "10"))
SLOW_SECONDS = float(os.environ.get("FLTAC_FUZZ_SLOW_SECONDS", "240"))
RSS_GROWTH_LIMIT = 100 << 20


def _fuzz(pki, seed: int, seconds: float) -> None:
    gc.collect()
    before = rss_bytes()
    campaign = Campaign(pki, seed=seed, seconds=seconds)
    problems: list[str] = []
    try:
        report = campaign.run()
        srv = campaign.server  # a fresh one if the campaign had to restart after a crash
        try:
            srv.peers()
            for _ in range(100000):  # valid messages from fuzzing peers may be waiting
                if srv.recv(timeout=0) is None:
                    break
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            problems.append(f"server API raised after the campaign: {exc!r}")
        drained = wait_for(lambda: srv.pending_connections() == 0, 3 * SERVER_OPTS["handshake_timeout"] + 2)
        if not drained:
            problems.append(f"{srv.pending_connections()} pending connections left after the handshake timeout")
        try:
            assert_serves_good_client(srv, pki)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the server no longer serves a good site: {exc!r}")
        if srv._crash is not None:
            problems.append(f"the server I/O thread crashed after the campaign: {srv._crash!r}")
        gc.collect()
        growth = rss_bytes() - before  # measured while the last server is still up
    finally:
        campaign.close()
    print(report.summary())
    print(f"RSS growth {growth / 2**20:.1f} MiB (limit {RSS_GROWTH_LIMIT >> 20} MiB)")
    if growth > RSS_GROWTH_LIMIT:
        problems.append(f"resident memory grew by {growth / 2**20:.0f} MiB (limit {RSS_GROWTH_LIMIT >> 20} MiB)")
    for f in report.findings.values():
        problems.append(f"server I/O thread crashed ({f.count}x): {f.signature}; culprit: {f.culprit}")
    assert not problems, "\n".join(problems) + "\n\n" + report.summary()


@pytest.mark.timeout(180)
def test_fuzz_server(pki):
    _fuzz(pki, SEED, QUICK_SECONDS)


@pytest.mark.slow
@pytest.mark.timeout(int(SLOW_SECONDS) + 600)
def test_fuzz_server_long(pki):
    _fuzz(pki, SEED + 1, SLOW_SECONDS)


@pytest.mark.parametrize("case", list(CORPUS))
def test_fuzz_corpus(pki, case):
    """Each input that once crashed the I/O thread, alone on a fresh server: no crash, still serving."""
    zctx = zmq.Context()
    srv = fuzz_server(pki)
    try:
        crash = run_corpus_case(pki, case, zctx, srv)
        assert crash is None, f"{case}: {CORPUS[case].__doc__}\nserver I/O thread crashed: {crash}"
        assert_serves_good_client(srv, pki)
    finally:
        zctx.term()
        srv.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flood_without_reading_keeps_memory_bounded(pki):
    """A site that sends 150k PINGs (29 MB) and never reads the PONGs must not grow the server by 100 MiB."""
    growth, outcome = flood_without_reading(pki, 150_000, RSS_GROWTH_LIMIT)
    print(f"flood: RSS growth {growth / 2**20:.0f} MiB, {outcome}")
    assert outcome == "ok" and growth < RSS_GROWTH_LIMIT, f"{outcome}; RSS grew by {growth / 2**20:.0f} MiB"


@pytest.mark.skipif("FLTAC_FUZZ_REPLAY" not in os.environ, reason="set FLTAC_FUZZ_REPLAY=label:seed to replay a step")
def test_fuzz_replay(pki):
    label, _, seed = os.environ["FLTAC_FUZZ_REPLAY"].rpartition(":")
    assert label in SCENARIOS, f"unknown scenario {label!r}; one of {sorted(SCENARIOS)}"
    crash = replay_once(pki, label, int(seed))
    assert crash is None, crash
