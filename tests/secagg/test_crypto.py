"""The primitives: Shamir on every t-of-n subset, batched reconstruction, masks, sealing, key agreement."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fltac_secure.errors import SecAggError
from fltac_secure.secagg import crypto


@pytest.mark.parametrize(("t", "n"), [(2, 2), (3, 4), (4, 6), (5, 7)])
def test_shamir_every_t_subset_rebuilds_and_fewer_do_not(t: int, n: int) -> None:
    secret = os.urandom(16)
    shares = dict(enumerate(crypto.split(secret, t, n), start=1))
    for subset in itertools.combinations(shares, t):
        assert crypto.combine({i: shares[i] for i in subset}, t) == secret
    with pytest.raises(SecAggError, match="cannot rebuild"):
        crypto.combine({i: shares[i] for i in list(shares)[: t - 1]}, t)


@pytest.mark.parametrize(("t", "n"), [(3, 4), (5, 7), (7, 10)])
def test_batched_reconstruction_equals_shamir_combine_for_every_owner(t: int, n: int) -> None:
    secrets = {f"m{k}": os.urandom(16) for k in range(6)}
    split = {o: dict(enumerate(crypto.split(s, t, n), start=1)) for o, s in secrets.items()}
    for subset in list(itertools.combinations(range(1, n + 1), t))[:10]:
        held = {o: {i: sh[i] for i in subset} for o, sh in split.items()}
        assert crypto.combine_many(held, t) == secrets
    # parties that hold shares of only some secrets do not count
    held = {o: {i: sh[i] for i in range(1, t + 1)} for o, sh in split.items()}
    held["m0"].pop(1)
    with pytest.raises(SecAggError, match="are needed"):
        crypto.combine_many(held, t)


def test_batched_reconstruction_refuses_a_result_that_disagrees_with_shamir(monkeypatch) -> None:
    secret = os.urandom(16)
    held = {"a": dict(enumerate(crypto.split(secret, 2, 3), start=1))}
    monkeypatch.setattr(crypto, "combine", lambda shares, t: b"\x00" * 16)
    with pytest.raises(SecAggError, match="disagrees"):
        crypto.combine_many(held, 2)


def test_masks_are_a_function_of_the_key_only_and_differ_between_keys() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    a, b = crypto.mask(k1, 1000, np.uint32), crypto.mask(k1, 1000, np.uint32)
    assert a.dtype == np.uint32 and np.array_equal(a, b)
    assert not np.array_equal(a, crypto.mask(k2, 1000, np.uint32))
    assert np.array_equal(crypto.mask(k1, 10, np.uint32), a[:10])  # a key stream, not a block shuffle
    with pytest.raises(SecAggError, match="32 bytes"):
        crypto.mask(b"short", 10, np.uint32)


def test_sealed_shares_open_only_with_the_same_key_and_context() -> None:
    key = os.urandom(32)
    blob = crypto.seal(key, b"x" * 32, b"context-a")
    assert len(blob) == crypto.SEALED_BYTES
    assert crypto.open_sealed(key, blob, b"context-a", "share") == b"x" * 32
    for k, ad in ((key, b"context-b"), (os.urandom(32), b"context-a")):
        with pytest.raises(SecAggError, match="does not decrypt"):
            crypto.open_sealed(k, blob, ad, "share")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SecAggError, match="does not decrypt"):
        crypto.open_sealed(key, tampered, b"context-a", "share")


def test_key_agreement_is_symmetric_bound_to_its_label_and_refuses_low_order_points() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ab = crypto.agree(a, crypto.public_bytes(b), b"label")
    assert ab == crypto.agree(b, crypto.public_bytes(a), b"label")
    assert ab != crypto.agree(a, crypto.public_bytes(b), b"other label")
    with pytest.raises(SecAggError, match="refused"):
        crypto.agree(a, bytes(32), b"label")  # the all-zero point gives an all-zero secret


def test_the_masking_key_is_a_function_of_its_seed_and_label() -> None:
    seed = crypto.fresh_seed()
    k1, k2 = crypto.x25519_from_seed(seed, b"a"), crypto.x25519_from_seed(seed, b"a")
    assert crypto.public_bytes(k1) == crypto.public_bytes(k2)
    assert crypto.public_bytes(k1) != crypto.public_bytes(crypto.x25519_from_seed(seed, b"b"))
    with pytest.raises(SecAggError, match="16 bytes"):
        crypto.x25519_from_seed(b"short", b"a")
