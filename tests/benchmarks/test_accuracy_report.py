"""benchmarks/accuracy_report.py: mean and sd over seeds, paired differences, the tie rule, result names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import json  # noqa: E402

from accuracy import merge_results, results_name  # noqa: E402
from accuracy_report import mean_sd, paired, summarise, verdict  # noqa: E402


def _rec(acc: float, f1: float, ari: list[float] | None = None) -> dict:
    rounds = [{"round": i, "mean_accuracy": acc, "ari": a, "tasks": {"t": {"accuracy": acc}}}
              for i, a in enumerate(ari or [None, None])]
    return {"method": "fltac", "rank": 1, "wall_s": 1.0, "mean_accuracy": acc, "mean_macro_f1": f1,
            "tasks": {"t": {"accuracy": acc, "macro_f1": f1, "n": 10}}, "rounds": rounds,
            "up_params_per_round": 5, "down_params_per_round": 4, "train_steps_per_round": 30}


def test_mean_and_sample_sd_over_seeds() -> None:
    s = summarise({"0": _rec(0.8, 0.7, [0.5, 1.0]), "1": _rec(0.9, 0.8, [0.7, 1.0]), "2": _rec(1.0, 0.9, [0.9, 1.0])})
    assert s["mean_accuracy"]["mean"] == pytest.approx(0.9) and s["mean_accuracy"]["sd"] == pytest.approx(0.1)
    assert s["tasks"]["t"]["macro_f1"]["mean"] == pytest.approx(0.8)
    assert s["ari_per_round"] == pytest.approx([0.7, 1.0]) and s["seeds"] == ["0", "1", "2"]
    assert mean_sd([0.5])["sd"] == 0.0


def test_paired_differences_and_ties() -> None:
    rows = {"a": {"per_seed": {"0": _rec(0.80, 0), "1": _rec(0.90, 0)}},
            "b": {"per_seed": {"0": _rec(0.70, 0), "1": _rec(0.60, 0), "2": _rec(0.1, 0)}}}
    d = paired(rows, "a", "b")  # only seeds 0 and 1 are common: +10 and +30 points
    assert d["n"] == 2 and d["mean"] == pytest.approx(20.0) and d["sd"] == pytest.approx(14.142, abs=1e-3)
    assert "a tie" in verdict(d)  # 20 < 2 x 14.1
    assert "a tie" not in verdict({"mean": 20.0, "sd": 5.0, "n": 3})
    assert "missed" in verdict({"mean": 8.0, "sd": 1.0, "n": 3}, 10.0)
    assert "no tie test" in verdict({"mean": 8.0, "sd": 0.0, "n": 1})
    assert paired(rows, "a", "missing") is None


def test_results_names() -> None:
    assert results_name(Path("plans/bench-4task.yaml")) == "accuracy"
    assert results_name(Path("plans/bench-conflict.yaml")) == "accuracy-conflict"


def _saved(path: Path, setup: str, rows: dict) -> Path:
    path.write_text(json.dumps({"meta": {"setup": setup, "machine": "2 cores"}, "variants": rows}))
    return path


def test_merge_joins_side_by_side_runs_and_refuses_mismatches(tmp_path: Path) -> None:
    a = _saved(tmp_path / "a.json", "S", {"x": {"per_seed": {"0": _rec(0.8, 0)}}})
    b = _saved(tmp_path / "b.json", "S", {"x": {"per_seed": {"1": _rec(0.9, 0)}}, "y": {"per_seed": {"0": _rec(0.7, 0)}}})
    merged, machine = merge_results([a, b], "S")
    assert sorted(merged["x"]["per_seed"]) == ["0", "1"] and list(merged["y"]["per_seed"]) == ["0"]
    assert machine == "2 cores"
    with pytest.raises(SystemExit, match="another setup"):
        merge_results([a, _saved(tmp_path / "c.json", "T", {})], "S")
    with pytest.raises(SystemExit, match="differs between"):
        merge_results([a, _saved(tmp_path / "d.json", "S", {"x": {"per_seed": {"0": _rec(0.5, 0)}}})], "S")
    with pytest.raises(SystemExit, match="cannot read"):
        merge_results([tmp_path / "missing.json"], "S")
