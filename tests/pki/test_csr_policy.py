"""The CA refuses hand-made CSRs whose name, key, role or SANs are not acceptable."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from fltac_secure.errors import PKIError
from fltac_secure.pki import csr_fingerprint, list_issued, sign_request

SAN = x509.SubjectAlternativeName([x509.DNSName("localhost")])


def craft(
    tmp: Path,
    *,
    cn: str = "site1",
    extra_attr: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    sans: x509.SubjectAlternativeName | None = None,
    extra_ext: x509.ExtensionType | None = None,
    key: object | None = None,
) -> Path:
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if extra_attr:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"))
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    for ext in (x509.ExtendedKeyUsage(eku) if eku else None, sans, extra_ext):
        if ext is not None:
            b = b.add_extension(ext, critical=False)
    csr = b.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    path = tmp / "req.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


CASES = {
    "aggregator without SAN": (dict(eku=[EKU.SERVER_AUTH]), "needs at least one DNS or IP SAN"),
    "collaborator with SAN": (dict(eku=[EKU.CLIENT_AUTH], sans=SAN), "must not carry SANs"),
    "no role": (dict(), "no role requested"),
    "both roles": (dict(eku=[EKU.SERVER_AUTH, EKU.CLIENT_AUTH], sans=SAN), "neither serverAuth nor clientAuth alone"),
    "code signing": (dict(eku=[EKU.CODE_SIGNING]), "neither serverAuth nor clientAuth alone"),
    "asks to be a CA": (
        dict(eku=[EKU.CLIENT_AUTH], extra_ext=x509.BasicConstraints(ca=True, path_length=None)), "refusing requested extensions"
    ),
    "bad CN": (dict(cn="evil/../name", eku=[EKU.CLIENT_AUTH]), "invalid name"),
    "extra subject attribute": (dict(extra_attr=True, eku=[EKU.CLIENT_AUTH]), "exactly one CN"),
    "email SAN": (
        dict(eku=[EKU.SERVER_AUTH], sans=x509.SubjectAlternativeName([x509.RFC822Name("a@b.c")])), "only DNS and IP SANs"
    ),
    "P-192 key": (dict(eku=[EKU.CLIENT_AUTH], key=ec.generate_private_key(ec.SECP192R1())), "P-256 or P-384"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inconsistent_csr_refused(case: str, ca_dir: Path, tmp_path: Path) -> None:
    kwargs, message = CASES[case]
    csr = craft(tmp_path, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(PKIError, match=message):
        sign_request(csr, ca_dir, csr_fingerprint(csr.read_bytes()))
    assert list_issued(ca_dir) == []


def test_rsa_key_refused(ca_dir: Path, tmp_path: Path) -> None:
    csr = craft(tmp_path, eku=[EKU.CLIENT_AUTH], key=rsa.generate_private_key(65537, 2048))
    with pytest.raises(PKIError, match="P-256 or P-384"):
        sign_request(csr, ca_dir, csr_fingerprint(csr.read_bytes()))


def test_handmade_consistent_csr_accepted(ca_dir: Path, tmp_path: Path) -> None:
    sans = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.1.2.3"))])
    csr = craft(tmp_path, eku=[EKU.SERVER_AUTH], sans=sans, key=ec.generate_private_key(ec.SECP384R1()))
    cert = x509.load_pem_x509_certificate(sign_request(csr, ca_dir, csr_fingerprint(csr.read_bytes())).read_bytes())
    got = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in got.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_garbage_csr_refused(ca_dir: Path, tmp_path: Path) -> None:
    p = tmp_path / "junk.csr"
    p.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(PKIError, match="not a valid certificate signing request"):
        sign_request(p, ca_dir, "0" * 64)
    with pytest.raises(PKIError, match="not found"):
        sign_request(tmp_path / "missing.csr", ca_dir, "0" * 64)
