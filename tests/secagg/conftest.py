"""A federation enrolled through the real PKI flow, shared by the secure aggregation tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fltac_secure.pki.testing import FederationPKI, enroll_federation
from fltac_secure.secagg import ClientSession, Context, PeerVerifier, Ring, ServerSession, Setup, Signer, threshold_for

SITES = tuple(f"site{i}" for i in range(8))


@pytest.fixture(scope="session")
def fed(tmp_path_factory: pytest.TempPathFactory) -> FederationPKI:
    return enroll_federation(tmp_path_factory.mktemp("secagg-pki"), SITES)


@pytest.fixture(scope="session")
def signers(fed: FederationPKI) -> dict[str, Signer]:
    return {n: Signer.from_files(n, fed.paths(n).cert, fed.paths(n).key) for n in SITES}


@pytest.fixture(scope="session")
def verifier(fed: FederationPKI) -> PeerVerifier:
    return PeerVerifier.from_files(fed.ca_cert, SITES, fed.crl)


ROWS = {"width": 1, "min_cluster_size": 2}
"""ClientSession's head-row arguments where every member has the same width (the rule holds trivially)."""


class Cluster:
    """A cluster ready to run: setup, inputs, clients and a server (``server_cls`` lets a test play a malicious one)."""

    def __init__(
        self, signers: dict[str, Signer], verifier: PeerVerifier, members: Sequence[str], *, length: int = 64,
        ring: Ring | None = None, fraction: float = 2 / 3, context: Context | None = None, seed: int = 0,
        server_cls: type[ServerSession] = ServerSession, vectors: dict[str, np.ndarray] | None = None,
        widths: dict[str, int] | None = None, min_cluster_size: int = 2,
    ) -> None:  # fmt: skip
        rng = np.random.default_rng(seed)
        self.ring = ring or Ring(32, 20, 8.0)
        self.vectors = vectors or {m: rng.normal(0, 0.5, length) for m in members}
        self.weights = {m: float(rng.integers(1, 100)) for m in members}
        self.setup = Setup(
            context or Context("planhash", 3, 0, 1), tuple(members), tuple(self.weights[m] for m in members),
            threshold_for(len(members), fraction), self.ring, length,
        )  # fmt: skip
        self.widths = {m: (widths or {}).get(m, 1) for m in members}
        self.clients = {m: ClientSession(self.setup, signers[m], verifier, [self.vectors[m]], [self.weights[m]],
                                         width=self.widths[m], min_cluster_size=min_cluster_size)
                        for m in members}  # fmt: skip
        self.server = server_cls(self.setup, verifier)

    def expected(self, survivors: Sequence[str]) -> np.ndarray:
        """The plain weighted sum the secure sum must equal: sum of (w_u / W) clip(x_u) over survivors."""
        total = sum(self.weights.values())
        clip = self.ring.clip
        return sum((self.weights[m] / total) * np.clip(self.vectors[m], -clip, clip) for m in survivors)


@pytest.fixture()
def make_cluster(signers: dict[str, Signer], verifier: PeerVerifier):  # type: ignore[no-untyped-def]
    def make(members: Sequence[str] = SITES[:4], **kw: object) -> Cluster:
        return Cluster(signers, verifier, members, **kw)  # type: ignore[arg-type]

    return make


def sites(n: int) -> tuple[str, ...]:
    return SITES[:n]
