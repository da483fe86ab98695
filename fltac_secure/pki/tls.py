"""``ssl.SSLContext`` for each role: TLS 1.3 only, mutual authentication, CRL on the server.

Threats answered: a site without a certificate from the federation CA (CERT_REQUIRED on both
sides), a revoked site (the aggregator checks the CRL for every client certificate), a man in
the middle posing as the aggregator (the collaborator checks the chain and the SAN; CN
fallback off), a collaborator certificate reused as a server or an aggregator certificate as
a client (OpenSSL's purpose check against the extended key usage), downgrade (TLS 1.3 only)
and resumption without a fresh certificate check (no session tickets).  Authorisation
(is this CN in the plan's roster?) is the caller's job, with ``peer_common_name``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from fltac_secure.errors import ConfigError, PKIError
from fltac_secure.pki.files import check_key_mode, load_certificate, read_bytes
from fltac_secure.pki.inspect import common_name, role_of
from fltac_secure.pki.request import Role

if TYPE_CHECKING:
    from fltac_secure.plan import Site


def _base_context(protocol: int, cert: Path, key: Path, ca: Path, crl: Path | None, role: Role) -> ssl.SSLContext:
    for path, what in ((cert, "certificate"), (key, "private key"), (ca, "CA certificate")):
        read_bytes(Path(path), what)  # a clear "not found" before OpenSSL's terse errors
    check_key_mode(Path(key))
    got = role_of(load_certificate(Path(cert)))
    if got != role:
        article = "an" if role == "aggregator" else "a"
        raise PKIError(f"{cert} is a {got or 'non-fltac'} certificate, but this context needs {article} {role} certificate")
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
        if crl is not None:
            read_bytes(Path(crl), "CRL")
            ctx.load_verify_locations(cafile=str(crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except ssl.SSLError as e:
        raise PKIError(f"cannot load TLS material ({cert}, {key}, {ca}, {crl}): {e}") from e
    return ctx


def server_context(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """The aggregator's context: TLS 1.3, client certificate required, CRL checked if given."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, cert, key, ca, crl, "aggregator")
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def client_context(cert: Path, key: Path, ca: Path, crl: Path | None = None) -> ssl.SSLContext:
    """A collaborator's context: TLS 1.3, server chain and SAN checked (no CN fallback)."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca, crl, "collaborator")
    ctx.check_hostname = True
    ctx.hostname_checks_common_name = False
    return ctx


def context_for_site(site: "Site") -> ssl.SSLContext:
    """The context for a validated site file (paths already resolved by ``load_site``)."""
    c = site.certs
    if site.role == "aggregator":
        if c.crl is None:
            raise ConfigError(
                f"site {site.name!r}: the aggregator needs certs.crl (the CA's crl.pem) so revoked sites are refused"
            )
        return server_context(c.cert, c.key, c.ca, c.crl)
    return client_context(c.cert, c.key, c.ca, c.crl)


def _peer_certificate(ssl_obj: ssl.SSLObject | ssl.SSLSocket) -> x509.Certificate:
    try:
        der = ssl_obj.getpeercert(binary_form=True)
    except ValueError as e:  # raised before the handshake has completed
        raise PKIError(f"no verified peer certificate yet: {e}") from e
    if not der:
        raise PKIError("the peer presented no certificate (or the handshake is not complete)")
    return x509.load_der_x509_certificate(der)


def peer_common_name(ssl_obj: ssl.SSLObject | ssl.SSLSocket) -> str:
    """CN of the verified peer certificate (the site name to check against the roster)."""
    return common_name(_peer_certificate(ssl_obj))


def peer_role(ssl_obj: ssl.SSLObject | ssl.SSLSocket) -> Role | None:
    """The peer's role from its certificate's extended key usage (None if neither)."""
    return role_of(_peer_certificate(ssl_obj))
