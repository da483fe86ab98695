"""Strict binary codec for ``Message``: fixed prefix, JSON header, safetensors blob.

Layout (all integers little-endian)::

    magic "FLT1" | version u16 | reserved u16 (0) | header_len u64 | payload_len u64
    header: UTF-8 JSON object, space-padded so the payload starts 8-byte aligned
    payload: empty (no tensors) or one safetensors blob

Threat answered: every byte from the network is hostile until verified.  The
prefix gives the total size before anything is buffered (checked against the
plan's limit); the header must hold exactly the expected keys; the blob is
parsed by a strict safetensors reader (contiguous, in-bounds offsets, sizes
matching dtype x shape, no duplicate keys) that returns zero-copy views, so a
256 MB upload costs the receiver one buffer, not three.  Nothing is ever
unpickled: safetensors has no code path that runs code.

The writer emits the safetensors format itself (tensors ordered by alignment,
then name) so large arrays are streamed from their own memory without a copy;
tests check both directions against the ``safetensors`` library.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from fltac_secure.errors import ProtocolError
from fltac_secure.transport.envelope import Message, validate_message

MAGIC = b"FLT1"
VERSION = 1
PREFIX = struct.Struct("<4sHHQQ")
PREFIX_SIZE = PREFIX.size  # 24
MAX_HEADER_BYTES = 1 << 20
MAX_DIM = 1 << 40  # no real tensor dimension comes near; numpy refuses far larger ones (a zero dim hides them)
HEADER_KEYS = frozenset({"kind", "federation", "plan_hash", "sender", "round", "msg_id", "meta"})

# safetensors dtype codes that numpy can hold without loss
ST_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"), "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"), "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8"),
}  # fmt: skip
_CODE_OF = {dt.kind + str(dt.itemsize): code for code, dt in ST_DTYPES.items()}

Buffer = bytes | bytearray | memoryview


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a repeated key makes a parse ambiguous, so refuse it."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProtocolError(f"duplicate key {key!r} in a JSON header", "bad_header")
        out[key] = value
    return out


def _loads(raw: Buffer, what: str) -> Any:
    try:
        return json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError, JSONDecodeError, > 4300-digit ints
        raise ProtocolError(f"{what} is not valid UTF-8 JSON ({exc.__class__.__name__})", "bad_header") from None


# -- writing ---------------------------------------------------------------


def _st_code(arr: np.ndarray) -> str:
    code = _CODE_OF.get(arr.dtype.kind + str(arr.dtype.itemsize)) if arr.dtype.kind in "biuf" else None
    if code is None:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent; use bool, (u)int8-64 or float16/32/64", "bad_dtype")
    return code


def tensor_parts(tensors: Mapping[str, np.ndarray]) -> list[Buffer]:
    """The safetensors blob as a list of buffers; array memory is not copied."""
    if not tensors:
        return []
    order = sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))
    header: dict[str, Any] = {}
    datas: list[Buffer] = []
    offset = 0
    for name in order:
        arr = tensors[name]
        code = _st_code(arr)
        flat = np.ascontiguousarray(arr.reshape(-1), dtype=ST_DTYPES[code])
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + flat.nbytes]}
        offset += flat.nbytes
        datas.append(memoryview(flat.view(np.uint8)))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return [struct.pack("<Q", len(raw)) + raw, *datas]


def encode_parts(msg: Message) -> list[Buffer]:
    """Encode ``msg`` as buffers to write in order (the tensors are not copied)."""
    header = {
        "kind": msg.kind, "federation": msg.federation, "plan_hash": msg.plan_hash, "sender": msg.sender,
        "round": msg.round, "msg_id": msg.msg_id, "meta": dict(msg.meta),
    }  # fmt: skip
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    raw += b" " * (-(PREFIX_SIZE + len(raw)) % 8)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"message header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}; shrink meta", "bad_header")
    blob = tensor_parts(msg.tensors)
    payload_len = sum(len(memoryview(p).cast("B")) for p in blob)
    return [PREFIX.pack(MAGIC, VERSION, 0, len(raw), payload_len) + raw, *blob]


def encode(msg: Message) -> bytes:
    """Encode ``msg`` into one bytes object (small messages, tests)."""
    return b"".join(bytes(p) for p in encode_parts(msg))


# -- reading ---------------------------------------------------------------


def parse_prefix(prefix: Buffer, *, max_bytes: int) -> tuple[int, int]:
    """Check the fixed prefix and return ``(header_len, payload_len)``.

    Called on the first 24 bytes, before any buffer is allocated, so an
    announced size above ``max_bytes`` is refused without buffering it.
    """
    if len(prefix) != PREFIX_SIZE:
        raise ProtocolError(f"message prefix is {len(prefix)} bytes, expected {PREFIX_SIZE}", "truncated")
    magic, version, reserved, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad magic: this is not an fltac message", "bad_magic")
    if version != VERSION or reserved != 0:
        raise ProtocolError(f"wire format version {version} is not supported (expected {VERSION})", "bad_version")
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header_len} bytes exceeds {MAX_HEADER_BYTES}", "too_large")
    total = PREFIX_SIZE + header_len + payload_len
    if total > max_bytes:
        raise ProtocolError(
            f"message announces {total} bytes, above the limit of {max_bytes} (plan limits.max_message_mb)",
            "too_large",
        )
    return header_len, payload_len


def _check_header(header: Any) -> dict[str, Any]:
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        got = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise ProtocolError(f"header keys {got} differ from the expected {sorted(HEADER_KEYS)}", "bad_header")
    for key in ("kind", "federation", "plan_hash", "sender"):
        if not isinstance(header[key], str):
            raise ProtocolError(f"header field {key!r} must be a string", "bad_header")
    if not isinstance(header["meta"], dict):
        raise ProtocolError("header field 'meta' must be an object", "bad_header")
    return header


def decode_header(data: Buffer, *, max_bytes: int) -> dict[str, Any]:
    """Parse and shape-check the JSON header of an encoded message (no tensors)."""
    view = memoryview(data).cast("B")
    header_len, _ = parse_prefix(view[:PREFIX_SIZE], max_bytes=max_bytes)
    if len(view) < PREFIX_SIZE + header_len:
        raise ProtocolError("message ends inside its header", "truncated")
    return _check_header(_loads(view[PREFIX_SIZE : PREFIX_SIZE + header_len], "message header"))


def _st_entry(name: str, entry: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ProtocolError(f"safetensors entry {name!r} is malformed", "bad_safetensors")
    dtype = ST_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    shape, offs = entry["shape"], entry["data_offsets"]
    if dtype is None or not isinstance(shape, list) or len(shape) > 16 or not isinstance(offs, list):
        raise ProtocolError(f"safetensors entry {name!r} has a bad dtype or shape", "bad_safetensors")
    ints_ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, *offs])
    if len(offs) != 2 or not ints_ok or offs[1] < offs[0]:
        raise ProtocolError(f"safetensors entry {name!r} has bad offsets", "bad_safetensors")
    if any(dim > MAX_DIM for dim in shape):
        raise ProtocolError(f"safetensors entry {name!r} has a dimension above {MAX_DIM}", "bad_safetensors")
    count = 1
    for dim in shape:
        count *= dim
    if count * dtype.itemsize != offs[1] - offs[0]:
        raise ProtocolError(f"tensor {name!r}: shape {shape} does not match its byte span", "bad_safetensors")
    return dtype, tuple(shape), offs[0], offs[1]


def decode_tensors(blob: Buffer) -> dict[str, np.ndarray]:
    """Strictly parse a safetensors blob into zero-copy numpy views."""
    view = memoryview(blob).cast("B")
    if len(view) == 0:
        return {}
    if len(view) < 8:
        raise ProtocolError("safetensors blob shorter than its length field", "bad_safetensors")
    (n,) = struct.unpack("<Q", view[:8])
    if n > min(MAX_HEADER_BYTES * 16, len(view) - 8):
        raise ProtocolError(f"safetensors header length {n} runs past the blob", "bad_safetensors")
    header = _loads(view[8 : 8 + n], "safetensors header")
    if not isinstance(header, dict):
        raise ProtocolError("safetensors header is not an object", "bad_safetensors")
    header.pop("__metadata__", None)
    data = view[8 + n :]
    entries = sorted(((_st_entry(k, v), k) for k, v in header.items()), key=lambda e: (e[0][2], e[0][3]))
    pos = 0
    out: dict[str, np.ndarray] = {}
    for (dtype, shape, begin, end), name in entries:
        if begin != pos:
            raise ProtocolError(f"tensor {name!r} does not start where the previous one ends", "bad_safetensors")
        pos = end
        if end > len(data):
            raise ProtocolError(f"tensor {name!r} runs past the end of the payload (truncated)", "truncated")
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        out[name] = (arr if begin % dtype.itemsize == 0 else arr.copy()).reshape(shape)
    if pos != len(data):
        raise ProtocolError(f"{len(data) - pos} trailing bytes after the last tensor", "trailing_bytes")
    return out


def decode(
    data: Buffer, *, expect_federation: str | None, expect_plan_hash: str | None, max_bytes: int
) -> Message:
    """Decode and validate one message; anything off raises ``ProtocolError(reason)``.

    ``expect_*`` None skips that check (only the server's HELLO stage does so, to
    answer a wrong plan hash with a REJECT that says so).
    """
    view = memoryview(data).cast("B")
    if len(view) < PREFIX_SIZE:
        raise ProtocolError(f"message of {len(view)} bytes is shorter than its prefix", "truncated")
    header_len, payload_len = parse_prefix(view[:PREFIX_SIZE], max_bytes=max_bytes)
    total = PREFIX_SIZE + header_len + payload_len
    if len(view) < total:
        raise ProtocolError(f"message is {len(view)} bytes but announces {total} (truncated)", "truncated")
    if len(view) > total:
        raise ProtocolError(f"{len(view) - total} trailing bytes after the announced message", "trailing_bytes")
    header = decode_header(view, max_bytes=max_bytes)
    if expect_federation is not None and header["federation"] != expect_federation:
        raise ProtocolError(
            f"message for federation {header['federation']!r}, this is {expect_federation!r}", "wrong_federation"
        )
    if expect_plan_hash is not None and header["plan_hash"] != expect_plan_hash:
        raise ProtocolError("message was made under another plan (plan hash differs)", "wrong_plan")
    tensors = decode_tensors(view[PREFIX_SIZE + header_len :])
    msg = Message(
        kind=header["kind"], federation=header["federation"], plan_hash=header["plan_hash"],
        sender=header["sender"], round=header["round"], msg_id=header["msg_id"],
        meta=header["meta"], tensors=tensors,
    )  # fmt: skip
    validate_message(msg)
    return msg
