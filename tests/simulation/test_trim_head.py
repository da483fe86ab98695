"""Head-row trimming in the simulator: canonical slots, per-row cluster means, counts of what travels."""

from __future__ import annotations

import numpy as np
import pytest

from fltac_secure.federation.rounds import Assignment, ServerState, server_aggregate
from fltac_secure.federation.trimmed import Trimmer
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.learning.cluster import ClusterResult
from fltac_secure.learning.compress import wire_nbytes
from fltac_secure.learning.trim import head_hidden, wire_mask
from fltac_secure.secagg.qring import grid_levels
from fltac_secure.simulation import SimContext
from fltac_secure.simulation.methods import FLTAC, Oracle


def with_trim(plan, trim=True, **c):
    from fltac_secure.plan.schema import Compression

    return plan.model_copy(update={"compression": Compression(trim_head=trim, **c), "rounds": 2,
                                   "training": plan.training.model_copy(update={"local_steps": 5})})


def rows_of(method) -> dict[str, int]:
    return {key: method.ctx.plan.task(task).num_labels for key, task in method.ctx.key_task.items()}


def run(method_cls, plan, data, rounds=2, check=None):
    method = method_cls(SimContext(plan, data))
    outcomes = []
    for r in range(rounds):
        outcomes.append(method.run_round(r))
        if check is not None:
            check(method)
    return method, outcomes


def assert_canonical(method) -> None:
    """Every slot's head rows beyond its task's labels are the initial head's, bit for bit."""
    layout, init = adapter_layout(method.ctx.plan), method.init
    for key, k in rows_of(method).items():
        unused = ~wire_mask(layout, k)
        np.testing.assert_array_equal(method.state.vectors[key][unused], init[unused], err_msg=key)


def test_fltac_slots_stay_canonical_and_count_only_their_rows(plan, data):
    p = with_trim(plan)
    method, outs = run(FLTAC, p, data, check=assert_canonical)
    layout = adapter_layout(p)
    _, hidden = head_hidden(layout)
    rows = rows_of(method)
    assert len(set(rows.values())) == 3  # tasks of 2, 3 and 4 labels
    wire = sum(layout.lora_size + (hidden + 1) * k for k in rows.values())
    n, sk = len(rows), p.clustering.sketch_dim
    for out in outs:
        assert out.up_params == wire + n * (sk + 1)
        assert out.down_params == wire + n
        assert out.up_bytes == 4 * wire + n * (8 * sk + 8) and out.down_bytes == 4 * wire + 8 * n
    assert wire < n * layout.size


def test_oracle_trimmed_equals_untrimmed_on_the_rows_that_travel(plan, data):
    """Clusters of one task: the per-row mean is the plain mean on every row the task uses, so training
    follows the same path; only the unused rows differ (exactly the initial head with trimming)."""
    on, _ = run(Oracle, with_trim(plan), data)
    off, _ = run(Oracle, with_trim(plan, trim=False), data)
    t = Trimmer.of(on.ctx.plan)
    for key, k in rows_of(on).items():
        np.testing.assert_array_equal(t.wire(on.state.vectors[key], k), t.wire(off.state.vectors[key], k))
        np.testing.assert_array_equal(on.state.vectors[key], t.canonical(off.state.vectors[key], k))


def test_eight_bit_trimmed_updates(plan, data):
    p = with_trim(plan, bits=8, block_size=64, error_feedback=True)
    method = FLTAC(SimContext(p, data))
    method.compression_rngs = {s: np.random.default_rng(i) for i, s in enumerate(method.ctx.sites)}
    outs = []
    for r in range(2):
        outs.append(method.run_round(r))
        assert_canonical(method)
    t, rows = method.trimmer, rows_of(method)
    assert all(method.residuals[key].shape == (t.size(k),) for key, k in rows.items())
    n, sk = len(rows), p.clustering.sketch_dim
    assert outs[1].up_bytes == sum(wire_nbytes(t.size(k), 8, 64) for k in rows.values()) + n * (8 * sk + 8)
    assert outs[1].down_bytes == 4 * sum(t.size(k) for k in rows.values()) + 8 * n


def test_server_averages_each_head_row_over_the_members_that_use_it(plan):
    """One cluster holding tasks of 2, 3 and 4 labels: row 3 is the 4-label members' mean alone, row 2
    that of the 3- and 4-label members; each slot gets the mean in its own canonical form."""
    p = with_trim(plan, trim=True)
    t = Trimmer.of(p)
    layout = t.layout
    width, hidden = head_hidden(layout)
    rows = {"s1/0": 2, "s2/0": 3, "s3/0": 4, "s4/0": 4}
    counts = {"s1/0": 5, "s2/0": 1, "s3/0": 2, "s4/0": 6}
    g = np.random.default_rng(0)
    vectors = {key: t.canonical((t.init + g.normal(size=layout.size)).astype(np.float32), k)
               for key, k in rows.items()}
    state = ServerState.initial(p, list(rows), t.init)
    labels = dict.fromkeys(rows, 0)
    new = server_aggregate(state, Assignment(0, ClusterResult(k=p.k, labels=labels)), vectors, counts, p,
                           head_rows=rows)
    mean = new.cluster_vectors[0]
    w0 = layout.slices()["head.weight"].start

    def row(v, j):
        return v[w0 + j * hidden: w0 + (j + 1) * hidden].astype(np.float64)

    def avg(keys, j):
        return sum(counts[k] * row(vectors[k], j) for k in keys) / sum(counts[k] for k in keys)

    np.testing.assert_allclose(row(mean, 3), avg(["s3/0", "s4/0"], 3), rtol=1e-6)
    np.testing.assert_allclose(row(mean, 2), avg(["s2/0", "s3/0", "s4/0"], 2), rtol=1e-6)
    np.testing.assert_allclose(row(mean, 0), avg(list(rows), 0), rtol=1e-6)
    for key, k in rows.items():
        np.testing.assert_array_equal(new.vectors[key], t.canonical(mean, k))
    with pytest.raises(ValueError, match="no label count is known"):
        server_aggregate(state, Assignment(0, ClusterResult(k=p.k, labels=labels)), vectors, counts, p)
    with pytest.raises(ValueError, match="expected"):  # a part of the wrong length is refused when untrimmed
        t.full(t.wire(vectors["s1/0"], 2), 3)
    assert width == 4


def test_simulate_end_to_end_and_fedit_ignores_trim_head(plan, data, tmp_path):
    """The runner, the report and the export work on a trimmed run; FedIT (one shared adapter) sends its
    adapter whole under the same plan, as it ignores the rest of compression."""
    from fltac_secure.simulation import simulate

    p = with_trim(plan).model_copy(update={"rounds": 1})
    res = simulate(p, data, "fltac", tmp_path / "fltac", progress=False)
    t = Trimmer.of(p)
    ctx = SimContext(p, data)
    rows = {key: p.task(task).num_labels for key, task in ctx.key_task.items()}
    assert res.final["up_params"] == sum(t.size(k) for k in rows.values()) + len(rows) * (p.clustering.sketch_dim + 1)
    assert res.final["mean_accuracy"] > 0.3
    fedit = simulate(p, data, "fedit", tmp_path / "fedit", progress=False, context=ctx)
    plain = simulate(with_trim(plan, trim=False).model_copy(update={"rounds": 1}), data, "fedit",
                     tmp_path / "fedit-plain", progress=False)
    assert fedit.final["up_bytes"] == plain.final["up_bytes"]
    assert fedit.final["mean_accuracy"] == plain.final["mean_accuracy"]


@pytest.mark.parametrize("bits", [32, 8])
def test_secure_trimmed_means_equal_the_plain_ones(plan, bits):
    """trim_head under secure aggregation (pure round functions, simulator's protocol run): each cluster is summed
    at its widest member's width with unused rows as zero, and per-row weights give the plain trimmed means,
    within the ring's encoding bound; a mixed-width cluster included."""
    from fltac_secure.plan.schema import Compression
    from fltac_secure.simulation.secure import LocalSecureAggregation

    c = Compression(trim_head=True, bits=bits, secure_clip=0.5) if bits < 32 else Compression(trim_head=True)
    p = plan.model_copy(update={"compression": c, "secure_aggregation": plan.secure_aggregation.model_copy(
        update={"enabled": True, "min_cluster_size": 2})})
    t, layout = Trimmer.of(p), adapter_layout(p)
    widths = sorted({task.num_labels for task in p.tasks})
    rng = np.random.default_rng(0)
    sites = p.roster[:4]
    keys = [f"{s}/0" for s in sites] + [f"{sites[0]}/1"]
    # cluster 0 mixes label counts, its widest held by two members (min_cluster_size: no lonely head rows);
    # cluster 1: one width, s1's second slot
    rows = dict(zip(keys, [widths[0], widths[1], widths[1], widths[2], widths[2]], strict=True))
    labels = {keys[0]: 0, keys[1]: 0, keys[2]: 0, keys[3]: 1, keys[4]: 1}
    state = ServerState(round=0, k=2, vectors={k: t.canonical(t.init + 0.01 * rng.standard_normal(layout.size)
                                                             .astype(np.float32), rows[k]) for k in keys})
    trained = {k: t.canonical(v + 0.05 * rng.standard_normal(layout.size).astype(np.float32), rows[k])
               for k, v in state.vectors.items()}
    counts = {k: 10 + 5 * i for i, k in enumerate(keys)}
    assignment = Assignment(0, ClusterResult(k=2, labels=labels))
    plain = server_aggregate(state, assignment, trained, counts, p, head_rows=rows)
    secure, report = LocalSecureAggregation(p, sites).aggregate(state, assignment, trained, counts, head_rows=rows)
    assert all(r["status"] == "summed" for r in report.values())
    # float32: the ring's fixed point.  8 bits: each holder's weighted update is rounded once on the common grid
    # (step secure_clip / (127 - sites)), and the row's sum is divided by the holders' weight share (>= 10 / 25 here)
    tol = 1e-4 if bits == 32 else 2 * (0.5 / grid_levels(8, len(p.roster))) * 25 / 10 + 1e-5
    for cid in (0, 1):
        np.testing.assert_allclose(secure.cluster_vectors[cid], plain.cluster_vectors[cid], atol=tol)
    for k in keys:
        unused = ~wire_mask(layout, rows[k])
        np.testing.assert_array_equal(secure.vectors[k][unused], t.init[unused])  # canonical, bit for bit
        np.testing.assert_allclose(secure.vectors[k], plain.vectors[k], atol=tol)


@pytest.mark.parametrize("bits", [32, 8])
def test_secure_trimmed_up_bytes_count_one_masked_vector_per_member_and_cluster(plan, data, bits):
    """Under secure aggregation a member uploads one masked vector per summed cluster, as wide as the cluster's
    widest slot (K_c): the ring's bytes of ``wire_size(K_c)`` each, plus every slot's sketch and count."""
    from fltac_secure.plan import Plan
    from fltac_secure.secagg.rules import ring_for

    extra = {"bits": bits, "secure_clip": 0.5} if bits < 32 else {}
    base = with_trim(plan, **extra).model_dump()
    base["clustering"]["k"] = 2  # fewer clusters than tasks: a cluster mixes label counts
    p = Plan.model_validate({**base, "secure_aggregation": {"enabled": True}})
    method = FLTAC(SimContext(p, data))
    out = method.run_round(0)
    t, rows, ring = method.trimmer, rows_of(method), ring_for(p)
    widths: dict[int, int] = {}
    sites: dict[int, set[str]] = {}
    for key, c in out.labels.items():
        widths[c] = max(widths.get(c, 0), rows[key])
        sites.setdefault(c, set()).add(key.rsplit("/", 1)[0])
    summed = [c for c, row in method.secure_report.items() if row["status"] == "summed"]
    assert summed and any(len({rows[k] for k, c2 in out.labels.items() if c2 == c}) > 1 for c in summed)
    # a member whose head rows would be summed over too few members sends no masked vector (lonely_rows)
    masked = [t.size(widths[c]) for c in summed for _ in method.secure_report[c]["survivors"]]
    n, sk = len(rows), p.clustering.sketch_dim
    assert out.up_params == sum(masked) + n * (sk + 1)
    assert out.up_bytes == sum(-(-m * ring.bits // 8) for m in masked) + n * (8 * sk + 8)
    assert out.up_bytes != sum(-(-t.size(k) * ring.bits // 8) for k in rows.values()) + n * (8 * sk + 8)
