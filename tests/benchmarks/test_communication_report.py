"""benchmarks/communication.py: the targets section compares each variant with float32 FL-TAC and FedIT r8."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from communication import fewer, masked_vs_plain, summary, targets  # noqa: E402


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


def test_targets_are_paired_by_seed() -> None:
    """The accuracy gap is taken seed by seed over the seeds both rows ran, with its spread."""
    results = {"fltac-r1-b32": _row([0.880, 0.890, 0.870], 1_600_000, 1_600_000),
               "v": _row([0.878, 0.884], 200_000, 100_000)}  # -0.2 and -0.6 on seeds 0 and 1
    line = next(x for x in targets(results) if x.startswith("- v"))
    assert line.startswith("- v: -0.4 points (met)") and line.endswith("2 seed(s), paired sd 0.3")


def test_masked_uploads_are_compared_with_the_plain_ones() -> None:
    masked = {"fltac-r1-b32": _row([0.88], 1_600_000, 1_600_000), "v": _row([0.87], 190_000, 100_000)}
    plain = {"v": _row([0.875], 200_000, 100_000), "other": _row([0.8], 1, 1)}
    lines = masked_vs_plain(masked, plain)
    assert any(x.startswith("- v: masked 190,000 B vs plain 200,000 B per round (0.950x, met); accuracy -0.5")
               for x in lines)
    assert not any(x.startswith(("- other", "- fltac-r1-b32")) for x in lines)
    assert masked_vs_plain(masked, None) == []


def test_bytes_are_compared_over_the_seeds_both_ran() -> None:
    """A seed's partition decides how many slots the sites hold, so bytes differ by seed: ratios use common seeds."""
    ref = _row([0.88, 0.87, 0.86], 1_000, 1_000)
    for seed, up in (("0", 1_000), ("1", 800), ("2", 5_000)):
        ref["per_seed"][seed]["up_bytes_per_round"] = up
    ref["summary"] = summary(ref["per_seed"])
    row = _row([0.88, 0.87], 100, 100)
    assert ref["summary"]["up_bytes_per_round"] == 2_267 and fewer(ref, row) == 9.0


def test_the_load_is_reported_where_runs_recorded_it() -> None:
    from communication import load_line

    rows = {"a": _row([0.8, 0.9], 1, 1)}
    assert load_line(rows) == "load not recorded for these 2 runs."
    rows["a"]["per_seed"]["0"]["load_avg"] = [2.5, 2.1, 1.9]
    assert load_line(rows).startswith("5-minute load average 2.1-2.1 at the end of 1 of 2 runs")
