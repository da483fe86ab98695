"""Federation message rules: structure at decode time, plan sizes and value ranges in the roles."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.errors import ProtocolError
from fltac_secure.federation import messages as fm
from fltac_secure.transport.codec import decode, encode
from fltac_secure.transport.envelope import Message

SHAPES = fm.Shapes(vector_size=10, sketch_dim=4, k=2)


def msg(kind: str, meta: dict | None = None, tensors: dict | None = None, r: int = 0) -> Message:
    return Message(kind, "fed", "h" * 64, "site1", r, "id-1", meta or {}, tensors or {})


def roundtrip(m: Message) -> Message:
    return decode(encode(m), expect_federation="fed", expect_plan_hash="h" * 64, max_bytes=1 << 20)


def test_vectors_roundtrip_and_sizes() -> None:
    vecs = {0: np.arange(10, dtype=np.float32), 1: np.ones(10, np.float32)}
    got = fm.parse_vectors(roundtrip(msg(fm.UPDATE, tensors=fm.vector_tensors(vecs))), [0, 1], SHAPES)
    np.testing.assert_array_equal(got[0], vecs[0])
    with pytest.raises(ProtocolError, match="expected tensors for slots"):
        fm.parse_vectors(msg(fm.UPDATE, tensors=fm.vector_tensors(vecs)), [0], SHAPES)
    with pytest.raises(ProtocolError, match="expected \\(12,\\)"):
        fm.parse_vectors(msg(fm.UPDATE, tensors=fm.vector_tensors(vecs)), [0, 1], fm.Shapes(12, 4, 2))


@pytest.mark.parametrize("tensors, reason", [
    ({"slot/0": np.ones(10, np.float64)}, "bad_dtype"),
    ({"slot/0": np.ones((2, 5), np.float32)}, "bad_shape"),
    ({"weights": np.ones(10, np.float32)}, "bad_tensors"),
    ({"slot/0": np.array([np.nan] * 10, np.float32)}, "not_finite"),
])
def test_decoder_refuses_bad_update_structure(tensors: dict, reason: str) -> None:
    bad = Message(fm.UPDATE, "fed", "h" * 64, "site1", 0, "id-1", {}, {})
    data = encode(Message(bad.kind, bad.federation, bad.plan_hash, bad.sender, 0, "x", {}, tensors))
    with pytest.raises(ProtocolError) as err:
        decode(data, expect_federation="fed", expect_plan_hash="h" * 64, max_bytes=1 << 20)
    assert err.value.reason == reason


def test_sketches_counts_and_subsets() -> None:
    meta, tensors = fm.sketches_message_parts({1: np.ones(4)}, {1: 7})
    sk, counts = fm.parse_sketches(roundtrip(msg(fm.SKETCHES, meta, tensors)), 2, SHAPES)
    assert list(sk) == [1] and counts == {1: 7}
    with pytest.raises(ProtocolError, match="outside"):
        fm.parse_sketches(msg(fm.SKETCHES, {"slots": [1], "counts": [0]}, tensors), 2, SHAPES)
    with pytest.raises(ProtocolError, match="outside"):
        fm.parse_sketches(msg(fm.SKETCHES, {"slots": [5], "counts": [3]}, tensors), 2, SHAPES)


def test_clusters_and_join_ranges() -> None:
    assert fm.parse_clusters(msg(fm.ASSIGNMENT, {"clusters": [1, -1]}), 2, SHAPES) == [1, -1]
    with pytest.raises(ProtocolError):
        fm.parse_clusters(msg(fm.ASSIGNMENT, {"clusters": [2, 0]}), 2, SHAPES)
    join = msg(fm.JOIN, fm.join_meta([5, 6], -1, "", ["a", "b"]))
    with pytest.raises(ProtocolError, match="share_task_names"):
        fm.parse_join(join, share_task_names=False)
    assert fm.parse_join(join, share_task_names=True).tasks == ["a", "b"]
    with pytest.raises(ProtocolError):
        fm.parse_join(msg(fm.JOIN, {"slots": 2, "counts": [5, -1], "last": [-1, ""]}), share_task_names=False)


def test_control_kinds_carry_no_tensors() -> None:
    data = encode(msg(fm.ASSIGNMENT, {"clusters": [0]}, {"slot/0": np.ones(10, np.float32)}))
    with pytest.raises(ProtocolError):
        decode(data, expect_federation="fed", expect_plan_hash="h" * 64, max_bytes=1 << 20)
