"""One round of Flower's SecAgg+ (flwr 1.42) in one process: per-party compute and upload bytes.

Run ONLY with an interpreter that has flwr (e.g. /work/flwr-venv/bin/python); nothing from
fltac_secure is imported. N clients each run Flower's own client stage functions from
``flwr.client.mod.secure_aggregation.secaggplus_mod`` (``_setup``, ``_share_keys``,
``_collect_masked_vectors``, ``_unmask``) with the config records ``SecAggPlusWorkflow`` sends;
messages are routed as the workflow routes them. The graph is full: ``num_shares=1.0`` (as
Flower's ``SecAggWorkflow`` does), i.e. k = N, every client neighbours every other.
The server side mirrors ``SecAggPlusWorkflow`` (flwr/server/workflow/secure_aggregation/
secaggplus_workflow.py) with Flower's own helpers; each mirrored part names its workflow method.

Measured (time.perf_counter, single process, one thread of ours; Flower's Shamir helpers use a
small thread pool, GIL-bound): each client's time inside each stage call (routing, config
building and serialisation of inputs excluded), the server's mask-removal/aggregation time,
and each client's upload payload (bytes values by length, ints as 8 bytes, strings as UTF-8;
no protobuf framing). The masked vector is counted as Flower sends it: ``ndarray_to_bytes``
(np.save) of int64 arrays. Every client reports ``num_examples = max_weight`` so the round
computes the plain mean of survivors; the error is that mean x survivors vs the exact float64
sum of the survivors' float32 vectors.

Dropouts: ``--drop-share F`` -> round(F*N) clients vanish after setup (they never send
share_keys output); ``--drop-mask F`` -> round(F*N) vanish after share_keys, before sending
masked vectors. Flower cannot recover from the former: unmask_stage lists every sampled client
that is not active as dead, so each survivor's ``_unmask`` looks up an sk1 share the vanished
client never sent (KeyError -> error reply); the server then has no shares and halts ("Not
enough shares to recover secret"). That is reported as ``aborted``; no recovery is invented.
Flower has no default reconstruction_threshold: ``--threshold F`` (default 2/3) is passed as a
float and becomes max(round(F * num_shares), 2) as in setup_stage. Quantisation defaults
(clipping_range, quantization_range, modulus_range, max_weight) are read off SecAggPlusWorkflow.

    /work/flwr-venv/bin/python benchmarks/secagg_flower.py --n 10 --d 13066 --drop-mask 0.1
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import flwr
import numpy as np
from flwr.app import ConfigRecord
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation import ndarrays_arithmetic as na
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    generate_shared_key,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
)

# the package re-exports the mod function under the module's name, so fetch the module itself
mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


def payload(value: Any) -> int:
    """Upload bytes of a ConfigRecord value: bytes by length, numbers 8, str UTF-8, lists summed."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, list):
        return sum(payload(v) for v in value)
    return 8


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, Exception | None]:
    t0 = time.perf_counter()
    try:
        out, err = fn(*args), None
    except Exception as ex:  # noqa: BLE001  (a ClientApp exception becomes an error reply)
        out, err = None, ex
    return out, time.perf_counter() - t0, err


def one_round(args: argparse.Namespace, wf: SecAggPlusWorkflow, seed: int) -> dict[str, Any]:
    n, d, rng = args.n, args.d, random.Random(seed)
    # setup_stage: num_shares / threshold from the workflow's float parameters
    num_shares = round(wf.num_shares * n) if isinstance(wf.num_shares, float) else wf.num_shares
    if num_shares < n and num_shares & 1 == 0:
        num_shares += 1
    num_shares = n if num_shares <= 2 else num_shares
    rt = wf.reconstruction_threshold
    thr = max(round(rt * num_shares), 2) if isinstance(rt, float) else rt
    ids = list({rng.getrandbits(63) + 1 for _ in range(4 * n)})[:n]
    rng.shuffle(ids)  # setup_stage shuffles, then builds ring neighbourhoods of half_share each side
    half = num_shares >> 1
    neigh = {nid: {ids[(i + o) % n] for o in range(-half, half + 1)} for i, nid in enumerate(ids)}
    order = rng.sample(ids, n)
    k_share, k_mask = round(args.drop_share * n), round(args.drop_mask * n)
    drop_share, drop_mask = set(order[:k_share]), set(order[k_share : k_share + k_mask])
    sec: dict[str, dict[int, float]] = {s: {} for s in STAGES}
    up = dict.fromkeys(ids, 0)
    out: dict[str, Any] = {"aborted": False, "abort_reason": None, "max_abs_error": None,
                           "k": num_shares, "threshold": thr}

    def check_threshold(active: set[int]) -> bool:  # SecAggPlusWorkflow._check_threshold
        if all(len(neigh[nid] & active) >= thr for nid in ids):
            return True
        out.update(aborted=True, abort_reason="_check_threshold: Insufficient available nodes.")
        return False

    # Stage 0, setup: every client gets the same config (setup_stage's sa_params_dict)
    states: dict[int, mod.SecAggPlusState] = {}
    pks: dict[int, list[bytes]] = {}
    for nid in ids:
        cfg = ConfigRecord({Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: num_shares, Key.THRESHOLD: thr,
                            Key.CLIPPING_RANGE: float(args.clip), Key.TARGET_RANGE: args.levels,
                            Key.MOD_RANGE: wf.modulus_range, Key.MAX_WEIGHT: wf.max_weight})  # fmt: skip
        mod.check_configs(Stage.SETUP, cfg)
        st = states[nid] = mod.SecAggPlusState()
        st.nid = nid
        res, sec["setup"][nid], _ = timed(mod._setup, st, cfg)
        pks[nid] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
        up[nid] += sum(payload(v) for v in res.values())
    active = set(ids)
    # Stage 1, share keys: public keys of active neighbours in; encrypted shares out, routed by dst
    fwd: dict[int, tuple[list[int], list[bytes]]] = {}
    responders: set[int] = set()
    for nid in ids:
        if nid in drop_share:
            continue  # got the keys, never answers
        cfg = ConfigRecord({str(j): pks[j] for j in neigh[nid] & active})
        mod.check_configs(Stage.SHARE_KEYS, cfg)
        res, sec["share_keys"][nid], _ = timed(mod._share_keys, states[nid], cfg)
        up[nid] += sum(payload(v) for v in res.values())
        responders.add(nid)
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            fwd.setdefault(dst, ([], []))
            fwd[dst][0].append(nid)
            fwd[dst][1].append(ct)
    active = responders
    if not check_threshold(active):
        return out | {"sec": sec, "up": up, "server": 0.0}
    # Stage 2, collect masked vectors: forwarded ciphertexts (+ FitIns) in, masked int64 vector out
    masked: dict[int, list[bytes]] = {}
    exact = np.zeros(d, dtype=np.float64)
    for nid in sorted(active):
        srcs, cts = fwd.get(nid, ([], []))
        cfg = ConfigRecord({Key.CIPHERTEXT_LIST: cts, Key.SOURCE_LIST: srcs})
        mod.check_configs(Stage.COLLECT_MASKED_VECTORS, cfg)
        if nid in drop_mask:
            continue  # vanishes before sending its masked vector
        x = np.random.default_rng([seed, nid % 2**32]).uniform(-1, 1, d).astype(np.float32)
        exact += x
        params = ndarrays_to_parameters([x])
        res, sec["collect_masked_vectors"][nid], _ = timed(
            mod._collect_masked_vectors, states[nid], cfg, int(wf.max_weight), params)
        masked[nid] = res[Key.MASKED_PARAMETERS]
        up[nid] += sum(payload(v) for v in res.values())
    # collect_masked_vectors_stage: sum the masked vectors as they arrive, then mod
    t0 = time.perf_counter()
    vec: list[np.ndarray] | None = None
    for blobs in masked.values():
        arrs = [bytes_to_ndarray(b) for b in blobs]
        vec = arrs if vec is None else na.parameters_addition(vec, arrs)
    assert vec is not None
    vec = na.parameters_mod(vec, wf.modulus_range)
    server = time.perf_counter() - t0
    active = set(masked)
    if not check_threshold(active):
        return out | {"sec": sec, "up": up, "server": server}
    # Stage 3, unmask: each survivor returns seed shares of active and sk1 shares of dead neighbours
    dead = set(ids) - active  # sampled_node_ids - active_node_ids, share-stage dropouts included
    replies: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    for nid in sorted(active):
        cfg = ConfigRecord({Key.ACTIVE_NODE_ID_LIST: list(neigh[nid] & active),
                            Key.DEAD_NODE_ID_LIST: list(neigh[nid] & dead)})  # fmt: skip
        mod.check_configs(Stage.UNMASK, cfg)
        res, sec["unmask"][nid], err = timed(mod._unmask, states[nid], cfg)
        if err is not None:  # the SuperNode turns it into an error reply (msg.has_error())
            errors.append(f"{type(err).__name__}({err})")
            continue
        replies[nid] = res
        up[nid] += sum(payload(v) for v in res.values())
    # unmask_stage: rebuild secrets, remove masks, dequantize (timed; routing included, it is tiny)
    t0 = time.perf_counter()
    shares: dict[int, list[bytes]] = {nid: [] for nid in ids}
    for res in replies.values():
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST], strict=True):
            shares[owner].append(share)
    for nid, share_list in shares.items():
        if len(share_list) < thr:
            why = "unmask_stage: Not enough shares to recover secret in unmask vectors stage"
            if errors:
                why += f" ({len(errors)} clients' _unmask raised, e.g. {errors[0]})"
            out.update(aborted=True, abort_reason=why)
            return out | {"sec": sec, "up": up, "server": server + time.perf_counter() - t0}
        secret = combine_shares(share_list)
        shape = na.get_parameters_shape(vec)
        if nid in active:  # self mask of a survivor: its seed is the secret
            vec = na.parameters_subtraction(vec, pseudo_rand_gen(secret, wf.modulus_range, shape))
            continue
        for other in neigh[nid] - {nid}:  # pairwise masks of a dead client from its sk1
            key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(pks[other][0]))
            mask = pseudo_rand_gen(key, wf.modulus_range, shape)
            vec = (na.parameters_addition if nid > other else na.parameters_subtraction)(vec, mask)
    q_total, recon = na.factor_extract(na.parameters_mod(vec, wf.modulus_range))
    agg = dequantize(recon, args.clip, args.levels)
    for v in agg:
        v += -(len(active) - 1) * args.clip
        v *= args.levels / q_total
    server += time.perf_counter() - t0
    total = agg[0] * len(active)  # the workflow's weighted mean x survivors = their sum
    out["max_abs_error"] = float(np.max(np.abs(total - exact)))
    return out | {"sec": sec, "up": up, "server": server}


def summarise(args: argparse.Namespace, wf: SecAggPlusWorkflow, r: dict[str, Any]) -> dict[str, Any]:
    sec = r["sec"]
    full = list(sec["unmask"])  # clients that ran every stage
    client = {s: statistics.median(sec[s].values()) if sec[s] else None for s in STAGES}
    client["total"] = statistics.median(sum(sec[s][c] for s in STAGES) for c in full) if full else None
    senders = [b for nid, b in r["up"].items() if nid in sec["collect_masked_vectors"]]
    n = args.n
    return {"flwr_version": flwr.__version__, "n": n, "d": args.d, "k": r["k"], "threshold": r["threshold"],
            "clip": args.clip, "levels": args.levels, "modulus": wf.modulus_range, "max_weight": wf.max_weight,
            "drop_share": args.drop_share, "drop_mask": args.drop_mask,
            "dropped": [round(args.drop_share * n), round(args.drop_mask * n)],
            "aborted": r["aborted"], "abort_reason": r["abort_reason"], "client_seconds": client,
            "server_seconds": r["server"], "upload_bytes_median": statistics.median(senders) if senders else None,
            "plain_upload_bytes": 4 * args.d, "max_abs_error": r["max_abs_error"]}  # fmt: skip


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field medians over repeats (numbers and nested dicts of numbers); other fields from run 1."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        vals = [r[key] for r in runs]
        if isinstance(first, dict):
            out[key] = median_of(vals)
        elif isinstance(first, (int, float)) and not isinstance(first, bool) and None not in vals:
            out[key] = statistics.median(vals)
        else:
            out[key] = first
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, typ in (("--n", int), ("--d", int)):
        p.add_argument(name, type=typ, required=True)
    for name in ("--drop-share", "--drop-mask"):
        p.add_argument(name, type=float, default=0.0)
    p.add_argument("--clip", type=float, default=None, help="default: SecAggPlusWorkflow's (8.0)")
    p.add_argument("--levels", type=int, default=None, help="default: SecAggPlusWorkflow's (2**22)")
    p.add_argument("--threshold", type=float, default=2 / 3,
                   help="reconstruction_threshold as a fraction of num_shares; Flower has no default")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args()
    if round(args.drop_share * args.n) + round(args.drop_mask * args.n) > args.n:
        p.error("more dropouts than clients")
    kw = {"clipping_range": args.clip, "quantization_range": args.levels}
    wf = SecAggPlusWorkflow(1.0, args.threshold, **{k: v for k, v in kw.items() if v is not None})
    args.clip, args.levels = wf.clipping_range, wf.quantization_range
    runs = [summarise(args, wf, one_round(args, wf, args.seed + i)) for i in range(args.repeat)]
    text = json.dumps(median_of(runs), indent=2)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
