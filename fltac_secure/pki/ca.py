"""CA side of enrollment: create the federation CA, sign CSRs, revoke, publish the CRL.

Layout of ``CA_DIR``: ``ca.key`` (0600), ``ca.crt``, ``crl.pem``, ``index.json`` and a copy
of every issued certificate under ``issued/<serial>.crt``.  Every change to the index holds
an exclusive lock on ``CA_DIR/.lock`` so two operators cannot issue concurrently and lose a
record (an unrecorded certificate could never be revoked by name).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fltac_secure.errors import PKIError
from fltac_secure.pki.files import (
    atomic_write,
    cert_pem,
    load_certificate,
    load_private_key,
    read_bytes,
    utc_now,
    write_private_key,
)
from fltac_secure.pki.index import CAIndex, IssuedCert, load_index, save_index
from fltac_secure.pki.policy import CSRRequest, check_csr, leaf_certificate
from fltac_secure.pki.request import check_name, csr_fingerprint, normalize_fingerprint

CA_KEY, CA_CERT, CRL_FILE = "ca.key", "ca.crt", "crl.pem"
CLOCK_SKEW = timedelta(minutes=5)  # not_before / last_update backdated: sites' clocks differ a little
DEFAULT_CRL_DAYS = 90


@contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    with open(Path(ca_dir) / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise PKIError(f"invalid validity {days!r} days: expected a whole number >= 1")


def init_ca(
    ca_dir: Path,
    name: str = "fltac-ca",
    days: int = 3650,
    *,
    force: bool = False,
    now: datetime | None = None,
    crl_days: int = DEFAULT_CRL_DAYS,
) -> Path:
    """Create a self-signed P-256 CA in ``ca_dir``; returns the ``ca.crt`` path.

    Writes ``ca.key`` (0600), ``ca.crt`` (CA:TRUE pathlen 0, keyCertSign + cRLSign), an empty
    signed ``crl.pem`` and an empty index.  Refuses an existing CA unless ``force``.
    """
    check_name(name)
    _check_days(days)
    ca_dir = Path(ca_dir)
    now = utc_now(now)
    if not force and any((ca_dir / f).exists() for f in (CA_KEY, CA_CERT)):
        raise PKIError(f"a CA already exists in {ca_dir}; refusing to overwrite it (use --force to replace it)")
    ca_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    with _locked(ca_dir):
        write_private_key(ca_dir / CA_KEY, key, force=force)
        atomic_write(ca_dir / CA_CERT, cert_pem(cert))
        index = CAIndex(ca_name=name)
        _publish_crl(ca_dir, index, key, cert, now, crl_days)
    return ca_dir / CA_CERT


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )


def load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA key and certificate, checked to belong together."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / CA_CERT).exists():
        raise PKIError(f"no CA in {ca_dir} (missing {CA_CERT}); run `fltac ca init --dir {ca_dir}` first")
    cert = load_certificate(ca_dir / CA_CERT, "CA certificate")
    key = load_private_key(ca_dir / CA_KEY)
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise PKIError(f"{ca_dir / CA_KEY} does not match {ca_dir / CA_CERT}; the CA folder is inconsistent")
    return key, cert


def _publish_crl(
    ca_dir: Path, index: CAIndex, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
    now: datetime, crl_days: int,
) -> None:
    """Sign a fresh CRL listing every revoked serial, bump its number, save index and CRL."""
    _check_days(crl_days)
    index.crl_number += 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + timedelta(days=crl_days))
        .add_extension(x509.CRLNumber(index.crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for c in index.revoked():
        reason = x509.ReasonFlags.superseded if c.revocation_reason == "superseded" else x509.ReasonFlags.unspecified
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(c.serial)
            .revocation_date(c.revoked_at or now)
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(key, hashes.SHA256())
    save_index(ca_dir, index)
    atomic_write(Path(ca_dir) / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))


def sign_request(
    csr_path: Path,
    ca_dir: Path,
    fingerprint: str | None,
    *,
    out: Path | None = None,
    days: int = 365,
    renew: bool = False,
    now: datetime | None = None,
) -> Path:
    """Issue a certificate for the CSR at ``csr_path``; returns the certificate path.

    Refused (PKIError) when: no fingerprint is given (the message carries the CSR's), it does
    not match, the CSR's signature is bad, its name/role/SANs/key are not acceptable, or the
    name already holds a live certificate and ``renew`` is false.  With ``renew`` the old
    certificate is revoked (reason superseded) so a name never has two live certificates.
    Also writes ``ca.crt`` next to the issued certificate.
    """
    _check_days(days)
    now = utc_now(now)
    ca_dir, csr_path = Path(ca_dir), Path(csr_path)
    req = _verified_request(csr_path, fingerprint)
    key, ca_cert = load_ca(ca_dir)
    if ca_cert.not_valid_after_utc <= now:
        raise PKIError(f"the CA in {ca_dir} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}; create a new CA")
    if now + timedelta(days=days) > ca_cert.not_valid_after_utc:
        raise PKIError(
            f"--days {days} would outlive the CA (valid until {ca_cert.not_valid_after_utc:%Y-%m-%d}); use fewer days"
        )
    out = Path(out) if out is not None else csr_path.with_suffix(".crt")
    with _locked(ca_dir):
        index = load_index(ca_dir)
        live = index.live_for(req.name, now)
        if live and not renew:
            raise PKIError(
                f"{req.name!r} already holds a live certificate (serial {live[0].serial_hex}, expires "
                f"{live[0].not_after:%Y-%m-%d}); use --renew to replace it or revoke it first"
            )
        cert = leaf_certificate(req, key, ca_cert, now - CLOCK_SKEW, now + timedelta(days=days))
        for old in live:
            old.revoked, old.revoked_at, old.revocation_reason = True, now, "superseded"
        index.issued.append(_record(req, cert))
        if live:
            _publish_crl(ca_dir, index, key, ca_cert, now, DEFAULT_CRL_DAYS)
        else:
            save_index(ca_dir, index)
        atomic_write(ca_dir / "issued" / f"{cert.serial_number:x}.crt", cert_pem(cert))
    atomic_write(out, cert_pem(cert))
    if (out.parent / CA_CERT).resolve() != (ca_dir / CA_CERT).resolve():
        atomic_write(out.parent / CA_CERT, cert_pem(ca_cert))
    return out


def _verified_request(csr_path: Path, fingerprint: str | None) -> CSRRequest:
    """Parse the CSR, check its signature, the out-of-band fingerprint and the CSR policy."""
    data = read_bytes(csr_path, "CSR")
    actual = csr_fingerprint(data, str(csr_path))
    if fingerprint is None:
        check_csr(data, str(csr_path))  # a request the CA would refuse anyway is reported first
        raise PKIError(
            f"refusing to sign {csr_path} without --fingerprint; its fingerprint is {actual} - "
            "compare it with the one the site read out, then pass it with --fingerprint"
        )
    if not hmac.compare_digest(normalize_fingerprint(fingerprint), actual):
        # The CSR's own fingerprint is not printed: pasting it back would defeat the check.
        raise PKIError(
            f"fingerprint mismatch for {csr_path}: this CSR is not the one whose fingerprint you were given "
            "(swapped in transit, or a digit misheard) - do not sign it; ask the site's operator to read its "
            "fingerprint to you again over another channel (phone, in person): `fltac certs show "
            "<its .csr>` prints it at the site; if it still differs, have the site send its CSR again"
        )
    req = check_csr(data, str(csr_path))
    return req


def _record(req: CSRRequest, cert: x509.Certificate) -> IssuedCert:
    return IssuedCert(
        name=req.name,
        role=req.role,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        not_before=cert.not_valid_before_utc,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        csr_fingerprint=req.fingerprint,
    )


def revoke(name: str, ca_dir: Path, *, now: datetime | None = None, crl_days: int = DEFAULT_CRL_DAYS) -> None:
    """Revoke every unrevoked certificate issued to ``name`` and rewrite ``crl.pem``."""
    now = utc_now(now)
    ca_dir = Path(ca_dir)
    key, ca_cert = load_ca(ca_dir)
    with _locked(ca_dir):
        index = load_index(ca_dir)
        mine = [c for c in index.issued if c.name == name]
        if not mine:
            raise PKIError(f"no certificate was issued to {name!r} by the CA in {ca_dir}; see `fltac ca list`")
        todo = [c for c in mine if not c.revoked]
        if not todo:
            raise PKIError(f"every certificate of {name!r} is already revoked; nothing to do")
        for c in todo:
            c.revoked, c.revoked_at, c.revocation_reason = True, now, "unspecified"
        _publish_crl(ca_dir, index, key, ca_cert, now, crl_days)


def refresh_crl(ca_dir: Path, *, now: datetime | None = None, crl_days: int = DEFAULT_CRL_DAYS) -> Path:
    """Re-sign ``crl.pem`` with a new next_update (an expired CRL makes the aggregator refuse everyone)."""
    ca_dir = Path(ca_dir)
    key, ca_cert = load_ca(ca_dir)
    with _locked(ca_dir):
        _publish_crl(ca_dir, load_index(ca_dir), key, ca_cert, utc_now(now), crl_days)
    return ca_dir / CRL_FILE


def list_issued(ca_dir: Path) -> list[IssuedCert]:
    """Every certificate the CA issued, oldest first."""
    ca_dir = Path(ca_dir)
    if not (ca_dir / CA_CERT).exists():
        raise PKIError(f"no CA in {ca_dir} (missing {CA_CERT}); run `fltac ca init --dir {ca_dir}` first")
    return list(load_index(ca_dir).issued)
