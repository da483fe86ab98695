"""benchmarks/communication.py: the targets section compares each variant with float32 FL-TAC and FedIT r8."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from communication import summary, targets  # noqa: E402


def _row(accs: list[float], up: int, down: int) -> dict:
    per_seed = {str(i): {"mean_accuracy": a, "up_bytes_per_round": up, "down_bytes_per_round": down,
                         "up_params_per_round": up // 4, "bits": 8} for i, a in enumerate(accs)}
    return {"per_seed": per_seed, "summary": summary(per_seed)}


def test_targets_met_and_missed() -> None:
    results = {"fltac-r1-b32": _row([0.880, 0.890], 1_600_000, 1_600_000),
               "small": _row([0.882, 0.884], 200_000, 100_000),     # -0.2 points, 8x fewer up, 20x vs FedIT
               "lossy": _row([0.860, 0.870], 400_000, 1_600_000),   # -2.0 points, 4x fewer up
               "fedit-r8-b32": _row([0.85, 0.86], 3_000_000, 3_000_000)}
    lines = {line.split(":")[0]: line for line in targets(results) if line.startswith("- ")}
    assert lines["- small"].startswith("- small: -0.2 points (met), upload 8.0x fewer (met), up + down 20.0x")
    assert "(met); 2 seed(s)" in lines["- small"]
    assert "-2.0 points (missed), upload 4.0x fewer (missed)" in lines["- lossy"]
    assert "3.0x fewer than FedIT r8 (missed)" in lines["- lossy"]
    assert "- fltac-r1-b32" not in lines and "- fedit-r8-b32" not in lines


def test_targets_without_the_reference_row() -> None:
    assert "no fltac-r1-b32 row yet" in targets({"small": _row([0.9], 1, 1)})[-1]
