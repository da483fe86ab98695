"""Use an exported adapter as a text classifier, without the plan it was trained under.

    import fltac_secure
    clf = fltac_secure.load_adapter("site1/out/news")     # any folder written by export_peft
    clf.predict(["Shares in the bank fell 3%"])          # -> ["business"]
    clf.predict_proba(texts)                             # (n, len(clf.labels)) probabilities
    clf.labels, clf.task                                 # from fltac.json

What it does is what anyone with plain transformers + peft can do by hand:

    base = AutoModel.from_pretrained(<base>)              # fltac.json base_path, else adapter_config's
                                                          # base_model_name_or_path
    model = PeftModel.from_pretrained(base, folder)       # the LoRA adapter
    tok = AutoTokenizer.from_pretrained(<base>)
    enc = tok(texts, truncation=True, max_length=meta["max_seq_length"], padding=True, return_tensors="pt")
    hidden = model(**enc).last_hidden_state               # (n, tokens, hidden)
    mask = enc["attention_mask"].unsqueeze(-1)
    pooled = (hidden * mask).sum(1) / mask.sum(1)         # mean over real tokens ("pooling": "mean")
    head = safetensors.torch.load_file(folder / "head.safetensors")
    logits = pooled @ head["head.weight"].T + head["head.bias"]
    lo, hi = meta["label_range"]                          # the head is as wide as the plan's largest label
    label = meta["labels"][logits[:, lo:hi].argmax(-1)]   # set: only [lo:hi] belong to this task

A cluster folder of an aggregator that does not know task names has
``labels: null`` and the full head as its range: ``predict`` then returns
head positions as strings ("0", "1", ...); ``fltac.json``'s ``members`` and
``how_to_map`` say which task it is.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fltac_secure.errors import ConfigError, StateError
from fltac_secure.learning.export import read_head, read_metadata

__all__ = ["AdapterClassifier", "load_adapter"]


class AdapterClassifier:
    """An exported adapter on its base model: ``predict(texts)`` gives label names."""

    def __init__(self, folder: Path, meta: dict[str, Any], model: Any, tokenizer: Any, head: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta
        self.model = model
        self.tokenizer = tokenizer
        self.weight, self.bias = head["head.weight"], head["head.bias"]
        self.lo, self.hi = (int(x) for x in meta["label_range"])
        names = meta.get("labels")
        self.labels: list[str] = list(names) if names else [str(i) for i in range(self.lo, self.hi)]
        self.task: str | None = meta.get("task")
        self.max_seq_length = int(meta.get("max_seq_length") or 128)

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """The task's logits ``(n, len(labels))``: mean-pooled encoder output, head, positions ``[lo:hi]``."""
        import torch

        texts = _check_texts(texts)
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(texts[i:i + batch_size], truncation=True, max_length=self.max_seq_length,
                                     padding=True, return_tensors="pt")
                hidden = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
                logits = pooled @ self.weight.T + self.bias
                out.append(logits[:, self.lo:self.hi].numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.hi - self.lo))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax over the task's labels, ``(n, len(labels))``."""
        z = self.logits(texts)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most likely label name per text."""
        return [self.labels[int(i)] for i in np.argmax(self.logits(texts), axis=1)]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("predict takes a list of texts; wrap a single text in a list")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings, got {type(bad[0]).__name__}")
    return list(texts)


def load_adapter(folder: str | Path) -> AdapterClassifier:
    """Load an exported adapter folder (``fltac.json`` + peft files + head) as a ready classifier.

    The base is loaded from disk, never fetched: ``fltac.json``'s ``base``
    (a known name or a folder), else its ``base_path``, else
    ``base_model_name_or_path`` of ``adapter_config.json`` if it is a folder.
    Raises StateError for an incomplete folder and ConfigError when no base
    can be found or the base takes images (this helper classifies texts).
    """
    import torch
    from peft import PeftModel

    folder = Path(folder)
    if not folder.is_dir():
        raise StateError(f"adapter folder {folder} does not exist; give a folder written by fltac (e.g. out/<task>)")
    meta = read_metadata(folder)
    base, tokenizer = _load_base(folder, meta)
    if tokenizer is None:
        raise ConfigError(f"{folder} is an adapter of {meta['base']!r}, which takes images, not texts; "
                          "use fltac_secure.learning.export.load_exported with its plan")
    with warnings.catch_warnings():  # transformers' deprecation chatter inside peft, not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(base, str(folder)).eval()
    head = {k: torch.from_numpy(v.copy()) for k, v in read_head(folder).items()}
    width = int(meta["head_width"])
    if tuple(head["head.weight"].shape) != (width, int(meta["hidden_size"])):
        raise StateError(f"{folder}/head.safetensors has shape {tuple(head['head.weight'].shape)}, fltac.json says "
                         f"({width}, {meta['hidden_size']}); re-export the adapter")
    return AdapterClassifier(folder, meta, model, tokenizer, head)


def _load_base(folder: Path, meta: dict[str, Any]) -> tuple[Any, Any]:
    """(base model, tokenizer) for an export, from the first reference that exists on this machine."""
    from fltac_secure.learning.model import KNOWN_BASES, load_base

    ref = str(meta["base"])
    if ref in KNOWN_BASES:
        try:
            return load_base(ref, seed=int(meta.get("base_seed", 0)))
        except ConfigError:
            if ref in ("tiny-bert", "tiny-vit"):
                raise
    candidates = [ref, meta.get("base_path")]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    candidates.append(cfg.get("base_model_name_or_path"))
    for cand in candidates:
        if cand and (Path(str(cand)).expanduser() / "config.json").is_file():
            return load_base(str(Path(str(cand)).expanduser()))
    named = cfg.get("base_model_name_or_path")
    raise ConfigError(f"the base model of {folder} is not on this machine (tried {[c for c in candidates if c]}); "
                      f"install it (for {named!r}: its package or a saved copy) and point fltac.json's base_path at it")
