"""Drive one cluster's protocol in one process: the tests, the benchmark and the simulator use this.

Every record passes between the real client and server state machines as it
would over the wire (part 2 adds only encoding and transport). ``drop``
makes a member go silent from a given stage on (it never answers that
stage), the way a site that vanishes mid-round does. A member whose check
fails stops answering too, and its error is kept in ``errors``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from fltac_secure.errors import SecAggError
from fltac_secure.secagg.client import ClientSession
from fltac_secure.secagg.records import ClusterResult, Stage
from fltac_secure.secagg.server import ServerSession

ORDER = (Stage.ADVERTISE, Stage.SHARE, Stage.MASK, Stage.CONSISTENCY, Stage.UNMASK)


@dataclass
class Run:
    """What one in-process run produced: the result, refusals, seconds of compute and bytes sent per party."""

    result: ClusterResult
    errors: dict[str, SecAggError] = field(default_factory=dict)
    server_errors: dict[str, SecAggError] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    upload: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sent: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def released_shares(self) -> list[str]:
        """Members that answered an unmask request (revealed shares)."""
        return sorted(m for m, kinds in self.sent.items() if "UnmaskShares" in kinds)


def record_bytes(record: object, ring: object = None) -> int:
    """Payload bytes of a record as the wire layer will carry it (vectors, keys, ciphertexts, signatures);
    a masked input in a ``QuantRing`` (``ring``) travels packed to the ring's width."""
    from fltac_secure.secagg.qring import QuantRing
    from fltac_secure.secagg.records import MaskedInput

    if isinstance(record, MaskedInput) and isinstance(ring, QuantRing):
        return ring.packed_nbytes(int(record.vector.size)) + len(record.site.encode())
    total = 0
    for value in vars(record).values():
        if hasattr(value, "nbytes"):
            total += int(value.nbytes)
        elif isinstance(value, bytes):
            total += len(value)
        elif isinstance(value, str):
            total += len(value.encode())
        elif isinstance(value, Mapping):
            total += sum(len(k.encode()) + len(v) for k, v in value.items())
    return total


def run_cluster(
    server: ServerSession, clients: Mapping[str, ClientSession], drop: Mapping[str, Stage] | None = None
) -> Run:
    """Run the five stages to the end (or to a skip); ``drop[m] = stage``: member m is silent from that stage on."""
    drop = dict(drop or {})
    silent = {m for m, st in drop.items() if st is Stage.ADVERTISE}
    run = Run(result=None)  # type: ignore[arg-type]
    inbox: dict[str, object] = {}
    for stage in ORDER:
        if server.result is not None:
            break
        for m in server.pending():
            if m in silent or (m in drop and ORDER.index(drop[m]) <= ORDER.index(stage)):
                continue
            t0 = time.perf_counter()
            try:
                reply = clients[m].advertise() if stage is Stage.ADVERTISE else clients[m].handle(inbox[m])
            except SecAggError as exc:
                run.errors[m] = exc
                silent.add(m)
                continue
            finally:
                run.seconds[m] += time.perf_counter() - t0
            run.upload[m] += record_bytes(reply, server.setup.ring)
            run.sent[m].append(type(reply).__name__)
            t0 = time.perf_counter()
            try:
                server.receive(m, reply)
            except SecAggError as exc:
                run.server_errors[m] = exc
            run.seconds["server"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        inbox = server.advance()
        run.seconds["server"] += time.perf_counter() - t0
    assert server.result is not None
    run.result = server.result
    return run
