"""An exported adapter is usable by a stranger: plain transformers + peft, or fltac_secure.load_adapter, in a
fresh process, give the same predictions as the model that was trained; `fltac predict` tries one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fltac_secure.errors import StateError
from fltac_secure.learning.adapters import adapter_layout, set_slot_vector
from fltac_secure.learning.export import base_reference, export_peft
from fltac_secure.learning.model import SlotModel, load_base
from fltac_secure.plan import Plan

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["the market fell sharply today", "what a lovely goal in the final", "hello", "a b c d e f g h i j k l m n"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base model saved as a plain folder (tiny BERT + MiniLM's tokenizer): what an operator's own base is."""
    folder = tmp_path_factory.mktemp("base") / "my-encoder"
    model, tok = load_base("tiny-bert", seed=3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    plan = Plan(federation="t", rounds=1, roster=["a"],
                tasks=[{"name": "topics", "labels": ["business", "sport", "tech", "politics"]},
                       {"name": "spam", "labels": ["ham", "spam"]}],
                model={"base": str(base_dir), "lora": {"rank": 2}}, training={"max_seq_length": 12})
    model = SlotModel(plan, ["topics", "spam"])
    rng = np.random.default_rng(0)
    for slot in model.slots:
        set_slot_vector(model, slot, rng.normal(scale=0.5, size=adapter_layout(plan).size).astype(np.float32))
    out = export_peft(model.eval(), "spam", tmp_path_factory.mktemp("out") / "spam", task=plan.task("spam"))
    enc = model.tokenizer(TEXTS, truncation=True, max_length=12, padding=True, return_tensors="pt")
    model.set_slot("spam")
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    expected = [plan.task("spam").labels[int(i)] for i in logits.argmax(-1)]
    assert len(set(expected)) == 2  # both labels occur: the comparison below is not trivial
    return out, expected


def _fresh(code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_config_names_a_loadable_base_and_head_keys_match(exported: tuple[Path, list[str]], base_dir: Path) -> None:
    out, _ = exported
    cfg = json.loads((out / "adapter_config.json").read_text())
    meta = json.loads((out / "fltac.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == base_dir.resolve()
    assert meta["base_path"] == str(base_dir.resolve()) and meta["max_seq_length"] == 12
    from safetensors.numpy import load_file

    head = load_file(str(out / meta["head"]["file"]))
    assert sorted(head) == sorted(n for n, _ in meta["layout"] if n.startswith("head."))
    assert head[meta["head"]["weight"]].shape == (meta["head_width"], meta["hidden_size"])


def test_minilm_is_named_by_its_public_id_with_the_local_copy_noted() -> None:
    public, local = base_reference("minilm")
    assert public == "sentence-transformers/all-MiniLM-L6-v2"
    assert local is not None and (Path(local) / "config.json").is_file()
    assert base_reference("tiny-bert") == ("tiny-bert", None)


def test_plain_peft_in_a_fresh_process_gives_the_trained_predictions(exported: tuple[Path, list[str]]) -> None:
    out, expected = exported
    got = _fresh(f"""
        import json, sys
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer
        folder = {str(out)!r}
        cfg = json.load(open(folder + "/adapter_config.json"))
        meta = json.load(open(folder + "/fltac.json"))
        base = AutoModel.from_pretrained(cfg["base_model_name_or_path"])
        tok = AutoTokenizer.from_pretrained(cfg["base_model_name_or_path"])
        model = PeftModel.from_pretrained(base, folder).eval()
        enc = tok({TEXTS!r}, truncation=True, max_length=meta["max_seq_length"], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        head = load_file(folder + "/head.safetensors")
        logits = pooled @ head["head.weight"].T + head["head.bias"]
        lo, hi = meta["label_range"]
        assert "fltac_secure" not in sys.modules
        print(json.dumps([meta["labels"][int(i)] for i in logits[:, lo:hi].argmax(-1)]))
    """)
    assert got == expected


def test_load_adapter_in_a_fresh_process_gives_the_trained_predictions(exported: tuple[Path, list[str]]) -> None:
    out, expected = exported
    got = _fresh(f"""
        import json
        import fltac_secure
        clf = fltac_secure.load_adapter({str(out)!r})
        p = clf.predict_proba({TEXTS!r})
        assert p.shape == ({len(TEXTS)}, 2) and abs(p.sum(axis=1) - 1).max() < 1e-6
        assert clf.task == "spam" and clf.labels == ["ham", "spam"]
        print(json.dumps(clf.predict({TEXTS!r})))
    """)
    assert got == expected


def test_fltac_predict_cli(exported: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    from fltac_secure.cli import main

    out, expected = exported
    with pytest.raises(SystemExit) as info:
        main(["predict", "--adapter", str(out), "--json", *[a for t in TEXTS for a in ("--text", t)]])
    assert info.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in doc["predictions"]] == expected
    assert doc["task"] == "spam"


def test_fltac_predict_on_a_folder_that_is_not_an_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fltac_secure.cli import main

    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as info:
            main(["predict", "--adapter", str(folder), "--text", "hi"])
        err = capsys.readouterr().err
        assert info.value.code != 0 and err.startswith("error: ") and "Traceback" not in err
        assert str(folder) in err


def test_importing_fltac_secure_does_not_import_torch() -> None:
    res = subprocess.run([sys.executable, "-c", "import sys, fltac_secure; fltac_secure.__version__; "
                          "assert 'torch' not in sys.modules, 'torch imported'; print(callable.__name__)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr


def test_helper_refuses_an_incomplete_folder(exported: tuple[Path, list[str]], tmp_path: Path) -> None:
    import shutil

    import fltac_secure

    broken = tmp_path / "broken"
    shutil.copytree(exported[0], broken)
    (broken / "head.safetensors").unlink()
    with pytest.raises(StateError, match="head.safetensors"):
        fltac_secure.load_adapter(broken)
