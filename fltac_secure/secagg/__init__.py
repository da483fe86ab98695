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

from fltac_secure.secagg.client import ClientSession
from fltac_secure.secagg.identity import PeerVerifier, Signer
from fltac_secure.secagg.local import Run, run_cluster
from fltac_secure.secagg.records import ClusterResult, Context, Setup, Stage
from fltac_secure.secagg.ring import Ring, max_fractional_bits
from fltac_secure.secagg.rules import cluster_setup, member_weights, ring_of, threshold_for
from fltac_secure.secagg.server import ServerSession

__all__ = [
    "ClientSession",
    "ClusterResult",
    "Context",
    "PeerVerifier",
    "Ring",
    "Run",
    "ServerSession",
    "Setup",
    "Signer",
    "Stage",
    "cluster_setup",
    "max_fractional_bits",
    "member_weights",
    "ring_of",
    "run_cluster",
    "threshold_for",
]
