"""The cryptographic primitives of secure aggregation: small typed functions over bytes.

All randomness comes from the OS (``os.urandom`` through ``cryptography``);
every derived key goes through HKDF-SHA256 with an ``info`` label that names
the protocol version, the purpose and the full context (``labels``), so no
key serves two purposes, two rounds or two pairs. Masks are AES-256-CTR key
streams; shares travel under AES-256-GCM; secrets are split with
pycryptodome's Shamir scheme over GF(2^128). Every failed check raises
``SecAggError``; nothing returns a bool a caller could ignore.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir, _Element
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fltac_secure.errors import SecAggError

SEED_BYTES = 16  # Shamir over GF(2^128) shares exactly 16-byte secrets
KEY_BYTES = 32
NONCE_BYTES = 12
SHARE_PLAINTEXT = 2 * SEED_BYTES  # (s-key seed share, self-mask seed share)
SEALED_BYTES = NONCE_BYTES + SHARE_PLAINTEXT + 16  # nonce || ciphertext || GCM tag


def fresh_seed() -> bytes:
    """16 bytes from the OS's CSPRNG."""
    return os.urandom(SEED_BYTES)


def hkdf(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 without salt (the inputs are fresh per round), keyed by ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def x25519_from_seed(seed: bytes, info: bytes) -> X25519PrivateKey:
    """The masking key pair, derived from a 16-byte seed so the seed (not the key) can be secret-shared."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"a key seed must be {SEED_BYTES} bytes, got {len(seed)}")
    return X25519PrivateKey.from_private_bytes(hkdf(seed, info))


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 public key."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key from X25519(private, peer) through HKDF with ``info`` (which binds the pair and purpose)."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # a low-order point gives an all-zero secret: refuse it
        raise SecAggError(f"peer public key refused by X25519 ({exc})", "bad_key") from exc
    return hkdf(shared, info)


def mask(key: bytes, length: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """``length`` ring elements of AES-256-CTR key stream (a fresh key per use, so a zero IV is safe)."""
    if len(key) != KEY_BYTES:
        raise SecAggError(f"a mask key must be {KEY_BYTES} bytes, got {len(key)}")
    nbytes = length * np.dtype(dtype).itemsize
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(nbytes)) + enc.finalize(), dtype=dtype)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM with a random nonce: ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, blob: bytes, associated: bytes, what: str) -> bytes:
    """Inverse of ``seal``; SecAggError when the tag does not verify (wrong key, recipient or context)."""
    if len(blob) < NONCE_BYTES + 16:
        raise SecAggError(f"{what}: ciphertext too short ({len(blob)} bytes)", "bad_share")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise SecAggError(
            f"{what} does not decrypt (AES-GCM tag mismatch): it was sealed for another member, round or "
            "cluster, or altered on the way", "bad_share",
        ) from exc  # fmt: skip


def split(secret: bytes, threshold: int, parties: int) -> list[bytes]:
    """Shamir ``threshold``-of-``parties`` shares of a 16-byte secret; share i goes to party index i + 1."""
    if len(secret) != SEED_BYTES:
        raise SecAggError(f"only {SEED_BYTES}-byte secrets are shared, got {len(secret)}")
    shares = Shamir.split(threshold, parties, secret)
    return [s for _, s in sorted(shares)]


def combine(shares: dict[int, bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` shares keyed by party index (1-based); extra shares are not used."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret", "below_threshold")
    chosen = sorted(shares.items())[:threshold]
    if any(len(s) != SEED_BYTES for _, s in chosen):
        raise SecAggError("a share is not 16 bytes", "bad_share")
    return Shamir.combine(chosen)


def combine_many(shares: Mapping[str, Mapping[int, bytes]], threshold: int) -> dict[str, bytes]:
    """Rebuild many secrets shared to the same parties: ``shares[owner][party index]`` -> ``{owner: secret}``.

    The server rebuilds one secret per member from the same t parties' shares, so the Lagrange
    coefficients at zero are the same for every member: computed once here with pycryptodome's own
    GF(2^128) element (the one ``Shamir.combine`` uses), then each secret costs t products instead
    of t^2. The first secret is also rebuilt with ``Shamir.combine`` and must agree, so a change
    inside pycryptodome cannot silently corrupt a sum.
    """
    if not shares:
        return {}
    common = set.intersection(*(set(s) for s in shares.values()))
    if len(common) < threshold:
        raise SecAggError(f"{len(common)} parties hold shares of every secret, {threshold} are needed", "below_threshold")
    chosen = sorted(common)[:threshold]
    xs = [_Element(i) for i in chosen]
    coeffs = []
    for j, xj in enumerate(xs):
        num, den = _Element(1), _Element(1)
        for m, xm in enumerate(xs):
            if m != j:
                num *= xm
                den *= xj + xm
        coeffs.append(num * den.inverse())
    out = {}
    for owner, held in shares.items():
        if any(len(held[i]) != SEED_BYTES for i in chosen):
            raise SecAggError(f"a share of {owner!r}'s secret is not {SEED_BYTES} bytes", "bad_share")
        acc = _Element(0)
        for c, i in zip(coeffs, chosen, strict=True):
            acc += c * _Element(held[i])
        out[owner] = acc.encode()
    first = next(iter(shares))
    if out[first] != combine({i: shares[first][i] for i in chosen}, threshold):
        raise SecAggError("batched Shamir reconstruction disagrees with Shamir.combine; refusing the result", "internal")
    return out


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    """ECDSA-SHA256 signature (DER) with an enrollment key."""
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


def verify(key: ec.EllipticCurvePublicKey, signature: bytes, payload: bytes, what: str) -> None:
    """Check an ECDSA-SHA256 signature; SecAggError naming ``what`` when it does not verify."""
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SecAggError(f"{what}: signature does not verify with the signer's enrolled certificate", "bad_signature") from exc
