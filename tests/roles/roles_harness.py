"""Helpers for the role tests: a small tiny-bert federation on loopback, roles run in threads."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fltac_secure.federation.console import EventLog  # noqa: E402
from fltac_secure.federation.demo import FederationLayout, build_federation  # noqa: E402
from fltac_secure.plan import Plan, load_site  # noqa: E402

torch.set_num_threads(1)


SAME_WIDTH = [{"name": "alpha", "labels": ["a0", "a1", "a2"], "demo_source": "synthetic"},
              {"name": "beta", "labels": ["b0", "b1", "b2"], "demo_source": "synthetic"}]
"""``tiny_plan(tasks=SAME_WIDTH)``: both tasks 3 labels wide. Under secure aggregation, however K-means mixes
them, no head row is used by one member only, so every cluster is summed (with mixed widths members leave
clusters with lonely rows: ``test_mixed_widths_leave_lonely_rows_unsummed_as_in_the_simulator``)."""


def tiny_plan(sites: int = 3, rounds: int = 2, *, round_s: float = 60.0, quorum: int = 2, **over: Any) -> Plan:
    """3 sites, 2 synthetic tasks, tiny-bert: a round takes about a second."""
    data: dict[str, Any] = {
        "federation": "rolestest",
        "rounds": rounds,
        "roster": [f"site{i + 1}" for i in range(sites)],
        "tasks": [
            {"name": "alpha", "labels": ["a0", "a1", "a2"], "demo_source": "synthetic"},
            {"name": "beta", "labels": ["b0", "b1"], "demo_source": "synthetic"},
        ],
        "model": {"base": "tiny-bert", "lora": {"rank": 1, "alpha": 8}},
        "clustering": {"sketch_dim": 16, "n_init": 4},
        "training": {"local_steps": 3, "batch_size": 8, "max_seq_length": 16, "learning_rate": 0.01},
        "quorum": {"min_collaborators": quorum},
        "timeouts": {"handshake_s": 5, "round_s": round_s, "idle_s": 30},
        "partition": {"alpha": 5.0, "max_examples_per_task": 90, "seed": 1},
    }
    data.update(over)
    return Plan.model_validate(data)


@dataclass
class Running:
    """A role running in a thread: its object, and the exception it ended with (if any)."""

    obj: Any
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)
    result: list[Any] = field(default_factory=list)

    def join(self, timeout: float = 120.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{type(self.obj).__name__} did not finish within {timeout} s"
        return self.result[0] if self.result else None


def start(obj: Any) -> Running:
    run = Running(obj, threading.Thread(target=lambda: None, daemon=True))

    def target() -> None:
        try:
            run.result.append(obj.run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            run.error.append(exc)

    run.thread = threading.Thread(target=target, daemon=True, name=type(obj).__name__)
    run.thread.start()
    return run


_TORCH_RNG = threading.Lock()


def _threaded_collaborator() -> type:
    from collaborator.service import Collaborator

    class ThreadedCollaborator(Collaborator):
        """Trains under a process-wide lock: the base model's dropout draws from torch's *global* RNG,
        which threads share (separate processes, as in production, do not need this)."""

        def _round_start(self, msg: Any) -> None:
            with _TORCH_RNG:
                super()._round_start(msg)

    return ThreadedCollaborator


@dataclass
class Fed:
    """A laid-out federation and factories for its roles."""

    plan: Plan
    layout: FederationLayout

    def site(self, name: str):  # type: ignore[no-untyped-def]
        return load_site(self.layout.site_file(name), self.plan)

    def aggregator(self, **kw: Any):  # type: ignore[no-untyped-def]
        from aggregator.service import Aggregator

        kw.setdefault("join_window", 30.0)
        kw.setdefault("log", EventLog("aggregator", quiet=True))
        return Aggregator(self.plan, self.site("aggregator"), **kw)

    def collaborator(self, name: str, plan: Plan | None = None, **kw: Any):  # type: ignore[no-untyped-def]
        kw.setdefault("stall_timeout", 3.0)
        kw.setdefault("rejoin_s", 1.0)
        kw.setdefault("log", EventLog(name, quiet=True))
        p = plan or self.plan
        ThreadedCollaborator = _threaded_collaborator()  # noqa: N806
        col = ThreadedCollaborator(p, load_site(self.layout.site_file(name), p), **kw)
        # threads share torch's global RNG: load the (seeded, random) tiny base here, not concurrently
        col.setup()
        return col


def make_fed(root: Path, plan: Plan | None = None) -> Fed:
    plan = plan or tiny_plan()
    return Fed(plan, build_federation(plan, root))


def run_roles(fed: Fed, rngs: dict[str, int] | None = None, **agg_faults: Any) -> dict[str, Any]:
    """Run ``fed`` to the end (aggregator and every site in threads); each must end cleanly. ``rngs``: per site,
    the seed of its quantisation draws (the simulator's ``compression_rngs``); ``agg_faults``: the aggregator's
    test hooks. Returns the final state and the aggregator's history."""
    from aggregator.service import Faults
    from collaborator.service import Faults as SiteFaults

    agg = start(fed.aggregator(faults=Faults(**agg_faults)))
    cols = {s: start(fed.collaborator(s, faults=SiteFaults(
        quantise_rng=None if rngs is None else np.random.default_rng(rngs[s])))) for s in fed.layout.sites}
    state = agg.join(180)
    assert not agg.error, agg.error
    for name, r in cols.items():
        r.join(60)
        assert not r.error, (name, r.error)
    return {"state": state, "history": agg.obj.history}


def restart_after_round_0(fed: Fed, **faults: Any) -> tuple[Any, Any]:
    """Run ``fed`` with its aggregator killed after round 0's checkpoint and a new one started over the same
    workspace; every role must end cleanly. Returns the second aggregator and its final state. ``faults``:
    more test hooks of the first aggregator only (the second one has none)."""
    from aggregator.service import Faults, SimulatedCrash

    cols = {s: start(fed.collaborator(s)) for s in fed.layout.sites}
    first = start(fed.aggregator(faults=Faults(crash_after_round=0, **faults)))
    first.join(120)
    assert first.error and isinstance(first.error[0], SimulatedCrash)
    second_obj = fed.aggregator()
    second = start(second_obj)
    state = second.join(180)
    assert not second.error, second.error
    assert [row["round"] for row in second_obj.history] == [0, 1]  # round 0 from the checkpoint, then round 1
    for run in cols.values():
        run.join(60)
        assert not run.error, run.error
    return second_obj, state
