"""Session layer: request/reply, ACKs and de-duplication, the ledger hook, reconnect after
a server restart mid-stream (exactly once), and session expiry forcing a fresh handshake."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from fltac_secure.errors import TransportError
from fltac_secure.pki import revoke, server_context
from fltac_secure.pki.testing import enroll_site
from fltac_secure.transport import Message, WireEvent
from fltac_secure.transport.codec import encode

from transport_helpers import (
    DATA, FED, PLAN, RawPeer, cctx, data_msg, make_client, start_server, wait_for,
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_request_reply_both_directions_and_ledger(pki):
    events: list[WireEvent] = []
    srv = start_server(pki, ledger_hook=events.append)
    try:
        with make_client(srv.endpoint, cctx(pki, "site1"), ledger_hook=events.append) as client:
            client.connect()
            answered = threading.Event()

            def answer() -> None:
                peer, req = srv.recv(timeout=10)
                srv.send(peer, srv.message(DATA, round=req.round, meta={"in_reply_to": req.msg_id},
                                          tensors={"w": req.tensors["w"] * 2}))  # fmt: skip
                answered.set()

            threading.Thread(target=answer, daemon=True).start()
            reply = client.request(client.message(DATA, round=3, tensors={"w": np.arange(5, dtype=np.float32)}), 10)
            assert answered.wait(5)
            assert reply.sender == "aggregator" and np.array_equal(reply.tensors["w"], np.arange(5) * 2)
            pushed = srv.send("site1", srv.message(DATA, tensors={"w": np.ones(2, np.float32)}))
            got = client.recv(timeout=5)
            assert got is not None and got.msg_id == pushed
    finally:
        srv.close()
    data = [e for e in events if e.kind == DATA]
    assert {(e.direction, e.elements) for e in data} == {("sent", 5), ("received", 5), ("sent", 2), ("received", 2)}
    for e in data:
        assert e.payload_bytes > 5 * 4 and e.wire_bytes > e.payload_bytes
    sent = sum(e.wire_bytes for e in events if e.direction == "sent" and e.peer == "site1")
    recv = sum(e.wire_bytes for e in events if e.direction == "received" and e.peer == "aggregator")
    assert sent == recv  # what the server reports sending is what the client reports receiving


def test_duplicate_message_ids_are_delivered_once(server, pki):
    raw = RawPeer(server.endpoint, cctx(pki, "site1"))
    try:
        raw.authenticate("site1")
        msg = Message(DATA, FED, PLAN, "site1", 1, "dup-1", {}, {"w": np.ones(3, np.float32)})
        raw.send_plain(encode(msg))
        raw.send_plain(encode(msg))
        assert raw.read_until("ACK") is not None and raw.read_until("ACK") is not None  # both acknowledged
        assert server.recv(timeout=5) is not None
        assert server.recv(timeout=0.5) is None  # delivered once
    finally:
        raw.close()


def test_server_restart_mid_stream_delivers_exactly_once(pki):
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    first = start_server(pki, endpoint, max_message_bytes=64 << 20)
    client = make_client(endpoint, cctx(pki, "site1"), stall_timeout=1.0, max_attempts=8)
    second = None
    try:
        client.connect()
        payload = np.random.default_rng(0).standard_normal(12 << 20, dtype=np.float32)  # 48 MB
        result: dict = {}

        def upload() -> None:
            try:
                result["id"] = client.send(client.message(DATA, tensors={"w": payload}), timeout=60)
            except Exception as exc:  # surfaced below
                result["error"] = exc

        frames = [0]
        on_frame = first._on_frame

        def die_mid_stream(ident: bytes, data: memoryview) -> None:
            """The first server's I/O thread stops dead after 8 frames of the upload."""
            link = first._links.get(ident)
            if link is not None and link.name is not None:
                frames[0] += 1
            if frames[0] > 8:
                first._stopping = True
                return
            on_frame(ident, data)

        first._on_frame = die_mid_stream  # type: ignore[method-assign]
        sender = threading.Thread(target=upload)
        sender.start()
        assert wait_for(lambda: frames[0] > 8, 10)
        first.close()  # killed mid-stream
        assert first._inbox.empty()
        time.sleep(0.3)
        second = start_server(pki, endpoint, max_message_bytes=64 << 20)
        sender.join(60)
        assert "error" not in result, result.get("error")
        got = second.recv(timeout=10)
        assert got is not None and got[0] == "site1" and got[1].msg_id == result["id"]
        assert np.array_equal(got[1].tensors["w"], payload)
        assert second.recv(timeout=1.0) is None  # exactly once
    finally:
        client.close()
        first.close()
        if second is not None:
            second.close()


def test_unreachable_server_gives_up_with_clear_error(pki):
    client = make_client(f"tcp://127.0.0.1:{_free_port()}", cctx(pki, "site1"), handshake_timeout=0.2, max_attempts=2)
    try:
        with pytest.raises(TransportError) as info:
            client.connect(timeout=10)
        assert info.value.reason == "unreachable"
    finally:
        client.close()


def test_expired_session_rehandshakes_and_revocation_then_bites(pki, tmp_path):
    # a fresh site, so revoking it does not disturb the shared fixtures
    enroll_site(pki.root, pki.ca_dir, "site2b", "collaborator")
    srv = start_server(pki, roster=["site1", "site2b"], session_lifetime=0.5)
    try:
        with make_client(srv.endpoint, cctx(pki, "site2b"), "site2b", stall_timeout=2.0) as client:
            client.connect()
            time.sleep(1.0)  # the session expires; the client handshakes again by itself
            client.send(data_msg("site2b"), timeout=10)
            assert srv.recv(timeout=5) is not None
            revoke("site2b", pki.ca_dir)
            a = pki.paths("aggregator")
            srv.set_ssl_context(server_context(a.cert, a.key, a.ca, a.crl))
            with pytest.raises(TransportError) as info:
                client.send(data_msg("site2b"), timeout=10)
            assert info.value.reason == "tls_certificate_revoked"
    finally:
        srv.close()
