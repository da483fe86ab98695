"""The enrollment flow: CA, requests, fingerprints, signing policy, revocation, index."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fltac_secure.errors import PKIError
from fltac_secure.pki import IssuedCert
from fltac_secure.pki import (
    csr_fingerprint,
    describe_certificate,
    init_ca,
    list_issued,
    make_request,
    normalize_fingerprint,
    revoke,
    sign_request,
    verify_certificate,
)
from fltac_secure.pki.testing import FederationPKI


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_layout_and_key_modes(fed: FederationPKI) -> None:
    assert mode(fed.ca_dir / "ca.key") == 0o600
    for name in ("agg", "c1", "c2", "c3"):
        p = fed.paths(name)
        assert mode(p.key) == 0o600
        assert p.cert.exists() and p.ca.read_bytes() == fed.ca_cert.read_bytes()
    assert fed.crl.exists()


def test_certificates_carry_role_name_and_extensions(fed: FederationPKI) -> None:
    agg = x509.load_pem_x509_certificate(fed.paths("agg").cert.read_bytes())
    col = x509.load_pem_x509_certificate(fed.paths("c1").cert.read_bytes())
    ca = x509.load_pem_x509_certificate(fed.ca_cert.read_bytes())
    assert agg.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agg"
    assert list(agg.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(col.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = agg.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for leaf in (agg, col):
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        assert bc.critical and not bc.value.ca
        assert ku.critical and ku.value.digital_signature
        assert not (ku.value.key_encipherment or ku.value.key_cert_sign or ku.value.crl_sign)
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert leaf.not_valid_before_utc.tzinfo is not None
    cabc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert cabc.critical and cabc.value.ca and cabc.value.path_length == 0
    caku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert caku.key_cert_sign and caku.crl_sign and not caku.digital_signature
    assert agg.serial_number != col.serial_number


def test_openssl_verify_accepts_issued_certs(fed: FederationPKI) -> None:
    certs = [str(fed.paths(n).cert) for n in ("agg", "c1")]
    r = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(fed.ca_cert), "-crl_check", "-CRLfile", str(fed.crl), *certs],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    other = fed.root / "other"
    init_ca(other)
    r = subprocess.run(["openssl", "verify", "-CAfile", str(other / "ca.crt"), certs[0]], capture_output=True, check=False)
    assert r.returncode != 0


def test_cryptography_verifier_and_expiry_one_second_either_side(tmp_path: Path) -> None:
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    init_ca(tmp_path / "ca", now=t0)
    for name, role in (("agg", "aggregator"), ("c1", "collaborator")):
        _, csr, fp = make_request(name, role, tmp_path / name)  # type: ignore[arg-type]
        cert = sign_request(csr, tmp_path / "ca", fp, days=30, now=t0)
        end = t0 + timedelta(days=30)
        assert verify_certificate(cert, tmp_path / "ca" / "ca.crt", now=t0) == role
        assert verify_certificate(cert, tmp_path / "ca" / "ca.crt", now=end) == role
        with pytest.raises(PKIError, match="does not verify"):
            verify_certificate(cert, tmp_path / "ca" / "ca.crt", now=end + timedelta(seconds=1))
        start = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_before_utc
        with pytest.raises(PKIError, match="does not verify"):
            verify_certificate(cert, tmp_path / "ca" / "ca.crt", now=start - timedelta(seconds=1))
    with pytest.raises(PKIError, match="does not verify"):
        verify_certificate(tmp_path / "agg" / "agg.crt", tmp_path / "ca" / "ca.crt", now=t0, server_name="evil.example")


def test_fingerprint_is_sha256_of_der_and_accepts_colons_and_case(tmp_path: Path) -> None:
    _, csr, fp = make_request("c1", "collaborator", tmp_path)
    pem = csr.read_bytes()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    assert fp == digest.finalize().hex() == csr_fingerprint(pem) == csr_fingerprint(der)
    colons = ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(colons) == fp
    assert normalize_fingerprint(f" {fp.upper()} ") == fp
    for bad in ("", fp[:-1], fp + "0", "g" * 64, "zz:" * 32):
        with pytest.raises(PKIError, match="fingerprint"):
            normalize_fingerprint(bad)


def test_sign_with_colon_uppercase_fingerprint(ca_dir: Path, tmp_path: Path) -> None:
    _, csr, fp = make_request("c1", "collaborator", tmp_path / "c1")
    cert = sign_request(csr, ca_dir, ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper())
    assert describe_certificate(cert)["common_name"] == "c1"


def test_sign_refuses_missing_and_wrong_fingerprint(ca_dir: Path, tmp_path: Path) -> None:
    _, csr, fp = make_request("c1", "collaborator", tmp_path / "c1")
    with pytest.raises(PKIError, match=f"without --fingerprint; its fingerprint is {fp}"):
        sign_request(csr, ca_dir, None)
    wrong = ("0" if fp[0] != "0" else "1") + fp[1:]
    with pytest.raises(PKIError, match="fingerprint mismatch"):
        sign_request(csr, ca_dir, wrong)
    assert list_issued(ca_dir) == [] and not csr.with_suffix(".crt").exists()


def test_sign_refuses_tampered_csr(ca_dir: Path, tmp_path: Path) -> None:
    _, csr, fp = make_request("c1", "collaborator", tmp_path / "c1")
    der = x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert der.count(b"c1") == 1
    tampered = tmp_path / "c1" / "tampered.csr"
    tampered.write_bytes(der.replace(b"c1", b"c9"))  # an attacker renames the request
    with pytest.raises(PKIError, match="fingerprint mismatch"):
        sign_request(tampered, ca_dir, fp)
    with pytest.raises(PKIError, match="signature does not verify"):
        sign_request(tampered, ca_dir, csr_fingerprint(tampered.read_bytes()))
    assert list_issued(ca_dir) == []


def test_duplicate_name_refused_unless_renew(ca_dir: Path, tmp_path: Path) -> None:
    _, csr, fp = make_request("c1", "collaborator", tmp_path / "a")
    first = x509.load_pem_x509_certificate(sign_request(csr, ca_dir, fp).read_bytes())
    _, csr2, fp2 = make_request("c1", "collaborator", tmp_path / "b")
    with pytest.raises(PKIError, match="already holds a live certificate"):
        sign_request(csr2, ca_dir, fp2)
    second = x509.load_pem_x509_certificate(sign_request(csr2, ca_dir, fp2, renew=True).read_bytes())
    issued = {c.serial: c for c in list_issued(ca_dir)}
    assert issued[first.serial_number].revoked and issued[first.serial_number].revocation_reason == "superseded"
    assert not issued[second.serial_number].revoked
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is None


def test_revoke_updates_index_and_signed_crl(ca_dir: Path, tmp_path: Path) -> None:
    _, csr, fp = make_request("c1", "collaborator", tmp_path / "c1")
    cert = x509.load_pem_x509_certificate(sign_request(csr, ca_dir, fp).read_bytes())
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    empty = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert len(empty) == 0 and empty.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    revoke("c1", ca_dir)
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(timezone.utc)
    crl_no = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl_no > empty.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    [entry] = list_issued(ca_dir)
    assert entry.revoked and entry.name == "c1" and entry.serial == cert.serial_number
    with pytest.raises(PKIError, match="already revoked"):
        revoke("c1", ca_dir)
    with pytest.raises(PKIError, match="no certificate was issued"):
        revoke("nobody", ca_dir)
    _, csr2, fp2 = make_request("c1", "collaborator", tmp_path / "again")
    sign_request(csr2, ca_dir, fp2)  # a revoked name may enroll again without --renew


def test_init_refuses_overwrite_unless_force(tmp_path: Path) -> None:
    crt = init_ca(tmp_path / "ca")
    before = crt.read_bytes()
    with pytest.raises(PKIError, match="already exists"):
        init_ca(tmp_path / "ca")
    assert crt.read_bytes() == before
    init_ca(tmp_path / "ca", force=True)
    assert crt.read_bytes() != before and mode(tmp_path / "ca" / "ca.key") == 0o600


def test_request_refuses_overwrite_and_bad_input(tmp_path: Path) -> None:
    key, _, _ = make_request("c1", "collaborator", tmp_path)
    before = key.read_bytes()
    with pytest.raises(PKIError, match="refusing to overwrite a private key"):
        make_request("c1", "collaborator", tmp_path)
    assert key.read_bytes() == before
    make_request("c1", "collaborator", tmp_path, force=True)
    assert key.read_bytes() != before and mode(key) == 0o600
    with pytest.raises(PKIError, match="invalid name"):
        make_request("../evil", "collaborator", tmp_path)
    with pytest.raises(PKIError, match="invalid role"):
        make_request("x", "admin", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(PKIError, match="carry no SANs"):
        make_request("x", "collaborator", tmp_path, ["localhost"])
    with pytest.raises(PKIError, match="invalid SAN"):
        make_request("x", "aggregator", tmp_path, ["bad host!"])
    _, csr, _ = make_request("agg", "aggregator", tmp_path, ["agg.example.org", "10.0.0.1", "::1"])
    sans = x509.load_pem_x509_csr(csr.read_bytes()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(v.value) for v in sans.value] == ["agg.example.org", "10.0.0.1", "::1"]


def test_naive_time_refused(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="no timezone"):
        init_ca(tmp_path / "ca", now=datetime(2030, 1, 1))  # noqa: DTZ001 - the point of the test


def test_days_beyond_ca_refused(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", days=10)
    _, csr, fp = make_request("c1", "collaborator", tmp_path / "c1")
    with pytest.raises(PKIError, match="outlive the CA"):
        sign_request(csr, tmp_path / "ca", fp, days=11)
    with pytest.raises(PKIError, match="validity"):
        sign_request(csr, tmp_path / "ca", fp, days=0)


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32), seps=st.lists(st.sampled_from(["", ":", " "]), min_size=32, max_size=32),
       upper=st.lists(st.booleans(), min_size=64, max_size=64))
def test_normalize_fingerprint_round_trip(raw: bytes, seps: list[str], upper: list[bool]) -> None:
    hexed = raw.hex()
    chars = [c.upper() if u else c for c, u in zip(hexed, upper, strict=True)]
    written = "".join(chars[2 * i] + chars[2 * i + 1] + seps[i] for i in range(32))
    assert normalize_fingerprint(written) == hexed


def test_index_round_trip_and_corruption(fed: FederationPKI, tmp_path: Path) -> None:
    issued = list_issued(fed.ca_dir)
    assert [c.name for c in issued][:4] == ["agg", "c1", "c2", "c3"]
    assert [IssuedCert.from_json(c.to_json()) for c in issued] == issued
    assert describe_certificate(fed.ca_cert)["role"] == "ca"
    init_ca(tmp_path / "ca")
    (tmp_path / "ca" / "index.json").write_text('{"version": 1, "issued": [}')
    with pytest.raises(PKIError, match="corrupt"):
        list_issued(tmp_path / "ca")
