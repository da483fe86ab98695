"""File helpers for PKI material: private keys 0600 via ``os.open``, everything else atomic.

Threats answered: a private key briefly readable by other local users (the umask race of
``open()`` + ``chmod``), and a half-written CA index, CRL or certificate left behind by a
crash (readers would see a truncated file and fail open or closed unpredictably).
"""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fltac_secure.atomic import atomic_write_bytes
from fltac_secure.errors import PKIError

KEY_MODE = 0o600


def utc_now(now: datetime | None = None) -> datetime:
    """``now`` (must be timezone-aware) converted to UTC, or the current UTC time."""
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None or now.utcoffset() is None:
        raise PKIError(f"time {now.isoformat()} has no timezone; pass an aware datetime (e.g. tz=timezone.utc)")
    return now.astimezone(timezone.utc)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool = False) -> None:
    """Write ``key`` as PKCS#8 PEM, created with mode 0600 atomically (O_EXCL, no umask window).

    An existing file is refused unless ``force``, in which case it is replaced.
    """
    if path.exists() and not force:
        raise PKIError(f"{path} already exists; refusing to overwrite a private key (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        path.unlink()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, KEY_MODE)
    except FileExistsError as e:
        raise PKIError(f"{path} appeared while writing; refusing to overwrite a private key") from e
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic write of public PKI material (certificates, CSRs, CRL, index): world-readable."""
    atomic_write_bytes(path, data, mode=mode)


def read_bytes(path: Path, what: str) -> bytes:
    """Read a file, turning a missing/unreadable file into a PKIError that names it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise PKIError(f"{what} {path} not found; check the path") from e
    except OSError as e:
        raise PKIError(f"cannot read {what} {path}: {e.strerror}") from e


def check_key_mode(path: Path) -> None:
    """Refuse a private key that group or others may read (a leaked key is a stolen identity)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise PKIError(f"private key {path} has mode {mode:o}; run `chmod 600 {path}`")


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM EC private key (mode must be 0600 or stricter)."""
    data = read_bytes(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise PKIError(f"{path} is a password-protected key; fltac keys are unencrypted (mode 0600 protects "
                       "them): make a new request with `fltac certs request`") from None
    except ValueError:
        raise not_a(path, data, "private key", "give the .key file written by `fltac certs request`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path} holds a {type(key).__name__}; fltac keys are ECDSA P-256")
    check_key_mode(path)  # after parsing: a certificate given as the key is named as such, not sent to chmod
    return key


PEM_LABELS = {
    b"CERTIFICATE REQUEST": "a certificate signing request (.csr)",
    b"CERTIFICATE": "a certificate",
    b"X509 CRL": "a certificate revocation list",
    b"PRIVATE KEY": "a private key",
    b"EC PRIVATE KEY": "a private key",
    b"PUBLIC KEY": "a public key",
}


def pem_kind(data: bytes) -> str | None:
    """What a PEM file says it holds ("a certificate", "a private key"...), or None if it is not PEM."""
    head = data.lstrip()[:64]
    if not head.startswith(b"-----BEGIN "):
        return None
    label = head[len(b"-----BEGIN "):].split(b"-----", 1)[0]
    return PEM_LABELS.get(label, f"PEM {label.decode('ascii', 'replace')!r}")


def not_a(path: Path, data: bytes, what: str, hint: str) -> PKIError:
    """The one-line refusal of a file that does not hold ``what`` (no parser internals: they name
    ASN.1 tags, not the problem); says what the file looks like instead, and ``hint``."""
    kind = pem_kind(data)
    if kind is None:
        looks = "it is not PEM or DER" + (" (it looks like text)" if _is_text(data) else "")
    elif kind.endswith(what):
        looks = f"its {what} is damaged (truncated or edited)"
    else:
        looks = f"it holds {kind}"
    return PKIError(f"{path} is not a valid {what}: {looks}; {hint}")


def _is_text(data: bytes) -> bool:
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """Load a PEM (or DER) certificate, with a one-line PKIError naming the file on failure."""
    data = read_bytes(path, what)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise not_a(path, data, what, "give the .crt file written by `fltac ca sign` (PEM or DER)") from None


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
