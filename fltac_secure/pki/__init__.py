"""Federation PKI on ``cryptography``: CA, site requests, signing, revocation, TLS contexts.

Modules: ``request`` (site side: key + CSR + fingerprint), ``policy`` (what the CA accepts
and issues), ``ca`` (init, sign, revoke, CRL), ``index`` (the CA's record of issued
certificates), ``inspect`` (describe and verify certificates), ``tls`` (SSLContext per role),
``files`` (0600 keys, atomic writes), ``testing`` (enroll a federation, in-memory handshake).
"""

from fltac_secure.pki.ca import init_ca, list_issued, refresh_crl, revoke, sign_request
from fltac_secure.pki.index import IssuedCert
from fltac_secure.pki.inspect import (
    cert_fingerprint, describe_certificate, describe_request, is_request, role_of, verify_certificate,
)  # fmt: skip
from fltac_secure.pki.request import Role, csr_fingerprint, make_request, normalize_fingerprint
from fltac_secure.pki.tls import client_context, context_for_site, peer_common_name, peer_role, server_context

__all__ = [
    "IssuedCert",
    "Role",
    "cert_fingerprint",
    "client_context",
    "context_for_site",
    "csr_fingerprint",
    "describe_certificate",
    "describe_request",
    "init_ca",
    "is_request",
    "list_issued",
    "make_request",
    "normalize_fingerprint",
    "peer_common_name",
    "peer_role",
    "refresh_crl",
    "revoke",
    "role_of",
    "server_context",
    "sign_request",
    "verify_certificate",
]
