"""The message envelope and the registry of message kinds.

A ``Message`` is what the roles exchange: a kind, the federation and plan hash
it belongs to, its sender, round and id, a small JSON ``meta`` and a dict of
numpy tensors.  Every kind that may cross the wire is registered with a
``KindSpec`` whose ``validate_tensors`` states which tensor names, dtypes and
shapes it allows: a message of an unregistered kind, or with tensors its kind
does not allow, is refused by the decoder (default deny).  The transport's own
control kinds are registered here; the federation layer registers its kinds
(ROUND_START, SKETCHES, ...) with their shape rules.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fltac_secure.errors import ConfigError, ProtocolError

KIND_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
TENSOR_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")
MAX_META_ITEMS = 256
MAX_META_STR = 4096
MAX_ID_CHARS = 128  # msg_id, sender, federation, plan hash: ids, never free text
MAX_ROUND = 2**31 - 1
MAX_INT_ID = 2**63 - 1

JsonValue = Any


def _check_meta_value(key: str, value: JsonValue, depth: int = 0) -> None:
    """Meta holds JSON scalars and (nested, short) lists of them: nothing else."""
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str) and len(value) > MAX_META_STR:
            raise ProtocolError(f"meta[{key!r}] is a string longer than {MAX_META_STR} characters", "bad_meta")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"meta[{key!r}] is not finite ({value}); send finite numbers", "bad_meta")
        return
    if isinstance(value, list | tuple) and depth < 2 and len(value) <= 65536:
        for item in value:
            _check_meta_value(key, item, depth + 1)
        return
    raise ProtocolError(
        f"meta[{key!r}] has type {type(value).__name__}; meta allows JSON scalars and short lists only",
        "bad_meta",
    )


@dataclass(frozen=True)
class Message:
    """One protocol message; immutable once built.

    ``msg_id`` "" means "let the transport assign one" (unique per sender).
    ``tensors`` maps names to numpy arrays; they travel as one safetensors blob.
    """

    kind: str
    federation: str
    plan_hash: str
    sender: str
    round: int = 0
    msg_id: int | str = ""
    meta: Mapping[str, JsonValue] = field(default_factory=dict)
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not KIND_RE.match(self.kind):
            raise ProtocolError(f"message kind {self.kind!r} is not an upper-case name like 'UPDATE'", "bad_kind")
        if not isinstance(self.round, int) or isinstance(self.round, bool) or not 0 <= self.round <= MAX_ROUND:
            raise ProtocolError(f"round must be an integer in 0..{MAX_ROUND}", "bad_header")
        msg_id = self.msg_id
        if isinstance(msg_id, bool) or not isinstance(msg_id, int | str):
            raise ProtocolError("msg_id must be an int or a str", "bad_header")
        if (isinstance(msg_id, int) and not 0 <= msg_id <= MAX_INT_ID) or (
            isinstance(msg_id, str) and len(msg_id) > MAX_ID_CHARS
        ):
            raise ProtocolError(f"msg_id must be an int in 0..2^63-1 or a str of at most {MAX_ID_CHARS} characters",
                                "bad_header")  # fmt: skip
        for name in ("federation", "plan_hash", "sender"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
                raise ProtocolError(f"{name} must be a string of at most {MAX_ID_CHARS} characters", "bad_header")
        if not isinstance(self.meta, Mapping) or len(self.meta) > MAX_META_ITEMS:
            raise ProtocolError(f"meta must be a dict of at most {MAX_META_ITEMS} items", "bad_meta")
        for key, value in self.meta.items():
            if not isinstance(key, str):
                raise ProtocolError(f"meta key {key!r} is not a string", "bad_meta")
            _check_meta_value(key, value)
        for name, arr in self.tensors.items():
            if not isinstance(name, str) or not TENSOR_NAME_RE.match(name):
                raise ProtocolError(f"tensor name {name!r} is not allowed (letters, digits, _.:/-)", "bad_tensors")
            if not isinstance(arr, np.ndarray):
                raise ProtocolError(f"tensor {name!r} is a {type(arr).__name__}, not a numpy array", "bad_tensors")

    @property
    def elements(self) -> int:
        """The parameters the message carries (what the audit counts): its tensor elements, unless its kind
        registered a counter (a packed tensor of quantised values stands for more numbers than its bytes)."""
        spec = _REGISTRY.get(self.kind)
        if spec is not None and spec.count_parameters is not None:
            return int(spec.count_parameters(self))
        return self.tensor_elements

    @property
    def tensor_elements(self) -> int:
        """Total number of tensor elements."""
        return int(sum(int(a.size) for a in self.tensors.values()))

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data (no headers)."""
        return int(sum(int(a.nbytes) for a in self.tensors.values()))


@dataclass(frozen=True)
class KindSpec:
    """What a message kind may carry.

    ``validate_tensors(msg)`` raises ``ProtocolError`` for a name, dtype or shape
    the kind does not allow; ``max_tensors`` bounds the tensor count before any
    tensor is looked at.  ``control`` marks the transport's own kinds.
    """

    name: str
    validate_tensors: Callable[[Message], None]
    max_tensors: int = 0
    control: bool = False
    count_parameters: Callable[[Message], int] | None = None
    """How many parameters a message of this kind carries (default: its tensor elements); never raises."""

    def __post_init__(self) -> None:
        if not KIND_RE.match(self.name):
            raise ConfigError(f"kind name {self.name!r} must be upper-case letters, digits and _")
        if self.max_tensors < 0:
            raise ConfigError(f"max_tensors for {self.name} must be >= 0, got {self.max_tensors}")


_REGISTRY: dict[str, KindSpec] = {}
_LOCK = threading.Lock()


def register_kind(spec: KindSpec) -> None:
    """Register a message kind; a second registration of the same name is refused."""
    with _LOCK:
        if spec.name in _REGISTRY:
            raise ConfigError(f"message kind {spec.name!r} is already registered; pick another name")
        _REGISTRY[spec.name] = spec


def kind_spec(name: str) -> KindSpec:
    """The spec of a registered kind, or ``ProtocolError(reason="unknown_kind")``."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ProtocolError(f"unknown message kind {name!r}", "unknown_kind")
    return spec


def registered_kinds() -> list[str]:
    """Names of all registered kinds, sorted."""
    return sorted(_REGISTRY)


def validate_message(msg: Message) -> None:
    """Apply the kind's rules: tensor count, then names/dtypes/shapes, then finiteness."""
    spec = kind_spec(msg.kind)
    if len(msg.tensors) > spec.max_tensors:
        raise ProtocolError(
            f"{msg.kind} carries {len(msg.tensors)} tensors, at most {spec.max_tensors} allowed", "bad_tensors"
        )
    spec.validate_tensors(msg)
    for name, arr in msg.tensors.items():
        check_finite(name, arr)


def check_finite(name: str, arr: np.ndarray, block: int = 1 << 22) -> None:
    """Refuse NaN/Inf (poisoned or diverged updates), in blocks to bound memory."""
    if arr.dtype.kind not in "fc":
        return
    flat = arr.reshape(-1)
    for start in range(0, flat.size, block):
        if not np.isfinite(flat[start : start + block]).all():
            raise ProtocolError(f"tensor {name!r} contains NaN or Inf; refusing it", "not_finite")


def referenced_id(msg: Message, key: str) -> int | str | None:
    """The message id that ``meta[key]`` refers to (an ACK's "ack", a reply's "in_reply_to"), or None."""
    value = msg.meta.get(key)
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


# -- helpers for kind rules --------------------------------------------------


def no_tensors(msg: Message) -> None:
    """Rule for kinds that carry no tensors."""
    if msg.tensors:
        raise ProtocolError(f"{msg.kind} must not carry tensors, got {sorted(msg.tensors)}", "bad_tensors")


def tensors_like(
    rules: Mapping[str, tuple[Iterable[str], int | None]],
) -> Callable[[Message], None]:
    """Build a rule from ``{name_regex: (allowed dtype names, ndim or None)}``.

    Each tensor must match exactly one pattern (full match), have one of its
    dtypes and, when given, its number of dimensions.
    """
    compiled = [(re.compile(p), frozenset(d), nd) for p, (d, nd) in rules.items()]

    def _validate(msg: Message) -> None:
        for name, arr in msg.tensors.items():
            hits = [(dt, nd) for rx, dt, nd in compiled if rx.fullmatch(name)]
            if len(hits) != 1:
                raise ProtocolError(f"{msg.kind} does not allow a tensor named {name!r}", "bad_tensors")
            dtypes, ndim = hits[0]
            if arr.dtype.name not in dtypes:
                raise ProtocolError(
                    f"tensor {name!r} of {msg.kind} has dtype {arr.dtype.name}, expected one of {sorted(dtypes)}",
                    "bad_dtype",
                )
            if ndim is not None and arr.ndim != ndim:
                raise ProtocolError(
                    f"tensor {name!r} of {msg.kind} has shape {arr.shape}, expected {ndim} dimensions", "bad_shape"
                )

    return _validate


# -- the transport's own control kinds ---------------------------------------

HELLO = "HELLO"  # client -> server after the TLS handshake: claimed name, plan hash
WELCOME = "WELCOME"  # server -> client: identity, roster and plan hash verified
REJECT = "REJECT"  # server -> client: refused (meta: reason, detail), session dropped
ACK = "ACK"  # receipt of meta["ack"] (a msg_id)
NACK = "NACK"  # meta["nack"] refused with meta["reason"], meta["detail"]; session survives
PING = "PING"  # keep-alive; answered by PONG
PONG = "PONG"
BYE = "BYE"  # orderly close, or session expiry (meta["reason"])

CONTROL_KINDS = (HELLO, WELCOME, REJECT, ACK, NACK, PING, PONG, BYE)
for _name in CONTROL_KINDS:
    register_kind(KindSpec(_name, no_tensors, max_tensors=0, control=True))
