"""Codec: exact round trips (property-based), strict refusals, and agreement with the
safetensors library in both directions."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy as stn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fltac_secure.errors import ConfigError, ProtocolError
from fltac_secure.transport import KindSpec, Message, decode, encode, register_kind, registered_kinds
from fltac_secure.transport.codec import PREFIX, PREFIX_SIZE, decode_tensors, tensor_parts

FED, PLAN, ANY = "fed", "p" * 64, "TEST_ANY"
if ANY not in registered_kinds():
    register_kind(KindSpec(ANY, lambda m: None, max_tensors=16))
LIMIT = 1 << 24

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "float16", "uint32", "int32", "float32", "uint64", "int64", "float64"]
names = st.from_regex(r"[A-Za-z0-9_.:/-]{1,20}", fullmatch=True)
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                          elements={"allow_nan": False, "allow_infinity": False} if dt.startswith("float") else None)
)  # fmt: skip
meta_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.lists(st.integers(-1000, 1000), max_size=5))  # fmt: skip


def _dec(data: bytes, **kw) -> Message:
    return decode(data, expect_federation=FED, expect_plan_hash=PLAN, max_bytes=kw.get("max_bytes", LIMIT))


@settings(max_examples=150, deadline=None)
@given(tensors=st.dictionaries(names, arrays, max_size=6), meta=st.dictionaries(st.text(max_size=10), meta_values, max_size=5),
       rnd=st.integers(0, 2**31 - 1), msg_id=st.one_of(st.integers(0, 2**62), st.text(max_size=30)))  # fmt: skip
def test_round_trip_is_exact(tensors, meta, rnd, msg_id):
    msg = Message(ANY, FED, PLAN, "site1", rnd, msg_id, meta, tensors)
    out = _dec(encode(msg))
    assert (out.kind, out.round, out.msg_id, out.sender, dict(out.meta)) == (ANY, rnd, msg_id, "site1", meta)
    assert set(out.tensors) == set(tensors)
    for name, arr in tensors.items():
        assert out.tensors[name].dtype == arr.dtype and out.tensors[name].shape == arr.shape
        assert np.array_equal(out.tensors[name], arr)
    # the blob is real safetensors: the library reads ours and we read the library's
    if tensors:
        blob = b"".join(bytes(p) for p in tensor_parts(tensors))
        lib = stn.load(blob)
        assert all(np.array_equal(lib[n], a) for n, a in tensors.items())
        mine = decode_tensors(stn.save({n: np.require(a, requirements="C") for n, a in tensors.items()}))
        assert all(np.array_equal(mine[n], a) and mine[n].dtype == a.dtype for n, a in tensors.items())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_ever_raise_protocol_error(data):
    with pytest.raises(ProtocolError):
        _dec(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_never_crash(data):
    good = bytearray(encode(Message(ANY, FED, PLAN, "s", 1, 1, {"a": 1}, {"w": np.arange(6, dtype=np.float32)})))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    try:
        _dec(bytes(good))
    except ProtocolError:
        pass


def _msg(**kw) -> Message:
    base = {"kind": ANY, "federation": FED, "plan_hash": PLAN, "sender": "s", "round": 0, "msg_id": 1,
            "meta": {}, "tensors": {"w": np.ones(4, np.float32)}}  # fmt: skip
    base.update(kw)
    return Message(**base)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing_bytes"),
        (lambda b: b"XXXX" + b[4:], "bad_magic"),
        (lambda b: b[:4] + b"\x02\x00" + b[6:], "bad_version"),
        (lambda b: b[:8] + (1 << 21).to_bytes(8, "little") + b[16:], "too_large"),
    ],
)
def test_framing_refusals(mutate, reason):
    with pytest.raises(ProtocolError) as info:
        _dec(mutate(encode(_msg())))
    assert info.value.reason == reason


def test_semantic_refusals():
    with pytest.raises(ProtocolError, match="federation") as info:
        _dec(encode(_msg(federation="other")))
    assert info.value.reason == "wrong_federation"
    with pytest.raises(ProtocolError) as info:
        _dec(encode(_msg(plan_hash="q" * 64)))
    assert info.value.reason == "wrong_plan"
    with pytest.raises(ProtocolError) as info:
        _dec(encode(_msg(kind="NEVER_REGISTERED")))
    assert info.value.reason == "unknown_kind"
    with pytest.raises(ProtocolError) as info:
        _dec(encode(_msg(tensors={"w": np.array([np.inf], np.float32)})))
    assert info.value.reason == "not_finite"
    with pytest.raises(ProtocolError) as info:
        _dec(encode(_msg(kind="ACK", tensors={"w": np.ones(1, np.float32)})))
    assert info.value.reason == "bad_tensors"
    with pytest.raises(ProtocolError):
        _dec(encode(_msg()), max_bytes=100)


def test_bad_safetensors_header_is_refused():
    blob = b"".join(bytes(p) for p in tensor_parts({"w": np.ones(4, np.float32)}))
    n = int.from_bytes(blob[:8], "little")
    header = blob[8 : 8 + n].replace(b'"F32"', b'"F99"')
    for bad in (blob[:8] + header + blob[8 + n :], (1 << 40).to_bytes(8, "little") + blob[8:], blob[:5]):
        with pytest.raises(ProtocolError) as info:
            decode_tensors(bad)
        assert info.value.reason in ("bad_safetensors", "bad_header")


def test_overlapping_offsets_and_duplicate_keys_are_refused():
    hdr = b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    with pytest.raises(ProtocolError):
        decode_tensors(len(hdr).to_bytes(8, "little") + hdr + b"xy")
    dup = b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    with pytest.raises(ProtocolError, match="duplicate"):
        decode_tensors(len(dup).to_bytes(8, "little") + dup + b"xy")


def test_header_with_extra_key_is_refused():
    raw = encode(_msg(tensors={}))
    _, _, _, hlen, plen = PREFIX.unpack(raw[:PREFIX_SIZE])
    header = raw[PREFIX_SIZE : PREFIX_SIZE + hlen].rstrip()[:-1] + b',"x":1}'
    with pytest.raises(ProtocolError, match="header keys"):
        _dec(PREFIX.pack(b"FLT1", 1, 0, len(header), plen) + header)


def test_registry_refuses_duplicates():
    with pytest.raises(ConfigError, match="already registered"):
        register_kind(KindSpec(ANY, lambda m: None))


def test_unsupported_dtype_and_bad_names_refused_at_build():
    with pytest.raises(ProtocolError):
        encode(_msg(tensors={"c": np.ones(2, np.complex64)}))
    with pytest.raises(ProtocolError):
        _msg(tensors={"bad name!": np.ones(2, np.float32)})
    with pytest.raises(ProtocolError):
        _msg(meta={"x": object()})
