"""Site side of enrollment: make a key and a certificate signing request (CSR).

The private key never leaves the site; only the CSR travels to the CA operator, who signs
it only after the CSR's SHA-256 fingerprint, read out of band (phone, chat), matches.  That
check is what stops an attacker who can swap the CSR in transit from getting a certificate
for their own key under the site's name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fltac_secure.errors import PKIError
from fltac_secure.pki.files import atomic_write, not_a, read_bytes, write_private_key
from fltac_secure.plan.schema import NAME_RE

Role = Literal["aggregator", "collaborator"]
ROLES: tuple[str, ...] = get_args(Role)
ROLE_EKU = {"aggregator": ExtendedKeyUsageOID.SERVER_AUTH, "collaborator": ExtendedKeyUsageOID.CLIENT_AUTH}
DEFAULT_AGGREGATOR_SANS = ("localhost", "127.0.0.1")
_NAME = re.compile(NAME_RE)
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)


def check_name(name: str) -> str:
    """A site or CA name: same pattern as plan names (it becomes the certificate CN)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise PKIError(f"invalid name {name!r}: use 1-63 letters, digits, '_', '.', '-' starting with a letter or digit")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise PKIError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def parse_san(value: str) -> x509.GeneralName:
    """``127.0.0.1`` / ``::1`` become IP SANs, anything else must be a valid DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".") if value else []
    if not labels or len(value) > 253 or not all(_DNS_LABEL.match(lab) for lab in labels):
        raise PKIError(f"invalid SAN {value!r}: expected an IP address or a DNS name such as agg.example.org")
    return x509.DNSName(value.rstrip(".").lower())


def _requested_extensions(role: Role, sans: Sequence[str] | None) -> list[x509.ExtensionType]:
    if role == "collaborator":
        if sans:
            raise PKIError("collaborator certificates carry no SANs (only the aggregator is a server); drop --san")
        return [x509.ExtendedKeyUsage([ROLE_EKU[role]])]
    names = [parse_san(s) for s in (sans or DEFAULT_AGGREGATOR_SANS)]
    if len(set(names)) != len(names):
        raise PKIError("duplicate SAN in the request; list each name or address once")
    return [x509.ExtendedKeyUsage([ROLE_EKU[role]]), x509.SubjectAlternativeName(names)]


def make_request(
    name: str, role: Role, out_dir: Path, sans: Sequence[str] | None = None, *, force: bool = False
) -> tuple[Path, Path, str]:
    """Create ``out_dir/NAME.key`` (P-256, mode 0600) and ``out_dir/NAME.csr``.

    The role is recorded in the CSR as a requested extended key usage (serverAuth for the
    aggregator, with its SANs; clientAuth for collaborators).  Returns (key path, CSR path,
    CSR fingerprint).  An existing key is refused unless ``force``.
    """
    check_name(name)
    check_role(role)
    extensions = _requested_extensions(role, sans)
    out_dir = Path(out_dir)
    key_path, csr_path = out_dir / f"{name}.key", out_dir / f"{name}.csr"
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    csr = builder.sign(key, hashes.SHA256())
    write_private_key(key_path, key, force=force)
    atomic_write(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path, csr_fingerprint(csr.public_bytes(serialization.Encoding.DER))


def load_csr(data: bytes, source: str = "CSR") -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR; PKIError if it is not one."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise not_a(Path(source), data, "certificate signing request",
                    "give the .csr file written by `fltac certs request` (PEM or DER)") from None


def csr_fingerprint(csr: bytes, source: str = "CSR") -> str:
    """SHA-256 of the CSR's DER encoding, lowercase hex (accepts PEM or DER input)."""
    der = load_csr(csr, source).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def csr_file_fingerprint(csr_path: Path) -> str:
    return csr_fingerprint(read_bytes(Path(csr_path), "CSR"))


def normalize_fingerprint(s: str) -> str:
    """Strip colons and whitespace, lowercase, and require 64 hex digits."""
    cleaned = re.sub(r"[\s:]", "", s or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", cleaned):
        raise PKIError(
            f"invalid fingerprint {s!r}: expected 64 hex digits (SHA-256), colons and any case allowed"
        )
    return cleaned
