"""Stable seeds derived from named parts (plan seed, site, task, round...).

Python's ``hash()`` is salted per process, so it cannot give every site the
same seed; ``derive_seed`` hashes a length-prefixed, type-tagged encoding of
its parts with SHA-256 instead, which is identical in every process, on every
platform and in every Python version.  The encoding is unambiguous:
``derive_seed("ab", "c") != derive_seed("a", "bc")`` and
``derive_seed(1) != derive_seed("1")``.

These seeds drive reproducible *statistics* (initialisation, batch order,
projections).  They are not secrets: never use them for masks or keys.
"""

from __future__ import annotations

import hashlib

_DOMAIN = b"fltac_secure/derive_seed/v1"


def _encode(part: int | str) -> bytes:
    """Type-tagged, length-prefixed bytes of one part (bools are refused: ambiguous with ints)."""
    if isinstance(part, bool) or not isinstance(part, (int, str)):
        raise TypeError(f"derive_seed parts must be int or str, got {type(part).__name__}: {part!r}")
    if isinstance(part, int):
        raw = str(part).encode("ascii")
        tag = b"i"
    else:
        raw = part.encode("utf-8")
        tag = b"s"
    return tag + len(raw).to_bytes(8, "big") + raw


def derive_seed(*parts: int | str, bits: int = 32) -> int:
    """A seed in ``[0, 2**bits)`` determined only by ``parts``.

    The default of 32 bits suits every consumer in the stack (scikit-learn and
    ``np.random.RandomState`` refuse seeds >= 2**32; torch and numpy's
    ``default_rng`` accept them); pass ``bits=63`` where more distinct streams
    matter more than compatibility.
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    h = hashlib.sha256(_DOMAIN)
    for part in parts:
        h.update(_encode(part))
    return int.from_bytes(h.digest()[:8], "big") >> (64 - bits)
