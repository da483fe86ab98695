"""In-memory TLS 1.3 handshakes between role contexts: who is accepted and who is refused."""

from __future__ import annotations

import os
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fltac_secure.errors import ConfigError, PKIError
from fltac_secure.pki import (
    client_context,
    context_for_site,
    peer_common_name,
    peer_role,
    revoke,
    server_context,
)
from fltac_secure.pki.testing import FederationPKI, enroll_federation, enroll_site, memory_handshake
from fltac_secure.plan import Site


def server(fed: FederationPKI, name: str = "agg", crl: bool = True) -> ssl.SSLContext:
    p = fed.paths(name)
    return server_context(p.cert, p.key, p.ca, p.crl if crl else None)


def client(fed: FederationPKI, name: str) -> ssl.SSLContext:
    p = fed.paths(name)
    return client_context(p.cert, p.key, p.ca)


def test_handshake_succeeds_and_reports_peers(fed: FederationPKI) -> None:
    s, c = memory_handshake(server(fed), client(fed, "c1"))
    assert s.version() == c.version() == "TLSv1.3"
    assert peer_common_name(s) == "c1" and peer_role(s) == "collaborator"
    assert peer_common_name(c) == "agg" and peer_role(c) == "aggregator"
    s2, _ = memory_handshake(server(fed), client(fed, "c2"), server_hostname="127.0.0.1")
    assert peer_common_name(s2) == "c2"


def test_contexts_are_tls13_only_with_client_certs_required(fed: FederationPKI) -> None:
    sctx, cctx = server(fed), client(fed, "c1")
    for ctx in (sctx, cctx):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
    assert sctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF and sctx.num_tickets == 0
    assert cctx.check_hostname and not cctx.hostname_checks_common_name


def test_other_ca_refused_both_ways(fed: FederationPKI, tmp_path: Path) -> None:
    rogue = enroll_federation(tmp_path, ["c1"], "agg")  # same names, another CA
    with pytest.raises(ssl.SSLError, match="certificate verify failed|unknown ca"):
        memory_handshake(server(fed), client(rogue, "c1"))
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        memory_handshake(server(rogue), client(fed, "c1"))


def test_expired_certificate_refused(fed: FederationPKI) -> None:
    past = datetime.now(timezone.utc) - timedelta(days=400)
    cert = enroll_site(fed.root, fed.ca_dir, "old", "collaborator", now=past, days=30)
    ctx = client_context(cert, fed.root / "old" / "old.key", fed.ca_cert)
    with pytest.raises(ssl.SSLError, match="certificate has expired"):
        memory_handshake(server(fed), ctx)


def test_revoked_certificate_refused_only_with_crl(tmp_path: Path) -> None:
    fed = enroll_federation(tmp_path, ["c1", "c2"], "agg")
    revoke("c2", fed.ca_dir)
    with pytest.raises(ssl.SSLError, match="certificate revoked"):
        memory_handshake(server(fed), client(fed, "c2"))
    memory_handshake(server(fed), client(fed, "c1"))  # the others are unaffected
    memory_handshake(server(fed, crl=False), client(fed, "c2"))  # shows the CRL is what refuses it


def test_collaborator_certificate_cannot_serve(fed: FederationPKI) -> None:
    p = fed.paths("c1")
    with pytest.raises(PKIError, match="but this context needs an aggregator certificate"):
        server_context(p.cert, p.key, p.ca)
    # Bypass our own check: OpenSSL's purpose check (EKU) still refuses it, even without hostname checking.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(p.cert), str(p.key))
    cctx = client(fed, "c2")
    cctx.check_hostname = False
    with pytest.raises(ssl.SSLError, match="unsuitable certificate purpose"):
        memory_handshake(ctx, cctx)


def test_aggregator_certificate_cannot_be_a_client(fed: FederationPKI) -> None:
    p = fed.paths("agg")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(str(p.cert), str(p.key))
    ctx.load_verify_locations(str(p.ca))
    with pytest.raises(ssl.SSLError, match="unsuitable certificate purpose"):
        memory_handshake(server(fed), ctx)


def test_no_client_certificate_refused(fed: FederationPKI) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(fed.ca_cert))
    with pytest.raises(ssl.SSLError, match="did not return a certificate"):
        memory_handshake(server(fed), ctx)


def test_wrong_server_name_refused(fed: FederationPKI) -> None:
    with pytest.raises(ssl.SSLError, match="Hostname mismatch|certificate verify failed"):
        memory_handshake(server(fed), client(fed, "c1"), server_hostname="agg.example.org")


def test_tls12_client_refused(fed: FederationPKI) -> None:
    ctx = client(fed, "c1")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        memory_handshake(server(fed), ctx)


def test_loose_key_permissions_and_missing_files_refused(tmp_path: Path) -> None:
    fed = enroll_federation(tmp_path, ["c1"], "agg")
    p = fed.paths("c1")
    os.chmod(p.key, 0o644)
    with pytest.raises(PKIError, match="chmod 600"):
        client_context(p.cert, p.key, p.ca)
    with pytest.raises(PKIError, match="not found"):
        client_context(tmp_path / "nope.crt", p.key, p.ca)


def _site(fed: FederationPKI, name: str, role: str, crl: bool) -> Site:
    p = fed.paths(name)
    extra = {"bind": "tcp://127.0.0.1:5555"} if role == "aggregator" else {
        "aggregator": "tcp://127.0.0.1:5555", "data": {"t": {"train": "x.csv"}}
    }
    certs = {"cert": p.cert, "key": p.key, "ca": p.ca, "crl": p.crl if crl else None}
    return Site.model_validate({"name": name, "role": role, "workspace": fed.root / "ws", "certs": certs, **extra})


def test_context_for_site(fed: FederationPKI) -> None:
    sctx = context_for_site(_site(fed, "agg", "aggregator", crl=True))
    cctx = context_for_site(_site(fed, "c1", "collaborator", crl=False))
    s, _ = memory_handshake(sctx, cctx)
    assert peer_common_name(s) == "c1"
    with pytest.raises(ConfigError, match="needs certs.crl"):
        context_for_site(_site(fed, "agg", "aggregator", crl=False))


def test_peer_name_before_handshake_is_an_error(fed: FederationPKI) -> None:
    obj = server(fed).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    with pytest.raises(PKIError, match="no verified peer certificate"):
        peer_common_name(obj)
