"""The rejection matrix: each hostile or mistaken peer gets a clear refusal, and the
server keeps serving a good client afterwards."""

from __future__ import annotations

import ssl
import uuid

import numpy as np
import pytest

from fltac_secure.errors import ProtocolError, TransportError
from fltac_secure.transport import Message
from fltac_secure.transport.channel import max_frame_bytes
from fltac_secure.transport.codec import PREFIX, PREFIX_SIZE, encode, encode_parts

from transport_helpers import (
    DATA, FED, PLAN, RawPeer, assert_serves_good_client, cctx, data_msg, make_client, wait_for,
)  # fmt: skip


def _refused(server, ctx, name="site1", plan=PLAN) -> TransportError:
    client = make_client(server.endpoint, ctx, name, plan)
    try:
        with pytest.raises(TransportError) as info:
            client.connect()
    finally:
        client.close()
    assert server.peers() == [] or name not in server.peers()
    return info.value


# -- refused by OpenSSL during the handshake -----------------------------------------------


def test_certificate_from_another_ca(server, pki, other_pki):
    other = other_pki.paths("site1")
    ctx = cctx(pki, "site1")
    ctx.load_cert_chain(other.cert, other.key)  # trusts our CA, presents a foreign certificate
    err = _refused(server, ctx)
    assert err.reason == "tls_unknown_ca" and "unknown ca" in str(err)
    assert_serves_good_client(server, pki)


def test_expired_certificate(server, pki):
    p = pki.paths("site3")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # client_context itself is fine with it; the server is not
    ctx.load_verify_locations(p.ca)
    ctx.load_cert_chain(p.cert, p.key)
    err = _refused(server, ctx, "site3")
    assert err.reason == "tls_certificate_expired"
    assert_serves_good_client(server, pki)


def test_revoked_certificate(server, pki):
    err = _refused(server, cctx(pki, "site4"), "site4")
    assert err.reason == "tls_certificate_revoked"
    assert_serves_good_client(server, pki)


def test_no_client_certificate(server, pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca_cert)
    err = _refused(server, ctx)
    assert err.reason == "tls_certificate_required"
    assert_serves_good_client(server, pki)


def test_server_certificate_used_as_client(server, pki):
    a = pki.paths("aggregator")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    err = _refused(server, ctx, "aggregator")
    assert err.reason.startswith("tls_") and err.reason != "tls_error"
    assert_serves_good_client(server, pki)


# -- refused by admission (REJECT with a sentence) ------------------------------------------


def test_cn_not_in_roster(server, pki):
    err = _refused(server, cctx(pki, "site9"), "site9")
    assert err.reason == "not_in_roster"
    assert "certificate for 'site9' is not in this plan's roster" in str(err)
    assert_serves_good_client(server, pki)


def test_cn_differs_from_claimed_name(server, pki):
    err = _refused(server, cctx(pki, "site1"), "site2")
    assert err.reason == "name_mismatch" and "'site1'" in str(err) and "'site2'" in str(err)
    assert_serves_good_client(server, pki)


def test_plan_hash_mismatch(server, pki):
    err = _refused(server, cctx(pki, "site1"), "site1", plan="b" * 64)
    assert err.reason == "plan_mismatch" and "same plan.yaml" in str(err)
    assert_serves_good_client(server, pki)


# -- hostile byte streams ----------------------------------------------------------------------


def test_garbage_instead_of_handshake(server, pki):
    raw = RawPeer(server.endpoint)
    try:
        raw.sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        reply = raw.recv_frame(2.0)
        assert reply is None or reply[:1] == b"\x15"  # nothing, or a TLS alert record
        assert wait_for(lambda: server.pending_connections() == 0)
    finally:
        raw.close()
    assert_serves_good_client(server, pki)


def test_stalled_handshake_is_dropped(server, pki):
    raw = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        with pytest.raises(ssl.SSLWantReadError):
            raw.obj.do_handshake()
        raw.flush()  # ClientHello only, then silence
        assert wait_for(lambda: server.pending_connections() == 1, 2.0)
        assert wait_for(lambda: server.pending_connections() == 0, 4.0)  # handshake_timeout = 1 s
        try:  # finishing late gets nowhere: the server no longer answers this peer
            raw.handshake(timeout=1.0)
            raw.send_plain(encode(Message("HELLO", FED, PLAN, "site1", 0, "h1", {"name": "site1"})))
            assert raw.read_message(1.0) is None
        except (TimeoutError, ssl.SSLError):
            pass
        assert server.peers() == []
    finally:
        raw.close()
    assert_serves_good_client(server, pki)


def test_oversized_frame_before_authentication(server, pki):
    raw = RawPeer(server.endpoint)
    try:
        raw.sock.send(b"\x16" * (max_frame_bytes() + 1))
        assert raw.recv_frame(1.0) is None
        assert server.pending_connections() == 0
    finally:
        raw.close()
    assert_serves_good_client(server, pki)


def test_header_announcing_payload_above_limit(server, pki):
    raw = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        raw.authenticate("site1")
        raw.send_plain(PREFIX.pack(b"FLT1", 1, 0, 64, 1 << 40))  # a terabyte, announced
        bye = raw.read_until("BYE")
        assert bye is not None and bye.meta["reason"] == "too_large"
        assert wait_for(lambda: "site1" not in server.peers())
    finally:
        raw.close()
    assert_serves_good_client(server, pki)


def test_large_announcement_before_hello_is_dropped(server, pki):
    raw = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        raw.handshake()
        raw.send_plain(PREFIX.pack(b"FLT1", 1, 0, 64, 1 << 20))  # 1 MiB before authentication
        assert raw.read_message(1.5) is None
        assert wait_for(lambda: server.pending_connections() == 0)
    finally:
        raw.close()
    assert_serves_good_client(server, pki)


def _nacked(server, pki, raw_bytes: bytes, reason: str | tuple[str, ...]) -> None:
    """Send a bad message on an authenticated session: NACK with ``reason``, session survives."""
    raw = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        raw.authenticate("site1")
        raw.send_plain(raw_bytes)
        nack = raw.read_until("NACK")
        assert nack is not None and nack.meta["reason"] in ((reason,) if isinstance(reason, str) else reason)
        assert nack.meta["detail"]
        good_id = f"ok-{uuid.uuid4().hex}"
        raw.send_plain(encode(Message(DATA, FED, PLAN, "site1", 1, good_id, {}, {"w": np.ones(3, np.float32)})))
        ack = raw.read_until("ACK")
        assert ack is not None and ack.meta["ack"] == good_id
        got = server.recv(timeout=5)
        assert got is not None and got[1].msg_id == good_id
    finally:
        raw.close()
    assert_serves_good_client(server, pki)


def test_truncated_payload(server, pki):
    parts = encode_parts(Message(DATA, FED, PLAN, "site1", 1, "t1", {}, {"w": np.ones(64, np.float32)}))
    head, blob = bytes(parts[0]), b"".join(bytes(p) for p in parts[1:])
    short = blob[:-40]  # the safetensors header promises 40 more bytes than are sent
    _, _, _, header_len, _ = PREFIX.unpack(head[:PREFIX_SIZE])
    data = PREFIX.pack(b"FLT1", 1, 0, header_len, len(short)) + head[PREFIX_SIZE:] + short
    _nacked(server, pki, data, ("truncated", "bad_safetensors"))


def test_nan_in_tensor(server, pki):
    bad = Message(DATA, FED, PLAN, "site1", 1, "n1", {}, {"w": np.array([1.0, np.nan], np.float32)})
    _nacked(server, pki, encode(bad), "not_finite")


def test_nan_refused_by_client_before_sending(server, pki):
    with make_client(server.endpoint, cctx(pki, "site1")) as client:
        client.connect()
        with pytest.raises(ProtocolError) as info:
            client.send(data_msg("site1", value=float("inf")))
        assert info.value.reason == "not_finite"


def test_wrong_dtype(server, pki):
    bad = Message(DATA, FED, PLAN, "site1", 1, "d1", {}, {"w": np.ones(4, np.float64)})
    _nacked(server, pki, encode(bad), "bad_dtype")


def test_wrong_shape(server, pki):
    bad = Message(DATA, FED, PLAN, "site1", 1, "s1", {}, {"w": np.ones((2, 2), np.float32)})
    _nacked(server, pki, encode(bad), "bad_shape")


def test_sender_spoofing_in_session(server, pki):
    bad = Message(DATA, FED, PLAN, "site2", 1, "x1", {}, {"w": np.ones(4, np.float32)})
    _nacked(server, pki, encode(bad), "sender_mismatch")


def test_unknown_kind_and_wrong_plan_in_session(server, pki):
    other_plan = Message(DATA, FED, "c" * 64, "site1", 1, "p1", {}, {"w": np.ones(4, np.float32)})
    _nacked(server, pki, encode(other_plan), "wrong_plan")
    unknown = Message("NOT_A_KIND", FED, PLAN, "site1", 1, "u1", {}, {})
    _nacked(server, pki, encode(unknown), "unknown_kind")
