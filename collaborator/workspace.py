"""A collaborator's workspace: its data and model, its state, its outputs.

``state/collaborator.json``   last round finished, whether the run is over
``state/globals.safetensors`` the latest global adapter of each slot (``slot/<i>``)
``state/round.safetensors``   this round's trained vectors and sketches, so a
                              restart mid-round answers without training again
                              (with compression: each slot's quantised update and next residual too)
``state/residuals.safetensors`` compression.error_feedback: each slot's residual (``residual/<i>``), what
                              rounding left out of its uploads so far; replaced atomically when an
                              UPDATE goes out, so a restart resumes it (with compression.trim_head the
                              updates and residuals are of each slot's wire part, ``self.wire``)
``state/privacy.json``        the DP ledger (``fltac_secure.privacy``), when DP is on
``out/<task>/``               the latest global adapter of each task, peft format
``out/metrics.jsonl``         local test accuracy of those adapters, training loss
``out/accuracy.png``          the accuracy per task over rounds

Slots are the site's tasks in plan order: slot ``i`` is the ``i``-th of them,
and ``slot_key(site, i)`` is the only name the aggregator ever sees.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fltac_secure.atomic import remove_stale_temps
from fltac_secure.errors import CompressionError, StateError
from fltac_secure.federation.rounds import ClientSlot, SlotResult, slot_key
from fltac_secure.federation.storage import append_jsonl, read_json, read_tensors, write_json, write_tensors
from fltac_secure.federation.trimmed import SiteWire, site_labels
from fltac_secure.learning.compress import Quantised, from_wire
from fltac_secure.plan import Plan, Site

STATE = "state"
OUT = "out"
FORMAT = "fltac-collaborator-state/1"
EVAL_EACH_ROUND = 128
"""Local test examples per task evaluated after each round (all of them after the last): keeps rounds short."""


def _head(data: Any, n: int) -> Any:
    """The first ``n`` examples of an encoded data set."""
    import torch

    if len(data) <= n:
        return data
    idx = torch.arange(n)
    return type(data)(features={k: v.index_select(0, idx) for k, v in data.features.items()},
                      labels=data.labels.index_select(0, idx), task=data.task)


RESIDUALS = "residuals.safetensors"


@dataclass
class RoundCache:
    """What a site computed in one round, kept until the round is over.

    With compression: ``starts`` (slot index -> the vector the aggregator sent for it, from which the
    update is taken), ``updates`` (slot index -> its quantised update; plain rounds) and, with error
    feedback, ``residuals`` (slot index -> the residual the site keeps once that update is sent).
    """

    round: int
    results: list[SlotResult]
    updates: dict[int, Quantised] = field(default_factory=dict)
    residuals: dict[int, np.ndarray] = field(default_factory=dict)
    starts: dict[int, np.ndarray] = field(default_factory=dict)


class SiteWorkspace:
    """Loads the site's data and model once; stores state and outputs atomically."""

    def __init__(self, plan: Plan, site: Site, plan_hash: str) -> None:
        self.plan, self.site, self.hash = plan, site, plan_hash
        self.root = Path(site.workspace)
        self.tasks = [t.name for t in plan.tasks if t.name in site.data]
        if not self.tasks:
            raise StateError(f"site {site.name!r} has no data for any task of the plan; fix its site file's data")
        self.model: Any = None
        self.slots: list[ClientSlot] = []
        self.test: dict[str, Any] = {}

    def load(self) -> None:
        """Read the data files, load the model, tokenise everything once."""
        from fltac_secure.data.layout import load_site_data
        from fltac_secure.learning.model import SlotModel
        from fltac_secure.learning.train import encode

        train, test = load_site_data(self.site, self.plan)
        self.model = SlotModel(self.plan, self.tasks)
        n = self.plan.training.max_seq_length
        self.slots = [ClientSlot(slot_key(self.site.name, i), t, encode(self.model, train[t], n), len(train[t]))
                      for i, t in enumerate(self.tasks)]
        self.test = {t: encode(self.model, ds, n) for t, ds in test.items() if len(ds)}

    @cached_property
    def wire(self) -> SiteWire:
        """What travels of each slot: its whole vector, or with compression.trim_head its task's wire part."""
        from fltac_secure.learning.adapters import adapter_layout

        return SiteWire.of(self.plan, adapter_layout(self.plan).size, site_labels(self.plan, self.tasks))

    @property
    def counts(self) -> list[int]:
        return [s.n_samples for s in self.slots]

    # -- state -------------------------------------------------------------------
    def remove_stale_temps(self) -> int:
        """Delete temp files that killed atomic writes left in ``state/`` (call at start); returns how many."""
        return len(remove_stale_temps(self.root / STATE))

    def read_state(self) -> dict[str, Any]:
        path = self.root / STATE / "collaborator.json"
        if not path.is_file():
            return {"format": FORMAT, "plan_hash": self.hash, "round_done": -1, "finished": False}
        state = read_json(path, "collaborator state")
        if state.get("plan_hash") != self.hash:
            raise StateError(f"workspace {self.root} was used with another plan; use a fresh workspace or the original plan")
        return state

    def write_state(self, **changes: Any) -> None:
        state = {**self.read_state(), **changes}
        write_json(self.root / STATE / "collaborator.json", state)

    def save_cache(self, cache: RoundCache) -> None:
        tensors: dict[str, np.ndarray] = {"round": np.array([cache.round], np.int64)}
        for res in cache.results:
            i = int(res.key.rsplit("/", 1)[1])
            tensors[f"vector/{i}"] = res.vector
            tensors[f"sketch/{i}"] = np.asarray(res.sketch, np.float64)
            tensors[f"count/{i}"] = np.array([res.n_samples], np.int64)
        for i, q in cache.updates.items():
            tensors[f"qslot/{i}"], tensors[f"qscale/{i}"] = q.packed, q.scales
        tensors.update({f"residual/{i}": np.asarray(v, np.float32) for i, v in cache.residuals.items()})
        tensors.update({f"start/{i}": np.asarray(v, np.float32) for i, v in cache.starts.items()})
        write_tensors(self.root / STATE / "round.safetensors", tensors)

    def load_cache(self) -> RoundCache | None:
        path = self.root / STATE / "round.safetensors"
        if not path.is_file():
            return None
        t = read_tensors(path, "round cache")
        idx = sorted(int(k.split("/")[1]) for k in t if k.startswith("vector/"))
        results = [SlotResult(slot_key(self.site.name, i), t[f"vector/{i}"], t[f"sketch/{i}"],
                              int(t[f"count/{i}"][0])) for i in idx if i < len(self.tasks)]
        c, n = self.plan.compression, len(results[0].vector) if results else 0
        known = [i for i in idx if i < len(self.tasks)]
        sizes = self.wire.sizes(known) or {i: n for i in known}  # trim_head: updates are of the wire parts
        try:
            updates = {i: from_wire(t[f"qslot/{i}"], t[f"qscale/{i}"], sizes[i], c.bits, c.block_size)
                       for i in idx if f"qslot/{i}" in t and c.enabled}
        except (CompressionError, KeyError) as exc:
            raise StateError(f"round cache {path} holds a damaged quantised update ({exc}); remove it to retrain "
                             "the round") from None
        residuals = {i: self._checked_residual(t[f"residual/{i}"], sizes[i], path)
                     for i in idx if f"residual/{i}" in t and i in sizes}
        starts = {i: self._checked_residual(t[f"start/{i}"], n, path) for i in idx if f"start/{i}" in t}
        return RoundCache(int(t["round"][0]), results, updates, residuals, starts)

    # -- error feedback --------------------------------------------------------------
    def read_residuals(self, size: int | Mapping[int, int]) -> dict[int, np.ndarray]:
        """Slot index -> its error-feedback residual (none yet: empty), each checked: (size,) float32, finite
        (``size[i]`` per slot: with compression.trim_head a residual is as long as the slot's wire part)."""
        path = self.root / STATE / RESIDUALS
        if not path.is_file():
            return {}
        t = read_tensors(path, "error-feedback residuals")
        out = {}
        for name, arr in t.items():
            kind, _, idx = name.partition("/")
            if kind != "residual" or not idx.isdigit() or int(idx) >= len(self.tasks):
                raise StateError(f"unexpected tensor {name!r} in {path}; remove the file to restart error feedback")
            out[int(idx)] = self._checked_residual(arr, size if isinstance(size, int) else size[int(idx)], path)
        return out

    def commit_residuals(self, r: int, residuals: dict[int, np.ndarray], size: int | Mapping[int, int]) -> None:
        """Replace the residuals of the slots whose update of round ``r`` goes out (atomic; idempotent)."""
        merged = {**self.read_residuals(size), **residuals}
        write_tensors(self.root / STATE / RESIDUALS, {f"residual/{i}": np.asarray(v, np.float32)
                                                      for i, v in sorted(merged.items())}, {"round": str(r)})

    @staticmethod
    def _checked_residual(arr: np.ndarray, size: int, path: Path) -> np.ndarray:
        """A stored residual or start vector: finite float32 of the adapter's size."""
        if arr.dtype != np.float32 or arr.shape != (size,) or not np.isfinite(arr).all():
            raise StateError(f"{path} holds a vector of {arr.dtype} {arr.shape} (or NaN/Inf), expected finite "
                             f"float32 ({size},); it is from another plan or damaged: remove it")
        return arr

    # -- global adapters -------------------------------------------------------------
    def keep_globals(self, r: int, vectors: dict[int, np.ndarray], *, final: bool = False) -> list[dict[str, Any]]:
        """Store, export (peft) and evaluate the global adapters the site received after round ``r - 1``."""
        from fltac_secure.learning.adapters import set_slot_vector
        from fltac_secure.learning.export import export_peft
        from fltac_secure.learning.train import evaluate_slot

        write_tensors(self.root / STATE / "globals.safetensors", {f"slot/{i}": v for i, v in vectors.items()},
                      {"round": str(r)})
        rows = []
        for i, vec in sorted(vectors.items()):
            task = self.tasks[i]
            set_slot_vector(self.model, task, vec)
            export_peft(self.model, task, self.root / OUT / task, task=self.plan.task(task))
            if task in self.test:
                data = self.test[task] if final else _head(self.test[task], EVAL_EACH_ROUND)
                m = evaluate_slot(self.model, task, data, batch_size=self.plan.training.eval_batch_size)
                row = {"kind": "final" if final else "global", "after_round": r - 1, "task": task, **m}
                append_jsonl(self.root / OUT / "metrics.jsonl", row)
                rows.append(row)
        return rows

    def record_training(self, r: int, results: list[SlotResult]) -> None:
        for res in results:
            task = self.tasks[int(res.key.rsplit("/", 1)[1])]
            append_jsonl(self.root / OUT / "metrics.jsonl", {"kind": "train", "round": r, "task": task, **res.stats})

    def plot(self) -> Path | None:
        """``out/accuracy.png``: local test accuracy of each task's global adapter over rounds."""
        path = self.root / OUT / "metrics.jsonl"
        if not path.is_file():
            return None
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        series: dict[str, dict[int, float]] = {}
        for row in rows:
            if row.get("kind") in ("global", "final"):
                series.setdefault(row["task"], {})[int(row["after_round"])] = float(row["accuracy"])
        if not series:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for task, pts in sorted(series.items()):
            xs = sorted(pts)
            ax.plot([x + 1 for x in xs], [pts[x] for x in xs], marker="o", label=task)
        ax.set_xlabel("rounds completed")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel("local test accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = self.root / OUT / "accuracy.png"
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out
