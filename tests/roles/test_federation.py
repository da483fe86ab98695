"""The networked roles reproduce the simulation, and the ledger counts exactly what the shapes imply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from roles_harness import Fed, start, tiny_plan

from fltac_secure.data.layout import load_federated_dir
from fltac_secure.federation.demo import build_federation
from fltac_secure.federation.ledger import read_ledger
from fltac_secure.learning.adapters import adapter_layout
from fltac_secure.plan import Plan


def simulate_fltac(plan: Plan, root: Path) -> tuple[Any, list[dict[str, int]]]:
    """The in-process simulator's FL-TAC on the same data: final ServerState and labels per round."""
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    method = FLTAC(SimContext(plan, load_federated_dir(plan, root)))
    labels = [dict(method.run_round(r).labels or {}) for r in range(plan.rounds)]
    return method.state, labels


def run_federation(fed: Fed) -> dict[str, Any]:
    agg = start(fed.aggregator())
    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    state = agg.join(180)
    assert not agg.error, agg.error
    for name, run in cols.items():
        run.join(60)
        assert not run.error, (name, run.error)
    return {"state": state, "history": agg.obj.history, "cols": cols}


@pytest.fixture(scope="module")
def normal_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fed, dict[str, Any]]:
    plan = tiny_plan()
    fed = Fed(plan, build_federation(plan, tmp_path_factory.mktemp("roles") / "fed"))
    return fed, run_federation(fed)


def assert_same_state(got: Any, want: Any) -> None:
    assert got.round == want.round
    assert sorted(got.vectors) == sorted(want.vectors)
    for key, vec in want.vectors.items():
        np.testing.assert_allclose(got.vectors[key], vec, atol=1e-5, err_msg=key)
    assert sorted(got.cluster_vectors) == sorted(want.cluster_vectors)
    for cid, vec in want.cluster_vectors.items():
        np.testing.assert_allclose(got.cluster_vectors[cid], vec, atol=1e-5, err_msg=f"cluster {cid}")


def test_loopback_equals_simulation(normal_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, run = normal_run
    want_state, want_labels = simulate_fltac(fed.plan, fed.layout.root)
    got_labels = [row["clusters"] for row in run["history"]]
    assert got_labels == want_labels
    assert_same_state(run["state"], want_state)
    # the training really moved the adapters (so equality is not trivial)
    init = np.asarray(next(iter(want_state.vectors.values())))
    assert any(np.abs(v - init).max() > 1e-4 for v in run["state"].vectors.values())


def test_loopback_equals_simulation_on_the_sites_own_files(normal_run: tuple[Fed, dict[str, Any]]) -> None:
    """`fltac simulate --site FILE ...` (each site file read as its collaborator reads it) = the networked run."""
    from fltac_secure.data.layout import SITE_FILE, load_sites
    from fltac_secure.simulation.context import SimContext
    from fltac_secure.simulation.methods import FLTAC

    fed, run = normal_run
    files = [folder / SITE_FILE for folder in fed.layout.sites.values()]
    method = FLTAC(SimContext(fed.plan, load_sites(fed.plan, files)))
    labels = [dict(method.run_round(r).labels or {}) for r in range(fed.plan.rounds)]
    assert [row["clusters"] for row in run["history"]] == labels
    assert_same_state(run["state"], method.state)


def test_outputs_on_both_sides(normal_run: tuple[Fed, dict[str, Any]]) -> None:
    fed, run = normal_run
    out = fed.layout.aggregator / "out"
    assert (out / "clusters.json").is_file() and (out / "metrics.jsonl").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(-1.0 <= r["separation"] <= 1.0 and r["kept_clusters"] is False for r in rows)  # settle is off
    exported = sorted(p.name for p in out.glob("cluster_*") if (p / "adapter_model.safetensors").is_file())
    assert exported == [f"cluster_{c}" for c in sorted(run["state"].cluster_vectors)]
    for name in exported:  # the plan shares no task names: the folder says who is in it and how to map it
        meta = json.loads((out / name / "fltac.json").read_text())
        cid = int(name.split("_")[1])
        assert meta["members"] == sorted(k for k, c in run["state"].clusters.labels.items() if c == cid)
        assert meta["task"] is None and "share_task_names" in meta["how_to_map"]
    assert (fed.layout.aggregator / "plan.yaml").is_file()
    assert (fed.layout.aggregator / "state" / "checkpoint.json").is_file()
    for name, folder in fed.layout.sites.items():
        site = fed.site(name)
        for task in site.data:
            assert (folder / "out" / task / "adapter_config.json").is_file(), (name, task)
        rows = [json.loads(x) for x in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
        assert {r["kind"] for r in rows} >= {"train", "final"}


def test_ledger_counts_match_shapes(normal_run: tuple[Fed, dict[str, Any]]) -> None:
    """Every parameter that crossed the wire, by kind, equals what the plan's shapes imply."""
    fed, run = normal_run
    plan, d, dim = fed.plan, adapter_layout(fed.plan).size, fed.plan.clustering.sketch_dim
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    led = read_ledger(fed.layout.aggregator / "ledger.jsonl")
    assert led.skipped == 0
    by_kind: dict[tuple[str, str], int] = {}
    for e in led.entries:
        by_kind[(e.kind, e.direction)] = by_kind.get((e.kind, e.direction), 0) + e.elements
    assert by_kind[("ROUND_START", "sent")] == d * slots * plan.rounds
    assert by_kind[("SKETCHES", "received")] == dim * slots * plan.rounds
    assert by_kind[("UPDATE", "received")] == d * slots * plan.rounds
    assert by_kind[("FINAL", "sent")] == d * slots
    control = {k: v for k, v in by_kind.items() if k[0] not in ("ROUND_START", "SKETCHES", "UPDATE", "FINAL")}
    assert all(v == 0 for v in control.values()), control
    # each site's own ledger sees its side of the same traffic
    for name in fed.layout.sites:
        mine = read_ledger(fed.layout.sites[name] / "ledger.jsonl").entries
        n = len(fed.site(name).data)
        ups = sum(e.elements for e in mine if e.direction == "sent")
        assert ups == plan.rounds * n * (dim + d)


def test_audit_cli_prints_tables(normal_run: tuple[Fed, dict[str, Any]]) -> None:
    from typer.testing import CliRunner

    from fltac_secure.cli import app

    fed, _ = normal_run
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--by", "kind"])
    assert res.exit_code == 0, res.output
    assert "UPDATE" in res.output and "SKETCHES" in res.output and "fedit" in res.output
    res = CliRunner().invoke(app, ["audit", "--workspace", str(fed.layout.aggregator), "--json"])
    data = json.loads(res.output)
    d = adapter_layout(fed.plan).size
    slots = sum(len(fed.site(s).data) for s in fed.layout.sites)
    up = fed.plan.rounds * slots * (d + fed.plan.clustering.sketch_dim)
    assert data["comparison"]["fltac"]["up"] == up
