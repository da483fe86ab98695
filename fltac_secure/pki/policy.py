"""What the CA accepts in a CSR and what it puts in a leaf certificate.

Default deny: a CSR must carry exactly one CN (a valid site name), an ECDSA P-256/P-384
key, a valid self-signature, and a requested role that is consistent with its SANs
(aggregator: serverAuth + at least one DNS/IP SAN; collaborator: clientAuth, no SAN).  Any
other requested extension is refused rather than silently dropped, so what the site asked
for and what it gets never differ unnoticed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from fltac_secure.errors import PKIError
from fltac_secure.pki.request import ALLOWED_CURVES, ROLE_EKU, Role, check_name, load_csr

_ALLOWED_EXTENSIONS = {ExtensionOID.EXTENDED_KEY_USAGE, ExtensionOID.SUBJECT_ALTERNATIVE_NAME}


@dataclass(frozen=True)
class CSRRequest:
    """A CSR that passed the policy: what the CA will certify."""

    csr: x509.CertificateSigningRequest
    name: str
    role: Role
    sans: tuple[x509.GeneralName, ...]
    fingerprint: str


def _single_cn(subject: x509.Name, source: str) -> str:
    attrs = list(subject)
    if len(attrs) != 1 or attrs[0].oid != NameOID.COMMON_NAME:
        raise PKIError(f"{source}: the subject must be exactly one CN (the site name), got {subject.rfc4514_string()!r}")
    value = attrs[0].value
    return check_name(value if isinstance(value, str) else value.decode())


def _requested_role(csr: x509.CertificateSigningRequest, source: str) -> Role:
    try:
        eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as e:
        raise PKIError(f"{source}: no role requested (no extended key usage); make it with `fltac certs request`") from e
    roles = [r for r, oid in ROLE_EKU.items() if list(eku) == [oid]]
    if len(roles) != 1:
        raise PKIError(f"{source}: requested key usage {[o.dotted_string for o in eku]} is neither serverAuth nor clientAuth alone")
    return roles[0]  # type: ignore[return-value]


def _requested_sans(csr: x509.CertificateSigningRequest, role: Role, source: str) -> tuple[x509.GeneralName, ...]:
    try:
        sans = tuple(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = ()
    if role == "collaborator" and sans:
        raise PKIError(f"{source}: a collaborator request must not carry SANs (only the aggregator is a server)")
    if role == "aggregator" and not sans:
        raise PKIError(f"{source}: an aggregator request needs at least one DNS or IP SAN (e.g. --san localhost)")
    bad = [s for s in sans if not isinstance(s, (x509.DNSName, x509.IPAddress))]
    if bad:
        raise PKIError(f"{source}: only DNS and IP SANs are accepted, got {bad}")
    return sans


def check_csr(data: bytes, source: str = "CSR") -> CSRRequest:
    """Parse and vet a CSR (PEM or DER); PKIError naming the first problem."""
    csr = load_csr(data, source)
    if not csr.is_signature_valid:
        raise PKIError(f"{source}: the CSR's signature does not verify (tampered or corrupt); ask the site for a new one")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ALLOWED_CURVES):
        raise PKIError(f"{source}: key must be ECDSA P-256 or P-384; make the request with `fltac certs request`")
    unknown = [e.oid.dotted_string for e in csr.extensions if e.oid not in _ALLOWED_EXTENSIONS]
    if unknown:
        raise PKIError(f"{source}: refusing requested extensions {unknown}; only a role (EKU) and SANs may be requested")
    name = _single_cn(csr.subject, source)
    role = _requested_role(csr, source)
    sans = _requested_sans(csr, role, source)
    fp = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()
    return CSRRequest(csr=csr, name=name, role=role, sans=sans, fingerprint=fp)


def _leaf_key_usage() -> x509.KeyUsage:
    # digitalSignature only: ECDHE + ECDSA in TLS 1.3 never needs keyEncipherment, and a leaf never signs CRLs.
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )


def leaf_certificate(
    req: CSRRequest,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Build and sign the site's certificate: CN = name, the role's EKU, SANs for the aggregator."""
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, req.name)]))
        .issuer_name(ca_cert.subject)
        .public_key(req.csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ROLE_EKU[req.role]]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(req.csr.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if req.sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(req.sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
