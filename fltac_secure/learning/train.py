"""Local training and evaluation of one task slot.

Speed matters (thousands of steps on two cores), so data is tokenised once
(``encode``) into padded tensors, each batch is trimmed to its longest
example (padding is masked out of attention and pooling, so trimming changes
nothing but the cost), and evaluation runs length-sorted under ``no_grad``.

Determinism: batch order comes from a ``torch.Generator`` seeded by ``seed``
and dropout from a forked global RNG seeded from it too, so the same start
vector, data and seed give the same result, and the caller's global RNG is
left untouched.  Every call builds a fresh AdamW over that slot's adapter and
head only, so no optimizer state leaks between slots or rounds (the paper's
clients restart from the aggregated adapter each round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fltac_secure.errors import ConfigError, DataError
from fltac_secure.learning.seeding import derive_seed

if TYPE_CHECKING:
    from fltac_secure.learning.model import SlotModel
    from fltac_secure.plan.schema import Training


class TextData(Protocol):
    """What ``encode`` needs from a data set (``fltac_secure.data.TaskDataset`` fits)."""

    task: str
    texts: list[str]
    labels: np.ndarray


@dataclass(frozen=True)
class EncodedDataset:
    """Model-ready tensors: ``features`` (input_ids + attention_mask, or pixel_values) and int64 labels.

    Labels are head positions (the task's label id plus ``label_offset``).
    """

    features: dict[str, Tensor]
    labels: Tensor
    task: str = ""
    lengths: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0])
        if self.labels.dim() != 1 or any(int(v.shape[0]) != n for v in self.features.values()):
            raise DataError(f"encoded data {self.task!r}: features and labels disagree on the number of examples")
        if self.lengths.numel() == 0:
            mask = self.features.get("attention_mask")
            lengths = mask.sum(dim=1) if mask is not None else torch.zeros(n, dtype=torch.long)
            object.__setattr__(self, "lengths", lengths)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_ids(self) -> Tensor:
        return self.features["input_ids"]

    @property
    def attention_mask(self) -> Tensor:
        return self.features["attention_mask"]

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        """Features of examples ``idx``, text trimmed to the longest one in the batch."""
        out = {k: v.index_select(0, idx) for k, v in self.features.items()}
        if "attention_mask" in out:
            width = max(int(self.lengths.index_select(0, idx).max()), 1)
            out = {k: v[:, :width] for k, v in out.items()}
        return out


def encode(model_or_tokenizer: Any, ds: TextData, max_seq_length: int, *, label_offset: int = 0) -> EncodedDataset:
    """Tokenise a task's texts once (truncated to ``max_seq_length``) and shift labels by ``label_offset``."""
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tokenizer is None or not callable(tokenizer):
        raise ConfigError("encode needs a text tokenizer; this base model has none (an image model?)")
    if len(ds.texts) == 0:
        raise DataError(f"task {ds.task!r} has no examples to encode; drop the slot or add data")
    enc = tokenizer(list(ds.texts), truncation=True, max_length=int(max_seq_length), padding="longest",
                    return_tensors="pt")
    labels = torch.as_tensor(np.asarray(ds.labels, dtype=np.int64) + int(label_offset))
    features = {"input_ids": enc["input_ids"].contiguous(), "attention_mask": enc["attention_mask"].contiguous()}
    return EncodedDataset(features=features, labels=labels, task=ds.task)


def _range(model: SlotModel, slot: str, label_range: tuple[int, int] | None) -> tuple[int, int]:
    return label_range if label_range is not None else model.label_range(slot)


def _check_labels(data: EncodedDataset, lo: int, hi: int) -> None:
    if len(data) and (int(data.labels.min()) < lo or int(data.labels.max()) >= hi):
        raise DataError(f"labels of {data.task!r} span [{int(data.labels.min())}, {int(data.labels.max())}] "
                        f"outside the slot's label range [{lo}, {hi}); check label_offset / label_range")


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[Tensor]:
    """``steps`` batches walking through fresh random permutations (each example once per pass)."""
    size = min(batch_size, n)
    out: list[Tensor] = []
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(perm[pos:pos + size])
        pos += size
    return out


def train_slot(model: SlotModel, slot: str, data: EncodedDataset, training: Training, seed: int, *,
               label_range: tuple[int, int] | None = None, steps: int | None = None) -> dict[str, float | int]:
    """AdamW on ``slot``'s adapter + head for ``steps`` (default ``training.local_steps``) batches.

    Returns ``{"steps", "loss" (mean over the steps), "first_loss", "last_loss"}``.
    """
    if len(data) == 0:
        raise DataError(f"no training data for slot {slot!r}")
    n_steps = int(steps if steps is not None else training.local_steps)
    model.set_slot(slot)
    lo, hi = _range(model, slot, label_range)
    _check_labels(data, lo, hi)
    params = list(model.slot_parameters(slot).values())
    opt = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    gen = torch.Generator().manual_seed(derive_seed("batches", seed, bits=63))
    was_training = model.training
    model.train()
    losses: list[float] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("dropout", seed, bits=63))
            for idx in _batches(len(data), training.batch_size, n_steps, gen):
                logits = model(**data.batch(idx), label_range=(lo, hi))
                loss = F.cross_entropy(logits, data.labels.index_select(0, idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
    if not all(np.isfinite(losses)):
        raise FloatingPointError(f"training slot {slot!r} diverged (loss {losses[-1]}); lower the learning rate")
    return {"steps": n_steps, "loss": float(np.mean(losses)) if losses else float("nan"),
            "first_loss": losses[0] if losses else float("nan"), "last_loss": losses[-1] if losses else float("nan")}


@torch.no_grad()
def predict_slot(model: SlotModel, slot: str, data: EncodedDataset, *, label_range: tuple[int, int] | None = None,
                 batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Predicted head positions (in data order) and the mean cross-entropy, in eval mode."""
    model.set_slot(slot)
    lo, hi = _range(model, slot, label_range)
    was_training = model.training
    model.eval()
    order = torch.argsort(data.lengths, stable=True)  # similar lengths together: less padding
    preds = torch.empty(len(data), dtype=torch.long)
    loss_sum = 0.0
    try:
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            logits = model(**data.batch(idx), label_range=(lo, hi))
            preds[idx] = logits.argmax(dim=1)
            labels = data.labels.index_select(0, idx)
            loss_sum += float(F.cross_entropy(logits, labels.clamp(lo, hi - 1), reduction="sum"))
    finally:
        model.train(was_training)
    return preds.numpy(), loss_sum / max(len(data), 1)


def evaluate_slot(model: SlotModel, slot: str, data: EncodedDataset, *, label_range: tuple[int, int] | None = None,
                  batch_size: int = 64) -> dict[str, float | int]:
    """``{"accuracy", "macro_f1", "loss", "n"}`` of ``slot`` on ``data`` (scikit-learn metrics)."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(data) == 0:
        raise DataError(f"no evaluation data for slot {slot!r}")
    preds, loss = predict_slot(model, slot, data, label_range=label_range, batch_size=batch_size)
    y = data.labels.numpy()
    return {"accuracy": float(accuracy_score(y, preds)),
            "macro_f1": float(f1_score(y, preds, average="macro", zero_division=0)),
            "loss": float(loss), "n": len(data)}
