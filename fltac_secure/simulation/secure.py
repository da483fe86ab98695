"""Secure aggregation in the simulator: the same protocol core, every party in this process.

The simulated federation has no PKI of its own, so one is made for the run
(a throwaway CA in a temporary folder, every roster site enrolled through the
real flow); each member then signs and checks keys exactly as a networked
site does, and the masked sums go through ``fltac_secure.secagg`` unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fltac_secure.federation.rounds import Assignment, ServerState
from fltac_secure.federation.secure_round import member_input, plan_secure_round, resolve_own, secure_outcome
from fltac_secure.plan import Plan, plan_hash
from fltac_secure.secagg import ClientSession, PeerVerifier, ServerSession, Signer, run_cluster


class LocalSecureAggregation:
    """A throwaway PKI for ``sites`` and the in-process protocol run for each round."""

    def __init__(self, plan: Plan, sites: list[str]) -> None:
        from fltac_secure.pki.testing import enroll_federation

        self.plan, self.hash = plan, plan_hash(plan)
        self._dir = Path(tempfile.mkdtemp(prefix="fltac-sim-pki-"))
        try:
            fed = enroll_federation(self._dir, sites)
            self.signers = {s: Signer.from_files(s, fed.paths(s).cert, fed.paths(s).key) for s in sites}
            self.verifier = PeerVerifier.from_files(fed.ca_cert, plan.roster, fed.crl)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)  # keys are in memory; nothing of the run stays on disk
        self.refusals: list[str] = []
        """Every check a member failed (it left that cluster, e.g. ``lonely_rows``), all rounds."""
        self.masked_lengths: list[int] = []
        """The last round's masked uploads: one length per masked input sent (K_c wide with trim_head)."""

    def aggregate(self, state: ServerState, assignment: Assignment, vectors: Mapping[str, np.ndarray],
                  counts: Mapping[str, int], rngs: Mapping[str, np.random.Generator] | None = None,
                  head_rows: Mapping[str, int] | None = None, labels: Mapping[str, int] | None = None,
                  ) -> tuple[ServerState, dict[int, dict[str, Any]]]:  # fmt: skip
        """The next state after a secure UPDATE of every cluster (own vectors resolved at once).

        With compression the members sum their slots' updates (trained minus ``state.vectors``) quantised;
        ``rngs`` (tests only): each site's rounding draws. ``labels``: each slot's label count (default
        ``head_rows``); a member's signed width in a cluster is the largest of its slots' there, and a member
        whose head rows would be summed over too few members leaves the cluster (``lonely_rows``), as a site
        does.
        """
        labels = labels if labels is not None else head_rows
        if labels is None:
            raise ValueError("secure aggregation needs each slot's label count (labels or head_rows)")
        updates = self.plan.compression.enabled
        inputs = {k: v - state.vectors[k] for k, v in vectors.items()} if updates else vectors
        length = len(next(iter(vectors.values())))
        sr = plan_secure_round(self.plan, self.hash, state.round, 0, assignment.labels, counts, length, head_rows)
        results = {}
        self.masked_lengths = []
        for cid, setup in sr.setups.items():
            clients = {}
            for site in setup.members:
                idx = sr.slots[cid][site]
                vecs, weights = member_input(sr, cid, site, {i: inputs[f"{site}/{i}"] for i in idx})
                width = max(int(labels[f"{site}/{i}"]) for i in idx)
                clients[site] = ClientSession(setup, self.signers[site], self.verifier, vecs, weights, width=width,
                                              min_cluster_size=self.plan.secure_aggregation.min_cluster_size,
                                              rng=rngs.get(site) if rngs else None)  # fmt: skip
            run = run_cluster(ServerSession(setup, self.verifier), clients)
            for site, exc in sorted(run.errors.items()):
                self.refusals.append(f"round {state.round}, cluster {cid}, {site}: {exc} ({exc.reason})")
                warnings.warn(f"secure aggregation: {exc} ({exc.reason})", stacklevel=2)
            results[cid] = run.result
            self.masked_lengths += [setup.length for m in setup.members if "MaskedInput" in run.sent.get(m, [])]
        new, report = secure_outcome(state, assignment, sr, results, updates=updates)
        return resolve_own(new, vectors), report
