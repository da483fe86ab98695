"""Issue 9's classes, one test (or more) each: no peer can stop the server, revocation takes
effect at once, the role's key usage is required, memory and the ledger stay bounded."""

from __future__ import annotations

import json
import ssl
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fltac_secure.errors import ProtocolError, TransportError
from fltac_secure.pki import revoke, server_context
from fltac_secure.pki.ca import load_ca
from fltac_secure.pki.crl import CrlWatch
from fltac_secure.pki.policy import _leaf_key_usage
from fltac_secure.pki.testing import enroll_federation
from fltac_secure.transport import Message
from fltac_secure.transport.codec import PREFIX, encode
from fltac_secure.transport.events import WireEvent
from fltac_secure.transport.guard import EventGate, PendingTable
from fltac_secure.transport.delivery import Intake
from fltac_secure.transport.session import MAX_FIELD_CHARS

from transport_helpers import (
    DATA, FED, PLAN, ROSTER, RawPeer, assert_serves_good_client, cctx, data_msg, make_client, sctx, start_server,
    wait_for,
)  # fmt: skip


def _drain(server) -> list:
    got = []
    while (item := server.recv(timeout=0.2)) is not None:
        got.append(item)
    return got


def _alive(server) -> None:
    assert server._crash is None, server._crash
    assert server._thread.is_alive()
    server._check_alive()  # raises TransportError if the I/O thread died


# -- 1. a vanished peer is a normal event -------------------------------------------------


def test_peer_vanishing_mid_handshake_costs_only_its_session(server, pki):
    """The server's answer to a ClientHello goes to a ZeroMQ identity that is gone (EHOSTUNREACH)."""
    for _ in range(10):
        peer = RawPeer(server.endpoint, cctx(pki, "site1"))
        try:
            peer.obj.do_handshake()
        except ssl.SSLWantReadError:
            peer.flush()  # the ClientHello
        peer.close()  # gone before the ServerHello comes back
    time.sleep(0.5)
    _alive(server)
    assert_serves_good_client(server, pki)


def test_message_to_a_vanished_site_waits_for_its_next_session(server, pki):
    peer = RawPeer(server.endpoint, cctx(pki, "site1"))
    peer.authenticate("site1")
    assert wait_for(lambda: "site1" in server.peers())
    peer.close()  # no BYE: the connection just ends
    for i in range(3):
        server.send("site1", server.message(DATA, round=1, tensors={"w": np.full(4, float(i), np.float32)}))
    time.sleep(0.5)
    _alive(server)
    with make_client(server.endpoint, cctx(pki, "site1"), "site1") as client:
        client.connect()
        got = [client.recv(timeout=10) for _ in range(3)]
    assert [float(m.tensors["w"][0]) for m in got if m is not None] == [0.0, 1.0, 2.0]


# -- 2. values that Python or numpy reject ------------------------------------------------


def _raw_message(header: dict, blob: bytes = b"") -> bytes:
    raw = json.dumps(header).replace('"HUGE"', "9" * 5000).encode()  # an int json.loads refuses to parse
    raw += b" " * (-(PREFIX.size + len(raw)) % 8)
    return PREFIX.pack(b"FLT1", 1, 0, len(raw), len(blob)) + raw + blob


def _blob(entries: dict) -> bytes:
    head = json.dumps(entries).encode()
    return len(head).to_bytes(8, "little") + head


HEADER = {"kind": DATA, "federation": FED, "plan_hash": PLAN, "sender": "site1", "round": 1, "meta": {}}


@pytest.mark.parametrize(
    ("header", "blob"),
    [
        ({**HEADER, "msg_id": "m1", "round": 2**70}, b""),
        ({**HEADER, "msg_id": 10**30}, b""),
        ({**HEADER, "msg_id": "x" * 10_000}, b""),
        ({**HEADER, "msg_id": "m1", "meta": {"v": "HUGE"}}, b""),
        ({**HEADER, "msg_id": "m1"}, _blob({"w": {"dtype": "F32", "shape": [0, 10**30], "data_offsets": [0, 0]}})),
        ({**HEADER, "msg_id": "m1"}, _blob({"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}})),
        ({**HEADER, "msg_id": "m1"}, _blob({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 10**40]}})),
    ],
    ids=["round", "int-id", "long-id", "huge-meta-int", "zero-dim-huge", "overflow-dims", "huge-offset"],
)
def test_absurd_values_after_welcome_are_refused_not_fatal(server, pki, header, blob):
    peer = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        peer.authenticate("site1")
        peer.send_plain(_raw_message(header, blob))
        time.sleep(0.3)
        _alive(server)
        assert server.recv(timeout=0) is None  # nothing of it reached the application
    finally:
        peer.close()
    assert_serves_good_client(server, pki)


def test_absurd_hello_from_a_peer_outside_the_roster(server, pki):
    peer = RawPeer(server.endpoint, cctx(pki, "site9"))
    try:
        peer.handshake()
        hello = {**HEADER, "kind": "HELLO", "sender": "site9", "msg_id": "h", "meta": {"name": "site9", "n": "HUGE"}}
        peer.send_plain(_raw_message(hello))
        time.sleep(0.3)
        _alive(server)
    finally:
        peer.close()
    assert_serves_good_client(server, pki)


def test_envelope_bounds_ids_and_rounds():
    with pytest.raises(ProtocolError):
        Message(DATA, FED, PLAN, "site1", 2**31, "m")
    with pytest.raises(ProtocolError):
        Message(DATA, FED, PLAN, "site1", 1, "m" * 129)
    with pytest.raises(ProtocolError):
        Message(DATA, FED, PLAN, "s" * 129, 1, "m")
    Message(DATA, FED, PLAN, "site1", 2**31 - 1, "m" * 128)  # the largest allowed


# -- 3. revocation takes effect at once ----------------------------------------------------


@pytest.fixture
def fresh_pki(tmp_path: Path):
    return enroll_federation(tmp_path / "pki", ["site1", "site2"])


def _watched_server(fed, **kw):
    a = fed.paths("aggregator")
    make = lambda: server_context(a.cert, a.key, a.ca, a.crl)  # noqa: E731
    from fltac_secure.transport import TransportServer

    opts: dict = {"handshake_timeout": 2.0, "idle_timeout": 30.0, "max_message_bytes": 8 << 20}
    opts.update(kw)
    return TransportServer("tcp://127.0.0.1:*", make(), ["site1", "site2"], FED, PLAN,
                           crl_watch=CrlWatch(a.crl, a.ca, make), **opts).start()  # fmt: skip


def test_revocation_ends_live_session_and_refuses_the_next(fresh_pki):
    server = _watched_server(fresh_pki)
    try:
        client = make_client(server.endpoint, cctx(fresh_pki, "site1"), "site1")
        client.connect()
        client.send(data_msg("site1"), timeout=5)
        assert wait_for(lambda: "site1" in server.peers())
        assert len(_drain(server)) == 1
        revoke("site1", fresh_pki.ca_dir)  # rewrites the CRL file that the server watches
        assert wait_for(lambda: "site1" not in server.peers(), timeout=10), "live session survived revocation"
        with pytest.raises(TransportError) as info:
            client.send(data_msg("site1"), timeout=10)
        assert info.value.reason in ("certificate_revoked", "tls_certificate_revoked")
        client.close()
        again = make_client(server.endpoint, cctx(fresh_pki, "site1"), "site1")
        with pytest.raises(TransportError) as info:
            again.connect()
        again.close()
        assert info.value.reason == "tls_certificate_revoked"
        assert_serves_good_client(server, fresh_pki, "site2")  # the others carry on
    finally:
        server.close()


def test_broken_crl_file_keeps_the_previous_crl(fresh_pki, caplog):
    server = _watched_server(fresh_pki)
    try:
        crl = fresh_pki.paths("aggregator").crl
        Path(crl).write_bytes(b"-----BEGIN X509 CRL-----\nhalf a copy")
        server.reload_crl()
        assert wait_for(lambda: "previous CRL stays in force" in caplog.text, timeout=5)
        _alive(server)
        assert_serves_good_client(server, fresh_pki, "site1")
    finally:
        server.close()


# -- 4. the ledger: fields truncated, refused peers rate limited ---------------------------


def test_ledger_fields_are_truncated_for_refused_peers(server, pki):
    events: list[WireEvent] = []
    server._hook = events.append
    peer = RawPeer(server.endpoint, cctx(pki, "site9"))
    try:
        peer.handshake()
        peer.send_plain(encode(Message("HELLO", FED, PLAN, "site9", 0, "h" * 128, {"name": "site9"})))
        assert peer.read_until("REJECT") is not None
    finally:
        peer.close()
    assert events, "the refused HELLO was not recorded at all"
    for e in events:
        assert len(str(e.msg_id)) <= MAX_FIELD_CHARS and len(e.peer) <= MAX_FIELD_CHARS and len(e.kind) <= 32


def test_event_gate_bounds_the_rate():
    gate = EventGate(rate=10.0, burst=5, what="test events")
    allowed = sum(gate.allow() for _ in range(1000))
    assert 5 <= allowed <= 7  # the burst, and at most a token or two refilled meanwhile


# -- 5. pending handshakes: bounded, oldest evicted ----------------------------------------


def test_pending_table_evicts_oldest_of_the_same_source_first():
    t = PendingTable(max_total=4, max_per_source=2)
    assert t.add(b"a1", "A") == [] and t.add(b"a2", "A") == []
    assert t.add(b"a3", "A") == [b"a1"]  # A is at its quota: its oldest goes
    assert t.add(b"b1", "B") == [] and t.add(b"c1", "C") == []
    assert t.add(b"d1", "D") == [b"a2"]  # the table is full: the oldest overall goes
    assert len(t) == 4


def test_stalled_handshake_flood_does_not_shut_out_a_real_site(pki):
    server = start_server(pki, handshake_timeout=60.0, max_pending=8, max_pending_per_source=8)
    stalled = []
    try:
        for _ in range(24):  # three times the table: each sends a ClientHello and stalls
            peer = RawPeer(server.endpoint, cctx(pki, "site1"))
            try:
                peer.obj.do_handshake()
            except ssl.SSLWantReadError:
                peer.flush()
            stalled.append(peer)
        assert wait_for(lambda: server.pending_connections() == 8)
        assert_serves_good_client(server, pki)  # long before the 60 s handshake timeout
    finally:
        for peer in stalled:
            peer.close()
        server.close()


# -- 7. the role's extended key usage is required -------------------------------------------


def _no_eku_certificate(fed, name: str, out: Path) -> tuple[Path, Path]:
    ca_key, ca_cert = load_ca(fed.ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )  # fmt: skip
    if name == "localhost":
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # like a real leaf in every way but the missing extended key usage
    out.mkdir(parents=True, exist_ok=True)
    (out / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "c.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))  # fmt: skip
    return out / "c.crt", out / "c.key"


def test_client_certificate_without_extended_key_usage_is_refused(server, pki, tmp_path):
    cert, key = _no_eku_certificate(pki, "site1", tmp_path)
    ctx = cctx(pki, "site1")
    ctx.load_cert_chain(cert, key)
    client = make_client(server.endpoint, ctx, "site1")
    with pytest.raises(TransportError) as info:
        client.connect()
    client.close()
    assert info.value.reason == "wrong_role" and "clientAuth" in str(info.value)
    assert_serves_good_client(server, pki)


def test_server_certificate_without_extended_key_usage_is_refused_by_the_client(pki, tmp_path):
    from fltac_secure.transport import TransportServer

    cert, key = _no_eku_certificate(pki, "localhost", tmp_path)
    ctx = sctx(pki)
    ctx.load_cert_chain(cert, key)
    bogus = TransportServer("tcp://127.0.0.1:*", ctx, ROSTER, FED, PLAN, handshake_timeout=2.0).start()
    try:
        client = make_client(bogus.endpoint, cctx(pki, "site1"), "site1")
        with pytest.raises(TransportError) as info:
            client.connect()
        client.close()
    finally:
        bogus.close()
    assert info.value.reason in ("wrong_role", "tls_unsupported_certificate") or "certificate" in str(info.value)


# -- bounded queues and backpressure ----------------------------------------------------------


def test_intake_parks_then_overflows():
    intake = Intake(max_count=2, max_bytes=100, max_parked=2)
    m = Message(DATA, FED, PLAN, "s")
    assert [intake.offer(m, 10) for _ in range(5)] == ["deliver", "deliver", "parked", "parked", "overflow"]
    intake.taken(10)
    assert len(intake.unpark()) == 1 and intake.waiting == 2


def test_slow_application_bounds_the_inbox_and_loses_nothing(server, pki):
    with make_client(server.endpoint, cctx(pki, "site1"), "site1") as client:
        client.connect()
        import threading

        sender = threading.Thread(target=lambda: [client._queue(data_msg("site1", value=float(i)), None)
                                                  for i in range(40)], daemon=True)  # fmt: skip
        sender.start()
        time.sleep(1.0)  # the application has not read anything yet
        assert server._inbox.qsize() <= 8  # the rest are held unacknowledged (parked) or not sent
        got = []
        while len(got) < 40:
            item = server.recv(timeout=10)
            assert item is not None, f"only {len(got)} of 40 arrived"
            got.append(float(item[1].tensors["w"][0]))
    assert got == [float(i) for i in range(40)]  # in order, exactly once


def test_peer_ignoring_backpressure_loses_its_session(server, pki):
    peer = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        peer.authenticate("site1")
        for i in range(40):  # far beyond the window, never waiting for an ACK
            peer.send_plain(encode(Message(DATA, FED, PLAN, "site1", 1, f"m{i}", {}, {"w": np.zeros(4, np.float32)})))
        bye = peer.read_until("BYE", timeout=5)
        assert bye is not None and bye.meta["reason"] == "backlog"
        _alive(server)
    finally:
        peer.close()
    assert len(_drain(server)) == 8  # what fitted the peer's inbox share was delivered; nothing more
    assert_serves_good_client(server, pki)


def test_ledger_that_cannot_be_written_stops_the_server_with_the_reason(pki):
    """A full disk is the server's own failure: it stops and says why, instead of dropping every peer in turn."""

    def full_disk(_event: WireEvent) -> None:
        raise OSError(28, "No space left on device")

    server = start_server(pki, ledger_hook=full_disk)
    try:
        client = make_client(server.endpoint, cctx(pki, "site1"), "site1", max_attempts=1)
        with pytest.raises(TransportError):
            client.connect(timeout=5)
        client.close()
        assert wait_for(lambda: server._crash is not None)
        with pytest.raises(TransportError) as info:
            server.recv(timeout=1)
        assert "No space left on device" in str(info.value)
    finally:
        server.close()


def test_message_and_close_in_one_frame_is_delivered_then_closed(server, pki):
    peer = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        peer.authenticate("site1")
        peer.obj.write(encode(Message(DATA, FED, PLAN, "site1", 1, "last", {}, {"w": np.ones(4, np.float32)})))
        try:
            peer.obj.unwrap()  # close_notify, queued behind the message
        except ssl.SSLWantReadError:
            pass
        peer.flush()  # both in one ZeroMQ frame
        got = server.recv(timeout=5)
        assert got is not None and got[1].msg_id == "last"
        assert wait_for(lambda: "site1" not in server.peers())
    finally:
        peer.close()


def test_acknowledgements_queued_before_close_reach_the_client(pki):
    """The aggregator closes right after the last DONE: its ACK must still arrive (it was lost 2-3 times
    in 40 while the client's DEALER had IMMEDIATE set, which discards unread input when the peer closes)."""
    import threading

    lost = 0
    for _ in range(30):
        server = start_server(pki)
        client = make_client(server.endpoint, cctx(pki, "site1"), "site1", stall_timeout=30)
        client.connect()
        outcome: list[str] = []

        def send() -> None:
            try:
                client.send(data_msg("site1"), timeout=3)
                outcome.append("acked")
            except TransportError as exc:
                outcome.append(exc.reason)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        assert server.recv(timeout=10) is not None
        server.close()  # at once, as the aggregator does
        t.join(10)
        client.close()
        lost += outcome != ["acked"]
    assert lost == 0, f"{lost} of 30 acknowledgements sent before close never arrived"


def test_ping_flood_in_one_frame_ends_the_session_of_a_peer_that_does_not_read(server, pki):
    """Thousands of PINGs in one frame and no reading: the peer loses its session (its send queue is
    bounded; the bound is checked per message, so one frame cannot queue thousands of PONGs first)."""
    peer = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        peer.authenticate("site1")
        ping = encode(Message("PING", FED, PLAN, "site1", 0, "p", {}))
        peer.send_plain(ping * 3000)  # about 0.6 MB: one frame of the chunk size
        assert wait_for(lambda: "site1" not in server.peers(), timeout=10)
        _alive(server)
    finally:
        peer.close()
    assert_serves_good_client(server, pki)
