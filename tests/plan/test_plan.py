"""Plan and site-file validation: every invalid plan names the key; the hash is canonical."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fltac_secure.cli import app
from fltac_secure.errors import ConfigError
from fltac_secure.plan import DEMO_PLAN, load_plan, load_site, plan_hash

BASE = yaml.safe_load(DEMO_PLAN.read_text())


def write(tmp_path: Path, data: dict, name: str = "plan.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def mutate(path: str, value):
    """Return a copy of the demo plan with ``path`` (dot/index notation) set to value (DELETE removes)."""
    data = copy.deepcopy(BASE)
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


DELETE = object()

INVALID = [
    ("model.lora.rank", 0, "model.lora.rank"),
    ("clustering.k", 17, "clustering.k"),
    ("timeouts.round_s", -5, "timeouts.round_s"),
    ("roster", ["site1", "site1"], "roster"),
    ("tasks.0.labels", [], "tasks[0].labels"),
    ("tasks.1.labels", ["ham"], "tasks[1].labels"),
    ("tasks.1.name", "news", "tasks"),
    ("rounds", 0, "rounds"),
    ("rounds", "many", "rounds"),
    ("training.batch_size", 0, "training.batch_size"),
    ("training.learning_rate", -0.1, "training.learning_rate"),
    ("model.lora.dropout", 1.5, "model.lora.dropout"),
    ("privacy.delta", 2.0, "privacy.delta"),
    ("privacy.noise_multiplier", -1.0, "privacy.noise_multiplier"),
    ("quorum.min_collaborators", 9, "quorum"),
    ("clustering.sketch_dim", 1, "clustering.sketch_dim"),
    ("compression.bits", 3, "compression.bits"),
    ("compression.bits", 1, "compression.bits"),
    ("compression.block_size", 4, "compression.block_size"),
    ("compression.error_feedbak", True, "compression"),
    ("limits.max_message_mb", 0, "limits.max_message_mb"),
    ("surprise", 1, "surprise"),
    ("training.lr", 0.1, "training.lr"),
    ("federation", "bad name!", "federation"),
    ("federation", DELETE, "federation"),
    ("aggregation.weighting", "median", "aggregation.weighting"),
    ("roster", ["ok", "no spaces"], "roster"),
    ("tasks.2.labels", ["a", "a", "b"], "tasks[2].labels"),
    ("timeouts.join_s", 0, "timeouts.join_s"),
    ("secure_aggregation.threshold", 0.4, "secure_aggregation.threshold"),
    ("secure_aggregation.threshold", 1.0, "secure_aggregation.threshold"),
    ("secure_aggregation.min_cluster_size", 1, "secure_aggregation.min_cluster_size"),
    ("secure_aggregation.clip", 0, "secure_aggregation.clip"),
    ("secure_aggregation.ring_bits", 16, "secure_aggregation.ring_bits"),
    ("secure_aggregation.fractional_bits", 29, "fractional_bits <= 25"),
    ("timeouts.connect_s", 0, "timeouts.connect_s"),
    ("timeouts.connect_s", 1.0e9, "timeouts.connect_s"),
    ("timeouts.connect_s", 1, "make connect_s at least handshake_s"),
]


@pytest.mark.parametrize("path,value,key", INVALID, ids=[f"{p}={v!r}" for p, v, _ in INVALID])
def test_invalid_plan_names_the_key(tmp_path, path, value, key):
    plan_file = write(tmp_path, mutate(path, value))
    with pytest.raises(ConfigError) as exc:
        load_plan(plan_file)
    assert exc.value.exit_code == 2
    assert any(line.startswith(key) or key in line for line in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("path,value,key", INVALID[:4] + INVALID[17:19])
def test_cli_validate_exits_2_one_line_per_problem(tmp_path, path, value, key):
    plan_file = write(tmp_path, mutate(path, value))
    result = CliRunner().invoke(app, ["plan", "validate", str(plan_file)])
    assert result.exit_code == 2 or isinstance(result.exception, ConfigError)


def test_cli_main_prints_one_line_and_exit_code(tmp_path, capsys):
    from fltac_secure.cli import main

    plan_file = write(tmp_path, mutate("model.lora.rank", 0))
    with pytest.raises(SystemExit) as exc:
        main(["plan", "validate", str(plan_file)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.lora.rank" in err and "Traceback" not in err


def test_multiple_problems_each_reported(tmp_path):
    data = mutate("model.lora.rank", 0)
    data["training"]["batch_size"] = -1
    data["bogus"] = True
    with pytest.raises(ConfigError) as exc:
        load_plan(write(tmp_path, data))
    joined = "\n".join(exc.value.problems)
    for key in ("model.lora.rank", "training.batch_size", "bogus"):
        assert key in joined


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_plan(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_plan(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_plan(lst)


def test_secure_aggregation_problems_are_each_one_line_with_the_fix(tmp_path):
    data = mutate("secure_aggregation.threshold", 0.5)
    data["secure_aggregation"].update(clip=-1, min_cluster_size=1)
    with pytest.raises(ConfigError) as exc:
        load_plan(write(tmp_path, data))
    assert exc.value.exit_code == 2
    assert [p.split(":")[0] for p in exc.value.problems] == [
        "secure_aggregation.min_cluster_size", "secure_aggregation.clip"
    ]
    many = mutate("roster", [f"s{i}" for i in range(300)])
    many["secure_aggregation"] = {"enabled": True, "clip": 2.0**16, "fractional_bits": 8}
    with pytest.raises(ConfigError, match="let at most 127 sites sum in a 32-bit ring, the roster has 300") as exc:
        load_plan(write(tmp_path, many))
    assert "ring_bits: 64" in str(exc.value)
    many["roster"] = [f"s{i}" for i in range(3000)]
    many["secure_aggregation"] = {"enabled": True, "clip": 2.0**20}
    with pytest.raises(ConfigError, match="do not fit a 32-bit ring; lower clip or set ring_bits: 64"):
        load_plan(write(tmp_path, many))


def test_quantised_secure_uploads_need_a_grid_step_for_the_roster(tmp_path):
    """Masked values travel at compression.bits; a roster whose sum leaves no grid step at that width is refused
    with the width that works, before any site trains."""
    data = mutate("roster", [f"s{i}" for i in range(10)])
    data["secure_aggregation"] = {"enabled": True}
    data["compression"] = {"bits": 4}
    with pytest.raises(ConfigError, match=r"4-bit ring.*use compression.bits: 8 \(117 steps per secure_clip\)"):
        load_plan(write(tmp_path, data))
    data["roster"] = data["roster"][:6]  # 2^3 - 1 - 6 = 1 step: valid, if coarse
    assert load_plan(write(tmp_path, data)).compression.bits == 4
    data["compression"] = {"bits": 2}
    with pytest.raises(ConfigError, match="use compression.bits: 4"):
        load_plan(write(tmp_path, data))


def test_secure_aggregation_precision_defaults_to_the_most_the_roster_allows(tmp_path):
    plan = load_plan(DEMO_PLAN)
    sa = plan.secure_aggregation
    from fltac_secure.secagg import Ring

    ring = Ring(sa.ring_bits, sa.fractional_bits, sa.clip)
    assert ring.capacity() >= len(plan.roster)
    assert Ring(sa.ring_bits, sa.fractional_bits + 1, sa.clip).capacity() < len(plan.roster)
    explicit = mutate("secure_aggregation.fractional_bits", sa.fractional_bits)
    assert plan_hash(load_plan(write(tmp_path, explicit))) == plan_hash(plan)


@pytest.mark.parametrize(("text", "where", "what"), [
    ("federation: x\nrounds: [1, 2\nroster: a\n", "line 3, column 7", "expected ',' or ']'"),
    ("federation: x\n  rounds: 2\n", "line 2, column 9", "mapping values are not allowed here"),
    ("federation: x\ntasks:\n\t- a\n", "line 3, column 1", "spaces, not tabs"),
    ('federation: "x\n', "line 2, column 1", "while scanning a quoted scalar at line 1, column 13"),
])
def test_yaml_syntax_error_names_line_and_column(tmp_path, text, where, what):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_plan(bad)
    msg = str(exc.value)
    assert where in msg and what in msg and len(msg.splitlines()) == 1, msg
    site = tmp_path / "site.yaml"
    site.write_text(text)
    with pytest.raises(ConfigError, match=f"site file {site} is not valid YAML: {where}"):
        load_site(site)


def test_dp_without_noise_or_epsilon_is_refused(tmp_path):
    data = mutate("privacy.dp", True)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        load_plan(write(tmp_path, data))


# ---------------------------------------------------------------- hashing


def test_hash_ignores_key_order_comments_and_whitespace(tmp_path):
    h1 = plan_hash(load_plan(DEMO_PLAN))
    reordered = dict(reversed(list(BASE.items())))
    text = "# a comment\n\n" + yaml.safe_dump(reordered, sort_keys=True, indent=4)
    p = tmp_path / "reordered.yaml"
    p.write_text(text)
    assert plan_hash(load_plan(p)) == h1


def test_hash_treats_explicit_default_as_same_plan(tmp_path):
    data = copy.deepcopy(BASE)
    data["aggregation"] = {}  # weighting falls back to its default "samples"
    assert plan_hash(load_plan(write(tmp_path, data))) == plan_hash(load_plan(DEMO_PLAN))


def test_join_window_defaults_to_the_larger_of_60_s_and_three_handshakes(tmp_path):
    data = copy.deepcopy(BASE)
    data["timeouts"].pop("join_s", None)
    assert load_plan(write(tmp_path, data)).timeouts.join_s == max(60.0, 3 * data["timeouts"]["handshake_s"])
    data["timeouts"]["handshake_s"] = 30
    assert load_plan(write(tmp_path, data)).timeouts.join_s == 90.0
    default = plan_hash(load_plan(write(tmp_path, data)))
    data["timeouts"]["join_s"] = 90  # the derived value, written out: the same plan
    assert plan_hash(load_plan(write(tmp_path, data))) == default
    data["timeouts"]["join_s"] = 91
    assert plan_hash(load_plan(write(tmp_path, data))) != default


def test_connect_limit_defaults_to_two_rounds_and_a_minute_and_is_hashed(tmp_path):
    data = copy.deepcopy(BASE)
    data["timeouts"].pop("connect_s", None)
    data["timeouts"]["round_s"] = 100
    plan = load_plan(write(tmp_path, data))
    assert plan.timeouts.connect_s == plan.timeouts.connect == 260.0
    default = plan_hash(plan)
    data["timeouts"]["connect_s"] = 260  # the derived value, written out: the same plan
    assert plan_hash(load_plan(write(tmp_path, data))) == default
    data["timeouts"]["connect_s"] = 30
    assert plan_hash(load_plan(write(tmp_path, data))) != default


@pytest.mark.parametrize(
    "path,value",
    [
        ("rounds", 4),
        ("model.lora.rank", 2),
        ("roster", ["site1", "site2", "site3", "site5"]),
        ("tasks.1.labels", ["spam", "ham"]),
        ("clustering.seed", 1),
        ("privacy.delta", 1e-6),
        ("training.learning_rate", 0.004),
        ("secure_aggregation.clip", 4.0),
        ("secure_aggregation.threshold", 0.75),
        ("compression.block_size", 64),
    ],
)
def test_hash_changes_with_any_semantic_change(tmp_path, path, value):
    assert plan_hash(load_plan(write(tmp_path, mutate(path, value)))) != plan_hash(load_plan(DEMO_PLAN))


def test_compression_off_keeps_the_hash_and_on_is_hashed(tmp_path):
    """A plan without the section, or with it at its defaults, keeps the hash it had before the section existed."""
    def hashed(**compression):
        data = mutate("secure_aggregation.enabled", False)
        if compression:
            data["compression"] = compression
        return plan_hash(load_plan(write(tmp_path, data)))

    assert "compression" not in load_plan(DEMO_PLAN).model_dump(mode="json")
    assert hashed(bits=32, block_size=256, error_feedback=False) == hashed()
    assert len({hashed(), hashed(bits=8), hashed(bits=8, block_size=64), hashed(bits=8, error_feedback=True),
                hashed(bits=4)}) == 5


def test_compression_with_secure_aggregation(tmp_path):
    """Quantised updates compose with secure aggregation (a ring exactly bits wide, 2^(bits-1) - 1 - roster grid
    steps); error
    feedback does not (a member sends one sum, never a slot's update), and the refusal names both keys."""
    from fltac_secure.secagg.rules import ring_for

    data = mutate("compression", {"bits": 8})
    data["secure_aggregation"] = {"enabled": True}
    plan = load_plan(write(tmp_path, data))
    ring = ring_for(plan)
    assert ring.bits == 8 and ring.levels == 127 - len(plan.roster) and ring.clip == plan.compression.secure_clip
    data["compression"]["error_feedback"] = True
    with pytest.raises(ConfigError, match="compression.error_feedback.*secure_aggregation.enabled"):
        load_plan(write(tmp_path, data))


def test_trim_head_off_keeps_the_hash_on_is_hashed_and_composes_with_secure_aggregation(tmp_path):
    """compression.trim_head: false (the default) leaves every hash as it was, with or without other compression
    keys; true changes it; with secure aggregation on it is accepted (float32 and quantised), and the checks that
    still apply (error feedback under secure aggregation) still refuse."""
    def hashed(**compression):
        data = mutate("secure_aggregation.enabled", False)
        if compression:
            data["compression"] = compression
        return plan_hash(load_plan(write(tmp_path, data)))

    assert hashed(trim_head=False) == hashed()
    assert hashed(bits=8, trim_head=False) == hashed(bits=8)
    assert len({hashed(), hashed(trim_head=True), hashed(bits=8), hashed(bits=8, trim_head=True)}) == 4
    data = mutate("compression", {"trim_head": True})
    data["secure_aggregation"] = {"enabled": True}
    assert load_plan(write(tmp_path, data)).compression.trim_head
    data["compression"] = {"trim_head": True, "bits": 8}
    assert load_plan(write(tmp_path, data)).compression.trim_head
    data["compression"] = {"trim_head": True, "bits": 8, "error_feedback": True}
    with pytest.raises(ConfigError, match="compression.error_feedback.*secure_aggregation.enabled"):
        load_plan(write(tmp_path, data))


def test_hash_cli_matches_library():
    result = CliRunner().invoke(app, ["plan", "hash", str(DEMO_PLAN)])
    assert result.exit_code == 0
    assert result.output.strip() == plan_hash(load_plan(DEMO_PLAN))


def test_show_round_trips(tmp_path):
    result = CliRunner().invoke(app, ["plan", "show", str(DEMO_PLAN)])
    assert result.exit_code == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.output)
    assert plan_hash(load_plan(shown)) == plan_hash(load_plan(DEMO_PLAN))


# ---------------------------------------------------------------- site files

SITE = {
    "name": "site1",
    "role": "collaborator",
    "workspace": "ws",
    "certs": {"cert": "certs/site1.crt", "key": "certs/site1.key", "ca": "certs/ca.crt"},
    "data": {"news": {"train": "data/news.csv"}},
    "aggregator": "tcp://127.0.0.1:5555",
}


def test_site_file_resolves_relative_paths(tmp_path):
    s = load_site(write(tmp_path, SITE, "site.yaml"), load_plan(DEMO_PLAN))
    assert s.workspace == (tmp_path / "ws").resolve()
    assert s.certs.key == (tmp_path / "certs/site1.key").resolve()
    assert s.data["news"].train == (tmp_path / "data/news.csv").resolve()


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"name": "site9"}, "roster"),
        ({"data": {"weather": {"train": "x.csv"}}}, "data.weather"),
        ({"aggregator": None}, "aggregator"),
        ({"role": "aggregator"}, "bind"),
        ({"aggregator": "http://x"}, "tcp://"),
        ({"certs": {"cert": "a"}}, "certs.key"),
    ],
)
def test_bad_site_files(tmp_path, change, needle):
    data = {**SITE, **change}
    with pytest.raises(ConfigError) as exc:
        load_site(write(tmp_path, data, "site.yaml"), load_plan(DEMO_PLAN))
    assert needle in str(exc.value)
    assert exc.value.exit_code == 2


def test_by_labels_needs_trim_head_and_enough_clusters_and_keeps_old_hashes(tmp_path):
    """clustering.by_labels: the label counts come from JOIN, so trim_head must be on; k must cover the tasks'
    label counts; false (the default) leaves every hash as it was."""
    data = mutate("clustering.by_labels", True)
    with pytest.raises(ConfigError, match="clustering.by_labels needs .* compression.trim_head: true"):
        load_plan(write(tmp_path, data))
    data["compression"] = {"trim_head": True}
    assert load_plan(write(tmp_path, data)).clustering.by_labels
    counts = {len(t["labels"]) for t in data["tasks"]}
    assert len(counts) > 1  # the demo plan's tasks differ in label count
    data["clustering"]["k"] = len(counts) - 1
    with pytest.raises(ConfigError, match="clustering.by_labels keeps the tasks' .* raise k to at least"):
        load_plan(write(tmp_path, data))
    assert plan_hash(load_plan(write(tmp_path, mutate("clustering.by_labels", False)))) == plan_hash(load_plan(DEMO_PLAN))
