"""Secure aggregation inside clusters: the protocol core, pure (no I/O, no sockets).

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS) with dropout recovery, in the variant hardened
against an actively malicious aggregator: members sign their round keys with
their enrollment certificates, survivors sign the survivor set (consistency
round), and no member's two secrets are ever both revealed (one-share rule).
The protocol, the threat model and what is left to leak: ``README.md`` here.

Modules: ``ring`` (fixed-point encoding in Z_2^bits), ``crypto`` (X25519,
HKDF, AES-CTR masks, AES-GCM shares, Shamir, ECDSA), ``identity``
(certificate checks every member runs), ``records`` (the typed messages and
the context every label binds), ``client`` and ``server`` (the two state
machines), ``rules`` (the plan's threshold, ring and cluster-size rules),
``local`` (drive a cluster in one process: tests, benchmark, simulator).
"""

import importlib
from typing import Any

_EXPORTS = {
    "ClientSession": "client", "PeerVerifier": "identity", "Signer": "identity", "Run": "local",
    "run_cluster": "local", "ClusterResult": "records", "Context": "records", "Setup": "records", "Stage": "records",
    "Ring": "ring", "max_fractional_bits": "ring", "cluster_setup": "rules", "member_weights": "rules",
    "ring_of": "rules", "ring_for": "rules", "threshold_for": "rules", "ServerSession": "server",
    "QuantRing": "qring",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a submodule when one of its names is first used: validating a plan needs only ``ring``
    (numpy), not the key exchange and certificate checks (cryptography, pycryptodome)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
