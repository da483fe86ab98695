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


def _file(tmp: Path, name: str, rows: dict, recipe: str = "r", setup: str = "s", command: str = "c") -> Path:
    import json

    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"meta": {"setup": setup, "recipe": recipe, "command": command, "machine": "m"},
                                "accuracy": {n: {"per_seed": ps} for n, ps in rows.items()}}))
    return path


def test_merge_joins_rows_and_seeds_from_side_by_side_jobs(tmp_path: Path) -> None:
    from dp import merge_into

    a = _file(tmp_path, "a", {"eps=8": {"0": _run(0.8, [1.0], [0.3])}, "eps=8 old": {"0": _run(0.7, [0.2], [0.0])}},
              command="dp.py --only-seeds 0")
    b = _file(tmp_path, "b", {"eps=8": {"1": _run(0.9, [1.0], [0.3])}, "eps=inf": {"0": _run(0.95, [1.0], [0.5])}},
              command="dp.py --only-seeds 1")
    res = {"meta": {"setup": "s", "recipe": "r"}, "accuracy": {}}
    merge_into(res, [a, b])
    assert list(res["accuracy"]) == ["eps=8", "eps=inf", "eps=8 old"]
    assert list(res["accuracy"]["eps=8"]["per_seed"]) == ["0", "1"]
    assert abs(res["accuracy"]["eps=8"]["summary"]["mean_accuracy"][0] - 0.85) < 1e-9
    # the report names each job's command and what it ran, not the merging command
    jobs = {"dp.py --only-seeds 0": {"eps=8": ["0"], "eps=8 old": ["0"]},
            "dp.py --only-seeds 1": {"eps=8": ["1"], "eps=inf": ["0"]}}
    assert res["meta"]["jobs"] == jobs
    assert "`dp.py --only-seeds 1` (eps=8 seed 1, eps=inf seed 0)" in markdown(res | {"meta": res["meta"] | {"machine": "m"}})
    # a merged file merged again with one of its jobs keeps the same record
    import json

    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(res))
    again = {"meta": {"setup": "s", "recipe": "r"}, "accuracy": {}}
    merge_into(again, [merged, a])
    assert again["meta"]["jobs"] == jobs


def test_merge_refuses_another_recipe_or_a_seed_that_differs(tmp_path: Path) -> None:
    import pytest

    from dp import merge_into

    a = _file(tmp_path, "a", {"eps=8": {"0": _run(0.8, [1.0], [0.3])}})
    other = _file(tmp_path, "o", {"eps=8": {"1": _run(0.8, [1.0], [0.3])}}, recipe="r2")
    clash = _file(tmp_path, "c", {"eps=8": {"0": _run(0.81, [1.0], [0.3])}})
    with pytest.raises(SystemExit, match="another recipe"):
        merge_into({"meta": {"setup": "s", "recipe": "r"}, "accuracy": {}}, [a, other])
    with pytest.raises(SystemExit, match="differs between the merged files"):
        merge_into({"meta": {"setup": "s", "recipe": "r"}, "accuracy": {}}, [a, clash])


def test_seeds_whose_partition_leaves_a_task_one_slot_are_skipped() -> None:
    import dp

    # the reduced bench's partition seed 1 gives news and langid one slot each (measured); 0 and 2 give all >= 2
    seeds, skipped = dp.usable_seeds(BENCH.parent / "plans" / "bench-4task.yaml", dict(dp.SIZE), 2)
    assert list(seeds) == [0, 2]
    assert skipped == {1: {"news": 1, "langid": 1}}


def test_gaps_to_no_dp_are_paired_by_seed() -> None:
    """The gap to no DP is taken over the seeds both rows ran, seed by seed, never mean against mean of other
    seeds: a row run on seed 0 only is compared with seed 0's no-DP run."""
    from dp import targets

    inf = {"0": _run(0.90, [1.0], [0.5]), "2": _run(0.80, [1.0], [0.5]), "5": _run(0.70, [1.0], [0.5])}
    eps8 = {"0": _run(0.88, [1.0], [0.3]), "2": _run(0.79, [1.0], [0.3]), "5": _run(0.66, [1.0], [0.3])}
    old = {"0": _run(0.60, [0.2], [0.0])}
    rows = {n: {"per_seed": ps, "summary": summarise(ps)} for n, ps in
            (("eps=8", eps8), ("eps=inf", inf), ("eps=8 old", old))}
    lines = targets({"accuracy": rows})
    by = {x.split(" vs")[0]: x for x in lines if " vs no DP" in x}
    assert by["- eps=8"].startswith("- eps=8 vs no DP: -2.3 points (paired over seed(s) 0,2,5, sd 1.5)")
    assert by["- eps=8"].endswith("(target >= -3): met (a tie: within 2 sd)")  # -2, -1, -4: sd 1.5
    assert by["- eps=8 old"] == "- eps=8 old vs no DP: -30.0 points (paired over seed(s) 0)"
    other_seed = {"9": _run(0.5, [1.0], [0.1])}
    rows["eps=4"] = {"per_seed": other_seed, "summary": summarise(other_seed)}
    assert "- eps=4 vs no DP: no seed run in both rows" in targets({"accuracy": rows})


def test_a_merged_step_time_job_is_named_with_its_command(tmp_path: Path) -> None:
    import json

    from dp import merge_into

    a = _file(tmp_path, "a", {"eps=8": {"0": _run(0.8, [1.0], [0.3])}}, command="dp.py --only-seeds 0")
    t = tmp_path / "t.json"
    timing = {"plain_s": 3.0, "dp_s": 3.15, "ratio": 1.05, "steps": 30, "batch": [64, 48], "model": "minilm",
              "ratio_per_pair_median": 1.03}
    t.write_text(json.dumps({"meta": {"setup": "s", "recipe": "r", "command": "dp.py --timing", "machine": "m"},
                             "accuracy": {}, "timing": timing}))
    res = {"meta": {"setup": "s", "recipe": "r"}, "accuracy": {}}
    merge_into(res, [a, t])
    assert res["timing"] == timing
    assert res["meta"]["jobs"]["dp.py --timing"] == {}
    assert "`dp.py --timing` (the step time)" in markdown(res)
