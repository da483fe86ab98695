"""Aggregator checkpoints: exact round trip, a rotation of two, damage refused or replaced by the previous one.

Damage is done to the files on disk the way the issue saw it (a flipped data
byte, a flipped JSON byte, an edited count, a removed or added site, a
truncation, an empty file, another plan's checkpoint).  "Forged" cases rewrite
the files with *valid* hashes to show the value checks refuse them on their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from aggregator.checkpoint import CHECKPOINT, PREVIOUS, Checkpoint, CheckpointStore, canonical_digest
from fltac_secure.errors import StateError
from fltac_secure.federation.console import EventLog
from fltac_secure.federation.rounds import ServerState
from fltac_secure.federation.storage import decode_tensors, encode_tensors
from fltac_secure.learning.cluster import ClusterResult
from fltac_secure.plan import Plan, plan_hash

VEC, SKETCH = 6, 4


def make_plan(rounds: int = 5) -> Plan:
    return Plan.model_validate({
        "federation": "ckpttest", "rounds": rounds, "roster": ["site1", "site2", "site3"],
        "tasks": [{"name": "alpha", "labels": ["a0", "a1"]}, {"name": "beta", "labels": ["b0", "b1"]}],
        "model": {"base": "tiny-bert", "lora": {"rank": 1, "alpha": 8}},
        "clustering": {"sketch_dim": SKETCH},
    })  # fmt: skip


PLAN = make_plan()


def make_ckpt(r: int) -> Checkpoint:
    """A state as the aggregator builds it after round ``r - 1`` (k = 2, three slots of two sites)."""
    rng = np.random.default_rng(r)
    keys = ["site1/0", "site1/1", "site2/0"]
    vectors = {key: rng.standard_normal(VEC).astype(np.float32) for key in keys}
    clusters = ClusterResult(k=2, labels={"site1/0": 0, "site1/1": 1, "site2/0": 0},
                             centroids={0: rng.standard_normal(SKETCH), 1: rng.standard_normal(SKETCH)})
    state = ServerState(round=r, k=2, vectors=vectors,
                        cluster_vectors={c: rng.standard_normal(VEC).astype(np.float32) for c in (0, 1)},
                        clusters=clusters, sketch_sums={key: rng.standard_normal(SKETCH) for key in keys})
    history = [{"round": i, "clusters": {"site1/0": 0}, "seconds": 1.25} for i in range(r)]
    return Checkpoint(state, {"site1": [30, 12], "site2": [25]}, {}, history)


class Store:
    """A store with its log captured as text."""

    def __init__(self, workspace: Path, plan: Plan = PLAN) -> None:
        self.out = io.StringIO()
        log = EventLog("aggregator", Console(file=self.out, width=10_000, color_system=None))
        self.store = CheckpointStore(workspace, plan_hash(plan), plan, vector_size=VEC, log=log)

    @property
    def log(self) -> str:
        return self.out.getvalue()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "aggregator"


def saved(ws: Path, rounds: list[int]) -> Store:
    s = Store(ws)
    for r in rounds:
        s.store.save(make_ckpt(r))
    return s


def assert_same(got: Checkpoint, want: Checkpoint) -> None:
    g, w = got.state, want.state
    assert (g.round, g.k) == (w.round, w.k)
    for name in ("vectors", "cluster_vectors", "sketch_sums"):
        a, b = getattr(g, name), getattr(w, name)
        assert sorted(a) == sorted(b)
        for key in b:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
    assert g.clusters is not None and w.clusters is not None
    assert g.clusters.labels == w.clusters.labels
    assert sorted(g.clusters.centroids) == sorted(w.clusters.centroids)
    for cid, c in w.clusters.centroids.items():
        assert np.array_equal(g.clusters.centroids[cid], c)
    assert (got.members, got.tasks, got.history) == (want.members, want.tasks, want.history)


# -- good checkpoints ---------------------------------------------------------------------


def test_round_trip_is_exact(ws: Path) -> None:
    s = saved(ws, [3])
    assert_same(s.store.load(), make_ckpt(3))
    assert s.store.loaded_from == ws / "state" / CHECKPOINT
    assert s.log == ""


def test_rotation_keeps_exactly_the_last_two(ws: Path) -> None:
    s = saved(ws, [1, 2, 3, 4])
    files = sorted(p.name for p in (ws / "state").iterdir())
    assert files == [CHECKPOINT, PREVIOUS, "server-000003.safetensors", "server-000004.safetensors"]
    assert json.loads((ws / "state" / PREVIOUS).read_text())["round"] == 3
    assert_same(s.store.load(), make_ckpt(4))
    (ws / "state" / CHECKPOINT).unlink()  # the previous one is a whole checkpoint too
    assert_same(Store(ws).store.load(), make_ckpt(3))


def test_the_same_round_saved_again_replaces_it_and_keeps_the_older_previous(ws: Path) -> None:
    s = saved(ws, [1, 2])
    again = make_ckpt(2)
    again.history.append({"note": "retry"})
    s.store.save(again)
    assert json.loads((ws / "state" / PREVIOUS).read_text())["round"] == 1
    assert_same(s.store.load(), again)


# -- damage: refused naming the file, or the previous checkpoint instead -------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tensors(state: Path) -> Path:
    return state / json.loads((state / CHECKPOINT).read_text())["tensors"]


def flip_tensor_data_byte(state: Path) -> Path:
    path = _tensors(state)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    _flip(path, 8 + header + 5)  # inside the first array's data, not the header
    return path


def flip_tensor_header_byte(state: Path) -> Path:
    path = _tensors(state)
    _flip(path, 20)
    return path


def _edit_json(state: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = state / CHECKPOINT
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def flip_json_byte_in_a_value(state: Path) -> Path:
    path = state / CHECKPOINT
    text = path.read_bytes()
    _flip(path, text.index(b'"plan_hash": "') + len('"plan_hash": "') + 3)  # still valid JSON
    return path


def flip_json_byte_in_the_syntax(state: Path) -> Path:
    path = state / CHECKPOINT
    _flip(path, path.read_bytes().index(b":"))  # ':' -> ';'
    return path


def edit_a_sample_count(state: Path) -> Path:
    return _edit_json(state, lambda m: m["members"]["site1"].__setitem__(0, 31))


def remove_a_site(state: Path) -> Path:
    return _edit_json(state, lambda m: m["members"].pop("site2"))


def add_a_site_not_in_the_roster(state: Path) -> Path:
    return _edit_json(state, lambda m: m["members"].__setitem__("intruder", [10]))


def truncate_the_tensors(state: Path) -> Path:
    path = _tensors(state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def truncate_the_json(state: Path) -> Path:
    path = state / CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def empty_tensors(state: Path) -> Path:
    path = _tensors(state)
    path.write_bytes(b"")
    return path


def empty_json(state: Path) -> Path:
    path = state / CHECKPOINT
    path.write_bytes(b"")
    return path


def remove_the_tensors(state: Path) -> Path:
    path = _tensors(state)
    path.unlink()
    return path


DAMAGE = {f.__name__: f for f in (
    flip_tensor_data_byte, flip_tensor_header_byte, flip_json_byte_in_a_value, flip_json_byte_in_the_syntax,
    edit_a_sample_count, remove_a_site, add_a_site_not_in_the_roster, truncate_the_tensors, truncate_the_json,
    empty_tensors, empty_json, remove_the_tensors,
)}  # fmt: skip


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_without_a_previous_checkpoint_is_refused_naming_the_file(ws: Path, damage: str) -> None:
    saved(ws, [1])
    path = DAMAGE[damage](ws / "state")
    with pytest.raises(StateError) as err:
        Store(ws).store.load()
    text = str(err.value)
    assert str(path) in text, text
    assert PREVIOUS in text and "restore state/ from a backup" in text, text


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_of_the_newest_falls_back_to_the_previous_loudly(ws: Path, damage: str) -> None:
    saved(ws, [1, 2])
    path = DAMAGE[damage](ws / "state")
    s = Store(ws)
    assert_same(s.store.load(), make_ckpt(1))
    assert s.store.loaded_from == ws / "state" / PREVIOUS
    assert "CHECKPOINT REFUSED" in s.log and str(path) in s.log, s.log
    assert f"{ws / 'state' / PREVIOUS} instead (at round 1: round 1 runs again" in s.log, s.log


def test_after_a_fallback_the_next_save_keeps_the_good_previous(ws: Path) -> None:
    saved(ws, [1, 2])
    flip_tensor_data_byte(ws / "state")
    s = Store(ws)
    s.store.load()
    s.store.save(make_ckpt(2))  # round 1 ran again
    assert "not keeping" in s.log  # the damaged file is not rotated into checkpoint.prev.json
    assert json.loads((ws / "state" / PREVIOUS).read_text())["round"] == 1
    assert_same(Store(ws).store.load(), make_ckpt(2))


def test_a_missing_newest_falls_back_to_the_previous(ws: Path) -> None:
    saved(ws, [1, 2])
    (ws / "state" / CHECKPOINT).unlink()
    s = Store(ws)
    assert s.store.exists
    assert_same(s.store.load(), make_ckpt(1))
    assert f"{ws / 'state' / CHECKPOINT} is missing" in s.log


def test_both_damaged_names_both_files(ws: Path) -> None:
    saved(ws, [1, 2])
    flip_tensor_data_byte(ws / "state")
    (ws / "state" / PREVIOUS).write_text("{}")
    with pytest.raises(StateError) as err:
        Store(ws).store.load()
    text = str(err.value)
    assert str(ws / "state" / "server-000002.safetensors") in text and str(ws / "state" / PREVIOUS) in text, text


def test_a_checkpoint_of_another_plan_is_refused_without_fallback(ws: Path, tmp_path: Path) -> None:
    saved(ws, [1, 2])
    other = Store(tmp_path / "other", make_plan(rounds=7))
    other.store.save(make_ckpt(3))
    for name in (CHECKPOINT, "server-000003.safetensors"):
        (ws / "state" / name).write_bytes((tmp_path / "other" / "state" / name).read_bytes())
    with pytest.raises(StateError) as err:
        Store(ws).store.load()
    assert f"{ws / 'state' / CHECKPOINT} belongs to another plan" in str(err.value), str(err.value)


def test_an_older_format_without_digest_is_refused(ws: Path) -> None:
    saved(ws, [1, 2])
    _edit_json(ws / "state", lambda m: (m.pop("sha256"), m.__setitem__("format", "fltac-aggregator-checkpoint/1")))
    with pytest.raises(StateError) as err:
        Store(ws).store.load()
    assert "without a digest" in str(err.value) and str(ws / "state" / CHECKPOINT) in str(err.value)


# -- forged: valid hashes, values this plan cannot produce --------------------------------------


def forge(state: Path, *, meta: Callable[[dict[str, Any]], None] | None = None,
          tensors: Callable[[dict[str, np.ndarray]], None] | None = None) -> None:
    """Rewrite the newest checkpoint with valid hashes after ``meta``/``tensors`` changed it."""
    path = state / CHECKPOINT
    body = json.loads(path.read_text())
    body.pop("sha256")
    if tensors is not None:
        arrays = dict(decode_tensors((state / body["tensors"]).read_bytes()))
        tensors(arrays)
        raw = encode_tensors(arrays)
        (state / body["tensors"]).write_bytes(raw)
        body["tensors_sha256"] = hashlib.sha256(raw).hexdigest()
    if meta is not None:
        meta(body)
    path.write_text(json.dumps({**body, "sha256": canonical_digest(body)}))


def _set(name: str, value: Any) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda arrays: arrays.__setitem__(name, np.asarray(value))


FORGED: dict[str, tuple[dict[str, Any], str]] = {
    "huge cluster count": ({"tensors": _set("k", np.array([72_000_000_000_000_000]))},
                           "cluster count k = 72000000000000000"),
    "label off by 124": ({"tensors": _set("label/site1/0", np.array([124]))}, "cluster label(s) 124 are outside 0..1"),
    "centroid id out of range": ({"tensors": _set("centroid/5", np.zeros(SKETCH))}, "centroid id(s) 5"),
    "sketch sum of wrong size": ({"tensors": _set("sketch_sum/site1/0", np.zeros(SKETCH + 1))},
                                 f"must have shape ({SKETCH},)"),
    "sketch sum of no slot": ({"tensors": _set("sketch_sum/site9/0", np.zeros(SKETCH))},
                              "sketch sums name slot(s) site9/0"),
    "vector of wrong size": ({"tensors": _set("vector/site2/0", np.zeros(VEC + 1, np.float32))},
                             "must have shape (6,)"),
    "NaN in a cluster vector": ({"tensors": _set("cluster_vector/1", np.full(VEC, np.nan, np.float32))}, "NaN"),
    "a member's slot missing": ({"tensors": lambda a: a.pop("vector/site1/1")},
                                "lacks the vector(s) of slot(s) site1/1"),
    "zero count": ({"meta": lambda m: m["members"]["site1"].__setitem__(1, 0)}, "must be integers in 1.."),
    "fractional count": ({"meta": lambda m: m["members"]["site1"].__setitem__(1, 2.5)}, "got 2.5"),
    "site removed": ({"meta": lambda m: m["members"].pop("site2")}, "belong to no member's slot"),
    "site not in roster": ({"meta": lambda m: m["members"].__setitem__("intruder", [3])}, "not in the plan's roster"),
    "too many slots": ({"meta": lambda m: m["members"].__setitem__("site3", [1, 1, 1])}, "list of 1..2 slot"),
    "round disagrees": ({"meta": lambda m: m.__setitem__("round", 1)}, "disagrees with its tensors"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FORGED))
def test_values_the_plan_cannot_produce_are_refused(ws: Path, case: str) -> None:
    saved(ws, [2])
    edits, expected = FORGED[case]
    forge(ws / "state", **edits)
    with pytest.raises(StateError) as err:
        Store(ws).store.load()
    text = str(err.value)
    assert f"{ws / 'state' / CHECKPOINT} holds values this plan cannot produce" in text and expected in text, text


def test_a_member_that_never_took_part_has_no_vectors(ws: Path) -> None:
    ckpt = make_ckpt(2)
    ckpt.members["site3"] = [40]  # joined, then left before its first round
    s = Store(ws)
    s.store.save(ckpt)
    assert_same(s.store.load(), ckpt)


def test_save_refuses_a_state_that_would_not_load(ws: Path) -> None:
    s = saved(ws, [1])
    bad = make_ckpt(2)
    bad.state.vectors["site1/0"][0] = np.inf
    with pytest.raises(StateError, match="refusing to write a checkpoint of round 2 that would not load"):
        s.store.save(bad)
    assert sorted(p.name for p in (ws / "state").iterdir()) == [CHECKPOINT, "server-000001.safetensors"]
    assert_same(s.store.load(), make_ckpt(1))


def test_declared_label_counts_round_trip_under_trim_head_and_are_checked(ws: Path) -> None:
    """compression.trim_head: each member's label counts are kept (a restarted aggregator needs them), one per
    slot, each a task's count; without trim_head a checkpoint holding any is refused."""
    trimmed = PLAN.model_copy(update={"compression": PLAN.compression.model_copy(update={"trim_head": True})})
    ckpt = make_ckpt(2)
    ckpt.labels = {"site1": [2, 2], "site2": [2]}
    s = Store(ws, trimmed)
    s.store.save(ckpt)
    assert s.store.load().labels == {"site1": [2, 2], "site2": [2]}
    for labels, match in (({"site1": [2, 2]}, "site site2 must have 1 label counts"),
                          ({"site1": [2, 3], "site2": [2]}, r"each one of \[2\]"),
                          ({"site1": [2, 2], "site2": [2], "site3": [2]}, "site3, which are not members")):
        ckpt.labels = labels
        with pytest.raises(StateError, match=match):
            s.store.save(ckpt)
    ckpt.labels = {"site1": [2, 2], "site2": [2]}
    with pytest.raises(StateError, match="compression.trim_head is off"):
        Store(ws / "plain").store.save(ckpt)


# -- stale temp files ----------------------------------------------------------------------------


def test_stale_temp_files_are_removed_and_nothing_else(ws: Path) -> None:
    s = saved(ws, [1, 2])
    state = ws / "state"
    stale = [".checkpoint.json.k2x_9a0b.tmp", ".server-000003.safetensors.abcdefgh.tmp"]
    kept = ["notes.tmp", ".checkpoint.json.tmp", ".checkpoint.json.ABCDEFGH.tmp", "checkpoint.json.abcdefgh.tmp",
            ".checkpoint.json.abcdefgh.tmp.bak", ".x.abcdefghi.tmp"]
    for name in stale + kept:
        (state / name).write_text("x")
    (state / ".dir.abcdefgh.tmp").mkdir()
    (state / "sub").mkdir()
    (state / "sub" / ".checkpoint.json.abcdefgh.tmp").write_text("x")
    os.symlink(state / "notes.tmp", state / ".link.abcdefgh.tmp")
    before = {p.name for p in state.iterdir()}
    assert s.store.remove_stale_temps() == 2
    assert {p.name for p in state.iterdir()} == before - set(stale)
    assert (state / "sub" / ".checkpoint.json.abcdefgh.tmp").exists()
    assert f"removed 2 stale temp file(s) left in {state}" in s.log
    assert_same(s.store.load(), make_ckpt(2))


def test_no_state_folder_and_no_temp_files_say_nothing(ws: Path) -> None:
    s = Store(ws)
    assert s.store.remove_stale_temps() == 0
    assert not s.store.exists
    saved(ws, [1])
    assert s.store.remove_stale_temps() == 0
    assert s.log == ""
