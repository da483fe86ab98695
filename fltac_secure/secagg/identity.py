"""Who may take part: enrollment certificates, checked by every member, not only by the aggregator.

Threat answered: an actively malicious aggregator substitutes a member's
advertised public keys with its own (a man in the middle between sites, the
hole in Flower's SecAgg+). Each member signs its keys with the private key of
its enrollment certificate, and every other member checks the certificate
against the federation CA, the plan's roster and the CRL before it trusts a
key: the aggregator holds no key a member would accept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fltac_secure.errors import PKIError, SecAggError
from fltac_secure.pki.crl import load_crl, revoked_serials
from fltac_secure.pki.files import load_certificate, load_private_key
from fltac_secure.pki.inspect import common_name, verify_leaf

MAX_CERT_BYTES = 8192


@dataclass(frozen=True)
class Signer:
    """A member's enrollment identity: its name, private key and certificate (DER)."""

    name: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: bytes

    @classmethod
    def from_files(cls, name: str, cert_path: Path, key_path: Path) -> "Signer":
        cert = load_certificate(Path(cert_path))
        key = load_private_key(Path(key_path))
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise PKIError(f"{key_path} is not the private key of {cert_path}; use the key made with the request")
        return cls(name=name, key=key, certificate=cert.public_bytes(serialization.Encoding.DER))


class PeerVerifier:
    """Checks a member's certificate: CA chain and dates, collaborator role, CN = name, in the roster, not revoked."""

    def __init__(
        self, ca: x509.Certificate, roster: Iterable[str], revoked: frozenset[int] = frozenset(),
        now: datetime | None = None,
    ) -> None:  # fmt: skip
        self._ca = ca
        self._roster = frozenset(roster)
        self._revoked = revoked
        self._now = now
        self._cache: dict[tuple[str, bytes], ec.EllipticCurvePublicKey] = {}

    @classmethod
    def from_files(cls, ca_path: Path, roster: Iterable[str], crl_path: Path | None = None) -> "PeerVerifier":
        revoked = revoked_serials(load_crl(Path(crl_path), Path(ca_path))) if crl_path is not None else frozenset()
        return cls(load_certificate(Path(ca_path), "CA certificate"), roster, revoked)

    def public_key(self, site: str, certificate: bytes) -> ec.EllipticCurvePublicKey:
        """The verified signing key of ``site``; SecAggError naming the failed check."""
        cached = self._cache.get((site, certificate))
        if cached is not None:
            return cached
        if site not in self._roster:
            raise SecAggError(f"site {site!r} is not in the plan's roster; its keys are refused", "not_in_roster")
        if not isinstance(certificate, bytes) or len(certificate) > MAX_CERT_BYTES:
            raise SecAggError(f"certificate of {site!r} is missing or larger than {MAX_CERT_BYTES} bytes", "bad_certificate")
        try:
            cert = x509.load_der_x509_certificate(certificate)
            role = verify_leaf(cert, self._ca, now=self._now)
            name = common_name(cert)
        except (ValueError, PKIError) as exc:
            raise SecAggError(f"certificate presented for {site!r} is refused: {exc}", "bad_certificate") from exc
        if role != "collaborator" or name != site:
            raise SecAggError(
                f"certificate presented for {site!r} belongs to {name!r} ({role}); a member signs with its own "
                "collaborator certificate", "bad_certificate",
            )  # fmt: skip
        if cert.serial_number in self._revoked:
            raise SecAggError(f"certificate of {site!r} is revoked (CRL); its keys are refused", "revoked")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SecAggError(f"certificate of {site!r} does not hold an ECDSA key", "bad_certificate")
        self._cache[(site, certificate)] = key
        return key
