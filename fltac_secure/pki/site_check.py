"""Check a site file's certificates before a run: what `fltac plan validate --site` reports.

Every problem is one line naming the site-file key, what is wrong and the fix,
and all of them are collected (not only the first): a site gets its set-up right
in one pass instead of finding each problem 30 s into `start`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from cryptography.hazmat.primitives import serialization

from fltac_secure.errors import PKIError
from fltac_secure.pki.crl import crl_expired, load_crl
from fltac_secure.pki.files import load_certificate, load_private_key
from fltac_secure.pki.inspect import common_name, verify_certificate

if TYPE_CHECKING:
    from fltac_secure.plan import Site

T = TypeVar("T")


def _public(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def certificate_problems(site: Site) -> list[str]:
    """One line per problem with ``site.certs``: unreadable, key not the certificate's, not signed by
    the CA, wrong role or name, and for the aggregator a missing, foreign or expired CRL."""
    problems: list[str] = []
    c = site.certs

    def attempt(key: str, load: Callable[[], T]) -> T | None:
        try:
            return load()
        except PKIError as exc:
            problems.append(f"certs.{key}: {exc}")
            return None

    cert = attempt("cert", lambda: load_certificate(c.cert))
    key = attempt("key", lambda: load_private_key(c.key))
    ca = attempt("ca", lambda: load_certificate(c.ca, "CA certificate"))
    if cert is not None and key is not None and _public(cert.public_key()) != _public(key.public_key()):
        problems.append(f"certs.key: {c.key} is not the private key of certificate {c.cert}; give the key that "
                        "`fltac certs request` made together with this certificate's request")
    if cert is not None:
        name = attempt("cert", lambda: common_name(cert))
        if name is not None and name != site.name:
            problems.append(f"certs.cert: {c.cert} is the certificate of {name!r}, but this site file is for "
                            f"{site.name!r}; give this site's own certificate (or fix `name`)")
    if cert is not None and ca is not None:
        role = attempt("cert", lambda: verify_certificate(c.cert, c.ca))
        if role is not None and role != site.role:
            problems.append(f"certs.cert: {c.cert} is a{'n' if role == 'aggregator' else ''} {role} certificate, "
                            f"this site's role is {site.role}; request one with `fltac certs request --role {site.role}`")
    if site.role == "aggregator":
        if c.crl is None:
            problems.append("certs.crl: missing; the aggregator needs the CA's crl.pem so revoked sites are refused")
        elif ca is not None:
            crl = attempt("crl", lambda: load_crl(c.crl, c.ca))  # type: ignore[arg-type]
            if crl is not None and crl_expired(crl):
                problems.append(f"certs.crl: {c.crl} has expired (the aggregator would refuse every site); run "
                                "`fltac ca crl --ca-dir CA` on the CA host and copy the new crl.pem here")
    return problems
