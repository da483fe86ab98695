"""Revocation that takes effect while the aggregator runs: watch the CRL file.

Threat answered: a site whose certificate is revoked mid-federation keeps
its live session and is welcomed again on reconnect, because OpenSSL reads
the CRL once, when the context is built.  ``CrlWatch`` notices when the
file changes (size, mtime or inode; also on demand, e.g. SIGHUP), verifies
the new CRL against the CA (signature, issuer, dates), builds a fresh server
context from it and returns the revoked serial numbers, so the transport can
end live sessions of newly revoked certificates and refuse their next
handshake.  A file that does not load (half copied, foreign, corrupt) is
reported and the previous CRL stays in force until a good one arrives: it
was valid and it already lists every earlier revocation.  An expired CRL is
installed as it is: OpenSSL then refuses every client (fail closed) and the
watch says so in its error line.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509

from fltac_secure.errors import PKIError
from fltac_secure.pki.files import load_certificate, not_a, read_bytes

log = logging.getLogger(__name__)


def load_crl(crl_path: Path, ca_cert_path: Path) -> x509.CertificateRevocationList:
    """Parse ``crl_path`` (PEM or DER) and check it is signed by the CA; PKIError naming the problem."""
    data = read_bytes(Path(crl_path), "CRL")
    try:
        crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_crl(data)
    except ValueError:
        raise not_a(Path(crl_path), data, "certificate revocation list",
                    "copy crl.pem from the CA folder again") from None
    ca = load_certificate(Path(ca_cert_path))
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise PKIError(f"{crl_path} is not signed by the federation CA {ca_cert_path}; use the CA's own crl.pem")
    return crl


def revoked_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    """Serial numbers the CRL revokes."""
    return frozenset(r.serial_number for r in crl)


def crl_expired(crl: x509.CertificateRevocationList, now: datetime | None = None) -> bool:
    """True when the CRL's next-update date has passed (OpenSSL then refuses every client)."""
    nxt = crl.next_update_utc
    return nxt is not None and nxt < (now or datetime.now(timezone.utc))


@dataclass(frozen=True)
class CrlUpdate:
    """A freshly loaded CRL: the server context built from it and the serials it revokes."""

    context: ssl.SSLContext
    revoked: frozenset[int]
    expired: bool


class CrlWatch:
    """Reload a CRL file when it changes; ``poll()`` is cheap (one ``stat``)."""

    def __init__(self, crl_path: Path, ca_cert_path: Path, make_context: Callable[[], ssl.SSLContext]) -> None:
        self.crl_path, self.ca_cert_path = Path(crl_path), Path(ca_cert_path)
        self._make_context = make_context
        self._signature = self._stat()
        crl = load_crl(self.crl_path, self.ca_cert_path)  # the starting CRL must load: fail at start, not later
        self.revoked = revoked_serials(crl)
        self.error: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.crl_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self, *, force: bool = False) -> CrlUpdate | None:
        """A ``CrlUpdate`` if the file changed (or ``force``) and loads; else None (errors are logged once)."""
        sig = self._stat()
        if not force and sig == self._signature:
            return None
        self._signature = sig
        try:
            crl = load_crl(self.crl_path, self.ca_cert_path)
            context = self._make_context()
        except (PKIError, OSError, ssl.SSLError) as exc:
            self.error = str(exc)
            log.error("CRL reload failed, the previous CRL stays in force: %s", exc)
            return None
        self.error = None
        update = CrlUpdate(context, revoked_serials(crl), crl_expired(crl))
        newly = sorted(update.revoked - self.revoked)
        self.revoked = update.revoked
        if update.expired:
            log.error("the CRL %s has expired: every site is refused until the CA publishes a fresh one "
                      "(`fltac ca crl`) and it is copied here", self.crl_path)  # fmt: skip
        log.info("CRL reloaded from %s: %d revoked, %d new", self.crl_path, len(update.revoked), len(newly))
        return update
