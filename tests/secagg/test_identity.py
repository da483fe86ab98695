"""Every member checks every other member's certificate: CA, role, name, roster, revocation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fltac_secure.errors import PKIError, SecAggError
from fltac_secure.pki import revoke
from fltac_secure.pki.files import load_certificate
from fltac_secure.pki.testing import enroll_federation
from fltac_secure.secagg import PeerVerifier, ServerSession, Signer, run_cluster

from .conftest import SITES, Cluster, sites


@pytest.fixture(scope="module")
def small_fed(tmp_path_factory: pytest.TempPathFactory):
    return enroll_federation(tmp_path_factory.mktemp("secagg-small"), ["a", "b", "c"])


def _signer(fed, name: str) -> Signer:
    return Signer.from_files(name, fed.paths(name).cert, fed.paths(name).key)


def test_a_revoked_certificate_is_refused_after_the_crl_lists_it(tmp_path) -> None:
    fed = enroll_federation(tmp_path, ["a", "b", "c"])
    b = _signer(fed, "b")
    assert PeerVerifier.from_files(fed.ca_cert, ["a", "b", "c"], fed.crl).public_key("b", b.certificate)
    revoke("b", fed.ca_dir)
    verifier = PeerVerifier.from_files(fed.ca_cert, ["a", "b", "c"], fed.crl)
    with pytest.raises(SecAggError, match="revoked") as exc:
        verifier.public_key("b", b.certificate)
    assert exc.value.reason == "revoked"


def test_a_site_outside_the_roster_is_refused(small_fed) -> None:
    verifier = PeerVerifier.from_files(small_fed.ca_cert, ["a", "b"], small_fed.crl)
    with pytest.raises(SecAggError, match="not in the plan's roster"):
        verifier.public_key("c", _signer(small_fed, "c").certificate)


def test_another_sites_certificate_is_refused(small_fed) -> None:
    verifier = PeerVerifier.from_files(small_fed.ca_cert, ["a", "b", "c"], small_fed.crl)
    with pytest.raises(SecAggError, match="belongs to 'a'"):
        verifier.public_key("b", _signer(small_fed, "a").certificate)


def test_the_aggregators_certificate_cannot_sign_member_keys(small_fed) -> None:
    paths = small_fed.paths(small_fed.aggregator)
    agg = Signer.from_files(small_fed.aggregator, paths.cert, paths.key)
    verifier = PeerVerifier.from_files(small_fed.ca_cert, ["a", small_fed.aggregator], small_fed.crl)
    with pytest.raises(SecAggError, match="aggregator"):
        verifier.public_key(small_fed.aggregator, agg.certificate)


def test_a_certificate_from_another_ca_is_refused(small_fed, fed) -> None:
    other = Signer.from_files(SITES[0], fed.paths(SITES[0]).cert, fed.paths(SITES[0]).key)
    verifier = PeerVerifier.from_files(small_fed.ca_cert, [SITES[0]], small_fed.crl)
    with pytest.raises(SecAggError, match="does not verify against the federation CA"):
        verifier.public_key(SITES[0], other.certificate)


def test_an_expired_certificate_is_refused(small_fed) -> None:
    ca = load_certificate(small_fed.ca_cert)
    later = datetime.now(timezone.utc) + timedelta(days=400)
    verifier = PeerVerifier(ca, ["a"], now=later)
    with pytest.raises(SecAggError, match="refused"):
        verifier.public_key("a", _signer(small_fed, "a").certificate)


def test_garbage_instead_of_a_certificate_is_refused(small_fed) -> None:
    verifier = PeerVerifier.from_files(small_fed.ca_cert, ["a"], small_fed.crl)
    with pytest.raises(SecAggError, match="refused"):
        verifier.public_key("a", b"\x30\x03\x02\x01\x00")
    with pytest.raises(SecAggError, match="larger than"):
        verifier.public_key("a", b"\x00" * 9000)


def test_a_signer_needs_the_key_of_its_certificate(small_fed) -> None:
    with pytest.raises(PKIError, match="not the private key"):
        Signer.from_files("a", small_fed.paths("a").cert, small_fed.paths("b").key)


def test_members_refuse_a_revoked_member_during_the_protocol(tmp_path) -> None:
    """A site revoked after the run's certificates were issued: every honest member's check refuses its keys."""
    fed = enroll_federation(tmp_path, list(sites(3)))
    own = {m: _signer(fed, m) for m in sites(3)}
    revoke(SITES[2], fed.ca_dir)
    verifier = PeerVerifier.from_files(fed.ca_cert, sites(3), fed.crl)
    c = Cluster(own, verifier, sites(3), server_cls=_TrustingServer)
    run = run_cluster(c.server, c.clients)
    assert run.result.skipped and run.released_shares() == []
    assert {m: e.reason for m, e in run.errors.items() if m != SITES[2]} == {SITES[0]: "revoked", SITES[1]: "revoked"}


class _TrustingServer(ServerSession):
    """A server that does not check certificates itself, so the members' own checks are what is tested."""

    def __init__(self, setup, verifier=None) -> None:
        super().__init__(setup, None)
