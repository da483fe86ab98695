"""Read certificates back: describe them for operators and verify them against the CA."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from fltac_secure.errors import PKIError
from fltac_secure.pki.files import load_certificate, pem_kind, read_bytes, utc_now
from fltac_secure.pki.request import ROLE_EKU, Role


def common_name(cert: x509.Certificate) -> str:
    """The single CN of the certificate's subject; PKIError if there is not exactly one."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PKIError(f"certificate subject {cert.subject.rfc4514_string()!r} must carry exactly one CN")
    value = cns[0].value
    return value if isinstance(value, str) else value.decode()


def role_of(cert: x509.Certificate) -> Role | None:
    """aggregator for a serverAuth-only certificate, collaborator for clientAuth-only, else None."""
    try:
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None
    for role, oid in ROLE_EKU.items():
        if eku == [oid]:
            return role  # type: ignore[return-value]
    return None


def cert_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(g.value) for g in ext]


def describe_certificate(cert_path: Path) -> dict[str, Any]:
    """Subject CN, role, SANs, validity, serial, issuer and SHA-256 fingerprint of a certificate."""
    cert = load_certificate(Path(cert_path))
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "path": str(cert_path),
        "subject": cert.subject.rfc4514_string(),
        "common_name": common_name(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "role": "ca" if is_ca else role_of(cert),
        "sans": _sans(cert),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint": cert_fingerprint(cert),
    }


def is_request(path: Path) -> bool:
    """True when ``path`` is a PEM certificate signing request (what `fltac certs show` tells apart)."""
    return pem_kind(read_bytes(Path(path), "file")) == "a certificate signing request (.csr)"


def describe_request(csr_path: Path) -> dict[str, Any]:
    """Name, requested role and SANs, and the fingerprint the site reads out to the CA operator.

    The request is vetted as the CA would vet it (``check_csr``), so what is shown is what would be signed.
    """
    from fltac_secure.pki.policy import check_csr

    data = read_bytes(Path(csr_path), "CSR")
    req = check_csr(data, str(csr_path))
    return {"path": str(csr_path), "request_for": req.name, "role": req.role, "sans": [str(g.value) for g in req.sans],
            "fingerprint": req.fingerprint}


def verify_certificate(
    cert_path: Path, ca_cert_path: Path, *, now: datetime | None = None, server_name: str | None = None
) -> Role:
    """Verify a leaf file against the CA file; see ``verify_leaf``. Returns the role; PKIError on failure."""
    cert = load_certificate(Path(cert_path))
    ca = load_certificate(Path(ca_cert_path), "CA certificate")
    try:
        return verify_leaf(cert, ca, now=now, server_name=server_name)
    except PKIError as e:
        raise PKIError(f"{cert_path} {e} (CA {ca_cert_path})") from e


def verify_leaf(
    cert: x509.Certificate, ca: x509.Certificate, *, now: datetime | None = None, server_name: str | None = None
) -> Role:
    """Verify a leaf against the CA with cryptography's verifier (its own chain and policy code).

    Aggregator certificates are checked as TLS servers for ``server_name`` (default: the first
    SAN); collaborator certificates as TLS clients.  Returns the role; PKIError on failure.
    Revocation is not checked here (the CRL's job at the handshake, ``PeerVerifier`` elsewhere).
    """
    role = role_of(cert)
    builder = verification.PolicyBuilder().store(verification.Store([ca])).time(utc_now(now))
    try:
        if role == "aggregator":
            sans = _sans(cert)
            if server_name is None and not sans:
                raise PKIError("is an aggregator certificate without SANs; it cannot serve TLS")
            name = server_name or sans[0]
            builder.build_server_verifier(_subject(name)).verify(cert, [])
        elif role == "collaborator":
            # webpki requires a SAN on every leaf; collaborator certificates are named by CN only.
            ee = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
                x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
            )
            builder = builder.extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
            builder.build_client_verifier().verify(cert, [])
        else:
            raise PKIError("is neither an aggregator nor a collaborator certificate")
    except verification.VerificationError as e:
        raise PKIError(f"does not verify against the federation CA: {e}") from e
    return role


def _subject(name: str) -> verification.Subject:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
