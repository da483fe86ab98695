"""benchmarks/dp.py's report: ARI and the partition's separation per round, old records without it shown as '-'."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from dp import markdown, summarise  # noqa: E402


def _run(acc: float, aris: list[float], seps: list[float | None]) -> dict:
    rounds = [{"round": i, "ari": a, **({} if s is None else {"separation": s})}
              for i, (a, s) in enumerate(zip(aris, seps, strict=True))]
    return {"epsilon_target": 8.0, "wall_s": 10.0, "tasks": {"news": acc}, "mean_accuracy": acc,
            "rounds": rounds, "max_epsilon_spent": 7.9}


def test_separation_per_round_is_reported_and_averaged() -> None:
    per_seed = {"0": _run(0.8, [0.2, 0.6, 1.0], [0.05, 0.1, 0.3]), "1": _run(0.9, [0.2, 0.6, 1.0], [0.15, 0.3, 0.5])}
    s = summarise(per_seed)
    assert [round(x[0], 3) for x in s["separation"]] == [0.1, 0.2, 0.4]
    meta = {"setup": "s", "recipe": "r", "command": "c", "machine": "m"}
    md = markdown({"meta": meta, "accuracy": {"eps=8": {"per_seed": per_seed, "summary": s}}})
    assert "| 0.20 0.60 1.00 | 0.10 0.20 0.40 |" in md


def test_records_without_separation_show_a_dash() -> None:
    per_seed = {"0": _run(0.8, [0.2, 0.6], [None, None])}
    s = summarise(per_seed)
    md = markdown({"meta": {"setup": "s", "recipe": "r", "command": "c", "machine": "m"},
                   "accuracy": {"eps=8": {"per_seed": per_seed, "summary": s}}})
    assert "| 0.20 0.60 | - - |" in md
